"""Where derived assets live: caches (converted weights, synthesised audio) and data."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$DEEPTALK_CACHE, or ~/.cache/deeptalk."""
    return Path(os.environ.get("DEEPTALK_CACHE") or Path.home() / ".cache" / "deeptalk")


def data_dir() -> Path:
    """Bundled data shipped with the repository (<repo>/data)."""
    return Path(__file__).resolve().parent.parent / "data"

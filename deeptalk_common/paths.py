"""Where derived assets live: caches (converted weights, synthesised audio, built data)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$DEEPTALK_CACHE, or ~/.cache/deeptalk."""
    return Path(os.environ.get("DEEPTALK_CACHE") or Path.home() / ".cache" / "deeptalk")

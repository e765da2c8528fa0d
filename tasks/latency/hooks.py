"""Hooks of the latency task."""
from __future__ import annotations

# Importing the scorer module registers the `latency` scorer for this task.
import deeptalk_eval.scoring.latency  # noqa: F401


def mark_cold(docs: list[dict]) -> list[dict]:
    """Flag the first doc as the cold request: the runner sends docs in file order, so the
    first one meets a freshly loaded model. Its figures are reported as cold_*; the rest
    are the warm requests that the percentiles aggregate."""
    return [{**d, "cold": i == 0} for i, d in enumerate(docs)]

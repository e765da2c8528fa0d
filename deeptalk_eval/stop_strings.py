"""Cutting generated text at the first stop string: one rule for every adapter.

A stop string may arrive split over several streamed deltas, so a streaming cutter holds
back the last `len(longest stop) - 1` characters until it knows they do not start one.
"""
from __future__ import annotations

from collections.abc import Sequence


def first_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop string in `text`, -1 when none occurs."""
    return min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)


class StopCut:
    """Streamed text up to the first stop string.

    `push(delta)` returns the part that may be shown now; once a stop string is seen,
    `stopped` is true and nothing more is shown. `finish()` returns the held-back tail at
    the end of a stream that never hit a stop string.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buf, self.stopped = "", False

    def push(self, delta: str) -> str:
        if self.stopped:
            return ""
        self.buf += delta
        cut = first_stop(self.buf, self.stops)
        if cut >= 0:
            out, self.buf, self.stopped = self.buf[:cut], "", True
            return out
        ready = len(self.buf) - self.hold
        if ready <= 0:
            return ""
        out, self.buf = self.buf[:ready], self.buf[ready:]
        return out

    def finish(self) -> str:
        out, self.buf = self.buf, ""
        return out

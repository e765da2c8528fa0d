"""Results kept by the content of their input, for batch evaluation.

A benchmark asks the same input several times: a spoken question answered in text, then in
speech, then as a control's paired audio; a cascade's LLM asked the same transcript for the
text and the spoken answer. Each leg is deterministic (greedy), so batch evaluation computes
each distinct input once: the reference's hearing (Whisper encoder, projector, the lexicon
rescoring by the LLM, ~0.7-1 s a question on one CPU thread), a cascade's transcript, answer
and spoken sentences. Never on a latency path: an input seen before would cost nothing the
second time.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

import numpy as np


class ContentMemo:
    """Least-recently-used map from an input's content key to what was made of it."""

    def __init__(self, max_items: int = 2048):
        self.max_items = max_items
        self._items: OrderedDict[str, Any] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(samples: np.ndarray, sample_rate: int | None) -> str:
        """The key of audio samples: their bytes, dtype, shape and rate."""
        a = np.ascontiguousarray(samples)
        h = hashlib.sha256(f"{a.dtype.str}:{a.shape}:{sample_rate}:".encode())
        h.update(a.tobytes())
        return h.hexdigest()

    @staticmethod
    def json_key(content: Any) -> str:
        """The key of JSON-able content (a request's text, system prompt, options ...)."""
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, key: str) -> Any | None:
        hit = self._items.get(key)
        if hit is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return hit

    def put(self, key: str, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

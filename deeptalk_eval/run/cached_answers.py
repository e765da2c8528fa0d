"""The model's answers with the response cache in front of it: requests that the cache
lacks go to the model in batches, and every answer (or failure) is committed to the cache
as soon as it exists. An adapter that raises fails only its samples (a failing batch is
retried one by one to find the culprit); a `UsageError` (a set-up mistake every sample
would repeat) stops the run."""
from __future__ import annotations

import os
import time
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm import tqdm

from deeptalk_eval.api import Request, Response, SpokenModel, UnsupportedRequest
from deeptalk_eval.cache import ResponseCache
from deeptalk_eval.errors import UsageError
from deeptalk_eval.run.options import RunOptions
from deeptalk_eval.run.outcome import error_text
from deeptalk_eval.task_config import TaskConfig


class CachedAnswers:
    """Runs requests through the model with the cache in front of it."""

    def __init__(self, model: SpokenModel, cache: ResponseCache, opts: RunOptions):
        self.model, self.cache, self.opts = model, cache, opts
        self.fingerprint = model.fingerprint()
        self.measurement = ""  # id of the current measurement (keys streamed responses)
        self.model_calls = 0  # requests actually sent to the model (not cache hits)
        self.batch_sizes: dict[str, int] = {}  # the batch each task's model calls used (recorded)
        # where the first adapter error of the current task came from, for the user to read
        self.first_traceback: str | None = None

    def _check(self, resp: Any, req: Request) -> Response:
        if not isinstance(resp, Response):
            raise TypeError(f"adapter returned {type(resp).__name__}, not a Response")
        if resp.audio is not None and not np.isfinite(resp.audio.samples).all():
            raise ValueError("adapter returned audio containing NaN or inf")
        resp.extra.setdefault("request_index", self.model_calls)
        self.model_calls += 1
        return resp

    def _one(self, task: TaskConfig, req: Request) -> tuple[Response | None, str | None]:
        try:
            if task.kind == "stream":
                from deeptalk_eval.scoring.latency import record_stream

                start = time.monotonic()  # the clock starts when the request is handed over
                resp = record_stream(self.model.stream(req), start)
                # what else the machine ran while this was timed: kept with the (cacheable) timings
                resp.extra.setdefault("load_average", round(os.getloadavg()[0], 2))
                return self._check(resp, req), None
            out = self.model.generate([req])
            if len(out) != 1:
                raise ValueError(f"adapter returned {len(out)} responses for 1 request")
            return self._check(out[0], req), None
        except UsageError:
            raise  # a set-up mistake: every other sample would fail the same way
        except Exception as e:  # any other adapter error fails this sample only
            self.model_calls += 1
            if self.first_traceback is None and not isinstance(e, UnsupportedRequest):
                self.first_traceback = traceback.format_exc()  # a refusal is no bug: no traceback
            return None, error_text(e)

    def batch_size(self, task: TaskConfig, requests: list[Request]) -> int:
        """--batch-size when given; otherwise the model's greedy batch when every request is
        greedy (the adapter vouches that batched greedy answers equal one-by-one ones), else 1."""
        if task.kind == "stream":
            return 1  # latency is timed one request at a time
        if self.opts.batch_size is not None:
            return self.opts.batch_size
        greedy = all(r.options.is_deterministic for r in requests)
        return max(1, int(getattr(self.model, "greedy_batch_size", 1))) if greedy else 1

    def ask_model(self, task: TaskConfig, pending: list[tuple[str, Request]],
                  bar: tqdm) -> Iterator[tuple[str, Response | None, str | None]]:
        """Yield (key, response, error) per request, committing each to the cache first."""
        size = self.batch_sizes[task.name] = self.batch_size(task, [req for _, req in pending])
        for b in range(0, len(pending), size):
            batch = pending[b:b + size]
            results: list[tuple[Response | None, str | None]]
            if len(batch) == 1:
                results = [self._one(task, batch[0][1])]
            else:
                try:
                    out = self.model.generate([req for _, req in batch])
                    if len(out) != len(batch):
                        raise ValueError(f"adapter returned {len(out)} responses for {len(batch)} requests")
                    results = []
                    for resp, (_, req) in zip(out, batch):
                        try:
                            results.append((self._check(resp, req), None))
                        except (TypeError, ValueError) as e:
                            results.append((None, error_text(e)))
                except Exception:
                    # Find the failing sample(s): one by one.
                    results = [self._one(task, req) for _, req in batch]
            for (key, req), (resp, err) in zip(batch, results):
                if req.options.is_deterministic:  # sampled outputs are never cached
                    self.cache.put(key, task.name, req.id, resp, err)
                bar.update(1)
                yield key, resp, err

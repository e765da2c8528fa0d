"""One `generate` or `stream` task: its docs selected, one request per doc, cached answers
read and the rest asked of the model, then scored, logged and aggregated."""
from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from deeptalk_eval import shared_cache
from deeptalk_eval.aggregate import aggregate_task
from deeptalk_eval.api import Request, Response
from deeptalk_eval.cache import request_key
from deeptalk_eval.results import json_safe_doc
from deeptalk_eval.run.cached_answers import CachedAnswers
from deeptalk_eval.run.options import RunOptions
from deeptalk_eval.run.outcome import TaskOutcome
from deeptalk_eval.run.sample_logs import fill_logs
from deeptalk_eval.run.scoring_pass import Scoring
from deeptalk_eval.run.shards import select_docs
from deeptalk_eval.task_config import TaskConfig
from deeptalk_eval.task_docs import sample_id
from deeptalk_eval.task_requests import SampleInputError, build_request


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:  # seeding torch is only needed once something loaded it
        sys.modules["torch"].manual_seed(seed)


def run_generate_task(task: TaskConfig, docs: list[dict[str, Any]], answers: CachedAnswers, scoring: Scoring,
                      opts: RunOptions, run_dir: Path | None) -> TaskOutcome:
    chosen = select_docs(docs, task, opts)
    counts_before = scoring.cache_counts()  # spoken inputs are synthesised from here on
    records: list[dict[str, Any]] = []
    requests: dict[str, Request] = {}
    for idx, doc in chosen:
        sid = sample_id(task, doc)
        rec = {"index": idx, "id": sid, "doc": json_safe_doc(doc), "error": None, "error_stage": None}
        try:
            requests[sid] = build_request(task, doc)
        except SampleInputError as e:
            rec["error"], rec["error_stage"] = str(e), "input"
        records.append(rec)

    responses: dict[str, Response | None] = {}
    errors: dict[str, str] = {}
    pending: list[tuple[str, Request]] = []
    hits = 0
    for rec in records:
        req = requests.get(rec["id"])
        if req is None:
            continue
        stream_id = f"|measurement:{answers.measurement}" if task.kind == "stream" else ""
        key = request_key(answers.fingerprint + stream_id, task.requests_sha256, req)
        rec["cache_key"] = key
        got = answers.cache.get(key) if req.options.is_deterministic else None
        if got is not None and not (opts.retry_failed and got[1] is not None):
            responses[rec["id"]], err = got
            if err:
                errors[rec["id"]] = err
            rec["cached"] = True
            hits += 1
        else:
            pending.append((key, req))
            rec["cached"] = False
    set_seeds(opts.seed)  # the same seed before every task's generation
    calls_before = answers.model_calls
    answers.first_traceback = None
    with tqdm(total=len(records), initial=len(records) - len(pending), desc=task.name, unit="sample",
              disable=not opts.progress, file=sys.stderr) as bar:
        by_key = {key: req.id for key, req in pending}
        for key, resp, err in answers.ask_model(task, pending, bar):
            responses[by_key[key]] = resp
            if err:
                errors[by_key[key]] = err
    for rec in records:
        if rec["id"] in errors:
            rec["error"], rec["error_stage"] = errors[rec["id"]], "model"

    info = scoring.score(task, records, responses)
    fill_logs(task, records, requests, responses, opts, run_dir)
    return TaskOutcome(task.name, "ok", aggregate_task(task.metrics, records), records, info,
                       model_calls=answers.model_calls - calls_before, cache_hits=hits,
                       first_traceback=answers.first_traceback,
                       shared_cache=shared_cache.delta(counts_before, scoring.cache_counts()))

"""New metrics from a run's per-sample logs with the current task files and scorers; no
model is loaded. Model and input failures stay failed; scoring failures are retried.
Spoken outputs are transcribed again from their logged audio; a sample whose audio file is
gone (results committed without it) keeps the transcript its run logged, but only when that
run's ASR was this one (the same `config_key`: model, weights, decoding, versions)."""
from __future__ import annotations

import os
import time
from functools import cache
from pathlib import Path

from deeptalk_eval import shared_cache
from deeptalk_eval.aggregate import aggregate_task
from deeptalk_eval.errors import UsageError
from deeptalk_eval.registry import TaskIndex
from deeptalk_eval.results import (
    environment,
    read_results,
    read_samples,
    safe_name,
    timestamp,
    write_results,
    write_samples,
)
from deeptalk_eval.run.options import RunOptions, check_writable
from deeptalk_eval.run.outcome import RunResult, TaskOutcome, exit_code, shared_cache_record
from deeptalk_eval.run.plan import preflight_scorers
from deeptalk_eval.run.sample_logs import logged_responses
from deeptalk_eval.run.scoring_pass import Scoring


def rescore(source: str | Path, opts: RunOptions) -> RunResult:
    """New metrics from a run's per-sample logs with the current task files; no model is loaded."""
    old = read_results(source)
    old_path = Path(old["_path"])
    base = old_path.parent
    if not old.get("samples_files"):
        raise UsageError(f"{old_path}: no per-sample logs to rescore (run with --log-samples)")
    index = TaskIndex.scan(opts.include_paths)
    label = old["config"]["model"]
    opts.model = label
    model_dir = opts.output_dir / safe_name(label)
    check_writable(model_dir)
    tasks = []
    for name in old["samples_files"]:
        if name not in index.files:
            raise UsageError(f"task {name!r} of {old_path} is not known here (use --include-path)")
        tasks.append(index.load(name))
        if tasks[-1].kind != "lm_eval":
            preflight_scorers(tasks[-1], opts)
    results = {k: v for k, v in old.items() if k != "_path"}
    results.update({"results": {}, "configs": {t.name: t.record() for t in tasks}, "environment": environment(),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "samples_files": {},
                    "rescored_from": str(old_path), "stage": opts.stage or old.get("stage")})
    scoring = Scoring(opts)
    same_asr = cache(lambda: _same_asr(old, scoring))  # asked once, and only if some audio is gone
    stamp = timestamp() + "_rescored"
    run_dir = model_dir / stamp
    outcomes = []
    for task in tasks:
        if task.kind == "lm_eval":  # lm-eval scored these itself: carried over unchanged
            results["results"][task.name] = old["results"].get(task.name, {})
            results["status"][task.name] = "ok (lm-eval figures carried over, not rescored)"
            continue
        records = read_samples(base / old["samples_files"][task.name])
        kept = set()
        for rec in records:  # model and input failures stay; scoring failures are retried
            if rec.get("error_stage") == "scoring":
                rec["error"], rec["error_stage"] = None, None
            logged = rec.get("transcripts") or {}
            rec["transcripts"] = {}
            if "speech" in logged and _audio_gone(rec, base) and same_asr():
                rec["transcripts"]["speech"] = logged["speech"]
                kept.add(rec["id"])
        responses = logged_responses(records, base, without_audio=kept)
        counts_before = scoring.cache_counts()
        info = scoring.score(task, records, responses)
        for rec in records:  # audio paths stay valid from the new run folder
            for part in ("input", "output"):
                a = (rec.get(part) or {}).get("audio")
                if a and "path" in a:
                    a["path"] = os.path.relpath(base / a["path"], model_dir)
        if task.metrics:
            out = TaskOutcome(task.name, "ok", aggregate_task(task.metrics, records), records, info)
        else:
            out = TaskOutcome(task.name, "error: task has no metrics")
        out.shared_cache = shared_cache.delta(counts_before, scoring.cache_counts())
        outcomes.append(out)
        results["status"][task.name] = out.status
        results["results"][task.name] = out.metrics
        if kept:
            info["transcripts_from_log"] = {"samples": len(kept), "why": "audio file not in the log folder; "
                                            "its run's ASR config_key equals this one"}
        if info.get("asr"):
            results["asr"] = info["asr"]
        # what scored these figures (normalisers, judge ...) is this rescore's, not the old run's
        scoring_info = results.setdefault("scoring_info", {})
        scoring_info.pop(task.name, None)
        if {k: v for k, v in info.items() if k != "asr"}:
            scoring_info[task.name] = {k: v for k, v in info.items() if k != "asr"}
        f = run_dir / f"samples_{safe_name(task.name)}.jsonl"
        write_samples(f, records)
        results["samples_files"][task.name] = str(f.relative_to(model_dir))
    # the old run's model figures stay; what scoring read from the shared cache is this rescore's
    results["config"] = {**results.get("config", {}), "shared_cache": opts.uses_shared_cache}
    results["run"] = {**results.get("run", {}),
                      "shared_cache": shared_cache_record(outcomes, opts.uses_shared_cache)}
    path = write_results(model_dir / f"{stamp}.json", results)
    return RunResult(results, path, exit_code(outcomes), outcomes)


def _audio_gone(rec: dict, base: Path) -> bool:
    audio = (rec.get("output") or {}).get("audio") or {}
    return "path" in audio and not (base / audio["path"]).is_file()


def _same_asr(old: dict, scoring: Scoring) -> bool:
    """Did the old run transcribe with the ASR this rescore would use? (No model is loaded.)"""
    key = (old.get("asr") or {}).get("config_key")
    return key is not None and key == scoring.transcriber().info["config_key"]

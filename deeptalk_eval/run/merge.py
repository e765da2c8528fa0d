"""Shard runs (with their sample logs) combined into one results file: the samples in
their unsharded order, so the figures (bootstrap CIs included) are the unsharded run's."""
from __future__ import annotations

import os
from pathlib import Path

from deeptalk_eval.aggregate import aggregate_task
from deeptalk_eval.errors import UsageError
from deeptalk_eval.results import read_results, read_samples, safe_name, timestamp, write_results, write_samples
from deeptalk_eval.run.options import check_writable
from deeptalk_eval.run.outcome import RunResult, TaskOutcome, exit_code
from deeptalk_eval.run.work_queue import covers_once
from deeptalk_eval.task_config import MetricSpec, config_sha256

# the status an lm_eval task has in the shards that left it to another
LM_EVAL_ELSEWHERE = "skipped: lm_eval tasks run whole"


def check_shards(parts: list[dict]) -> None:
    """For each task, the parts that planned it cover its samples exactly once: shards r/m
    (a plain split 0..n-1 of n, or the slices of a `--processes` queue); a part without a shard
    holds all of them (`--processes`: the latency tasks alone, unsharded)."""
    shards = [tuple(p["config"].get("shard") or (0, 1)) for p in parts]
    holders: dict[str, list[tuple[int, int]]] = {}
    for p, shard in zip(parts, shards):
        for t in p["configs"]:
            holders.setdefault(t, []).append(shard)
    for t, held in holders.items():
        if not covers_once(held):
            raise UsageError(f"merge: task {t!r} is in shards {sorted(held)}: the shards of one run must cover "
                             f"its samples exactly once (e.g. each of 0..n-1 of n once)")


def merge(out_path: str | Path, inputs: list[str | Path], run_info: dict | None = None,
          sequential: list[list[int]] | None = None) -> RunResult:
    """Combine the results of shard runs (with their sample logs) into one results file.
    `run_info` joins the merged `run` record (`--processes`: its wall time, cores and parts).
    `sequential`: the inputs (by position) that one process ran one after another, per
    process; by default each input ran in a process of its own, all side by side."""
    parts = [read_results(p) for p in inputs]
    if len(parts) < 1:
        raise UsageError("merge needs at least one input results file")
    first = parts[0]
    check_shards(parts)
    for p in parts[1:]:
        for key in ("model", "model_args", "seed", "limit"):
            if p["config"].get(key) != first["config"].get(key):
                raise UsageError(f"merge: {p['_path']} has {key}={p['config'].get(key)!r}, "
                                 f"{first['_path']} has {first['config'].get(key)!r}")
    holder: dict[str, dict] = {}
    for p in parts:
        for t, c in p["configs"].items():
            ref = holder.setdefault(t, p)
            # hashed from the recorded fields, so results files older than `config_sha256` compare too
            if config_sha256(c["config"]) != config_sha256(ref["configs"][t]["config"]):
                raise UsageError(f"merge: task {t!r} differs between {ref['_path']} and {p['_path']}")
    out_path = Path(out_path)
    if out_path.suffix != ".json":
        out_path = out_path / safe_name(first["config"]["model"]) / f"{timestamp()}_merged.json"
    check_writable(out_path.parent)
    # the header (environment, model, ASR) of the part that planned the most tasks; what each
    # part knows of its own tasks (groups, versions, scoring) from every part
    header = max(parts, key=lambda p: len(p["configs"]))
    merged = {k: v for k, v in header.items() if k != "_path"}
    merged.update({"results": {}, "samples_files": {}, "status": {}, "merged_from": [p["_path"] for p in parts]})
    merged["config"] = dict(header["config"], shard=None)
    merged["config"].pop("part_of", None)
    sizes = {t: b for p in parts for t, b in (p["config"].get("batch_sizes") or {}).items()}
    if sizes:
        merged["config"]["batch_sizes"] = sizes
    merged["configs"] = {t: c for p in parts for t, c in p["configs"].items()}
    merged["versions"] = {t: v for p in parts for t, v in (p.get("versions") or {}).items()}
    groups: dict[str, list[str]] = {}
    for p in parts:
        for g, members in (p.get("groups") or {}).items():
            groups.setdefault(g, []).extend(m for m in members if m not in groups.get(g, []))
    merged["groups"] = groups
    info = {t: v for p in parts for t, v in (p.get("scoring_info") or {}).items()}
    if info:
        merged["scoring_info"] = info
    merged["asr"] = next((p["asr"] for p in parts if p.get("asr")), None)
    runs = [p.get("run") or {} for p in parts]
    merged["run"] = {"model_calls": sum(r.get("model_calls", 0) for r in runs),
                     "cache_hits": sum(r.get("cache_hits", 0) for r in runs),
                     "shard_seconds": [r.get("seconds") for r in runs],  # shards run side by side
                     "shard_shared_cache": [r.get("shared_cache") for r in runs]}
    # processes run side by side: a task's time is its slowest process's (the sum of its parts)
    per_task: dict[str, float] = {}
    for ks in sequential or [[k] for k in range(len(runs))]:
        spent: dict[str, float] = {}
        for k in ks:
            for key, v in (runs[k].get("seconds") or {}).items():
                if key != "total" and isinstance(v, (int, float)):
                    spent[key] = spent.get(key, 0.0) + v
        for key, v in spent.items():
            per_task[key] = round(max(per_task.get(key, 0.0), v), 2)
    merged["run"]["seconds"] = per_task
    if sequential:
        merged["run"]["process_seconds"] = [round(sum((runs[k].get("seconds") or {}).get("total", 0.0) for k in ks), 2)
                                            for ks in sequential]
    if run_info:
        if "total_seconds" in run_info:
            per_task["total"] = run_info["total_seconds"]
        merged["run"].update({k: v for k, v in run_info.items() if k != "total_seconds"})
    merged["run"]["finished"] = all(r.get("finished", True) for r in runs)
    run_dir = out_path.with_suffix("")
    tasks = list(dict.fromkeys(t for p in parts for t in p["configs"]))
    for t in tasks:
        owners = [p for p in parts if t in p["configs"]]
        statuses = [p["status"][t] for p in owners if p.get("status", {}).get(t)]
        errors = [s for s in statuses if s.startswith("error")]
        if errors:  # as in one run: a task that failed in a shard failed
            merged["status"][t] = errors[0]
            continue
        if merged["configs"][t]["config"].get("kind") == "lm_eval":
            # run whole by one shard: its figures as they are (its samples hold no metric specs)
            done = [p for p in owners if t in p["results"]]
            if not done:
                merged["status"][t] = next((s for s in statuses if not s.startswith(LM_EVAL_ELSEWHERE)),
                                           "error: no shard ran it")
                continue
            merged["results"][t], merged["status"][t] = done[0]["results"][t], "ok"
            if t in done[0].get("samples_files", {}):
                records = read_samples(Path(done[0]["_path"]).parent / done[0]["samples_files"][t])
                merged["samples_files"][t] = _write_task_samples(run_dir, out_path, t, records)
            continue
        logged = [p for p in owners if t in p.get("samples_files", {})]
        if not logged:  # skipped everywhere (online-only, a capability the model lacks)
            merged["status"][t] = next((s for s in statuses if s != "ok"), "error: no sample logs to merge")
            continue
        records, seen = [], {}
        for p in logged:
            base = Path(p["_path"]).parent
            for rec in read_samples(base / p["samples_files"][t]):
                if rec["id"] in seen:
                    raise UsageError(f"merge: task {t!r} sample {rec['id']!r} is in both {seen[rec['id']]} "
                                     f"and {p['_path']}")
                seen[rec["id"]] = p["_path"]
                for part in ("input", "output"):
                    a = (rec.get(part) or {}).get("audio")
                    if a and "path" in a:
                        a["path"] = os.path.relpath(base / a["path"], out_path.parent)
                records.append(rec)
        records.sort(key=lambda r: r["index"])  # the unsharded order: same bootstrap, same figures
        specs = [MetricSpec(**m) for m in (merged["configs"][t]["config"].get("metrics") or [])]
        merged["results"][t] = aggregate_task(specs, records)
        merged["status"][t] = "ok"
        merged["samples_files"][t] = _write_task_samples(run_dir, out_path, t, records)
    path = write_results(out_path, merged)
    # one run's exit status, by the same rule
    outcomes = [TaskOutcome(t, s, merged["results"].get(t, {})) for t, s in merged["status"].items()]
    return RunResult(merged, path, exit_code(outcomes), [])


def _write_task_samples(run_dir: Path, out_path: Path, task: str, records: list[dict]) -> str:
    f = run_dir / f"samples_{safe_name(task)}.jsonl"
    write_samples(f, records)
    return str(f.relative_to(out_path.parent))

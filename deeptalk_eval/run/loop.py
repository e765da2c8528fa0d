"""The evaluation loop. `run()` builds the model, lets it check its own set-up
(`SpokenModel.check_setup`, e.g. a model server that is not running) and then evaluates
task by task:

- every sample's response (or failure) is committed to the response cache as soon as it
  exists, so a killed run started again with the same command redoes nothing it finished
  (`cached_answers`);
- an adapter that raises fails only its samples; failures are recorded with their error
  and counted per task, and the first one's traceback is printed. A `UsageError` from the
  adapter (a set-up mistake that every sample would repeat) stops the run instead;
- a model lacking a capability a task needs skips that task, said out loud in the results;
- each task records how much model-independent work (TTS clips, transcripts) was read from
  the shared cache or computed;
- after each task, `<run folder>/progress.json` holds the finished tasks' metrics and wall
  times (`run.finished` false), so a run killed hours in keeps what it measured; the final
  results file replaces it.

`run_queue()` is a `--processes` worker: one model, then the parts of the run it claims, each
run and written by `run_part()` as the shard run it is.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import replace
from typing import Any

from deeptalk_eval.cache import ResponseCache
from deeptalk_eval.errors import UsageError
from deeptalk_eval.registry import TaskIndex
from deeptalk_eval.results import environment, safe_name, timestamp, write_results, write_samples
from deeptalk_eval.run.cached_answers import CachedAnswers
from deeptalk_eval.run.generate_task import run_generate_task, set_seeds
from deeptalk_eval.run.lm_eval_task import run_lm_eval_task
from deeptalk_eval.run.measurement import measurement_id
from deeptalk_eval.run.options import RunOptions
from deeptalk_eval.run.outcome import (
    RunResult,
    TaskOutcome,
    error_text,
    exit_code,
    print_outcome,
    shared_cache_record,
)
from deeptalk_eval.run.plan import Plan, missing_capability, online_only
from deeptalk_eval.run.scoring_pass import Scoring
from deeptalk_eval.run.work_queue import claim_parts
from deeptalk_eval.task_config import TaskConfig

# in the run folder while a run goes on: the finished tasks (results format, run.finished false)
PROGRESS_FILE = "progress.json"


def results_skeleton(opts: RunOptions, plan_tasks: list[TaskConfig], index: TaskIndex,
                     named: list[str] | None = None) -> dict[str, Any]:
    names = named or [t.name for t in plan_tasks]
    groups = {g: [t for t in members if t in names] for g, members in index.all_groups().items()}
    return {
        "results": {},
        "groups": {g: m for g, m in groups.items() if m},
        "configs": {t.name: t.record() for t in plan_tasks},
        "versions": {t.name: t.version for t in plan_tasks},
        "config": {"model": opts.model_label, "model_args": opts.model_args, "model_path": opts.model_path,
                   "seed": opts.seed, "limit": opts.limit, "batch_size": opts.batch_size,
                   "shard": list(opts.shard) if opts.shard else None, "online": opts.online,
                   "asr": opts.asr, "device": opts.device, "shared_cache": opts.uses_shared_cache,
                   "judge": opts.judge},
        "environment": environment(),
        "asr": None,
        "model_info": {},
        "stage": opts.stage,
        "seed": opts.seed,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": {},
        "samples_files": {},
    }


def load_model(plan: Plan):
    model = plan.model_cls(**plan.options.model_args)  # the arguments were checked against its signature
    try:
        model.check_setup()  # e.g. a model server that does not answer: stop before the first sample
    except BaseException:
        model.close()
        raise
    return model


def run(plan: Plan) -> RunResult:
    opts = plan.options
    set_seeds(opts.seed)
    t_start = time.monotonic()
    model = load_model(plan)
    try:
        return run_part(plan, opts, model, Scoring(opts), t_start)
    finally:
        model.close()


def run_queue(plan: Plan) -> list[RunResult]:
    """A `--processes` worker: the model loaded once, then every part of the run's queue that no
    other worker claimed first, each written as the shard run it is (run/work_queue.py)."""
    opts = plan.options
    assert opts.work_queue is not None
    set_seeds(opts.seed)
    t_start = time.monotonic()
    model = load_model(plan)
    scoring = Scoring(opts)
    done: list[RunResult] = []
    try:
        for _, part in claim_parts(opts.work_queue, worker=str(os.getpid())):
            model.reset_memos()  # each part answered as a process of its own would answer it
            done.append(run_part(plan, replace(opts, shard=part.shard, lm_eval_tasks=part.lm_eval), model, scoring,
                                 t_start))
            t_start = time.monotonic()  # the next part's model_load: 0
    finally:
        model.close()
    return done


def run_part(plan: Plan, opts: RunOptions, model, scoring: Scoring, t_start: float) -> RunResult:
    """The plan's tasks on `opts`' share of the samples, with a loaded model; `t_start`: when
    this part began (its model_load time is from there to its first task)."""
    set_seeds(opts.seed)  # again: loading the model may have imported torch
    model_dir = opts.output_dir / safe_name(opts.model_label)
    stamp = ((opts.stamp or timestamp()) + ("_stream" if opts.stream_tasks == "only" else "")
             + (f"_shard{opts.shard[0]}of{opts.shard[1]}" if opts.shard else ""))
    run_dir = model_dir / stamp
    results = results_skeleton(opts, plan.tasks, plan.index, plan.named)
    if opts.stamp:  # one part of a `--processes` run: its merged file is the run's row
        results["config"]["part_of"] = f"{opts.stamp}.json"
    results["model_info"] = {"class": f"{plan.model_cls.__module__}.{plan.model_cls.__qualname__}",
                             "capabilities": plan.model_cls.capabilities.to_dict(),
                             "fingerprint": model.fingerprint(), **model.describe()}
    cache = ResponseCache(opts.output_dir / ".cache" / f"{safe_name(opts.model_label)}.sqlite")
    answers = CachedAnswers(model, cache, opts)
    # Streamed (latency) responses are cached under the id of this machine and code (or, with
    # --remeasure-latency, of this command): see run/measurement.py.
    # (Hashing the sources only when the run has something to time.)
    fresh_measurement = None
    if any(t.kind == "stream" for t in plan.tasks):
        shard = f"_shard{opts.shard[0]}of{opts.shard[1]}" if opts.shard else ""
        answers.measurement, measured_on, fresh_measurement = measurement_id(opts, plan.model_cls, cache.path, shard)
        results["config"]["latency_measurement"] = {"id": answers.measurement, "remeasure": opts.remeasure_latency,
                                                    "of": measured_on}
    outcomes: list[TaskOutcome] = []
    # wall time per task (cache hits make a resumed task fast: see model_calls / cache_hits)
    seconds: dict[str, float] = {"model_load": round(time.monotonic() - t_start, 2)}
    try:
        # Streaming (latency) tasks first, so that their first request is the model's real cold start.
        for task in sorted(plan.tasks, key=lambda t: t.kind != "stream"):
            t_task = time.monotonic()
            missing = missing_capability(task, plan.model_cls)
            if online_only(task, opts):
                out = TaskOutcome(task.name, "skipped: online-only dataset (run with --online)")
            elif missing:
                out = TaskOutcome(task.name, f"skipped: capability {missing} missing")
            elif task.kind == "lm_eval":
                elsewhere = lm_eval_elsewhere(plan.tasks, task, opts)
                out = (TaskOutcome(task.name, elsewhere) if elsewhere
                       else run_lm_eval_task(task, model, answers.fingerprint, opts))
            else:
                try:
                    out = run_generate_task(task, plan.docs[task.name], answers, scoring, opts, run_dir)
                except UsageError:
                    raise  # the adapter's set-up mistake: the CLI's one line, exit 2
                except Exception as e:  # one broken task must not take the others down
                    traceback.print_exc(file=sys.stderr)
                    out = TaskOutcome(task.name, f"error: {error_text(e)}")
            if out.status == "ok" and opts.log_samples and out.records:
                f = run_dir / f"samples_{safe_name(out.name)}.jsonl"  # written as each task ends
                write_samples(f, out.records)
                results["samples_files"][out.name] = str(f.relative_to(model_dir))
            outcomes.append(out)
            seconds[out.name] = round(time.monotonic() - t_task, 2)
            if task.name in answers.batch_sizes:
                results["config"].setdefault("batch_sizes", {})[task.name] = answers.batch_sizes[task.name]
            print_outcome(out)
            if task.kind == "stream" and out.cache_hits:
                print(f"{task.name}: {out.cache_hits} of {len(out.records)} timings are this machine's earlier "
                      "measurement of the same model, code and settings (--remeasure-latency measures again)")
            # the finished tasks so far, readable if the run is killed before the end
            write_results(run_dir / PROGRESS_FILE, filled(results, outcomes, seconds, t_start, finished=False))
    finally:
        cache.close()

    path = write_results(model_dir / f"{stamp}.json", filled(results, outcomes, seconds, t_start, finished=True))
    (run_dir / PROGRESS_FILE).unlink(missing_ok=True)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
    if fresh_measurement is not None:
        fresh_measurement.unlink(missing_ok=True)
    return RunResult(results, path, exit_code(outcomes), outcomes)


def lm_eval_elsewhere(tasks: list[TaskConfig], task: TaskConfig, opts: RunOptions) -> str | None:
    """Why this run leaves an lm_eval task (run whole) to another of its parts; None: it runs it."""
    if opts.lm_eval_tasks is not None:  # a --processes part: the queue named its lm_eval tasks
        return None if task.name in opts.lm_eval_tasks else "skipped: lm_eval tasks run whole, this one in another part"
    home = lm_eval_shard(tasks, task, opts.shard[1]) if opts.shard else 0
    return None if not opts.shard or opts.shard[0] == home else \
        f"skipped: lm_eval tasks run whole, this one on shard {home}"


def lm_eval_shard(tasks: list[TaskConfig], task: TaskConfig, n: int) -> int:
    """The shard that runs an lm_eval task whole: they are dealt round the shards in the
    plan's order, so that side-by-side shards share them (MMLU on one, BBH on another)."""
    return [t.name for t in tasks if t.kind == "lm_eval"].index(task.name) % n


def filled(results: dict[str, Any], outcomes: list[TaskOutcome], seconds: dict[str, float], t_start: float,
            finished: bool) -> dict[str, Any]:
    """`results` with the outcomes' statuses, metrics and timings entered."""
    for out in outcomes:
        results["status"][out.name] = out.status
        if out.status == "ok":
            results["results"][out.name] = out.metrics
            if out.info.get("asr"):
                results["asr"] = out.info["asr"]
            if {k: v for k, v in out.info.items() if k != "asr"}:
                results.setdefault("scoring_info", {})[out.name] = {k: v for k, v in out.info.items() if k != "asr"}
    results["run"] = {"model_calls": sum(o.model_calls for o in outcomes),
                      "cache_hits": sum(o.cache_hits for o in outcomes),
                      "seconds": {**seconds, "total": round(time.monotonic() - t_start, 2)},
                      "shared_cache": shared_cache_record(outcomes, results["config"].get("shared_cache")),
                      "finished": finished}
    return results

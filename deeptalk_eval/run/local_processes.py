"""`--processes N`: one evaluation spread over this machine's cores, as N worker processes
whose parts are merged into one results file.

A spoken answer is decoded one small step at a time: a second torch thread in the same process
buys little (T2S on the shipped reference, 32 answers, 2 cores: 71.0 s with 2 threads, 73.1 s
with 1), while two processes on one core each took 47.3 s (docs/harness.md "Processes"). So
each worker is `deeptalk-eval ... --work-queue Q` pinned to its share of the cores, with that
many torch threads: it loads the model once and answers the parts of the run (slices of the
samples, the lm_eval tasks riding on the first ones) as it comes free, biggest first
(`deeptalk_eval.run.work_queue`). The streaming (latency) tasks then run in one more child
alone on every core, since a time to first audio measured beside another process's decoding
is not the model's. The parent merges the parts into one results file, named like a plain
run's, and the samples in dataset order: the figures are an unsharded run's
(`deeptalk_eval.run.merge`).

Each part writes its own results file (`<stamp>_shard<r>of<m>.json`), each worker its log
(`<stamp>_worker<i>.log`), beside the merged file; they share the response cache, so a killed
run resumes with the same command.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from deeptalk_eval.errors import UsageError
from deeptalk_eval.results import safe_name, timestamp
from deeptalk_eval.run.merge import merge
from deeptalk_eval.run.options import RunOptions
from deeptalk_eval.run.outcome import RunResult
from deeptalk_eval.run.work_queue import claimed_by, claims_dir, guided_parts, write_queue

USAGE_PREFIX = "deeptalk-eval: error: "


def without_option(argv: list[str], name: str) -> list[str]:
    """argv less `name VALUE` / `name=VALUE`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def core_groups(n: int) -> list[list[int]]:
    """The cores this process may use (its affinity, no more than OMP_NUM_THREADS when that is
    set), dealt into n groups; every child gets at least one."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    limit = os.environ.get("OMP_NUM_THREADS", "")
    if limit.isdigit() and 0 < int(limit) < len(cores):
        cores = cores[: int(limit)]
    return [cores[i::n] or [cores[i % len(cores)]] for i in range(n)]


def _show(pipe, log: Path) -> None:
    """A child's stderr (its progress bars) on ours and in its log; its one-line user error
    is left to the parent, which says it once for the whole run."""
    with log.open("ab") as f:
        for chunk in iter(lambda: pipe.read1(65536), b""):
            f.write(chunk)
            f.flush()
            text = chunk.decode(errors="replace")
            sys.stderr.write("".join(x for x in text.splitlines(keepends=True) if not x.startswith(USAGE_PREFIX)))
            sys.stderr.flush()


@dataclass
class Child:
    proc: subprocess.Popen
    log: Path
    results: Path | None  # the results file it writes when it finishes (exit 0 or 1); None: a worker's parts
    shown: bool  # its stderr reaches ours

    def crashed(self) -> bool:
        rc = self.proc.poll()
        return rc is not None and rc != 2 and (
            rc not in (0, 1) or (self.results is not None and not self.results.is_file()))


def _start(argv: list[str], cores: list[int], log: Path, results: Path | None, progress: bool) -> Child:
    env = dict(os.environ, OMP_NUM_THREADS=str(len(cores)), MKL_NUM_THREADS=str(len(cores)))
    with log.open("ab") as f:  # the child keeps its own descriptor
        p = subprocess.Popen([sys.executable, "-m", "deeptalk_eval", *argv, "--processes", "1"], env=env, stdout=f,
                             stderr=subprocess.PIPE if progress else subprocess.STDOUT)
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(p.pid, cores)
        except ProcessLookupError:  # it ended already: _wait reads how
            pass
    if progress:
        threading.Thread(target=_show, args=(p.stderr, log), daemon=True).start()
    return Child(p, log, results, progress)


def _stop(children: list[Child]) -> None:
    for c in children:
        if c.proc.poll() is None:
            c.proc.terminate()
    for c in children:
        c.proc.wait()


def _wait(children: list[Child]) -> int:
    """Wait for every child and return the highest exit status (0 or 1). A user mistake in one
    stops the others and becomes this run's one line; so does a crash, with its log's tail."""
    try:
        while True:
            for c in children:
                if c.proc.poll() == 2:
                    _stop(children)
                    lines = [x for x in c.log.read_text(errors="replace").splitlines() if x.startswith(USAGE_PREFIX)]
                    raise UsageError(lines[-1][len(USAGE_PREFIX):] if lines else f"a child run failed: see {c.log}")
                if c.crashed():  # a bug: its traceback is in its log
                    _stop(children)
                    if not c.shown:
                        print("\n".join(c.log.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr)
                    raise RuntimeError(f"a child run exited with {c.proc.returncode}: its log is {c.log}")
            if all(c.proc.poll() is not None for c in children):
                return max(c.proc.returncode for c in children)
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(children)
        raise


def _remove_queue(queue: Path) -> None:
    queue.unlink(missing_ok=True)
    claims = claims_dir(queue)
    if claims.is_dir():
        for f in claims.iterdir():
            f.unlink()
        claims.rmdir()


def run_in_processes(argv: list[str], opts: RunOptions, n: int, streaming: bool, others: bool,
                     lm_eval: list[str]) -> RunResult:
    """`argv`: the run's command line. `streaming` / `others`: whether the run has streaming
    tasks / other tasks; `lm_eval`: its lm_eval tasks (from the parent's checked plan)."""
    stamp, t0 = timestamp(), time.monotonic()
    folder = opts.output_dir / safe_name(opts.model_label)
    folder.mkdir(parents=True, exist_ok=True)
    base = without_option(without_option(argv, "--processes"), "--shard")
    base = ["run", *(base[1:] if base[:1] == ["run"] else base), "--run-stamp", stamp]
    results: list[Path] = []
    code = 0
    groups = core_groups(n)
    run_info: dict = {"processes": n, "cores": groups}
    sequential: list[list[int]] = []
    if others:
        parts = guided_parts(n, lm_eval)
        queue = folder / f"{stamp}_parts.json"
        write_queue(queue, parts)
        try:
            workers = []
            for i, cores in enumerate(groups):
                child = [*base, "--stream-tasks", "skip", "--work-queue", str(queue)] + (
                    [] if i == 0 else ["--no-progress"])
                workers.append(_start(child, cores, folder / f"{stamp}_worker{i}.log", None,
                                      progress=i == 0 and opts.progress))
            code = _wait(workers)
            by_pid = {str(w.proc.pid): i for i, w in enumerate(workers)}
            owner = {k: by_pid.get(pid) for k, pid in claimed_by(queue).items()}
        finally:  # the queue is the run's working state, not a result: gone however the workers ended
            _remove_queue(queue)
        results = [folder / f"{stamp}_shard{p.shard[0]}of{p.shard[1]}.json" for p in parts]
        missing = [r.name for k, r in enumerate(results) if k not in owner or not r.is_file()]
        if missing:
            raise RuntimeError(f"parts without results: {', '.join(missing)}; the workers' logs are "
                               f"{folder}/{stamp}_worker*.log")
        sequential = [[k for k in range(len(parts)) if owner[k] == i] for i in range(n)]
        run_info["parts"] = [dict(p.to_dict(), worker=owner[k]) for k, p in enumerate(parts)]
    if streaming:  # alone on every core the workers had
        out = folder / f"{stamp}_stream.json"
        every = sorted({c for g in groups for c in g})
        code = max(code, _wait([_start([*base, "--stream-tasks", "only", "--log-samples"], every,
                                       out.with_suffix(".log"), out, opts.progress)]))
        results.insert(0, out)  # first, as a plain run does them
        sequential = [[k + 1 for k in ks] for ks in sequential] + [[0]]
    run_info["total_seconds"] = round(time.monotonic() - t0, 2)
    result = merge(folder / f"{stamp}.json", results, run_info=run_info, sequential=sequential or None)
    result.exit_code = max(result.exit_code, code)
    return result

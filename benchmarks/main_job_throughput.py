"""How the main job best uses a small CPU: threads, processes and decoding batch, measured on
real tasks through the real CLI.

Each configuration is one `deeptalk-eval` command on the same tasks and samples, into its own
fresh output folder (no answer is read from a response cache; the shared TTS and transcript
caches are left on, as in the main job, so every configuration pays the same for them). Wall
time is the whole command's (model loading included); `task_seconds` are the run's own
`run.seconds`. The answers of every configuration are compared with the first one's, sample
by sample (text, and the sha256 of spoken answers): a faster setting that answers
differently is reported as such. The 1-minute load average before and after is recorded: a
figure taken beside other work is not a speed.

    .venv/bin/python benchmarks/main_job_throughput.py --tasks spoken_qa_factoid_t2s --limit 24 \\
        --configs threads2,threads1,processes2 --out benchmarks/results/processes_t2s.json
    .venv/bin/python benchmarks/main_job_throughput.py --tasks spoken_qa_factoid_t2s --limit 32 \\
        --configs batch8,batch16,batch32 --out benchmarks/results/batch_size_t2s.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> (extra CLI arguments, torch threads, cores the command may use)
CONFIGS = {
    "threads1": ([], 1, 1),
    "threads2": ([], 2, 2),
    "processes2": (["--processes", "2"], 1, 2),
    "batch8": (["--batch-size", "8"], 1, 1),
    "batch16": (["--batch-size", "16"], 1, 1),
    "batch32": (["--batch-size", "32"], 1, 1),
}


def answers(out: Path) -> dict[str, dict[str, tuple]]:
    """task -> sample id -> (text, sha256 of the spoken answer) of the run's whole results file."""
    from deeptalk_eval.results import latest_results

    path = latest_results(next(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")))
    res = json.loads(path.read_text())
    got = {}
    for task, rel in res["samples_files"].items():
        got[task] = {}
        for line in (path.parent / rel).read_text().splitlines():
            r = json.loads(line)
            o = r.get("output") or {}
            got[task][r["id"]] = (o.get("text"), (o.get("audio") or {}).get("sha256"))
    return got


def run(name: str, args: argparse.Namespace, root: Path) -> dict:
    extra, threads, cores = CONFIGS[name]
    out = root / name
    margs = [a for a in (f"path={args.path}" if args.path else "", args.model_args) if a]
    if "--processes" not in extra:  # --processes gives each child the threads of its cores
        margs.insert(0, f"threads={threads}")
    cmd = [sys.executable, "-m", "deeptalk_eval", "--model", args.model, "--tasks", args.tasks,
           "--limit", str(args.limit), "--seed", "0", "--log-samples", "--no-progress", "--output-dir", str(out),
           *(["--model-args", ",".join(margs)] if margs else []), *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, set(range(cores))))
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    from deeptalk_eval.results import latest_results

    res = json.loads(latest_results(next(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")))
                     .read_text())
    return {"config": name, "command": cmd[2:], "torch_threads": threads, "cores": cores,
            "wall_seconds": round(wall, 1), "task_seconds": res["run"].get("seconds"),
            "load_avg_1min_before": round(load0, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
            "_answers": answers(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="deeptalk")
    ap.add_argument("--path", default=None, help="checkpoint (model arg path=); default the shipped one")
    ap.add_argument("--model-args", default="")
    ap.add_argument("--tasks", default="spoken_qa_factoid_t2s")
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--configs", default="threads2,threads1,processes2")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; known: {sorted(CONFIGS)}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(n, args, Path(tmp)) for n in names]
    first = rows[0]["_answers"]
    for r in rows:
        a = r.pop("_answers")
        r["answers_differing_from_first"] = {t: sum(a[t].get(i) != v for i, v in first[t].items()) for t in first}
        r["samples"] = {t: len(v) for t, v in a.items()}
    report = {"benchmark": "main_job_throughput", "model": args.model, "path": args.path, "tasks": args.tasks,
              "limit": args.limit, "cpu_cores": len(os.sched_getaffinity(0)), "date": time.strftime("%Y-%m-%d"),
              "configs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for r in rows:
        print(f"{r['config']:>11}: {r['wall_seconds']:7.1f} s wall, tasks {r['task_seconds']}, "
              f"differing {r['answers_differing_from_first']}, load {r['load_avg_1min_before']}")


if __name__ == "__main__":
    main()

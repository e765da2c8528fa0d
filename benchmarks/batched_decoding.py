"""What `--batch-size` buys the deeptalk adapter on spoken answers, through the real runner.

The same command with batch size 1 and B (fresh output folders, so nothing comes from a
cache): wall seconds per task from the results' `run.seconds`, and whether the figures and
every answer's text and token counts agree (batched greedy decoding is one-by-one decoding
up to float summation order).

    python benchmarks/batched_decoding.py [--tasks spoken_qa_factoid_s2s] [--limit 8]
        [--batch-sizes 1 8] [--threads 1] [--out benchmarks/results/batched_decoding.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from deeptalk_eval.results import atomic_write_text, hardware_info, read_samples
from deeptalk_eval.run.loop import run
from deeptalk_eval.run.options import RunOptions
from deeptalk_eval.run.plan import prepare


def one_run(tasks: list[str], limit: int, batch_size: int, threads: int, out: Path) -> dict:
    opts = RunOptions(model="deeptalk", model_args={"threads": threads}, tasks=",".join(tasks), limit=limit,
                      batch_size=batch_size, output_dir=out, log_samples=True)
    res = run(prepare(opts))
    answers, decoded_together = {}, 0
    for task, rel in res.results["samples_files"].items():
        for rec in read_samples(res.path.parent / rel):
            o = rec.get("output") or {}
            answers[f"{task}/{rec['id']}"] = (o.get("text"), o.get("tokens"))
            decoded_together += (o.get("extra") or {}).get("batch", 1) > 1
    metrics = {t: {k: v for k, v in m.items() if isinstance(v, float) and not k.endswith(("_stderr", "_ci"))}
               for t, m in res.results["results"].items()}
    return {"seconds": res.results["run"]["seconds"], "metrics": metrics, "answers": answers,
            "decoded_together": decoded_together}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["spoken_qa_factoid_s2s"])
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/batched_decoding.json")
    args = p.parse_args()
    runs = {}
    for bs in args.batch_sizes:
        with tempfile.TemporaryDirectory() as d:
            runs[bs] = one_run(args.tasks, args.limit, bs, args.threads, Path(d))
        print(f"batch size {bs}: {runs[bs]['seconds']}")
    ref = runs[args.batch_sizes[0]]
    report = {
        "command": "python benchmarks/batched_decoding.py " + " ".join(
            [f"--tasks {' '.join(args.tasks)}", f"--limit {args.limit}",
             f"--batch-sizes {' '.join(map(str, args.batch_sizes))}", f"--threads {args.threads}"]),
        "hardware": hardware_info(),
        "runs": {str(bs): {"seconds": r["seconds"], "metrics": r["metrics"], "decoded_together": r["decoded_together"]}
                 for bs, r in runs.items()},
        "speedup_vs_first": {str(bs): round(ref["seconds"]["total"] / r["seconds"]["total"], 2) for bs, r in runs.items()},
        "answers_identical": {str(bs): sum(r["answers"][k] == ref["answers"].get(k) for k in r["answers"])
                              for bs, r in runs.items()},
        "answers": len(ref["answers"]),
        "metrics_identical": {str(bs): r["metrics"] == ref["metrics"] for bs, r in runs.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out), json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("speedup_vs_first", "answers_identical", "metrics_identical")}))


if __name__ == "__main__":
    main()

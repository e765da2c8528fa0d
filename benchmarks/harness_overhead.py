"""The harness's own cost per sample, measured with a model that does nothing.

A no-op adapter answers instantly, so all time spent is the harness's: building requests,
the response cache (one SQLite commit per sample), scoring, aggregation with bootstrap CIs
and writing results. Three runs of N samples through the real runner:

  cold    empty cache: every sample generated and committed
  cached  the same command again: every response read from the cache
  logged  cold with --log-samples (per-sample JSONL)

    python benchmarks/harness_overhead.py [--samples 2000] [--out benchmarks/results/harness_overhead.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from deeptalk_eval.api import Capabilities, Response, SpokenModel
from deeptalk_eval.results import atomic_write_text, hardware_info
from deeptalk_eval.run.loop import run
from deeptalk_eval.run.options import RunOptions
from deeptalk_eval.run.plan import prepare
from deeptalk_eval.scoring.base import register_scorer, scorer_names

TASK = """task: noop_overhead
version: 1
dataset: {path: docs.jsonl, id_field: id}
input: {modality: text, text_field: q}
output: text
scorers: [{name: noop_len}]
metrics: [{name: len, aggregation: mean}]
"""


class NoOpModel(SpokenModel):
    """Returns the prompt as the answer, without any work."""

    capabilities = Capabilities(text_in=True, text_out=True)

    def generate(self, requests):
        return [Response(text=r.text) for r in requests]


if "noop_len" not in scorer_names():
    @register_scorer("noop_len")
    def noop_len(sample, ctx):
        # the cheapest honest scorer: the harness, not the scorer, is measured
        return {"len": float(len(sample.channel_text or ""))}


def timed_run(opts: RunOptions) -> tuple[float, dict]:
    t0 = time.perf_counter()
    result = run(prepare(opts))
    return time.perf_counter() - t0, result.results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "harness_overhead.json")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "tasks").mkdir()
        (tmp / "tasks" / "noop.yaml").write_text(TASK)
        (tmp / "tasks" / "docs.jsonl").write_text(
            "".join(json.dumps({"id": f"s{i:06d}", "q": f"question number {i}"}) + "\n" for i in range(args.samples)))

        def opts(out: str, log: bool) -> RunOptions:
            return RunOptions(model_path=f"{Path(__file__).resolve()}:NoOpModel", tasks="noop_overhead",
                              include_paths=[str(tmp / "tasks")], output_dir=tmp / out, log_samples=log,
                              batch_size=args.batch_size, progress=False)

        warm_up = opts("warm", False)
        warm_up.limit = 10
        run(prepare(warm_up))  # one-off imports and set-up are not per-sample overhead
        timings = {}
        timings["cold"], res = timed_run(opts("a", False))
        assert res["results"]["noop_overhead"]["samples"] == args.samples
        timings["cached"], res2 = timed_run(opts("a", False))
        assert res2["run"]["cache_hits"] == args.samples
        timings["logged"], _ = timed_run(opts("b", True))

    report = {
        "samples": args.samples,
        "batch_size": args.batch_size,
        "seconds_total": {k: round(v, 3) for k, v in timings.items()},
        "ms_per_sample": {k: round(1000 * v / args.samples, 3) for k, v in timings.items()},
        "note": "no-op model: all time is the harness's (requests, SQLite cache commit per sample, "
                "scoring, bootstrap aggregation, results writing), after a warm-up run that pays the one-off imports",
        "python": platform.python_version(),
        "hardware": hardware_info(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ms_per_sample"]), f"-> {args.out}")


if __name__ == "__main__":
    main()

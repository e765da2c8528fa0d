"""Compare two results files metric by metric, and their per-sample outputs.

    python benchmarks/compare_results.py BEFORE.json AFTER.json [--out report.json]

Prints, per task, whether every metric is identical; for tasks whose figures are timings
(latency: they differ between any two runs) it says so rather than calling them changed.
With `--log-samples` runs it also compares each sample's text output and audio hash.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

TIMING_WORDS = ("ttfa", "rtf", "seconds", "latency", "first_audio", "first_text", "wall", "_ms", "per_s")


def is_timing(task: str, metric: str) -> bool:
    return task.startswith("latency") or any(w in metric for w in TIMING_WORDS)


def same(a, b) -> bool:
    """Equal values, NaN equal to NaN, through lists and dicts."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def samples(results_path: Path, task: str) -> dict[str, dict]:
    folder = results_path.parent / results_path.stem
    path = folder / f"samples_{task}.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        resp = r.get("output") or {}
        audio = resp.get("audio") or {}
        out[str(r.get("id"))] = {"text": resp.get("text"), "audio": audio.get("sha256"),
                                 "transcripts": r.get("transcripts"), "error": r.get("error")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    old, new = json.loads(a.before.read_text()), json.loads(a.after.read_text())
    report = {"before": str(a.before), "after": str(a.after), "tasks": {}}
    for task in sorted(set(old["results"]) | set(new["results"])):
        m0, m1 = old["results"].get(task, {}), new["results"].get(task, {})
        diff = {k: [m0.get(k), m1.get(k)] for k in sorted(set(m0) | set(m1)) if not same(m0.get(k), m1.get(k))}
        quality = {k: v for k, v in diff.items() if not is_timing(task, k)}
        s0, s1 = samples(a.before, task), samples(a.after, task)
        outputs = sorted(i for i in set(s0) | set(s1) if s0.get(i) != s1.get(i))
        report["tasks"][task] = {"metrics_identical": not quality, "timing_metrics_differing": len(diff) - len(quality),
                                 "changed": quality, "samples_compared": len(set(s0) & set(s1)),
                                 "samples_differing": outputs}
        mark = "identical" if not quality and not outputs else "CHANGED"
        print(f"{task:40s} {mark:9s} timings differing {len(diff) - len(quality):3d}  samples "
              f"{len(set(s0) & set(s1))} compared, {len(outputs)} differ")
    report["all_identical"] = all(t["metrics_identical"] and not t["samples_differing"]
                                  for t in report["tasks"].values())
    print("all non-timing metrics and sample outputs identical" if report["all_identical"] else "differences found")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

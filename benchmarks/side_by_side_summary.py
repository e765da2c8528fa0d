"""Sum up a benchmarks/side_by_side.sh folder: each side's wall time and task seconds, and per
task how many samples have the same text, audio hash and metrics, and which legs the new side's
answers read back (`extra.reused`, the cascade's memo).

    python benchmarks/side_by_side_summary.py runs/ab/cascade_memo --out benchmarks/results/cascade_memo/cascade_memo.json
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path


def side(folder: Path, name: str) -> tuple[dict, dict[str, dict[str, dict]]]:
    results = sorted((folder / f"out-{name}").glob("*/*.json"))[-1]
    d = json.loads(results.read_text())
    wall = re.search(r"Elapsed.*: (\S+)", (folder / f"{name}.time.txt").read_text()).group(1)
    samples = {}
    for f in (results.parent / results.stem).glob("samples_*.jsonl"):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        samples[f.stem.removeprefix("samples_")] = {r["id"]: r for r in rows}
    return {"results_file": str(results), "wall": wall, "seconds": d["run"]["seconds"]}, samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    (old, old_samples), (new, new_samples) = side(args.folder, "old"), side(args.folder, "new")
    tasks = {}
    for task, a in old_samples.items():
        b = new_samples[task]

        def same(field, a=a, b=b):
            return sum(field(a[k]) == field(b[k]) for k in a)

        tasks[task] = {
            "n": len(a),
            "same_text": same(lambda r: r["output"].get("text")),
            "same_audio_sha256": same(lambda r: (r["output"].get("audio") or {}).get("sha256")),
            "same_metrics": same(lambda r: r["metrics"]),
            "reused_legs_new": dict(Counter(",".join((r["output"].get("extra") or {}).get("reused", [])) or "none"
                                            for r in b.values())),
        }
    out = {"folder": str(args.folder), "sides": {"old": old, "new": new}, "samples": tasks}
    args.out.write_text(json.dumps(out, indent=1))
    for name, s in out["sides"].items():
        print(name, s["wall"], s["seconds"])
    for task, t in tasks.items():
        print(task, t)


if __name__ == "__main__":
    main()

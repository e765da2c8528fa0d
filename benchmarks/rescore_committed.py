"""Re-score every committed results file with the current tree and compare its metrics.

    python benchmarks/rescore_committed.py [--out benchmarks/results/house/rescore_committed.json]

For each measured run under results/ (not results/reported/), runs
`deeptalk-eval --rescore FILE` into a temporary folder and compares every task's metrics
with the committed ones, value by value. A task whose inputs cannot be re-scored (its
logged audio is not committed) is reported with the reason, never counted as identical.
A refactor that leaves behaviour unchanged leaves every re-scorable metric identical.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from compare_results import same  # noqa: E402  (a sibling script)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/house/rescore_committed.json")
    a = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {"commit": commit, "files": []}
    files = sorted(p for p in (REPO / "results").glob("*/*.json") if p.parent.name != "reported")
    for f in files:
        old = json.loads(f.read_text())
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run([sys.executable, "-m", "deeptalk_eval", "--rescore", str(f), "--output-dir", tmp],
                                  cwd=REPO, capture_output=True, text=True)
            new_files = sorted(Path(tmp).rglob("*.json"))
            new = next((json.loads(p.read_text()) for p in new_files if "results" in json.loads(p.read_text())), None)
        entry = {"file": str(f.relative_to(REPO)), "exit": done.returncode, "tasks": {}}
        if new is None:
            entry["error"] = ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]
            entry["tasks"] = {task: f"not re-scored: {entry['error']}" for task in old["results"]}
        else:
            for task, metrics in old["results"].items():
                got = new["results"].get(task)
                status = new.get("status", {}).get(task)
                if got is None:
                    entry["tasks"][task] = f"not re-scored ({status})"
                else:
                    entry["tasks"][task] = "identical" if same(metrics, got) else {
                        k: [metrics.get(k), got.get(k)] for k in sorted(set(metrics) | set(got))
                        if not same(metrics.get(k), got.get(k))}
        report["files"].append(entry)
        print(f"{entry['file']}: exit {done.returncode}, "
              + ", ".join(f"{t}: {s if isinstance(s, str) else 'DIFFERENT'}" for t, s in entry["tasks"].items()),
              flush=True)
    tasks = [s for e in report["files"] for s in e["tasks"].values()]
    report["identical"] = sum(s == "identical" for s in tasks)
    report["different"] = sum(isinstance(s, dict) for s in tasks)
    report["not_rescored"] = sum(isinstance(s, str) and s != "identical" for s in tasks)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"identical {report['identical']}, different {report['different']}, not re-scored {report['not_rescored']}")


if __name__ == "__main__":
    main()

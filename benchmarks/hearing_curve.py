"""S2T against training minutes: each saved CTC projector of a hearing run, grafted onto a
checkpoint and measured by the harness on a task the training never saw.

    python benchmarks/hearing_curve.py --run runs/hearing/long --checkpoint checkpoints/reference \
        --tasks gk_dev_s2t --limit 200 --out benchmarks/results/hearing_curve.json

For every `projector-<step>.pt` in --run (or the --steps given) it writes a checkpoint with
benchmarks/graft_projector.py, runs `deeptalk-eval` on --tasks (greedy, seed 0, one thread)
and collects the metrics beside the run's CTC dev WER (curve.csv) at that step.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "reference")
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--whisper", default=None, help="the encoder the projectors were trained on (default: the checkpoint's)")
    ap.add_argument("--steps", type=int, nargs="*", help="default: every saved projector")
    ap.add_argument("--tasks", default="gk_dev_s2t")
    ap.add_argument("--include-path", default=str(ROOT / "benchmarks" / "tasks" / "general_knowledge_dev"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "hearing-curve")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    curve = {int(r["step"]): r for r in csv.DictReader((a.run / "curve.csv").open())}
    snaps = sorted(a.run.glob("projector-*.pt"))
    if a.steps:
        snaps = [s for s in snaps if int(s.stem.split("-")[1]) in a.steps]
    rows = json.loads(a.out.read_text())["rows"] if a.out.is_file() else []
    done = {r["step"] for r in rows}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for snap in snaps:
        step = int(snap.stem.split("-")[1])
        if step in done:
            continue
        ckpt = a.work / f"step-{step:06d}"
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "graft_projector.py"), "--checkpoint",
                        str(a.checkpoint), "--projector", str(snap), "--stride", str(a.stride), "--out", str(ckpt)]
                       + (["--whisper", a.whisper] if a.whisper else []),
                       check=True, env=env)
        out_dir = a.work / f"eval-{step:06d}"
        cmd = [str(ROOT / ".venv" / "bin" / "deeptalk-eval"), "--model", "deeptalk", "--model-args",
               f"path={ckpt},threads=1", "--include-path", a.include_path, "--tasks", a.tasks, "--log-samples",
               "--output-dir", str(out_dir)] + (["--limit", str(a.limit)] if a.limit else [])
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        result = json.loads(sorted((out_dir / "deeptalk").glob("*.json"))[-1].read_text())
        metrics = {t: {k: v for k, v in r.items() if not k.endswith(("_stderr", "_ci", "_n"))}
                   for t, r in result["results"].items()}
        c = curve.get(step, {})
        rows.append({"step": step, "train_minutes": float(c.get("minutes", "nan")),
                     "utterances": int(c.get("utterances", 0)), "ctc_dev_wer": float(c.get("dev_wer", "nan")),
                     "metrics": metrics, "eval_seconds": round(time.monotonic() - t0, 1),
                     "results_file": str(sorted((out_dir / "deeptalk").glob("*.json"))[-1])})
        rows.sort(key=lambda r: r["step"])
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"command": " ".join(sys.argv), "run": str(a.run), "checkpoint": str(a.checkpoint),
                                     "tasks": a.tasks, "limit": a.limit, "threads": 1,
                                     "load_average": os.getloadavg(), "rows": rows}, indent=1))
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()

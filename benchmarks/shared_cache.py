"""What the shared cache saves: the ASR noise floor run cold, then again for another run.

Two runs of the same command, each into a fresh output folder (so the per-run response
cache never helps), against one fresh DEEPTALK_CACHE: the first synthesises and transcribes
every gold answer, the second reads them from the shared cache. Whisper's converted weights
and the base LLM are linked in from the usual cache (assets, not work the cache saves).

    python benchmarks/shared_cache.py [--limit 30] [--model cascade] [--out benchmarks/results/shared_cache.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deeptalk_common.paths import cache_dir
from deeptalk_eval.results import atomic_write_text, hardware_info

REPO = Path(__file__).resolve().parent.parent
TASK = "spoken_qa_asr_noise_floor"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, dict, list[float]]:
    """Wall seconds of the command, its results and the load average as it started."""
    load = list(os.getloadavg())
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = Path(cmd[cmd.index("--output-dir") + 1])
    (path,) = out.glob("*/*.json")
    return wall, json.loads(path.read_text()), [round(x, 2) for x in load]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cascade")
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "shared_cache.json")
    args = p.parse_args()

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shared = tmp / "shared"
        shared.mkdir()
        for asset in ("whisper", "base_llm"):
            if (cache_dir() / asset).is_dir():
                (shared / asset).symlink_to(cache_dir() / asset)
        env = {**os.environ, "DEEPTALK_CACHE": str(shared), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("DEEPTALK_NO_SHARED_CACHE", None)
        env.setdefault("OMP_NUM_THREADS", "1")
        for name in ("cold", "second"):
            cmd = [str(Path(sys.executable).with_name("deeptalk-eval")), "--model", args.model, "--tasks", TASK,
                   "--limit", str(args.limit), "--output-dir", str(tmp / name), "--no-progress"]
            wall, results, load = timed(cmd, env)
            runs[name] = {"wall_seconds": round(wall, 2), "load_average_at_start": load,
                          "run_seconds": results["run"]["seconds"],
                          "shared_cache": results["run"]["shared_cache"]["tasks"].get(TASK),
                          "model_calls": results["run"]["model_calls"],
                          "metrics": {k: v for k, v in results["results"][TASK].items() if k.startswith("floor_")
                                      and not k.endswith(("_ci", "_stderr", "_n"))}}
        assert runs["cold"]["metrics"] == runs["second"]["metrics"], "the second run changed the figures"

    report = {
        "command": f"deeptalk-eval --model {args.model} --tasks {TASK} --limit {args.limit} "
                   "--output-dir <fresh folder per run> --no-progress",
        "setup": "one fresh DEEPTALK_CACHE for both runs (Whisper weights and base LLM linked in); "
                 "wall_seconds includes interpreter start, model load and the task",
        "runs": runs,
        "saved_seconds": round(runs["cold"]["wall_seconds"] - runs["second"]["wall_seconds"], 2),
        "threads": {"OMP_NUM_THREADS": env["OMP_NUM_THREADS"]},
        "hardware": hardware_info(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v["wall_seconds"] for k, v in runs.items()}), f"-> {args.out}")


if __name__ == "__main__":
    main()

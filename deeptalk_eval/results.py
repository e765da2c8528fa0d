"""Results files and per-sample logs.

`<output-dir>/<model>/<timestamp>.json` is a superset of lm-eval's results schema:

    {"results": {task: {metric: v, metric_stderr: s, metric_ci: [lo, hi], metric_n: n,
                        "samples": n, "failed": k, "failure_rate": r, ...}},
     "groups": {group: [tasks]}, "configs": {task: {..., "config_sha256": ...}},
     "versions": {task: version}, "config": {model, model_args, seed, limit, batch_size, shard},
     "environment": {packages, git, hardware}, "asr": {...}, "model_info": {...},
     "stage": ..., "seed": ..., "date": ..., "samples_files": {task: relative path}}

With --log-samples, `<output-dir>/<model>/<timestamp>/samples_<task>.jsonl` holds one
record per sample and `audio/` the wav files the records point to (with their sha256).
Everything is written to a temporary file and renamed, so a kill never leaves half a file.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from deeptalk_eval.cache import to_plain
from deeptalk_eval.errors import UsageError

PACKAGES = ("deeptalk-eval", "torch", "transformers", "lm-eval", "openai-whisper", "faster-whisper",
            "jiwer", "numpy", "datasets", "accelerate")
# Keys of a task's results that vary from run to run by nature (clock readings).
TIMING_WORDS = ("latency", "ttft", "ttfa", "rtf", "time", "first_", "stall", "duration_s", "seconds")


def safe_name(text: str) -> str:
    """A file-name-safe form of a model / task / sample name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def finite(obj: Any) -> Any:
    """NaN / inf are not JSON: they become None ("no value"), as a missing metric is."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(finite(obj), indent=2, sort_keys=False, default=to_plain, allow_nan=False) + "\n"


def write_results(path: Path, results: dict[str, Any]) -> Path:
    atomic_write_text(path, dumps(results))
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = latest_results(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not a readable results file: {e}") from None
    if not isinstance(data, dict) or "results" not in data:
        raise UsageError(f"{path}: not a deeptalk-eval results file (no 'results')")
    data["_path"] = str(path)
    return data


# a shard's results file, or one child's of a `--processes` run: part of a run, not a run
PART_OF_A_RUN = re.compile(r"_(shard\d+of\d+|stream)$")


def latest_results(folder: Path) -> Path:
    """The newest results JSON in a model folder, or in an output folder (timestamps sort as
    text); a whole run's, while there is one."""
    files = sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))
    if not files:  # an output folder: the newest run of any model
        files = sorted((p for p in folder.glob("*/*.json") if not p.name.startswith(".")),
                       key=lambda p: p.name)
    if not files:
        raise UsageError(f"{folder}: no results file")
    whole = [p for p in files if not PART_OF_A_RUN.search(p.stem)]
    return (whole or files)[-1]


def timestamp() -> str:
    """UTC, file-name safe, sorts in time order (microseconds keep two runs apart)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime(now)) + f".{int(now * 1e6) % 1000000:06d}"


def metrics_identity(results: dict[str, Any]) -> dict[str, Any]:
    """The part of a results file that a re-run must reproduce byte for byte: the metrics,
    without clock readings (streamed-task latencies, timing metrics), which differ by nature."""
    out = {}
    for task, metrics in results["results"].items():
        kind = ((results.get("configs", {}).get(task) or {}).get("config") or {}).get("kind")
        keep = {k: v for k, v in metrics.items() if not any(w in k for w in TIMING_WORDS)}
        if kind == "stream":
            keep = {k: v for k, v in keep.items() if k in ("samples", "failed", "failure_rate")}
        out[task] = keep
    return out


# -- per-sample logs ------------------------------------------------------------------


def write_samples(path: Path, records: Iterable[dict[str, Any]]) -> None:
    text = "".join(json.dumps(finite(r), default=to_plain, allow_nan=False) + "\n" for r in records)
    atomic_write_text(path, text)


def read_samples(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UsageError(f"{path}: per-sample log is missing")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{n}: broken sample record: {e.msg}") from None
    return records


def json_safe_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """A doc as JSON (arrays, e.g. a hub dataset's audio, are summarised, not dumped)."""
    out = {}
    for k, v in doc.items():
        if isinstance(v, np.ndarray):
            v = f"<array shape={list(v.shape)} dtype={v.dtype}>"
        elif isinstance(v, dict) and "array" in v:
            v = {kk: (f"<array len={len(vv)}>" if kk == "array" else vv) for kk, vv in v.items()}
        out[str(k)] = v
    return json.loads(json.dumps(out, default=to_plain))


# -- environment ----------------------------------------------------------------------


def git_info(repo: Path | None = None) -> dict[str, Any]:
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"commit": commit or None, "dirty": dirty if commit else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def hardware_info() -> dict[str, Any]:
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
                            "os": platform.platform(), "gpu": None}
    if "torch" in sys.modules:  # only report a GPU when torch is loaded anyway (import is slow)
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            info["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def environment() -> dict[str, Any]:
    versions = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"versions": versions, "git": git_info(), "hardware": hardware_info()}

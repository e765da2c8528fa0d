"""Which measurement streamed (latency) responses belong to: part of their cache key.

A streamed response carries timings, a measurement of one model's code on one machine.
The same command again on the same machine, code and settings replays them from the
response cache like every other answer: the same command twice gives the same figures,
and a warm run does not spend minutes timing what it timed already. Whatever could change
a timing gives a new measurement id, so it is measured again: the CPU, core count and GPU,
the package versions, the source of the harness, of the reference model package and of the
adapter's module, the model args (`threads` included: it is not in the model's
fingerprint, yet it sets the speed) and the device.

`--remeasure-latency` measures afresh whatever the cache holds: the id is then a random
one kept in a file beside the cache until the command completes, so a killed run that is
started again keeps what it had measured.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import uuid
from pathlib import Path
from typing import Any

from deeptalk_eval.results import environment
from deeptalk_eval.run.options import RunOptions

# the packages whose code runs while a request is timed (the adapter's own module is added)
TIMED_PACKAGES = ("deeptalk_eval", "deeptalk", "deeptalk_common")


def source_sha256(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(set(files)):
        data = f.read_bytes()
        h.update(f"{f.name}:{len(data)}|".encode())
        h.update(data)
    return h.hexdigest()


def _timed_sources(model_cls: type) -> list[Path]:
    import importlib

    files: list[Path] = []
    for name in TIMED_PACKAGES:
        try:
            pkg = importlib.import_module(name)
        except ImportError:
            continue
        files += Path(pkg.__file__).parent.rglob("*.py")
    adapter = inspect.getsourcefile(model_cls)
    if adapter:
        files.append(Path(adapter))
    return files


def machine_and_code(opts: RunOptions, model_cls: type) -> dict[str, Any]:
    """What a timing depends on besides the model's fingerprint (recorded in the results)."""
    env = environment()
    hardware = {k: v for k, v in env["hardware"].items() if k != "os"}
    return {"hardware": hardware, "versions": env["versions"], "source_sha256": source_sha256(_timed_sources(model_cls)),
            "model_args": opts.model_args, "device": opts.device}


def measurement_id(opts: RunOptions, model_cls: type, cache_path: Path,
                   shard: str) -> tuple[str, dict[str, Any] | None, Path | None]:
    """(id, what it identifies or None for a fresh one, the file to delete once the command completes or None)."""
    if not opts.remeasure_latency:
        of = machine_and_code(opts, model_cls)
        key = json.dumps(of, sort_keys=True, default=str)
        return "machine:" + hashlib.sha256(key.encode()).hexdigest()[:16], of, None
    fresh = cache_path.with_name(f"{cache_path.stem}{shard}.measurement")
    if not fresh.is_file():
        fresh.write_text(uuid.uuid4().hex)
    return fresh.read_text().strip(), None, fresh

"""`--processes N`: the run cut into parts that N worker processes take as they come free.

A part is a fixed slice of the samples (`--shard r/m`: the samples whose id hashes to r
modulo m) plus the lm_eval tasks it runs whole. Which worker answers a part changes from run
to run; what the part holds never does, and a worker forgets what earlier parts computed
before it starts the next (`SpokenModel.reset_memos`), so every answer is the one a process of
its own would give that part.

The parts shrink as the run goes on (guided scheduling): the first ones a quarter of the
samples each for two workers, the last ones a thirty-second. Big parts first keep the
decoding batches full; small parts last let the worker that got the faster core, or the
lighter parts, take more of the tail, so the workers end close together. A static split of
the samples in two ends when its slower half does: on a machine whose cores run at different
speeds (1.33x measured on this project's 2-core box), or when one half holds the heavier
lm_eval tasks, one core waits for the other for minutes.

Parts are claimed through files made with O_EXCL beside the queue, so no two workers take
the same part and nothing else needs to run.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deeptalk_eval.errors import UsageError


@dataclass(frozen=True)
class Part:
    shard: tuple[int, int]  # the samples whose id hashes to shard[0] modulo shard[1]
    lm_eval: tuple[str, ...] = ()  # the lm_eval tasks this part runs whole

    def to_dict(self) -> dict:
        return {"shard": list(self.shard), "lm_eval": list(self.lm_eval)}


def guided_parts(workers: int, lm_eval_tasks: list[str], smallest: int = 16) -> list[Part]:
    """The parts of a run for `workers` processes, in the order they are claimed.

    Each round halves the slices until one is at most a 2*workers-th of what is left, and
    hands out `workers` of them; once a slice is 1/(smallest*workers) of the whole or less,
    the rest go out as they are. Slices are residue classes (r mod m, m a power of two), so
    together they cover every sample exactly once. The lm_eval tasks, which cannot be split,
    ride on the first parts (the biggest), one each, in the plan's order."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    floor = 1 / (smallest * workers)
    slices, left, shards = [(0, 1)], 1.0, []
    while slices:
        target = left / (2 * workers)
        while 1 / slices[0][1] > max(target, floor) + 1e-12:
            slices = [s for r, m in slices for s in ((r, 2 * m), (r + m, 2 * m))]
        size = 1 / slices[0][1]
        take = slices if size <= floor + 1e-12 else slices[:workers]
        shards += take
        slices = slices[len(take):]
        left -= size * len(take)
    parts = [Part(s) for s in shards]
    for k, name in enumerate(lm_eval_tasks):
        i = k % len(parts)
        parts[i] = Part(parts[i].shard, parts[i].lm_eval + (name,))
    return parts


def covers_once(shards: list[tuple[int, int]]) -> bool:
    """Whether residue classes (r mod m) cover every integer exactly once."""
    if not shards or any(m < 1 or not 0 <= r < m for r, m in shards):
        return False
    period = math.lcm(*(m for _, m in shards))
    if period > 1 << 16:
        return False
    count = [0] * period
    for r, m in shards:
        for x in range(r, period, m):
            count[x] += 1
    return all(c == 1 for c in count)


def write_queue(path: Path, parts: list[Part]) -> None:
    path.write_text(json.dumps({"parts": [p.to_dict() for p in parts]}, indent=1) + "\n")
    claims_dir(path).mkdir(exist_ok=True)


def read_queue(path: Path) -> list[Part]:
    try:
        raw = json.loads(Path(path).read_text())
        return [Part(tuple(p["shard"]), tuple(p["lm_eval"])) for p in raw["parts"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"work queue {path}: unreadable ({e})") from None


def claims_dir(path: Path) -> Path:
    return Path(path).with_suffix(".claims")


def claim_parts(path: Path, worker: str) -> Iterator[tuple[int, Part]]:
    """The parts this worker takes, in queue order: each one no other worker claimed first."""
    folder = claims_dir(path)
    for k, part in enumerate(read_queue(path)):
        try:
            fd = os.open(folder / str(k), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(worker)
        yield k, part


def claimed_by(path: Path) -> dict[int, str]:
    """part index -> the worker that claimed it."""
    folder = claims_dir(path)
    return {int(f.name): f.read_text() for f in folder.iterdir() if f.name.isdigit()} if folder.is_dir() else {}

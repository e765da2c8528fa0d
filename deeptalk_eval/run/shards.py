"""Which samples a run takes: `--limit`, then `--shard i/n` (or one shard per process
under `accelerate launch` / torchrun)."""
from __future__ import annotations

import hashlib
import os
from typing import Any

from deeptalk_eval.errors import UsageError
from deeptalk_eval.run.options import RunOptions
from deeptalk_eval.task_config import TaskConfig
from deeptalk_eval.task_docs import sample_id


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    i, sep, n = text.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        shard = None
    if not sep or shard is None or not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise UsageError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return shard


def shard_from_env() -> tuple[int, int] | None:
    """Under `accelerate launch` / torchrun every process is one shard (RANK of WORLD_SIZE)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else None


def shard_of(sid: str, n: int) -> int:
    """Deterministic shard of a sample id: independent of order, batch size and machine."""
    return int(hashlib.sha256(sid.encode()).hexdigest()[:16], 16) % n


def select_docs(docs: list[dict[str, Any]], task: TaskConfig, opts: RunOptions) -> list[tuple[int, dict]]:
    """(index, doc) after --limit, then --shard: shards of a limited run add up to it."""
    chosen = list(enumerate(docs))[: opts.limit] if opts.limit else list(enumerate(docs))
    if opts.shard:
        i, n = opts.shard
        chosen = [(k, d) for k, d in chosen if shard_of(sample_id(task, d), n) == i]
    return chosen

"""Which examples form each training batch: a seeded order per epoch, optionally grouped by length.

Grouping by length (as transformers' `group_by_length`): the epoch's random order is cut into
mega-batches of 50 batches, each sorted by length, so a batch holds examples of similar length
and padding stops being a third of the work. Every example is still seen once per epoch and the
order depends only on (seed, epoch), so a resumed run replays the same batches.
"""
from __future__ import annotations

import math

import torch

MEGA_BATCHES = 50


def epoch_order(lengths: list[int], batch: int, seed: int, epoch: int, group_by_length: bool) -> list[int]:
    """Example indices for one epoch, `batch` consecutive indices per step (padded by repeating the
    order when there are fewer examples than one batch)."""
    n = len(lengths)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    if group_by_length:
        mega = batch * MEGA_BATCHES
        order = [i for s in range(0, n, mega) for i in sorted(order[s: s + mega], key=lambda i: -lengths[i])]
    return (order * math.ceil(batch / max(n, 1)))[: max(n, batch)]

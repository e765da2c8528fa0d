"""Low-rank training of frozen experts (LoRA, Hu et al. 2021) and low-rank factors for deltas.

The paper's stage 2.2 trains the text experts. Ours are 26 of 30 experts per layer: changed
in full, they would cost ~116 MB in bf16 and break the shipped checkpoint's 64 MB budget.
Trained as `weight + B @ A` (rank r per expert matrix) and merged afterwards, each changed
matrix differs from the base by rank r, and the delta writer (deeptalk/delta.py) stores it
as two thin factors: rank 8 on a 48 x 576 expert matrix is 5 k numbers instead of 28 k.

A stage asks for it with the train group `text_experts_lowrank` and `lowrank_rank: r`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class LowRankDelta(nn.Module):
    """The parametrization W -> W + B A with B = 0 at the start: training begins at W exactly."""

    def __init__(self, out_features: int, in_features: int, rank: int, generator: torch.Generator):
        super().__init__()
        self.a = nn.Parameter(torch.randn(rank, in_features, generator=generator) / in_features ** 0.5)
        self.b = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.b @ self.a).to(weight.dtype)


def _expert_linears(model, modality: str):
    """(layer, expert, projection name, nn.Linear) of every routed expert of `modality`."""
    want = modality == "speech"
    for moe in model.moe_layers:
        if moe.speech_group is None:
            raise ValueError("low-rank expert training needs a modality map; this model has none")
        for e, expert in enumerate(moe.experts):
            if bool(moe.speech_group[e]) == want:
                for name in PROJECTIONS:
                    yield moe.moe_idx, e, name, getattr(expert, name)


def add_lowrank(model, rank: int, seed: int, modality: str = "text") -> list[nn.Parameter]:
    """Parametrize every `modality` expert matrix as W + B A; returns the new (trainable) factors."""
    if rank < 1:
        raise ValueError(f"lowrank_rank must be >= 1, got {rank}")
    gen = torch.Generator().manual_seed(seed)
    params = []
    for _, _, _, lin in _expert_linears(model, modality):
        if parametrize.is_parametrized(lin, "weight"):
            raise ValueError("the experts already carry low-rank factors: merge them first")
        w = lin.weight
        delta = LowRankDelta(w.shape[0], w.shape[1], rank, gen).to(device=w.device, dtype=w.dtype)
        parametrize.register_parametrization(lin, "weight", delta)
        params += [delta.a, delta.b]
    return params


def lowrank_parameters(model, modality: str = "text") -> list[nn.Parameter]:
    """The factors `add_lowrank` registered on the `modality` experts (empty when none)."""
    out = []
    for _, _, _, lin in _expert_linears(model, modality):
        if parametrize.is_parametrized(lin, "weight"):
            for p in lin.parametrizations.weight:
                out += [p.a, p.b]
    return out


def merge_lowrank(model) -> int:
    """Fold every low-rank factor into its weight (plain, frozen tensors again); returns how many."""
    n = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            module.weight.requires_grad_(False)
            n += 1
    return n


@torch.no_grad()
def lowrank_factors(diff: torch.Tensor, max_rank: int, rtol: float = 1e-4):
    """(u [m, r], v [r, n]) with u @ v == diff to a relative Frobenius error <= rtol, for the
    smallest such r <= max_rank; None when `diff` needs a higher rank (or is not finite)."""
    d = diff.detach().float()
    if d.dim() != 2 or max_rank < 1 or not torch.isfinite(d).all():
        return None
    norm = torch.linalg.matrix_norm(d)
    if norm == 0:
        return None
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    # residual of the rank-r truncation: the norm of the singular values after the first r
    tail = s.flip(0).pow(2).cumsum(0).flip(0).sqrt()  # tail[r] = ||s[r:]||
    ok = (tail / norm <= rtol).nonzero()
    r = int(ok[0]) if len(ok) else len(s)
    if r == 0 or r > max_rank:
        return None
    return (u[:, :r] * s[:r]).contiguous(), vh[:r].contiguous()

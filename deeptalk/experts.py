"""Adaptive modality-expert assignment (the paper's step between stage 1 and stage 2.1).

Feed speech-only and text-only batches, count for every MoE layer l and routed expert j the
share of speech tokens whose top-k includes j (rho_A[l, j]) and the same for text tokens
(rho_T[l, j]). The speech experts of layer l are the top-k of rho_A * (1 - rho_T): experts
speech uses a lot and text uses little. The rest are text experts; shared experts stay
shared. Ablations: `random_assignment` (seeded) and pure MoE (`speech_experts=None`).

`add_speech_copies` is the split made without taking anything from text: the chosen experts
stay text experts and each layer gains a trainable copy of each as its speech expert. Under
modality routing with unit gates and top-k = every text expert, a text token then runs the
base FFN exactly (an upcycled dense model has no expert to spare: every one taken out costs
text, docs/training.md "Where the text loss sits"). Where a spoken-answer step also takes the
text experts (answer routing "both"), the copies' down projections start at zero, so that
step too starts as the base FFN and the copies learn only what speech adds. Measure the load
with a sparse top-k (`measure_modality_load(..., top_k=)`): with top-k = every expert each
token picks all.

Outputs beside a checkpoint (`write_assignment`):
  assignment.json             method, k, seed, speech experts per MoE layer
  modality_load.safetensors   rho_A, rho_T, score [L, E] (+ token counts)
  modality_load.csv           one row per (layer, expert)
  modality_load.png           heatmaps of rho_A, rho_T and the score, chosen experts marked
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .moe import SPEECH, TEXT

ASSIGNMENT_FILE = "assignment.json"


@contextmanager
def record_routing(model):
    """Within the block, every MoE layer sums its top-k selections per token modality.

    Yields a dict filled on exit: "counts" [L, 2, E] (text, speech) and "tokens" [L, 2].
    """
    layers = model.moe_layers
    for moe in layers:
        moe.start_recording()
    result: dict[str, torch.Tensor] = {}
    try:
        yield result
    finally:
        stats = [moe.stop_recording() for moe in layers]
        result["counts"] = torch.stack([s for s, _ in stats]).cpu()
        result["tokens"] = torch.stack([t for _, t in stats]).cpu()


def _run(model, batches: Iterable[dict], modality: int, desc: str) -> None:
    for i, batch in enumerate(tqdm(batches, desc=desc, leave=False)):
        if not isinstance(batch, dict) or not ({"input_ids", "inputs_embeds"} & set(batch)):
            raise ValueError(f"{desc} batch {i}: expected a dict of forward arguments with input_ids or inputs_embeds")
        batch = dict(batch)
        ref = batch.get("input_ids", batch.get("inputs_embeds"))
        if "token_modality" not in batch:  # a speech-only batch counts every token as speech
            batch["token_modality"] = torch.full(ref.shape[:2], modality, dtype=torch.long, device=ref.device)
        model(**batch, use_cache=False, return_audio_logits=False)


@torch.no_grad()
def measure_modality_load(model, speech_batches: Iterable[dict], text_batches: Iterable[dict],
                          top_k: int | None = None):
    """(rho_A [L, E], rho_T [L, E]): per MoE layer and routed expert, the share of speech /
    text tokens whose top-k selection includes that expert. Each of the L rows sums to k.

    Batches are dicts of forward arguments; padding is excluded through `attention_mask`.
    Routing is measured unmasked ("all"), as the paper does before any assignment, with the
    model's top-k or `top_k` (the router's k for this measurement only).
    """
    mode, was_training = model.config.routing_mode, model.training
    if top_k is not None and not 1 <= top_k < model.config.num_routed_experts:
        raise ValueError(f"measure_modality_load: top_k={top_k} must be in [1, {model.config.num_routed_experts - 1}]")
    ks = [moe.top_k for moe in model.moe_layers]
    model.eval()
    for moe in model.moe_layers:
        moe.routing_mode = "all"
        moe.top_k = top_k or moe.top_k
    try:
        with record_routing(model) as rec:
            _run(model, speech_batches, SPEECH, "speech batches")
            _run(model, text_batches, TEXT, "text batches")
    finally:
        for moe, k in zip(model.moe_layers, ks):
            moe.routing_mode, moe.top_k = mode, k
        model.train(was_training)
    counts, tokens = rec["counts"], rec["tokens"]
    for m, name in ((SPEECH, "speech"), (TEXT, "text")):
        if tokens[0, m] == 0:
            raise ValueError(f"measure_modality_load: no {name} tokens were seen (empty {name} batches?)")
    rho_a = counts[:, SPEECH] / tokens[:, SPEECH, None]
    rho_t = counts[:, TEXT] / tokens[:, TEXT, None]
    return rho_a.float(), rho_t.float()


def assignment_scores(rho_a: torch.Tensor, rho_t: torch.Tensor) -> torch.Tensor:
    return rho_a * (1 - rho_t)


def assign_modality_experts(rho_a: torch.Tensor, rho_t: torch.Tensor, k: int) -> list[list[int]]:
    """Speech experts per layer: top-k of rho_A * (1 - rho_T) (ties: lower index first)."""
    if rho_a.shape != rho_t.shape or rho_a.dim() != 2:
        raise ValueError(f"rho_A {tuple(rho_a.shape)} and rho_T {tuple(rho_t.shape)} must both be [L, E]")
    if not 0 < k < rho_a.shape[1]:
        raise ValueError(f"k={k} speech experts: must be in [1, {rho_a.shape[1] - 1}] to leave text experts")
    score = assignment_scores(rho_a, rho_t)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    return [sorted(row[:k].tolist()) for row in order]


def random_assignment(num_layers: int, num_experts: int, k: int, seed: int) -> list[list[int]]:
    """The paper's random-assignment ablation: k speech experts per layer, seeded."""
    if not 0 < k < num_experts:
        raise ValueError(f"k={k} speech experts: must be in [1, {num_experts - 1}]")
    g = torch.Generator().manual_seed(seed)
    return [sorted(torch.randperm(num_experts, generator=g)[:k].tolist()) for _ in range(num_layers)]


@torch.no_grad()
def add_speech_copies(model, chosen: list[list[int]], zero_down: bool = False) -> list[list[int]]:
    """Every MoE layer gains a copy of each of its `chosen` experts (weights, router row and
    neuron indices) after its routed experts; returns the copies' indices, the speech experts
    to install. The originals stay where they were, text experts. `zero_down`: the copies'
    down projections start at zero (they add nothing until trained)."""
    if model.config.speech_experts is not None:
        raise ValueError("add_speech_copies: the model already has a modality map")
    layers = model.moe_layers
    if len(chosen) != len(layers) or len({len(c) for c in chosen}) != 1:
        raise ValueError(f"add_speech_copies: need the same number of experts for each of {len(layers)} MoE layers")
    n, k = model.config.num_routed_experts, len(chosen[0])
    for moe, ids in zip(layers, chosen):
        for e in ids:
            clone = deepcopy(moe.experts[e])
            if zero_down:
                clone.down_proj.weight.zero_()
            moe.experts.append(clone)
        w = moe.router.weight
        moe.router.weight = torch.nn.Parameter(torch.cat([w, w[ids]]), requires_grad=w.requires_grad)
        copied = torch.cat([moe.neuron_index[moe.neurons_of(e)] for e in ids])
        moe.neuron_index = torch.cat([moe.neuron_index, copied])
        moe.num_experts = n + k
        moe.stats = moe.token_counts = None
        moe._fused_cache.clear()
        moe._params_cache.clear()
    model.config.num_routed_experts = n + k
    return [list(range(n, n + k)) for _ in layers]


def plot_load(rho_a, rho_t, speech_experts, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = assignment_scores(rho_a, rho_t)
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.25 * rho_a.shape[0] + 2.5), sharey=True)
    for ax, mat, name in zip(axes, (rho_a, rho_t, score), ("rho_A (speech share)", "rho_T (text share)", "rho_A (1 - rho_T)")):
        im = ax.imshow(mat.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("routed expert")
        fig.colorbar(im, ax=ax, fraction=0.046)
        if speech_experts is not None:
            for l, row in enumerate(speech_experts):
                ax.scatter(row, [l] * len(row), marker="s", s=18, facecolors="none", edgecolors="red", linewidths=0.8)
    axes[0].set_ylabel("MoE layer")
    fig.suptitle(title or "modality load per expert (red: speech experts)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_assignment(model, speech_experts: list[list[int]] | None, out_dir=None, rho_a=None, rho_t=None,
                     method: str = "adaptive", k: int | None = None, seed: int | None = None,
                     copied_from: list[list[int]] | None = None, copies_down_start: str | None = None) -> dict:
    """Install the modality map in the model's config (None = pure MoE) and, with `out_dir`,
    save the record, the load matrices (safetensors + CSV) and the heatmap beside the checkpoint.
    `copied_from`: the measured experts each speech expert copies (`add_speech_copies`); the
    CSV and heatmap then mark those, the experts the load chose; `copies_down_start` says how the
    copies' down projections began ("zero" or "copied").
    """
    if method not in ("adaptive", "random", "pure"):
        raise ValueError(f"assignment method {method!r}: expected adaptive, random or pure")
    model.set_modality_map(speech_experts)
    record = {"method": method, "k": k, "seed": seed, "routing_mode": model.config.routing_mode,
              "speech_experts": model.config.speech_experts}
    if copied_from is not None:
        record["copied_from"] = copied_from
        record["copies_down_start"] = copies_down_start
    if out_dir is None:
        return record
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ASSIGNMENT_FILE).write_text(json.dumps(record, indent=1))
    if rho_a is not None and rho_t is not None:
        import pandas as pd
        from safetensors.torch import save_file

        score = assignment_scores(rho_a, rho_t)
        save_file({"rho_A": rho_a.contiguous(), "rho_T": rho_t.contiguous(), "score": score.contiguous()},
                  str(out / "modality_load.safetensors"), metadata={"method": method, "k": str(k)})
        marked = copied_from if copied_from is not None else speech_experts
        chosen = [set(r) for r in marked] if marked is not None else None
        rows = [{"moe_layer": l, "decoder_layer": l + model.config.first_k_dense_layers, "expert": e,
                 "rho_A": float(rho_a[l, e]), "rho_T": float(rho_t[l, e]), "score": float(score[l, e]),
                 "speech_expert": bool(chosen and e in chosen[l])}
                for l in range(rho_a.shape[0]) for e in range(rho_a.shape[1])]
        pd.DataFrame(rows).to_csv(out / "modality_load.csv", index=False)
        plot_load(rho_a, rho_t, marked, out / "modality_load.png",
                  f"modality load ({method}, k={k}{', copied' if copied_from is not None else ''})")
    return record

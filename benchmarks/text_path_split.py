"""What taking experts out of the text path costs, and what a linear repair could give back.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/text_path_split.py \
        --stage runs/reference-mlp-rvq/stage-assign --out benchmarks/results/text_path_split.json

On a stage checkpoint after `assign` (its text experts are still the base LLM's neurons),
under per-token modality routing (text tokens reach every text expert, never a speech one),
the held-out next-token loss (nats/token; Python standard-library docstrings of the held-out
split, `deeptalk.upcycle.calibration_texts("heldout")`) is measured with:

- choices of which experts leave the text path: the adaptive assignment's top 1 / 2 / 4 by
  its score rho_A (1 - rho_T) (`modality_load.safetensors` beside the checkpoint), the 2 / 4
  experts with the smallest mean output norm on calibration text, and 4 seeded-random ones;
- for the checkpoint's own assignment, a least-squares repair: the text experts' down
  projections change by the rank-r reduced-rank ridge regression (Izenman 1975) that best
  reproduces, from the text experts' activations, what the removed neurons added to the
  dense FFN's output on calibration text (dense inputs, layer by layer); r = 6 and 16 are
  what the shipped delta budget allows, "full" is every direction (1248 per layer).

With every expert on the text path the MoE is the dense model exactly (tests), so the dense
loss is the floor of every row.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from deeptalk.checkpoint import load_checkpoint
from deeptalk.upcycle import calibration_texts, capture_ffn_inputs, dense_mlp, neuron_activations, token_blocks
from deeptalk_common.base_llm import load_base_llm


@torch.no_grad()
def heldout_nll(model, blocks: torch.Tensor, batch: int = 8) -> float:
    total, n = 0.0, 0
    for s in range(0, len(blocks), batch):
        x = blocks[s : s + batch]
        logits = model(input_ids=x).logits[:, :-1].float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
        n += x[:, 1:].numel()
    return total / n


@torch.no_grad()
def repair_directions(model, dense, inputs: dict[int, torch.Tensor], ridge: float) -> dict[int, tuple]:
    """Per MoE layer: (text expert ids, full solution [width * n_text, H], output directions Vh)."""
    out = {}
    for li, x in inputs.items():
        moe = model.model.layers[li].mlp
        text = [e for e in range(moe.num_experts) if not moe.speech_group[e]]
        kept = sum(moe.experts[e](x) for e in text) + moe.shared_experts(x)
        missing = dense_mlp(dense, li)(x) - kept  # what the speech experts' neurons added for text
        h = torch.cat([neuron_activations(moe.experts[e], x) for e in text], 1)  # [n, width * n_text]
        gram = h.T @ h
        gram += ridge * gram.diagonal().mean() * torch.eye(len(gram))
        w = torch.linalg.solve(gram, h.T @ missing)
        vh = torch.linalg.svd(h @ w, full_matrices=False)[2]
        out[li] = (text, w, vh)
    return out


@torch.no_grad()
def apply_repair(model, solution: dict[int, tuple], rank: int | None) -> None:
    for li, (text, w, vh) in solution.items():
        moe = model.model.layers[li].mlp
        change = (w if rank is None else w @ vh[:rank].T @ vh[:rank]).T  # [H, width * n_text]
        width = moe.experts[text[0]].down_proj.weight.shape[1]
        for j, e in enumerate(text):
            moe.experts[e].down_proj.weight.add_(change[:, j * width : (j + 1) * width])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", default="runs/reference-mlp-rvq/stage-assign")
    ap.add_argument("--calibrate-tokens", type=int, default=16384)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--ridge", type=float, default=1e-3)
    ap.add_argument("--ranks", default="6,16,full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/text_path_split.json")
    args = ap.parse_args()
    t0 = time.monotonic()
    bundle = load_checkpoint(args.stage)
    model = bundle.model.eval()
    if model.config.speech_experts is None:
        raise SystemExit(f"{args.stage}: no modality map (run the assign stage first)")
    dense, tok = load_base_llm(model.config.base_model)[:2]
    dense.eval()
    held = token_blocks(tok, calibration_texts("heldout"), args.eval_tokens)
    calib = token_blocks(tok, calibration_texts("calib"), args.calibrate_tokens)
    layers = [i for i, layer in enumerate(model.model.layers) if layer.is_moe]
    inputs = capture_ffn_inputs(dense, calib, layers)
    own = [list(m) for m in model.config.speech_experts]
    score = load_file(str(Path(args.stage) / "modality_load.safetensors"))["score"]
    with torch.no_grad():
        norms = torch.stack([torch.stack([model.model.layers[li].mlp.experts[e](inputs[li]).norm(dim=-1).mean()
                                          for e in range(model.config.num_routed_experts)]) for li in layers])
    g = torch.Generator().manual_seed(args.seed)
    choices = {f"adaptive top-{k}": score.topk(k, dim=1).indices.tolist() for k in (1, 2, 4)}
    choices.update({f"smallest output norm {k}": norms.topk(k, dim=1, largest=False).indices.tolist() for k in (2, 4)})
    choices["random 4"] = [torch.randperm(model.config.num_routed_experts, generator=g)[:4].tolist() for _ in layers]
    report = {"stage": args.stage, "args": vars(args), "dense_nll": heldout_nll(dense, held), "removal": {}, "repair": {}}
    for name, rows in choices.items():
        model.set_modality_map(rows)
        model.set_routing_mode("modality")
        report["removal"][name] = {"nll": heldout_nll(model, held),
                                   "output_norm_share": float(sum(norms[j, r].sum() / norms[j].sum()
                                                                  for j, r in enumerate(rows)) / len(layers))}
        print(name, report["removal"][name], flush=True)
    model.set_modality_map(own)
    model.set_routing_mode("modality")
    report["repair"]["none"] = heldout_nll(model, held)
    solution = repair_directions(model, dense, inputs, args.ridge)
    original = {n: p.detach().clone() for n, p in model.named_parameters() if "down_proj" in n}
    for r in args.ranks.split(","):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in original:
                    p.copy_(original[n])
        apply_repair(model, solution, None if r == "full" else int(r))
        report["repair"][f"rank {r}"] = heldout_nll(model, held)
        print("repair", r, report["repair"][f"rank {r}"], flush=True)
    report.update({"seconds": round(time.monotonic() - t0, 1), "torch": torch.__version__,
                   "python": platform.python_version(),
                   "git": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("dense_nll", "removal", "repair")}, indent=1))


if __name__ == "__main__":
    main()

"""How much text ability the upcycled MoE keeps: perplexity and MMLU-exemplar accuracy, dense vs MoE.

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python benchmarks/upcycle_quality.py \
        --calibrate-tokens 8192 --eval-tokens 8192 --top-k 6 8 12 --out benchmarks/results/upcycle_quality.json

Perplexity: held-out Python standard-library docstrings (`deeptalk.upcycle.calibration_texts
("heldout")`, disjoint from the calibration modules), 256-token blocks.
Retention: the real MMLU dev questions that lm-eval ships as few-shot exemplars
(`lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json`), asked zero-shot; the answer is the
letter with the highest next-token log-likelihood after "The answer is (".
Relative loss = (dense - moe) / dense for accuracy, (moe - dense) / dense for perplexity.

`--speech-experts 4 6`: what giving experts to speech costs the text path. With top-k =
the largest --top-k, text load per expert is counted on the calibration text; then, under
modality routing (text tokens reach only the text experts), the n least text-loaded experts
per layer (the adaptive choice when speech load is even) vs n seeded-random ones are taken
away from text, and held-out perplexity / MMLU are measured again. The reference recipe:

    --top-k 24 26 --speech-experts 4 6 --calibrate-tokens 8192 --router-steps 200 --eval-tokens 4096 \
        --out benchmarks/results/upcycle_speech_split.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from deeptalk.upcycle import calibration_texts, token_blocks, upcycle
from deeptalk_common.base_llm import DEFAULT_BASE, load_base_llm

LETTERS = "ABCD"


def mmlu_exemplars() -> list[dict]:
    """Questions with 4 options and a stated answer from lm-eval's bundled MMLU CoT exemplars."""
    spec = importlib.util.find_spec("lm_eval")
    path = Path(list(spec.submodule_search_locations)[0]) / "tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
    prompts = json.loads(path.read_text())
    items = []
    pattern = re.compile(r"Q: (.*?)\n\(A\) (.*?) \(B\) (.*?) \(C\) (.*?) \(D\) (.*?)\nA: .*?answer is \(([ABCD])\)", re.S)
    for subject in sorted(prompts):
        for n, m in enumerate(pattern.finditer(prompts[subject])):
            question, *options, answer = m.groups()
            items.append({"id": f"{subject}/{n}", "subject": subject, "question": question.strip(),
                          "options": [o.strip() for o in options], "answer": answer})
    if not items:
        raise RuntimeError(f"no MMLU exemplar parsed from {path}")
    return items


def mmlu_prompt(item: dict) -> str:
    subject = item["subject"].replace("_", " ")
    opts = " ".join(f"({l}) {o}" for l, o in zip(LETTERS, item["options"]))
    return (f"The following is a multiple choice question about {subject}.\n\n"
            f"Q: {item['question']}\n{opts}\nA: The answer is (")


@torch.no_grad()
def mmlu_accuracy(model, tokenizer, items, batch: int = 8, **forward_kw) -> dict:
    letter_ids = [tokenizer(l, add_special_tokens=False).input_ids[-1] for l in LETTERS]
    correct = []
    for s in tqdm(range(0, len(items), batch), desc="mmlu", leave=False):
        chunk = items[s : s + batch]
        enc = [tokenizer(mmlu_prompt(it), add_special_tokens=False).input_ids for it in chunk]
        width = max(map(len, enc))
        ids = torch.full((len(enc), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for r, e in enumerate(enc):  # left padding: the last position is the answer slot
            ids[r, width - len(e):] = torch.tensor(e)
            mask[r, width - len(e):] = 1
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1,
                       **forward_kw).logits[:, -1]
        pred = logits[:, letter_ids].argmax(-1)
        correct += [LETTERS[p] == it["answer"] for p, it in zip(pred.tolist(), chunk)]
    return {"accuracy": sum(correct) / len(correct), "n": len(correct), "correct": correct}


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor, batch: int = 4, **forward_kw) -> float:
    nll, count = 0.0, 0
    vocab = getattr(model.config, "base_vocab_size", model.config.vocab_size)  # the MoE's added tokens are left out
    for s in tqdm(range(0, len(blocks), batch), desc="perplexity", leave=False):
        ids = blocks[s : s + batch]
        logits = model(input_ids=ids, use_cache=False, **forward_kw).logits[:, :-1, :vocab]
        nll += F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum").item()
        count += ids[:, 1:].numel()
    return math.exp(nll / count)


@torch.no_grad()
def layer_error(dense, tok, layers: list[int], args) -> dict:
    """Per layer: relative error ||moe_ffn(x) - dense_ffn(x)|| / ||dense_ffn(x)|| on held-out
    inputs, with the calibrated router's top-k and with the oracle top-k (experts of largest
    output norm). Separates what the router loses from what sparsity itself loses.
    """
    from deeptalk.upcycle import (
        calibrate_router,
        capture_ffn_inputs,
        cluster_neurons,
        config_from_dense,
        copy_from_dense,
        dense_mlp,
        empty_model,
    )

    calib = capture_ffn_inputs(dense, token_blocks(tok, calibration_texts("calib"), args.calibrate_tokens), layers)
    held = capture_ffn_inputs(dense, token_blocks(tok, calibration_texts("heldout"), args.eval_tokens), layers)
    model = empty_model(config_from_dense(dense.config, args.routed, args.shared, max(args.top_k)))
    out = {}
    for layer in layers:
        moe = model.model.layers[layer].mlp
        moe.neuron_index.copy_(cluster_neurons(dense_mlp(dense, layer), calib[layer], args.shared, args.routed,
                                               model.config.expert_intermediate_size, seed=args.seed + layer))
        copy_from_dense(model, dense)
        fit = calibrate_router(moe, calib[layer], steps=args.router_steps)
        x = held[layer]
        ref = dense_mlp(dense, layer)(x)
        experts = torch.stack([e(x) for e in moe.experts], 1)  # [n, E, H]
        base = moe.shared_experts(x) if moe.shared_experts is not None else torch.zeros_like(ref)
        scores = {"router": F.linear(x, moe.router.weight), "oracle": experts.norm(dim=-1)}
        row = {"router_fit": fit}
        for k in sorted(set(args.top_k) | {args.routed}):
            for name, score in scores.items():
                idx = score.topk(k, -1).indices[..., None].expand(-1, -1, experts.shape[-1])
                y = base + experts.gather(1, idx).sum(1)
                row[f"{name}_top{k}"] = ((y - ref).norm() / ref.norm()).item()
        out[str(layer)] = row
        print(layer, json.dumps(row), flush=True)
    return out


def set_top_k(model, k: int) -> None:
    model.config.num_experts_per_tok = k
    for moe in model.moe_layers:
        moe.top_k = k


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=DEFAULT_BASE)
    ap.add_argument("--routed", type=int, default=30)
    ap.add_argument("--shared", type=int, default=2)
    ap.add_argument("--top-k", type=int, nargs="+", default=[6, 8, 12])
    ap.add_argument("--calibrate-tokens", type=int, default=8192)
    ap.add_argument("--router-steps", type=int, default=300)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--mmlu-limit", type=int, default=0, help="0 = every parsed exemplar")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/upcycle_quality.json")
    ap.add_argument("--speech-experts", type=int, nargs="*", default=[],
                    help="also measure text experts only, n experts per layer given to speech (least text-loaded vs random)")
    ap.add_argument("--layer-error", type=int, nargs="*", default=None,
                    help="only measure per-layer FFN output error (router vs oracle top-k) on these layers")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    t0 = time.time()
    dense, tok = load_base_llm(args.base)
    if args.layer_error:
        result = {"base": args.base, "args": vars(args), "layers": layer_error(dense, tok, args.layer_error, args),
                  "seconds": time.time() - t0}
        write(result, args.out)
        print(f"wrote {args.out}")
        return 0
    blocks = token_blocks(tok, calibration_texts("heldout"), args.eval_tokens)
    items = mmlu_exemplars()
    if args.mmlu_limit:  # evenly spaced over the subjects, not the first few subjects
        step = len(items) / args.mmlu_limit
        items = [items[int(i * step)] for i in range(args.mmlu_limit)]
    result = {"base": args.base, "args": vars(args), "eval_tokens": int(blocks.numel()), "mmlu_items": len(items),
              "python": platform.python_version(), "torch": torch.__version__,
              "git": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}
    t = time.time()
    dense_ppl = perplexity(dense, blocks)
    dense_mmlu = mmlu_accuracy(dense, tok, items)
    result["dense"] = {"perplexity": dense_ppl, "mmlu_accuracy": dense_mmlu["accuracy"], "seconds": time.time() - t}
    print(json.dumps(result["dense"]), flush=True)

    t = time.time()
    moe = upcycle(dense, num_routed_experts=args.routed, num_shared_experts=args.shared, top_k=max(args.top_k),
                  calibrate_tokens=args.calibrate_tokens, tokenizer=tok, router_steps=args.router_steps,
                  seed=args.seed, base_model=args.base)
    result["upcycle"] = {"seconds": time.time() - t, **moe.upcycle_report}
    result["moe"] = []
    for k in sorted(args.top_k):
        set_top_k(moe, k)
        t = time.time()
        ppl = perplexity(moe, blocks, return_audio_logits=False)
        mm = mmlu_accuracy(moe, tok, items, return_audio_logits=False)
        agree = sum(a == b for a, b in zip(mm["correct"], dense_mmlu["correct"])) / len(items)
        row = {"top_k": k, "active_ffn_fraction": (args.shared + k) / (args.shared + args.routed),
               "perplexity": ppl, "perplexity_rel_increase": (ppl - dense_ppl) / dense_ppl,
               "mmlu_accuracy": mm["accuracy"],
               "mmlu_rel_loss": (dense_mmlu["accuracy"] - mm["accuracy"]) / dense_mmlu["accuracy"],
               "mmlu_same_correctness_as_dense": agree, "seconds": time.time() - t}
        result["moe"].append(row)
        print(json.dumps(row), flush=True)
        write(result, args.out)  # after every row: a long run leaves its partial figures
    if args.speech_experts:
        result["speech_split"] = speech_split(moe, tok, blocks, items, dense_ppl, dense_mmlu, args)
    result["total_seconds"] = time.time() - t0
    write(result, args.out)
    print(f"wrote {args.out}")


@torch.no_grad()
def speech_split(moe, tok, blocks, items, dense_ppl, dense_mmlu, args) -> list[dict]:
    import random

    set_top_k(moe, max(args.top_k))
    for m in moe.moe_layers:
        m.start_recording()
    calib = token_blocks(tok, calibration_texts("calib"), args.calibrate_tokens)
    for s in range(0, len(calib), 4):
        moe(input_ids=calib[s : s + 4], use_cache=False, return_audio_logits=False)
    text_load = [m.stop_recording()[0][0] for m in moe.moe_layers]
    rows = []
    for n in args.speech_experts:
        rng = random.Random(args.seed)
        choices = {"least_text_loaded": [load.argsort()[:n].tolist() for load in text_load],
                   "random": [rng.sample(range(args.routed), n) for _ in text_load]}
        for how, experts in choices.items():
            moe.set_modality_map(experts)
            moe.set_routing_mode("modality")
            set_top_k(moe, args.routed - n)  # every text expert: the text path is the dense FFN minus n experts
            t = time.time()
            ppl = perplexity(moe, blocks, return_audio_logits=False)
            mm = mmlu_accuracy(moe, tok, items, return_audio_logits=False)
            row = {"speech_experts": n, "choice": how, "perplexity": ppl,
                   "perplexity_rel_increase": (ppl - dense_ppl) / dense_ppl, "mmlu_accuracy": mm["accuracy"],
                   "mmlu_rel_loss": (dense_mmlu["accuracy"] - mm["accuracy"]) / dense_mmlu["accuracy"],
                   "seconds": time.time() - t}
            rows.append(row)
            print(json.dumps(row), flush=True)
        moe.set_routing_mode("all")
        moe.set_modality_map(None)
    return rows


def write(result: dict, path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())

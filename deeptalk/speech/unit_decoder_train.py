"""`deeptalk-units train-decoder`: fit the unit decoder on (units, log-mel) pairs.

    deeptalk-units pairs --units-from runs/units/k512-p2.safetensors --out runs/unit-pairs
    deeptalk-units train-decoder --units-from runs/units/k512-p2.safetensors \
        --pairs runs/unit-pairs --steps 20000 --out runs/units/k512-p2-decoder.safetensors [--resume]

The same command trains on this CPU or a GPU (`--device cuda`: bf16 autocast, the whole
set held on the device). It needs torch, numpy, safetensors and tqdm only (no Whisper,
no TTS), so the pairs folder and this package are all an accelerator machine needs.
Whole utterances are batched (padded with the pad unit, padding masked out of the loss), so
every unit is decoded with the left context it will have at inference. The loss is L1 on
normalised log-mel; the held-out check is the same L1 on `dev.npz`. Every `eval_every`
steps the state is checkpointed (`--resume` continues exactly) and the codec file is
written with the decoder that has the best held-out L1 so far, so a killed run keeps its best.
"""
from __future__ import annotations

import csv
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


def write_curve(path: Path, rows: list[dict]) -> None:
    """The learning curve so far as CSV (rewritten whole at each evaluation)."""
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _padded(pairs: dict, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every utterance padded to the longest: units [N, L] (pad_id after the end), mel [N, n_mels, L * stack]
    (float16), lengths [N] in units; all on `device`."""
    n, longest, stack = len(pairs["units"]), max(len(u) for u in pairs["units"]), pairs["stack"]
    n_mels = pairs["mel"][0].shape[1]
    units = torch.full((n, longest), pad_id, dtype=torch.long)
    mel = torch.zeros((n, n_mels, longest * stack), dtype=torch.float16)
    for i, (u, m) in enumerate(zip(pairs["units"], pairs["mel"])):
        units[i, : len(u)] = torch.from_numpy(u)
        mel[i, :, : len(m)] = torch.from_numpy(m.T.astype(np.float16))
    lengths = torch.tensor([len(u) for u in pairs["units"]])
    return units.to(device), mel.to(device), lengths.to(device)


def _batch_loss(model, units, mel, lengths, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked L1 sum, frames) over the utterances `idx`, cut to the longest of them."""
    stack = model.cfg.stack
    longest = int(lengths[idx].max())
    u = model.pad_end(units[idx, :longest])
    target = mel[idx, :, : longest * stack].float()
    frames = torch.arange(longest * stack, device=units.device)[None] < (lengths[idx] * stack)[:, None]
    pred = model(u).float()
    err = (pred - target).abs().mean(1) * frames
    return err.sum(), frames.sum()


@torch.no_grad()
def dev_l1(model, units, mel, lengths, batch: int = 32) -> float:
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(units), batch):
        e, n = _batch_loss(model, units, mel, lengths, torch.arange(s, min(s + batch, len(units)), device=units.device))
        total, count = total + float(e), count + int(n)
    model.train()
    return total / max(1, count)


def _load_all(folder: Path, shards: int | None) -> tuple[dict, dict, list[str]]:
    from deeptalk.speech.unit_pairs import load_pairs

    files = sorted(folder.glob("pairs-*.npz"))[:shards]
    if not files or not (folder / "dev.npz").is_file():
        raise FileNotFoundError(f"{folder}: needs dev.npz and pairs-*.npz (build them with `deeptalk-units pairs`)")
    parts = [load_pairs(f) for f in files]
    train = {"units": [u for p in parts for u in p["units"]], "mel": [m for p in parts for m in p["mel"]],
             "stack": parts[0]["stack"]}
    return train, load_pairs(folder / "dev.npz"), [f.name for f in files]


def cmd_train_unit_decoder(args) -> dict:
    from safetensors.torch import save_file
    from tqdm import tqdm

    from deeptalk.speech.unit_decoder import UnitDecoder, UnitDecoderConfig, state_to_tensors

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_path, curve_path = out.with_suffix(".state.pt"), out.with_suffix(".curve.csv")
    units_file = Path(args.units_from)
    from safetensors import safe_open

    with safe_open(str(units_file), framework="pt") as f:   # the pairs' units codec: its tensors are kept
        base_meta = f.metadata() or {}
        base = {k_: f.get_tensor(k_) for k_ in f.keys()}
    train, dev, files = _load_all(Path(args.pairs), args.shards)
    k = base["centroids"].shape[0]
    cfg = UnitDecoderConfig(codebook_size=k, n_mels=train["mel"][0].shape[1], stack=train["stack"],
                            channels=args.channels, unit_blocks=args.unit_blocks, kernel=args.kernel,
                            lookahead=args.lookahead, frame_channels=args.frame_channels,
                            frame_blocks=args.frame_blocks, dropout=args.dropout)
    model = UnitDecoder(cfg).to(device)
    units, mel, lengths = _padded(train, k, device)
    d_units, d_mel, d_lengths = _padded(dev, k, device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warm = min(500, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    gen = torch.Generator().manual_seed(args.seed)
    step, best, seconds_before, rows = 0, float("inf"), 0.0, []
    if args.resume and state_path.is_file():
        st = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])           # dropout's masks
        if device.type == "cuda":
            torch.cuda.set_rng_state(st["cuda_rng"], device)
        step, best, seconds_before, rows = st["step"], st["best"], st["seconds"], st["rows"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"unit decoder: {n_params / 1e6:.2f} M parameters, {len(train['units'])} utterances "
          f"({sum(len(u) for u in train['units']) / 25 / 3600:.2f} h at 25 units/s), dev {len(dev['units'])}, "
          f"device {device}, steps {step} -> {args.steps}", flush=True)

    def save() -> None:
        tensors = {**{k_: v for k_, v in base.items() if not k_.startswith(("refiner.", "decoder."))},
                   **state_to_tensors(model)}
        meta = {**{k_: v for k_, v in base_meta.items() if k_ not in ("refiner", "decoder")},
                "decoder": json.dumps(cfg.to_dict())}
        tmp = out.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.rename(out)

    t0 = time.time() - seconds_before
    model.train()
    bar = tqdm(total=args.steps, initial=step, desc="unit decoder", unit="step", mininterval=5)
    recent: list[float] = []
    while step < args.steps:
        idx = torch.randint(0, len(units), (args.batch,), generator=gen).to(device)
        with autocast:
            err, n = _batch_loss(model, units, mel, lengths, idx)
        loss = err / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        recent.append(float(loss.detach()))
        if args.budget_seconds and step == 50 and not args.resume:
            # fill the budget: steps from the measured speed (recorded, so `--steps N` repeats the run)
            per_step = (time.time() - t0) / 50
            args.steps = max(100, int(args.budget_seconds / (per_step * (1 + 1 / args.eval_every * 10))))
            bar.total = args.steps
            print(f"\n{per_step * 1000:.0f} ms per step: {args.steps} steps fill {args.budget_seconds:g} s", flush=True)
        last = step == args.steps or (args.max_seconds and time.time() - t0 > args.max_seconds)
        if step % args.eval_every == 0 or last:
            with autocast:
                l1 = dev_l1(model, d_units, d_mel, d_lengths)
            rows.append({"step": step, "seconds": round(time.time() - t0, 1), "train_l1": round(float(np.mean(recent)), 5),
                         "dev_l1": round(l1, 5)})
            recent = []
            bar.set_postfix(dev_l1=f"{l1:.4f}")
            if l1 < best:
                best = l1
                save()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None, "step": step, "best": best, "seconds": time.time() - t0, "rows": rows},
                       state_path)
            write_curve(curve_path, rows)
        if last:
            break
    bar.close()
    record = {"decoder": cfg.to_dict(), "parameters": n_params, "steps": step, "steps_planned": args.steps,
              "batch_utterances": args.batch, "budget_seconds": args.budget_seconds, "lr": args.lr, "seed": args.seed, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "torch": torch.__version__, "seconds": round(time.time() - t0, 1), "best_dev_l1": best,
              "train_utterances": len(train["units"]), "dev_utterances": len(dev["units"]), "pair_files": files,
              "units_from": str(units_file), "loss": "L1, normalised log-mel", "curve": rows,
              "command": "deeptalk-units " + " ".join(sys.argv[1:])}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k_: record[k_] for k_ in ("parameters", "steps", "seconds", "best_dev_l1")}), flush=True)
    return record


def add_parser(sub, name: str = "train-decoder") -> None:
    p = sub.add_parser(name, help="fit the unit decoder (units -> log-mel) on unit pairs")
    p.add_argument("--units-from", required=True, help="the units codec file the pairs were built with")
    p.add_argument("--pairs", required=True, help="folder of `deeptalk-units pairs`")
    p.add_argument("--shards", type=int, default=None, help="use only the first N pair files")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--max-seconds", type=float, default=None, help="stop earlier after this long (a safety cap)")
    p.add_argument("--budget-seconds", type=float, default=None,
                   help="after 50 steps, set --steps to what fills this many seconds at the measured speed")
    p.add_argument("--batch", type=int, default=32, help="utterances per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--channels", type=int, default=384)
    p.add_argument("--unit-blocks", type=int, default=10)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--lookahead", type=int, default=4, help="units ahead the decoder reads (streaming delay)")
    p.add_argument("--frame-channels", type=int, default=192)
    p.add_argument("--frame-blocks", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT.state.pt")
    p.add_argument("--out", required=True, help="the units codec file to write (units + this decoder)")
    p.set_defaults(func=cmd_train_unit_decoder)


def main(argv=None) -> int:
    """`python -m deeptalk.speech.unit_decoder_train ...`: the same command without the rest of the CLI's imports."""
    import argparse

    ap = argparse.ArgumentParser(prog="unit_decoder_train")
    add_parser(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(["train-decoder", *(argv if argv is not None else sys.argv[1:])])
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

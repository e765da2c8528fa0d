"""`deeptalk-units fit-vq`: train supervised semantic units (speech/units_vq.py) on the hearing shards.

    deeptalk-units fit-vq --k 1024 --code-dim 32 --pool 2 --shards 8 --steps 1500 \
        --out runs/units/vq1024-p2.safetensors [--resume]

Data: the cached hearing shards (deeptalk/hearing.py: nine voices, sentences no task holds),
their exact-window Whisper tiny.en features and transcripts; no synthesis, no encoder pass.
Held out: the hearing dev shard, on which every `--eval-every` steps the units are read
back by Whisper's own decoder (greedy) and scored (WER after Whisper's normaliser), with
the share of the codebook in use. The codec file written (`UnitCodec`: the encoding half +
the codebook; mel statistics of the dev shard's Piper joe speech for a decoder fitted
later with `deeptalk-units pairs` / `train-decoder`) holds the best dev WER so far; `OUT.vq.pt`
holds the whole model (post layers too) and the training state for `--resume`.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _batches(rows: list[dict], batch: int, rng: random.Random) -> list[list[int]]:
    from deeptalk.hearing import _length_grouped

    order = _length_grouped(rows, batch, rng)
    return [order[i:i + batch] for i in range(0, len(order), batch)]


def _padded(rows: list[dict], idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    feats = [rows[i]["feats"].float() for i in idx]
    n = max(len(f) for f in feats)
    x = torch.zeros(len(feats), n, feats[0].shape[1])
    for i, f in enumerate(feats):
        x[i, : len(f)] = f
        x[i, len(f):] = f[-1]            # repeat the last frame: the decoder attends to padding too
    return x, torch.tensor([len(f) for f in feats])


def dev_content_wer(vq, decoder, rows: list[dict], tokenizer, normalizer) -> dict:
    """Units of each dev utterance read back by Whisper's decoder: corpus WER, and codes in use."""
    from deeptalk.speech.speech_wer import wer_counts
    from deeptalk.speech.units_vq import greedy_transcribe

    vq.eval()
    errors = words = 0
    used = torch.zeros(vq.cfg.codebook_size, dtype=torch.bool)
    with torch.no_grad():
        for r in rows:
            z = vq.pre(vq.pool(r["feats"].float()[None]))
            codes = vq.codes(z)
            used[codes.flatten()] = True
            hyp = greedy_transcribe(decoder, vq.from_codes(codes), tokenizer)
            e, w = wer_counts(r["text"], hyp, normalizer)
            errors, words = errors + e, words + w
    vq.train()
    return {"wer": errors / max(1, words), "codes_used": int(used.sum())}


def cmd_fit_vq_units(args) -> dict:
    from tqdm import tqdm
    from whisper.normalizers import EnglishTextNormalizer
    from whisper.tokenizer import get_tokenizer

    from deeptalk.speech.codec_units import UNIT_MEL, UnitCodec
    from deeptalk.speech.unit_decoder_train import write_curve
    from deeptalk.speech.units_vq import UnitVQ, VQConfig, transcript_batch
    from deeptalk.speech.vocoder import MelFrontend
    from deeptalk.training.units_data import hearing_shard_rows, hearing_shards

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    t_start = time.time()
    train_files, dev_file = hearing_shards(args.sentences, args.dev, args.seed, args.whisper)
    rows = [r for f in tqdm(train_files[: args.shards], desc="hearing shards") for r in torch.load(f, weights_only=True)]
    dev_all = hearing_shard_rows(dev_file)
    dev = dev_all[: args.eval_n]
    from deeptalk_common.whisper_ckpt import load_whisper

    decoder = load_whisper(args.whisper).decoder.eval().requires_grad_(False)
    tok = get_tokenizer(multilingual=False)
    norm = EnglishTextNormalizer()
    cfg = VQConfig(d_in=rows[0]["feats"].shape[1], code_dim=args.code_dim, codebook_size=args.k, pool=args.pool,
                   post_layers=args.post_layers)
    vq = UnitVQ(cfg)
    opt = torch.optim.AdamW(vq.parameters(), lr=args.lr, weight_decay=0.01)
    warm = min(200, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_path, curve_path = out.with_suffix(".vq.pt"), out.with_suffix(".curve.csv")
    gen = torch.Generator().manual_seed(args.seed)
    step, best, seconds, curve = 0, float("inf"), 0.0, []
    if args.resume and state_path.is_file():
        st = torch.load(state_path, weights_only=False)
        vq.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        rng.setstate(st["rng"])
        step, best, seconds, curve = st["step"], st["best"], st["seconds"], st["curve"]

    # mel statistics of the voice a decoder will speak with (the dev shard's Piper joe speech)
    front = MelFrontend(UNIT_MEL)
    joe = [r["wav"] for r in dev_all if r["voice"] == args.decoder_voice]
    mels = np.concatenate([front.log_mel(w) for w in joe], axis=1)
    mel_mean, mel_std = mels.mean(1), mels.std(1) + 1e-5

    def save_codec() -> None:
        stack = 2 * cfg.pool
        codec = UnitCodec(vq.codebook_normed().detach().numpy(), np.zeros((cfg.codebook_size, stack * UNIT_MEL.n_mels),
                          np.float32), mel_mean, mel_std, pool=cfg.pool, whisper=args.whisper, pre=vq.pre)
        codec.save(out, {"codec": "supervised semantic units: a VQ on pooled Whisper features trained with "
                                  "Whisper's decoder (units_vq.py); no decoder yet",
                         "vq": cfg.to_dict(), "curve": curve, "command": "deeptalk-units " + " ".join(sys.argv[1:])})

    print(f"fit-vq: {len(rows)} training utterances, {len(dev)} dev, K {cfg.codebook_size}, "
          f"{sum(p.numel() for p in vq.parameters()) / 1e6:.2f} M parameters", flush=True)
    epoch_batches: list[list[int]] = []
    used = torch.zeros(cfg.codebook_size, dtype=torch.bool)
    recent: list[float] = []
    bar = tqdm(total=args.steps, initial=step, desc="vq units", unit="step", mininterval=5)
    t0 = time.time() - seconds
    while step < args.steps:
        if not epoch_batches:
            epoch_batches = _batches(rows, args.batch, rng)
        idx = epoch_batches.pop()
        x, lengths = _padded(rows, idx)
        units_len = (lengths + cfg.pool - 1) // cfg.pool
        pad_mask = torch.arange(math.ceil(x.shape[1] / cfg.pool))[None] >= units_len[:, None]
        h, codes, vq_loss, recon = vq(x, pad_mask)
        inp, tgt = transcript_batch([rows[i]["text"] for i in idx], tok)
        logits = decoder(inp, h)
        ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), tgt, ignore_index=-100)
        loss = ce + vq_loss + args.recon_weight * recon[~pad_mask].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vq.parameters(), 1.0)
        opt.step()
        sched.step()
        used[codes[~pad_mask]] = True
        step += 1
        bar.update(1)
        recent.append(float(ce.detach()))
        if step % args.restart_every == 0:
            with torch.no_grad():
                z = vq.pre(vq.pool(x))[~pad_mask]
            vq.restart_dead(z, used, gen)
            used[:] = False
        last = step == args.steps or (args.max_seconds and time.time() - t0 > args.max_seconds)
        if step % args.eval_every == 0 or last:
            ev = dev_content_wer(vq, decoder, dev, tok, norm)
            curve.append({"step": step, "seconds": round(time.time() - t0, 1), "train_ce": round(float(np.mean(recent)), 4),
                          "dev_wer": round(ev["wer"], 4), "codes_used": ev["codes_used"]})
            recent = []
            bar.set_postfix(dev_wer=f"{ev['wer']:.3f}", used=ev["codes_used"])
            if ev["wer"] < best:
                best = ev["wer"]
                save_codec()
            torch.save({"model": vq.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "rng": rng.getstate(),
                        "step": step, "best": best, "seconds": time.time() - t0, "curve": curve, "config": cfg.to_dict()},
                       state_path)
            write_curve(curve_path, curve)
        if last:
            break
    bar.close()
    record = {"config": cfg.to_dict(), "steps": step, "best_dev_wer": best, "curve": curve,
              "train_utterances": len(rows), "dev_utterances": len(dev), "seconds": round(time.time() - t_start, 1)}
    print(json.dumps({k: record[k] for k in ("steps", "best_dev_wer", "seconds")}), flush=True)
    return record


def add_parser(sub) -> None:
    p = sub.add_parser("fit-vq", help="supervised semantic units: a VQ on Whisper features trained with "
                                            "Whisper's decoder")
    p.add_argument("--k", type=int, default=1024, help="codebook size")
    p.add_argument("--code-dim", type=int, default=32)
    p.add_argument("--pool", type=int, default=2, help="Whisper frames (50 Hz) per unit: 2 -> 25/s")
    p.add_argument("--post-layers", type=int, default=2)
    p.add_argument("--whisper", default="tiny.en")
    p.add_argument("--sentences", type=int, default=16000, help="hearing training utterances (the cached shards)")
    p.add_argument("--dev", type=int, default=300)
    p.add_argument("--shards", type=int, default=8, help="hearing shards (1 000 utterances each) to train on")
    p.add_argument("--eval-n", type=int, default=100, help="dev utterances read back at each evaluation")
    p.add_argument("--decoder-voice", default="piper:joe", help="whose mel statistics the codec file keeps")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--recon-weight", type=float, default=1.0,
                   help="weight of the post layers' squared distance to the pooled features")
    p.add_argument("--restart-every", type=int, default=100, help="steps between restarts of unused codes")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_fit_vq_units)

"""`deeptalk-codec fit-units`: fit the semantic-unit codec (codec_units.py) on offline speech.

1. Units: k-means (one codebook) over pooled Whisper features of the codec's fit speech
   (every fit voice, so units follow what is said rather than who says it).
2. Decoder: in the voice the model speaks with (Piper joe by default), each unit's mean
   log-mel, then a MelRefiner trained on (looked-up, real) log-mel pairs of that voice.
Fit sentences and voices are the offline codec's (codec_data.py); the quiz sentences that
`deeptalk-codec eval` uses stay held out.
"""
from __future__ import annotations

import json
import platform
import sys
import time

import numpy as np


def cmd_fit_units(args) -> dict:
    import torch
    from tqdm import tqdm

    from deeptalk.speech import codec_data
    from deeptalk.speech.codec_offline import fit_residual_kmeans
    from deeptalk.speech.codec_units import UNIT_MEL, UnitCodec, unit_mel_table
    from deeptalk.speech.mel_refiner import RefinerConfig, train_refiner, validation_l1
    from deeptalk.speech.vocoder import MelFrontend
    from deeptalk_common.tts import TTSError

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    utts = codec_data.fit_utterances(args.per_voice, seed=args.seed)
    voice = tuple(args.voice.split("/"))
    start = UnitCodec.load(args.units_from) if args.units_from else None
    if start is not None:   # keep that file's units; only the decoder's voice is needed
        k, pool, args.whisper = start.codebook_size, start.pool, start.whisper_name
        probe = start
        utts = [u for u in utts if (u.engine, u.voice) == voice and not u.semitones]
    else:   # a codec without centroids yet: it already extracts pooled features
        k, pool = args.units, args.pool
        probe = UnitCodec(np.zeros((k, 1), np.float32), np.zeros((k, 2 * pool * UNIT_MEL.n_mels), np.float32),
                          np.zeros(UNIT_MEL.n_mels), np.ones(UNIT_MEL.n_mels), pool=pool, whisper=args.whisper)
    feats, speaker, failed, seconds = [], [], [], 0.0
    for u in tqdm(utts, desc="fit speech (tts + whisper)", unit="utt"):
        try:
            wav = codec_data.load_audio(u, UNIT_MEL.sample_rate)
        except TTSError as exc:
            failed.append({"id": u.id, "error": str(exc)})
            continue
        seconds += len(wav) / UNIT_MEL.sample_rate
        f = probe.pooled_features(wav, UNIT_MEL.sample_rate)
        feats.append(f)
        if (u.engine, u.voice) == voice and not u.semitones:
            speaker.append((wav, f))
    if len(failed) > 0.05 * len(utts):
        raise RuntimeError(f"TTS failed on {len(failed)}/{len(utts)} fit utterances (over 5 %): {failed[:3]}")
    if not speaker:
        raise ValueError(f"--voice {args.voice}: not among the fit voices {codec_data.FIT_VOICES}")
    vectors = np.concatenate(feats)
    if start is not None:
        centroids, n_used = start.centroids.numpy(), 0
    else:
        rng = np.random.default_rng(args.seed)
        sample = vectors[rng.choice(len(vectors), min(len(vectors), args.max_vectors), replace=False)]
        centroids, n_used = fit_residual_kmeans(sample, 1, k, seed=args.seed)[0], len(sample)
    t_units = time.time() - t0

    front = MelFrontend(UNIT_MEL)
    spf = UNIT_MEL.hop_length * 2 * pool
    raw = [front.log_mel(np.pad(w, (0, (-len(w)) % spf))) for w, _ in speaker]
    allmel = np.concatenate(raw, axis=1)
    mean, std = allmel.mean(axis=1), allmel.std(axis=1) + 1e-5
    codec = UnitCodec(centroids, np.zeros((k, 2 * pool * UNIT_MEL.n_mels), np.float32), mean, std, pool=pool,
                      whisper=args.whisper, gl_iters=args.gl_iters)
    codes = [codec.quantize(f)[0] for _, f in speaker]
    exact = [codec.features(w, UNIT_MEL.sample_rate) for w, _ in speaker]
    lengths = [min(len(c), len(m)) for c, m in zip(codes, exact)]
    codes = [c[:n] for c, n in zip(codes, lengths)]
    exact = [m[:n] for m, n in zip(exact, lengths)]
    codec.unit_mel = unit_mel_table(codes, exact, k)
    used = np.bincount(np.concatenate(codes), minlength=k)

    cfg = RefinerConfig(n_mels=UNIT_MEL.n_mels, stack=codec.stack, channels=args.channels, blocks=args.blocks,
                        kernel=args.kernel, right=args.right)
    n_val = max(1, len(codes) // 20)   # the last 5 % of the voice's utterances: the refiner's held-out check
    looked_up = [codec.unit_mel[c] for c in codes]
    model, record = train_refiner(np.concatenate(exact[:-n_val]), np.concatenate(looked_up[:-n_val]),
                                  lengths[:-n_val], cfg, steps=args.steps, batch=args.batch, crop=args.crop,
                                  lr=args.lr, seed=args.seed, max_seconds=args.max_seconds)
    record["val"] = validation_l1(model, np.concatenate(looked_up[-n_val:]), np.concatenate(exact[-n_val:]), cfg)
    codec.refiner, codec.refine = model, True
    manifest = {
        "codec": "semantic units: k-means over pooled Whisper encoder features; unit mean log-mel + "
                 "mel refiner + Griffin-Lim in one voice",
        "units": {"k": k, "pool": pool, "positions_per_s": codec.frame_rate, "whisper": args.whisper,
                  "kmeans": "MiniBatchKMeans batch 4096, 30 epochs", "vectors_total": int(len(vectors)),
                  "vectors_used": int(n_used), "units_used_by_voice": int((used > 0).sum()),
                  "fit_seconds": round(t_units, 1),
                  "from": None if start is None else {"file": args.units_from,
                                                      "file_sha256": start.manifest.get("file_sha256")}},
        "training_data": {"recipe": "deeptalk.speech.codec_data.fit_utterances", "per_voice": args.per_voice,
                          "voices": [f"{e}/{v}" for e, v in codec_data.FIT_VOICES],
                          "pitch_shifted_copies": [f"{e}/{v} +{s:g}" for e, v, s in codec_data.FIT_PITCH_SHIFTED],
                          "utterances": len(utts) - len(failed), "tts_failed": failed,
                          "hours": round(seconds / 3600, 3), "decoder_voice": args.voice,
                          "decoder_utterances": len(speaker), "refiner_heldout_utterances": n_val},
        "refiner": record,
        "seed": args.seed,
        "seconds": round(time.time() - t0, 1),
        "python": platform.python_version(),
        "command": "deeptalk-codec " + " ".join(sys.argv[1:]),
    }
    path = codec.save(args.out, manifest)
    print(json.dumps({"units": manifest["units"], "refiner_val": record["val"]}, indent=1))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {k} units at {codec.frame_rate:g}/s")
    return codec.manifest


def add_parser(sub) -> None:
    u = sub.add_parser("fit-units", help="fit the semantic-unit codec (Whisper-feature k-means + unit decoder)")
    u.add_argument("--units", type=int, default=512, help="k-means clusters (the codebook size)")
    u.add_argument("--pool", type=int, default=2, help="Whisper frames (50 Hz) per unit: 2 -> 25/s, 4 -> 12.5/s")
    u.add_argument("--whisper", default="tiny.en")
    u.add_argument("--units-from", help="keep the units (centroids, pool, Whisper) of this units codec file and "
                   "fit only a new decoder (its voice's utterances only)")
    u.add_argument("--per-voice", type=int, default=300, help="fit utterances per fit voice")
    u.add_argument("--voice", default="piper/joe", help="the voice the decoder speaks with (a fit voice)")
    u.add_argument("--max-vectors", type=int, default=200_000, help="subsample for k-means")
    u.add_argument("--gl-iters", type=int, default=32)
    u.add_argument("--steps", type=int, default=3000, help="refiner steps")
    u.add_argument("--batch", type=int, default=32)
    u.add_argument("--crop", type=int, default=128, help="mel frames per training crop")
    u.add_argument("--lr", type=float, default=2e-3)
    u.add_argument("--channels", type=int, default=192)
    u.add_argument("--blocks", type=int, default=6)
    u.add_argument("--kernel", type=int, default=5)
    u.add_argument("--right", type=int, default=1, help="frames each refiner block looks ahead")
    u.add_argument("--max-seconds", type=float, default=None, help="stop the refiner's training after this long")
    u.add_argument("--threads", type=int, default=1)
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--out", required=True)
    u.set_defaults(func=cmd_fit_units)

"""`deeptalk-codec`: fit the offline codec, evaluate a codec on held-out speech, round-trip a file.

    deeptalk-codec fit  --per-voice 300 --codebooks 8 --codebook-size 1024 --stack 4
    deeptalk-codec eval --n 100 --out benchmarks/results/codec_eval.json
    deeptalk-codec roundtrip in.wav out.wav [--codec offline]

`eval` transcribes, with Whisper tiny.en, held-out speech (sentences and voices the codec
was not fitted on) three ways: the original audio, the unquantised log-mel through the
same vocoder (the ceiling), and the codec round trip; it reports corpus and mean
per-utterance WER with bootstrap 95 % CIs, and encode/decode time per second of audio.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

from deeptalk.speech import codec_data, units_fit
from deeptalk.speech.codec_loader import load_codec
from deeptalk.speech.speech_wer import WhisperASR, package_versions, paired_gap, wer_counts, wer_summary

ASR_RATE = 16000
# what eval transcribes: the speech, its unquantised log-mel through the vocoder (the
# ceiling), the codec round trip, and (codecs with a mel refiner) the round trip without it
AUDIO_VARIANTS = ("original", "unquantized", "roundtrip", "roundtrip_unrefined")
FEATURE_SCALE = 24.0


def _seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- fit -----------------------------------------------------------------------------

def cmd_fit(args) -> dict:
    from deeptalk.speech.codec_offline import OfflineCodec, fit_residual_kmeans
    from deeptalk.speech.vocoder import MelConfig

    _seed_all(args.seed)
    t0 = time.time()
    mel_cfg = MelConfig()
    if args.features:            # fit from features saved by an earlier `fit --features-out`
        vectors, mean, std, data_info = load_features(args.features)
        if int(data_info["stack"]) != args.stack:
            raise ValueError(f"{args.features}: features were stacked {data_info['stack']}, not {args.stack}")
    else:
        vectors, mean, std, data_info = fit_features(args, mel_cfg)
    if args.features_out:
        # int8 in steps of 1/24 (z-scores clipped to +-5.3): 4x smaller than fp32, the
        # rounding (<= 0.02) is far below the quantiser's error
        q = np.clip(np.round(vectors * FEATURE_SCALE), -127, 127).astype(np.int8)
        np.savez(args.features_out, vectors_int8=q, scale=FEATURE_SCALE, mean=mean, std=std,
                 data_info=json.dumps(data_info))
        print(f"wrote {args.features_out}: {vectors.shape[0]} vectors")
        return data_info
    t_data = time.time() - t0
    projection = None
    if args.pca_dims:
        from deeptalk.speech.codec_offline import pca_projection

        projection = pca_projection(vectors, args.pca_dims)
        vectors = vectors @ projection
    books = fit_residual_kmeans(vectors, args.codebooks, args.codebook_size, seed=args.seed,
                                impl=args.kmeans, device=args.device)
    codec = OfflineCodec(books, mean, std, stack=args.stack, mel=mel_cfg, gl_iters=args.gl_iters,
                         projection=projection)
    manifest = {
        "codec": "offline residual k-means over stacked log-mel + Griffin-Lim",
        "training_data": data_info,
        "heldout_for_eval": {"sentences": "bsdgames quiz", "voices": [f"{e}/{v}" for e, v in codec_data.HELDOUT_VOICES]},
        "kmeans": {"impl": args.kmeans, "device": args.device,
                   "settings": "MiniBatchKMeans batch 4096, 30 epochs" if args.kmeans == "sklearn"
                   else "Lloyd, k-means++ start, 50 iterations"},
        "pca_dims": args.pca_dims,
        "seed": args.seed,
        "fit_seconds": {"data": round(t_data, 1), "total": round(time.time() - t0, 1)},
        "versions": {**package_versions("numpy", "torch", "scikit-learn", "librosa", "piper-tts", "safetensors"),
                     "python": platform.python_version()},
        "command": "deeptalk-codec " + " ".join(sys.argv[1:]),
    }
    path = codec.save(args.out, manifest)
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1e6:.2f} MB): {codec.num_codebooks} x {codec.codebook_size}, "
          f"{codec.frame_rate:.2f} positions/s, fitted on {data_info['hours']} h in {time.time() - t0:.0f} s")
    return codec.manifest


def load_features(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Vectors, mean, std and data info written by `fit --features-out`."""
    f = np.load(path)
    vectors = (f["vectors_int8"].astype(np.float32) / float(f["scale"]) if "vectors_int8" in f
               else f["vectors"].astype(np.float32))
    info = json.loads(str(f["data_info"]))
    return vectors, f["mean"], f["std"], info


# --- refine --------------------------------------------------------------------------

def cmd_refine(args) -> dict:
    """Train the mel refiner on (quantised, exact) pairs of the refiner speech; save codec + refiner."""
    import torch
    from tqdm import tqdm

    from deeptalk.speech.codec_offline import OfflineCodec
    from deeptalk.speech.mel_refiner import RefinerConfig, train_refiner, validation_l1
    from deeptalk_common.tts import TTSError

    _seed_all(args.seed)
    codec = OfflineCodec.load(None if args.codec == "offline" else args.codec, refine=False)
    utts = codec_data.refiner_utterances(args.per_voice, seed=args.seed)

    feats, seconds, failed = [], 0.0, []
    for u in tqdm(utts, desc="refiner speech (tts + log-mel)", unit="utt"):
        try:
            wav = codec_data.load_audio(u, codec.sample_rate)
        except TTSError as exc:   # a voice that cannot say a sentence: counted and recorded
            failed.append({"id": u.id, "text": u.text, "error": str(exc)})
            continue
        seconds += len(wav) / codec.sample_rate
        feats.append(codec.features(wav, codec.sample_rate))     # normalised with the codec's stats
    if failed:
        print(f"TTS failed on {len(failed)}/{len(utts)} utterances ({len(failed) / len(utts):.1%}); "
              f"first: {failed[0]['id']}: {failed[0]['error']}", file=sys.stderr)
    if len(failed) > 0.05 * len(utts):
        raise RuntimeError(f"TTS failed on {len(failed)}/{len(utts)} refiner utterances (over 5 %): {failed[:3]}")
    exact = np.concatenate(feats)
    quantised = codec.dequantize(codec.quantize(exact))
    val = {}
    for engine, voice in codec_data.HELDOUT_VOICES + codec_data.SEEN_VOICE:
        held = codec_data.eval_utterances(args.val_n, seed=args.seed + 1, voices=((engine, voice),))
        x = np.concatenate([codec.features(*codec_data.synthesize(u.text, u.engine, u.voice)) for u in held])
        val[f"{engine}/{voice}"] = (codec.dequantize(codec.quantize(x)), x)
    cfg = RefinerConfig(n_mels=codec.mel_cfg.n_mels, stack=codec.stack, channels=args.channels,
                        blocks=args.blocks, kernel=args.kernel, right=args.right)
    torch.set_num_threads(args.threads)
    model, record = train_refiner(exact, quantised, [len(f) for f in feats], cfg, steps=args.steps,
                                  batch=args.batch, crop=args.crop, lr=args.lr, seed=args.seed,
                                  max_seconds=args.max_seconds)
    record["val_heldout_quiz"] = {k: validation_l1(model, q, x, cfg) for k, (q, x) in val.items()}
    record["val_note"] = (f"{args.val_n} quiz sentences per voice drawn with seed {args.seed + 1}: "
                          "held out from fitting; `deeptalk-codec eval` measures WER on its own draw")
    record["training_data"] = {"recipe": "deeptalk.speech.codec_data.refiner_utterances", "per_voice": args.per_voice,
                               "voices": sorted({f"{u.engine}/{u.voice}" for u in utts}),
                               "pitch_shifted_copies": [f"{e}/{v} +{s:g} semitones" for e, v, s in codec_data.FIT_PITCH_SHIFTED],
                               "utterances": len(utts) - len(failed), "hours": round(seconds / 3600, 3),
                               "positions": int(len(exact)), "tts_failed": failed,
                               "tts_failure_rate": len(failed) / len(utts)}
    record["command"] = "deeptalk-codec " + " ".join(sys.argv[1:])
    record["versions"] = package_versions("numpy", "torch", "librosa", "piper-tts")
    codec.refiner, codec.refine = model, True
    manifest = {k: v for k, v in codec.manifest.items() if k != "refiner"}
    manifest["codec"] = "offline residual k-means over stacked log-mel + mel refiner + Griffin-Lim"
    path = codec.save(args.out, {**manifest, "refiner": record})
    print(json.dumps(record["val_heldout_quiz"], indent=1))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): refiner {record['parameters']} parameters, "
          f"{record['steps']} steps in {record['seconds']:.0f} s")
    return record


def fit_features(args, mel_cfg):
    """Synthesise the fit speech and turn it into normalised stacked log-mel vectors."""
    from tqdm import tqdm

    from deeptalk.speech.codec_offline import stack_frames
    from deeptalk.speech.vocoder import MelFrontend

    front = MelFrontend(mel_cfg)
    utts = codec_data.fit_utterances(args.per_voice, seed=args.seed)
    spf = mel_cfg.hop_length * args.stack
    mels, seconds = [], 0.0
    for u in tqdm(utts, desc="fit speech (tts + log-mel)", unit="utt"):
        wav = codec_data.load_audio(u, mel_cfg.sample_rate)
        seconds += len(wav) / mel_cfg.sample_rate
        mels.append(front.log_mel(np.pad(wav, (0, (-len(wav)) % spf))))
    allmel = np.concatenate(mels, axis=1)
    mean, std = allmel.mean(axis=1), allmel.std(axis=1) + 1e-5
    vectors = np.concatenate([stack_frames((m - mean[:, None]) / std[:, None], args.stack) for m in mels])
    total = len(vectors)
    if len(vectors) > args.max_vectors:
        rng = np.random.default_rng(args.seed)
        vectors = vectors[rng.choice(len(vectors), args.max_vectors, replace=False)]
    info = {"recipe": "deeptalk.speech.codec_data.fit_utterances",
            "sentences": "MMLU CoT exemplars shipped in lm-eval + templated sentences",
            "voices": [f"{e}/{v}" for e, v in codec_data.FIT_VOICES], "per_voice": args.per_voice,
            "pitch_shifted_copies": [f"{e}/{v} +{s:g} semitones" for e, v, s in codec_data.FIT_PITCH_SHIFTED],
            "utterances": len(utts), "hours": round(seconds / 3600, 3), "stack": args.stack,
            "vectors_total": int(total), "vectors_used": int(len(vectors)), "seed": args.seed,
            "feature_versions": package_versions("numpy", "torch", "librosa", "piper-tts", "soundfile")}
    return vectors, mean, std, info


# --- eval ----------------------------------------------------------------------------

def _to16k(wav: np.ndarray, sr: int) -> np.ndarray:
    import librosa

    return wav if sr == ASR_RATE else librosa.resample(wav, orig_sr=sr, target_sr=ASR_RATE).astype(np.float32)


def stream_gap(codec, codes: np.ndarray, first: int = 3, chunk: int = 8, **kw) -> dict:
    """Chunked (streaming) decode vs the full decode: lengths and log-mel distance."""
    full = codec.decode(codes)
    dec = codec.stream_decoder(**kw)
    parts = [dec.push(codes[:, :first])]
    for s in range(first, codes.shape[1], chunk):
        parts.append(dec.push(codes[:, s : s + chunk]))
    parts.append(dec.flush())
    streamed = np.concatenate(parts)
    out = {"full_samples": int(len(full)), "stream_samples": int(len(streamed))}
    if hasattr(codec, "front"):
        a, b = codec.front.log_mel(full), codec.front.log_mel(streamed)
        out["log_mel_mae"] = float(np.abs(a - b).mean())
    return out


def evaluate(codec, utts, asr, progress: bool = True, seed: int = 0, stream_check: int = 10) -> dict:
    """Per-utterance transcripts and WER for original / unquantised ceiling / round trip."""
    from tqdm import tqdm
    from whisper.normalizers import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    rows, failures = [], []
    warm = np.sin(np.arange(codec.sample_rate) * 0.05).astype(np.float32)
    codec.decode(codec.encode(warm, codec.sample_rate))   # first calls build caches: keep them out of the timings
    for i, u in enumerate(tqdm(utts, desc="codec eval", unit="utt", disable=not progress)):
        try:
            wav, sr = codec_data.synthesize(u.text, u.engine, u.voice)
            t = time.perf_counter()
            codes = codec.encode(wav, sr)
            t_enc = time.perf_counter() - t
            t = time.perf_counter()
            rt = codec.decode(codes)
            t_dec = time.perf_counter() - t
            row = {"id": u.id, "voice": f"{u.engine}/{u.voice}", "text": u.text,
                   "seconds": len(wav) / sr, "positions": int(codes.shape[1]),
                   "encode_s": t_enc, "decode_s": t_dec}
            variants = {"original": (wav, sr), "roundtrip": (rt, codec.sample_rate)}
            if hasattr(codec, "features"):     # ceiling: same vocoder, no quantisation
                ceil = codec.vocode(codec.vectors_to_log_mel(codec.features(wav, sr)))
                variants["unquantized"] = (ceil, codec.sample_rate)
            if getattr(codec, "refine", False):   # what the mel refiner adds: the same codes without it
                raw = codec.vocode(codec.vectors_to_log_mel(codec.dequantize(codes)))
                variants["roundtrip_unrefined"] = (raw, codec.sample_rate)
            for k, (w, r) in variants.items():
                hyp = asr(_to16k(w, r))
                e, n = wer_counts(u.text, hyp, norm)
                row[f"{k}_hyp"], row[f"{k}_errors"], row["ref_words"] = hyp, e, n
            if i < stream_check:
                row["stream"] = stream_gap(codec, codes)
            rows.append(row)
        except Exception as exc:  # counted and reported, never silently skipped
            failures.append({"id": u.id, "error": f"{type(exc).__name__}: {exc}"})
    if not rows:
        raise RuntimeError(f"codec eval: every utterance failed, first: {failures[:1]}")
    return {"rows": rows, "failures": failures}


def summarize(rows, failures, seed: int = 0) -> dict:
    import pandas as pd

    df = pd.DataFrame(rows)
    out = {"n_utterances": int(len(df) + len(failures)), "failed": len(failures),
           "failure_rate": len(failures) / (len(df) + len(failures)), "failures": failures,
           "audio_seconds": float(df.seconds.sum())}
    groups = {"all": df, **{v: g for v, g in df.groupby("voice")}}
    for name, g in groups.items():
        words = g.ref_words.to_numpy(float)
        entry = {}
        for k in AUDIO_VARIANTS:
            if f"{k}_errors" in g:
                entry[k] = wer_summary(g[f"{k}_errors"].to_numpy(float), words, seed=seed)
        if "unquantized" in entry:
            entry["roundtrip_minus_unquantized"] = paired_gap(
                g.roundtrip_errors.to_numpy(float), g.unquantized_errors.to_numpy(float), words, seed=seed)
        if "roundtrip_unrefined" in entry:
            entry["roundtrip_minus_unrefined"] = paired_gap(
                g.roundtrip_errors.to_numpy(float), g.roundtrip_unrefined_errors.to_numpy(float), words, seed=seed)
        out.setdefault("wer", {})[name] = entry
    out["speed"] = {"encode_s_per_audio_s": float(df.encode_s.sum() / df.seconds.sum()),
                    "decode_s_per_audio_s": float(df.decode_s.sum() / df.seconds.sum()),
                    "decode_x_realtime": float(df.seconds.sum() / df.decode_s.sum())}
    if "stream" in df:
        s = [x for x in df["stream"] if isinstance(x, dict)]
        out["streaming"] = {"checked": len(s), "lengths_equal": all(x["full_samples"] == x["stream_samples"] for x in s),
                            "log_mel_mae_mean": float(np.mean([x.get("log_mel_mae", np.nan) for x in s])),
                            "schedule": "first 3 positions, then 8 per chunk, left_context 8, lookahead 1"}
    return out


def cmd_eval(args) -> dict:
    import torch

    _seed_all(args.seed)
    codec = load_codec(args.codec, **({"gl_iters": args.gl_iters} if args.gl_iters else {}))
    voices = codec_data.HELDOUT_VOICES + (() if args.no_seen_voice else codec_data.SEEN_VOICE)
    utts = codec_data.eval_utterances(args.n, seed=args.seed, voices=voices)
    asr = WhisperASR()
    res = evaluate(codec, utts, asr, seed=args.seed)
    summary = summarize(res["rows"], res["failures"], seed=args.seed)
    heldout = [f"{e}/{v}" for e, v in codec_data.HELDOUT_VOICES]
    report = {
        "codec": codec.describe(),
        "positions_per_s": codec.frame_rate,
        "tokens_per_s": codec.frame_rate * codec.num_codebooks,
        "eval_data": {"sentences": "bsdgames quiz (held out)", "heldout_voices": heldout,
                      "seen_voice_unseen_sentences": [] if args.no_seen_voice else [f"{e}/{v}" for e, v in codec_data.SEEN_VOICE],
                      "n_per_voice": args.n, "seed": args.seed},
        "asr": asr.describe,
        "normalizer": "whisper.normalizers.EnglishTextNormalizer",
        "bootstrap": {"n": 1000, "seed": args.seed},
        **summary,
        "hardware": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "machine": platform.machine(), "load_average_1m_at_end": os.getloadavg()[0]},
        "versions": package_versions("numpy", "torch", "librosa", "jiwer", "openai-whisper", "faster-whisper"),
        "command": "deeptalk-codec " + " ".join(sys.argv[1:]),
        "per_utterance": res["rows"] if args.per_utterance else None,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    _print_table(report)
    return report


def _print_table(report: dict) -> None:
    from tabulate import tabulate

    rows = []
    for group, entry in report["wer"].items():
        for k in AUDIO_VARIANTS:
            if k in entry:
                e = entry[k]
                rows.append([group, k, f"{100 * e['corpus_wer']:.2f}",
                             "[{:.2f}, {:.2f}]".format(*(100 * x for x in e["corpus_wer_ci95"])),
                             f"{100 * e['mean_utt_wer']:.2f}", e["n"]])
    print(tabulate(rows, headers=["voice", "audio", "corpus WER %", "95% CI", "mean utt WER %", "n"]))
    sp = report["speed"]
    print(f"{report['positions_per_s']:.2f} positions/s x {report['codec']['num_codebooks']} codebooks; "
          f"encode {sp['encode_s_per_audio_s']:.4f} s/s, decode {sp['decode_s_per_audio_s']:.4f} s/s "
          f"({sp['decode_x_realtime']:.1f}x real time); failures {report['failed']}/{report['n_utterances']}")


def cmd_roundtrip(args) -> None:
    import soundfile as sf

    codec = load_codec(args.codec)
    wav, sr = sf.read(args.input, dtype="float32", always_2d=True)
    codes = codec.encode(wav.mean(axis=1), sr)
    sf.write(args.output, codec.decode(codes), codec.sample_rate)
    print(f"{args.input}: {codes.shape[1]} positions x {codes.shape[0]} codebooks -> {args.output}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="deeptalk-codec", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit the offline codec on synthetic speech")
    f.add_argument("--per-voice", type=int, default=300, help="utterances per fit voice")
    f.add_argument("--codebooks", type=int, default=8)
    f.add_argument("--codebook-size", type=int, default=1024)
    f.add_argument("--stack", type=int, default=4, help="log-mel frames per position (4 -> 21.5/s)")
    f.add_argument("--max-vectors", type=int, default=200_000, help="subsample for k-means")
    f.add_argument("--gl-iters", type=int, default=32)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--pca-dims", type=int, default=None, help="quantise only the top principal directions")
    f.add_argument("--kmeans", choices=["sklearn", "torch"], default="sklearn")
    f.add_argument("--device", default="cpu", help="torch k-means device (cuda where a GPU is at hand)")
    f.add_argument("--features-out", help="write the fit vectors (.npz) and stop")
    f.add_argument("--features", help="fit from vectors written by --features-out")
    f.add_argument("--out", default=str(Path(__file__).resolve().parent / "assets" / "offline_codec.safetensors"))
    e = sub.add_parser("eval", help="round-trip WER on held-out speech")
    e.add_argument("--codec", default="offline", help="offline | snac | path to a codec file")
    e.add_argument("--n", type=int, default=100, help="held-out sentences per voice")
    e.add_argument("--gl-iters", type=int, default=None)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--no-seen-voice", action="store_true", help="only voices unseen in fitting")
    e.add_argument("--per-utterance", action="store_true", help="keep transcripts in the JSON")
    e.add_argument("--out", default="benchmarks/results/codec_eval.json")
    rf = sub.add_parser("refine", help="train the mel refiner (decoding only; the codes stay the same)")
    rf.add_argument("--per-voice", type=int, default=150, help="utterances per voice (fit voices + female voices)")
    rf.add_argument("--codec", default="offline", help="the codec whose codes it refines")
    rf.add_argument("--steps", type=int, default=3000)
    rf.add_argument("--batch", type=int, default=32)
    rf.add_argument("--crop", type=int, default=128, help="frames per training crop")
    rf.add_argument("--lr", type=float, default=2e-3)
    rf.add_argument("--channels", type=int, default=192)
    rf.add_argument("--blocks", type=int, default=4)
    rf.add_argument("--kernel", type=int, default=5)
    rf.add_argument("--right", type=int, default=1, help="frames each block looks ahead")
    rf.add_argument("--val-n", type=int, default=30, help="held-out sentences per eval voice for the L1 check")
    rf.add_argument("--threads", type=int, default=1)
    rf.add_argument("--max-seconds", type=float, default=None)
    rf.add_argument("--seed", type=int, default=0)
    rf.add_argument("--out", default=str(Path(__file__).resolve().parent / "assets" / "offline_codec.safetensors"))
    units_fit.add_parser(sub)
    r = sub.add_parser("roundtrip", help="encode + decode a wav file")
    r.add_argument("input")
    r.add_argument("output")
    r.add_argument("--codec", default="offline")
    args = p.parse_args(argv)
    commands = {"fit": cmd_fit, "refine": cmd_refine, "eval": cmd_eval, "roundtrip": cmd_roundtrip}
    (commands.get(args.cmd) or args.func)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

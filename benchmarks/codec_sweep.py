"""Choose the offline codec's decoder settings by measurement: Griffin-Lim iterations and
magnitude power, each evaluated like `deeptalk-codec eval` (same held-out utterances).

    .venv/bin/python benchmarks/codec_sweep.py --n 40 [--codec PATH] [--out benchmarks/results/codec_sweep.json]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from tabulate import tabulate

    from deeptalk.speech import codec_data
    from deeptalk.speech.codec_cli import WhisperASR, _seed_all, evaluate, summarize
    from deeptalk.speech.codec_loader import load_codec

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--codec", default="offline")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", default="16:1.0,32:1.0,64:1.0,32:1.3",
                   help="comma list of gl_iters:gl_power")
    p.add_argument("--out", default="benchmarks/results/codec_sweep.json")
    args = p.parse_args()

    asr = WhisperASR()
    utts = codec_data.eval_utterances(args.n, seed=args.seed,
                                      voices=codec_data.HELDOUT_VOICES + codec_data.SEEN_VOICE)
    results, rows = [], []
    for item in args.settings.split(","):
        iters, power = item.split(":")
        _seed_all(args.seed)
        codec = load_codec(args.codec, gl_iters=int(iters), gl_power=float(power))
        res = evaluate(codec, utts, asr, stream_check=0)
        s = summarize(res["rows"], res["failures"], seed=args.seed)
        results.append({"gl_iters": int(iters), "gl_power": float(power), **{k: s[k] for k in ("wer", "speed", "failed")}})
        w = s["wer"]["all"]
        rows.append([iters, power, f"{100 * w['unquantized']['corpus_wer']:.2f}", f"{100 * w['roundtrip']['corpus_wer']:.2f}",
                     f"{100 * w['original']['corpus_wer']:.2f}", f"{s['speed']['decode_x_realtime']:.1f}"])
    print(tabulate(rows, headers=["GL iters", "power", "unquantised WER %", "round-trip WER %", "original WER %", "decode x RT"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"codec": args.codec, "n_per_voice": args.n, "asr": asr.describe,
                                          "voices": [u.voice for u in utts[:: args.n]], "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

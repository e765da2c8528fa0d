"""Offline codec speed on this machine: encode / decode seconds per second of audio, and the
latency of a streaming decoder's first chunk (what time-to-first-audio pays).

    .venv/bin/python benchmarks/codec_speed.py [--codec offline] [--repeats 5] [--out benchmarks/results/codec_speed.json]

Medians over repeats, after one warm-up; the machine's load average is recorded with them
(the CPU here is shared, so timings move with it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch

    from deeptalk.speech.codec_loader import load_codec
    from deeptalk_common.tts import synthesize

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--codec", default="offline")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--first-chunk", type=int, default=3, help="positions in the first streamed chunk")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="benchmarks/results/codec_speed.json")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    codec = load_codec(args.codec)
    text = "The capital of Australia is Canberra, and a young kangaroo is called a joey."
    wav, sr = synthesize(text, "piper", "joe")
    seconds = len(wav) / sr
    codes = codec.encode(wav, sr)
    codec.decode(codes)                                          # warm-up

    spread = {}

    def timed(fn, name):
        out = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        spread[name] = {"min_s": min(out), "median_s": statistics.median(out), "max_s": max(out)}
        return statistics.median(out)

    returned = []

    def first_chunk():
        dec = codec.stream_decoder()
        audio = dec.push(codes[:, : args.first_chunk])
        assert len(audio) > 0
        returned.append(len(audio))

    enc = timed(lambda: codec.encode(wav, sr), "encode")
    dec = timed(lambda: codec.decode(codes), "decode")
    first = timed(first_chunk, "first_chunk")
    res = {
        "codec": codec.describe(), "audio_seconds": seconds, "positions": int(codes.shape[1]),
        "encode_s_per_audio_s": enc / seconds, "decode_s_per_audio_s": dec / seconds,
        "decode_x_realtime": seconds / dec,
        "first_chunk": {"positions": args.first_chunk, "seconds": first,
                        "audio_ms_returned": 1000 * returned[-1] / codec.sample_rate,
                        "decoder": "stream_decoder() defaults: left_context 8, lookahead 1, crossfade spf/4"},
        "repeats": args.repeats, "statistic": "median", "spread": spread,
        "decode_x_realtime_best": seconds / spread["decode"]["min_s"],
        "hardware": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "load_average_1m": os.getloadavg()[0], "machine": platform.machine()},
        "command": "benchmarks/codec_speed.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("encode_s_per_audio_s", "decode_s_per_audio_s", "decode_x_realtime",
                                          "decode_x_realtime_best", "first_chunk", "hardware")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Phone units (deeptalk/speech/codec_phones.py): intelligibility decoded whole and streamed.

Whisper tiny.en corpus WER of Piper joe speaking the phonemes of held-out hearing-dev sentences
(no task holds them), decoded whole (deterministic, and with Piper's sampling) and through the
streaming decoder fed 3 phonemes at a time, for several chunk sizes; and positions per second.

    python benchmarks/phones_streaming.py --n 100 --out benchmarks/results/phones_streaming.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    from whisper.normalizers import EnglishTextNormalizer

    from deeptalk.speech.codec_phones import PhoneCodec, PhoneStreamDecoder
    from deeptalk.speech.encoder import prepare_audio
    from deeptalk.speech.speech_wer import WhisperASR, package_versions, wer_counts
    from deeptalk.training.units_data import hearing_shard_rows, hearing_shards

    _, dev_file = hearing_shards(16000, 300, 0)
    texts = [r["text"] for r in hearing_shard_rows(dev_file)][: a.n]
    asr, norm = WhisperASR(), EnglishTextNormalizer()

    def wer(codec, speak) -> dict:
        errors = words = 0
        positions = seconds = synth = 0.0
        for t in texts:
            codes = codec.encode_text(t)
            t0 = time.perf_counter()
            audio = speak(codec, codes)
            synth += time.perf_counter() - t0
            positions, seconds = positions + codes.shape[1], seconds + len(audio) / codec.sample_rate
            e, w = wer_counts(t, asr(prepare_audio(audio, codec.sample_rate).samples), norm)
            errors, words = errors + e, words + w
        return {"corpus_wer": round(errors / words, 4), "words": words, "positions_per_s": round(positions / seconds, 2),
                "decode_seconds_per_audio_second": round(synth / seconds, 4)}

    def streamed(min_first: int, min_chunk: int):
        def speak(codec, codes):
            dec = PhoneStreamDecoder(codec, min_first=min_first, min_chunk=min_chunk)
            parts = [dec.push(codes[:, k:k + 3]) for k in range(0, codes.shape[1], 3)]
            return np.concatenate(parts + [dec.flush()])
        return speak

    det, sampled = PhoneCodec.load(), PhoneCodec.load(noise_scale=0.667, noise_w=0.8)
    rows = {"whole, deterministic": wer(det, lambda c, x: c.decode(x)),
            "whole, Piper's sampling (0.667 / 0.8)": wer(sampled, lambda c, x: c.decode(x)),
            "streamed: first word alone, then the rest": wer(det, streamed(1, 10 ** 6)),
            "streamed: >= 12 then >= 24 phonemes (default)": wer(det, streamed(12, 24)),
            "streamed: >= 20 then >= 40 phonemes": wer(det, streamed(20, 40))}
    for k, v in rows.items():
        print(f"{k:50s} {v}", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"n": len(texts), "data": "hearing dev shard (Piper-read hearing-corpus sentences)",
                                 "asr": asr.describe, "codec": det.describe(), "rows": rows,
                                 **package_versions("piper-tts")}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

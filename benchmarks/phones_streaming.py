"""Phone units (deeptalk/speech/codec_phones.py): intelligibility decoded whole and streamed.

Whisper tiny.en WER (corpus, mean per utterance, and how often the first word is missed) of
Piper joe speaking phonemes decoded whole (deterministic, and with Piper's sampling) and
through the streaming decoder for several chunk sizes (`--chunks first:later,...`, in phonemes:
the first chunk waits for `first`, each later one for `later`; fed 3 phonemes at a time); and
positions per second. The phonemes are those of held-out hearing-dev sentences (no task holds
them), or (`--codes POINT.json`) the codes a model spoke, saved by
benchmarks/speech_units_probe.py, with a paired bootstrap of each row against the first.

    python benchmarks/phones_streaming.py --n 100 --out benchmarks/results/phones_streaming.json
    python benchmarks/phones_streaming.py --codes benchmarks/results/speaking/names_probe/sentences/point-00000.json \\
        --no-sampling --chunks 12:24,8:24,4:24 --out benchmarks/results/phones_streaming_model_codes.json
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


def paired_ci(diffs: np.ndarray, seed: int = 0, n_boot: int = 2000) -> list[float]:
    rng = np.random.default_rng(seed)
    boots = [diffs[rng.integers(0, len(diffs), len(diffs))].mean() for _ in range(n_boot)]
    return [round(float(np.percentile(boots, 2.5)), 4), round(float(np.percentile(boots, 97.5)), 4)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="hearing-dev sentences (without --codes)")
    ap.add_argument("--codes", type=Path, default=None, help="a probe point's saved answers (rows with codes)")
    ap.add_argument("--chunks", default="12:24,8:24,4:24,1:24,20:40",
                    help="streamed rows: first:later phonemes, comma separated; 1:0 = the first word alone, then the rest")
    ap.add_argument("--no-sampling", action="store_true", help="leave out the row decoded whole with Piper's sampling")
    ap.add_argument("--threads", type=int, default=1, help="Whisper's CPU threads")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    from whisper.normalizers import EnglishTextNormalizer

    from deeptalk.speech.codec_phones import PhoneCodec, PhoneStreamDecoder
    from deeptalk.speech.encoder import prepare_audio
    from deeptalk.speech.speech_wer import WhisperASR, package_versions, wer_counts

    det = PhoneCodec.load()
    if a.codes:
        saved = [r for r in json.loads(a.codes.read_text())["rows"] if r.get("codes")]
        items = [(r["text"], np.asarray(r["codes"], np.int64)) for r in saved]
        data = f"codes a model spoke, saved in {a.codes}"
    else:
        from deeptalk.hearing_corpus import hearing_sentences

        # the hearing dev shard's sentences (deeptalk/hearing.py: the first 300 of the 16 300 drawn with seed 0)
        texts = hearing_sentences(16300, 0)[: a.n]
        items = [(t, det.encode_text(t)) for t in texts]
        data = "hearing dev shard (hearing-corpus sentences no task holds), their phonemes"
    asr, norm = WhisperASR(threads=a.threads), EnglishTextNormalizer()

    def score(codec, speak) -> dict:
        errors = words = first_missed = 0
        positions = seconds = synth = 0.0
        per = []
        for text, codes in items:
            t0 = time.perf_counter()
            audio = speak(codec, codes)
            synth += time.perf_counter() - t0
            positions, seconds = positions + codes.shape[1], seconds + len(audio) / codec.sample_rate
            hyp = asr(prepare_audio(audio, codec.sample_rate).samples)
            e, w = wer_counts(text, hyp, norm)
            errors, words = errors + e, words + w
            per.append(e / max(w, 1))
            first_missed += norm(text).split()[:1] != norm(hyp).split()[:1]
        return {"corpus_wer": round(errors / words, 4), "wer_mean": round(float(np.mean(per)), 4), "words": words,
                "first_word_missed": first_missed, "positions_per_s": round(positions / max(seconds, 1e-9), 2),
                "decode_seconds_per_audio_second": round(synth / max(seconds, 1e-9), 4), "per_utterance": per}

    def streamed(min_first: int, min_chunk: int):
        def speak(codec, codes):
            dec = PhoneStreamDecoder(codec, min_first=min_first, min_chunk=min_chunk or 10 ** 9)
            parts = [dec.push(codes[:, k:k + 3]) for k in range(0, codes.shape[1], 3)]
            return np.concatenate(parts + [dec.flush()])
        return speak

    runs = {"whole, deterministic": (det, lambda c, x: c.decode(x))}
    if not a.no_sampling:
        runs["whole, Piper's sampling (0.667 / 0.8)"] = (PhoneCodec.load(noise_scale=0.667, noise_w=0.8),
                                                         lambda c, x: c.decode(x))
    for spec in a.chunks.split(","):
        first, later = (int(x) for x in spec.split(":"))
        name = (f"streamed: >= {first} then >= {later} phonemes" if later else
                f"streamed: >= {first} phonemes to a word end, then the rest")
        runs[name] = (det, streamed(first, later))
    rows, base = {}, None
    for name, (codec, speak) in runs.items():
        row = score(codec, speak)
        per = np.asarray(row["per_utterance"])
        row["per_utterance"] = [round(x, 4) for x in row["per_utterance"]]   # for paired comparisons of any two rows
        if base is None:
            base = per
        else:   # each row against the whole, deterministic decode, utterance by utterance
            row["wer_mean_minus_whole"] = round(float((per - base).mean()), 4)
            row["wer_mean_minus_whole_ci"] = paired_ci(per - base)
        rows[name] = row
        print(f"{name:55s} {row}", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"n": len(items), "data": data, "asr": asr.describe, "codec": det.describe(),
                                 "fed": "3 phonemes at a time", "rows": rows,
                                 **package_versions("piper-tts")}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

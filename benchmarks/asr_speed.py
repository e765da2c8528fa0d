"""How fast the ASR backends transcribe, in seconds of compute per second of audio.

Clips: the human recordings in /usr/share/sounds/alsa and, when `deeptalk_common.tts`
is available, a few sentences spoken by Piper (whose texts also give a WER). Each backend
is loaded once, warmed up on one clip, then timed over all clips `--repeats` times with
the transcript cache off; the median pass is reported. The 1-minute load average is
recorded at start and end: on a shared machine, figures taken under load are not speeds.

    .venv/bin/python benchmarks/asr_speed.py                       # tiny.en, both backends
    .venv/bin/python benchmarks/asr_speed.py --model base --repeats 1
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import soundfile as sf

from deeptalk_eval.api import Audio
from deeptalk_eval.scoring.asr import BACKENDS, make_transcriber

# Sentences of the kind the spoken-QA tasks produce; their text is the WER reference.
PIPER_SENTENCES = [
    "The capital of France is Paris.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "George Washington was the first president of the United States.",
    "The chemical symbol for gold is Au, from the Latin word aurum.",
]


def load_clips(with_piper: bool) -> list[tuple[str, Audio, str | None]]:
    clips = []
    for path in sorted(glob.glob("/usr/share/sounds/alsa/*.wav")):
        x, sr = sf.read(path, dtype="float32")
        clips.append((f"alsa/{Path(path).name}", Audio(x, sr), None))
    if not clips:
        raise FileNotFoundError("no recordings in /usr/share/sounds/alsa (Debian package alsa-utils)")
    if with_piper:
        try:
            from deeptalk_common.tts import synthesize
        except ImportError as e:
            print(f"Piper sentences skipped: deeptalk_common.tts not importable ({e})")
        else:
            for i, text in enumerate(PIPER_SENTENCES):
                x, sr = synthesize(text, engine="piper", voice="joe")
                clips.append((f"piper/joe/{i}", Audio(x, sr), text))
    return clips


def bench_backend(backend: str, model: str, clips, repeats: int, threads: int) -> dict:
    cfg = {"backend": backend, "model": model, "cache": False}
    if backend == "faster-whisper":
        cfg["cpu_threads"] = threads
    asr = make_transcriber(cfg)
    t0 = time.perf_counter()
    _ = asr.model  # load (and, the first time, convert) the weights
    load_s = time.perf_counter() - t0
    asr(clips[0][1])  # warm-up: first-call allocations are not steady-state speed
    passes, transcripts = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        transcripts = asr.transcribe_many([a for _, a, _ in clips], progress=False)
        passes.append(time.perf_counter() - t0)
    audio_s = sum(a.duration for _, a, _ in clips)
    wall = statistics.median(passes)
    row = {
        "backend": backend,
        "model": model,
        "load_s": round(load_s, 3),
        "audio_s": round(audio_s, 3),
        "transcribe_s_median": round(wall, 3),
        "transcribe_s_passes": [round(p, 3) for p in passes],
        "seconds_per_audio_second": round(wall / audio_s, 4),
        "clips": [{"id": cid, "duration_s": round(a.duration, 3), "transcript": t}
                  for (cid, a, _), t in zip(clips, transcripts)],
        "asr": asr.info,
    }
    refs = [(ref, t) for (_, _, ref), t in zip(clips, transcripts) if ref is not None]
    if refs:
        import jiwer

        from deeptalk_eval.scoring.normalise import whisper_normalise, whisper_normaliser_name

        out = jiwer.process_words([whisper_normalise(r) for r, _ in refs],
                                  [whisper_normalise(t) for _, t in refs])
        row["piper_wer"] = {"corpus_wer": round(out.wer, 4), "n_utterances": len(refs),
                            "normaliser": whisper_normaliser_name()}
    asr.close()
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch / CTranslate2 threads (0: library default)")
    p.add_argument("--no-piper", action="store_true", help="only the alsa recordings")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "asr_speed.json"))
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_avg_start = os.getloadavg()[0]  # others' work on the same cores slows every figure
    clips = load_clips(with_piper=not args.no_piper)
    rows = [bench_backend(b, args.model, clips, args.repeats, args.threads) for b in args.backends]
    result = {
        "benchmark": "asr_speed",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "benchmarks/asr_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hardware": {"machine": platform.machine(), "processor": platform.processor(),
                     "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "load_avg_1m_at_start": round(load_avg_start, 2),
                     "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "n_clips": len(clips),
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        wer = f", Piper WER {r['piper_wer']['corpus_wer']:.3f}" if "piper_wer" in r else ""
        print(f"{r['backend']:15s} {r['model']}: {r['seconds_per_audio_second']:.3f} s per audio s "
              f"({r['audio_s']:.1f} s audio in {r['transcribe_s_median']:.2f} s, load {r['load_s']:.2f} s{wer})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

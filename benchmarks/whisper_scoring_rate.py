"""How fast the harness scores spoken outputs: seconds of audio transcribed per second of wall time.

The harness's default ASR (`--asr tiny.en`: openai-whisper, Whisper tiny.en converted from
the shipped CT2 weights) on real speech: Piper joe speaking the sentences of
tasks/tts/data/sentences.jsonl (clips of 2-6 s, the first `--clips`). The transcript cache is
off (as with --no-shared-cache), so every clip reaches the model. The model is loaded and
warmed up on one clip before timing. Modes:

- `one`: one clip at a time (`Transcriber.__call__`), as the runner scored before batching;
- `batched`: `Transcriber.transcribe_many` with `--batch-size`, as the runner scores now.

Both modes run on the same clips and their transcripts are compared. The 1-minute load
average is recorded at start and end: figures taken under load are not speeds.

    .venv/bin/python benchmarks/whisper_scoring_rate.py                  # both modes, 40 clips
    .venv/bin/python benchmarks/whisper_scoring_rate.py --modes one --clips 10
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from deeptalk_eval.api import Audio
from deeptalk_eval.scoring.asr import make_transcriber

REPO = Path(__file__).resolve().parents[1]
SENTENCES = REPO / "tasks" / "tts" / "data" / "sentences.jsonl"


def load_clips(n: int, lo: float = 2.0, hi: float = 6.0) -> list[tuple[str, Audio, str]]:
    from deeptalk_common.tts import synthesize

    clips = []
    for line in SENTENCES.read_text().splitlines():
        row = json.loads(line)
        wav, sr = synthesize(row["text"], engine="piper", voice="joe")
        if lo <= len(wav) / sr <= hi:
            clips.append((row["id"], Audio(wav, sr), row["text"]))
        if len(clips) >= n:
            break
    return clips


def time_mode(t, clips, mode: str, batch_size: int) -> tuple[float, list[str]]:
    audios = [a for _, a, _ in clips]
    calls = t.model_calls
    t0 = time.perf_counter()
    if mode == "one":
        texts = [t(a) for a in audios]
    else:
        texts = t.transcribe_many(audios, progress=False, batch_size=batch_size)
    wall = time.perf_counter() - t0
    assert t.model_calls - calls == len(clips), "the cache must be off: every clip transcribed"
    return wall, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--asr", default="tiny.en", help="[backend:]model, as --asr")
    ap.add_argument("--modes", nargs="+", default=["one", "batched"], choices=["one", "batched"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "whisper_scoring_rate.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    backend, sep, name = args.asr.rpartition(":")
    config = {"model": name, "cache": False}
    if sep:
        config["backend"] = backend
    clips = load_clips(args.clips)
    audio_s = sum(a.duration for _, a, _ in clips)
    t = make_transcriber({**config, "batch_size": args.batch_size})
    load_start = os.getloadavg()[0]
    t(clips[0][1])  # load + warm up

    out = {
        "what": "Whisper scoring rate of the harness's spoken outputs: audio seconds transcribed per wall second",
        "backend": t.backend, "model": t.model_name, "decoding": t.decoding, "asr": t.info,
        "clips": {"n": len(clips), "source": "Piper joe speaking tasks/tts/data/sentences.jsonl, 2-6 s each",
                  "ids": [c[0] for c in clips]},
        "total_audio_seconds": round(audio_s, 3),
        "threads": {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "cpus": os.cpu_count()},
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "transcript_cache": "off",
        "modes": {},
    }
    texts_by_mode = {}
    for mode in args.modes:
        la0 = os.getloadavg()[0]
        wall, texts = time_mode(t, clips, mode, args.batch_size)
        texts_by_mode[mode] = texts
        out["modes"][mode] = {
            "how": "one clip at a time (Transcriber.__call__, whisper.transcribe)" if mode == "one" else
                   f"Transcriber.transcribe_many, batch_size {args.batch_size}: {t.info['batching']['method']}",
            "batch_size": 1 if mode == "one" else args.batch_size,
            "wall_seconds": round(wall, 3), "rate_audio_s_per_wall_s": round(audio_s / wall, 3),
            "load_average_1min": {"start": la0, "end": os.getloadavg()[0]},
        }
        print(f"{mode}: {len(clips)} clips, {audio_s:.1f} s audio in {wall:.2f} s -> {audio_s / wall:.2f} x")
    if len(texts_by_mode) == 2:
        a, b = texts_by_mode["one"], texts_by_mode["batched"]
        differ = [clips[i][0] for i in range(len(clips)) if a[i].strip() != b[i].strip()]
        out["batched_vs_one"] = {"identical": len(clips) - len(differ), "differ": differ,
                                 "speedup": round(out["modes"]["one"]["wall_seconds"]
                                                  / out["modes"]["batched"]["wall_seconds"], 3)}
        print(f"transcripts identical: {len(clips) - len(differ)}/{len(clips)}; differ: {differ}")
    first = next(iter(texts_by_mode.values()))
    out["transcripts"] = {c[0]: {"reference": c[2], "transcript": first[i]} for i, c in enumerate(clips)}
    out["load_average_1min"] = {"start": load_start, "end": os.getloadavg()[0]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

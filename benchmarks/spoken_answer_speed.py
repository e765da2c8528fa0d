"""Seconds to answer written questions in speech, and what was answered (to compare two code versions).

The shipped reference, greedy, `--batch-size` questions handed over at a time, at most `--rows`
of them decoding together (continuous batching; default: all of them), one thread, a static
KV cache. Writes the generation seconds and each answer's text and audio hash, so
an older tree run the same way (`PYTHONPATH=<worktree of that commit>`) shows whether a speed
change keeps every answer:

    python benchmarks/spoken_answer_speed.py --out runs/speed/after.json
    PYTHONPATH=/tmp/wt-before python benchmarks/spoken_answer_speed.py --out runs/speed/before.json
    python benchmarks/spoken_answer_speed.py --compare runs/speed/before.json runs/speed/after.json

The questions are the held-out development set's (benchmarks/data/general_knowledge_dev.jsonl):
no task ships them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def answer(n: int, batch_size: int, threads: int, rows: int | None = None, output: str = "speech") -> dict:
    import torch

    import deeptalk
    from deeptalk.checkpoint import load_checkpoint
    from deeptalk.generate import SpeechGenerator, StreamConfig

    torch.set_num_threads(threads)
    questions = [json.loads(line)["question"] for line in open(ROOT / "benchmarks/data/general_knowledge_dev.jsonl")][:n]
    bundle = load_checkpoint(ROOT / "checkpoints/reference")
    gen = SpeechGenerator(bundle.model.eval(), bundle.tokenizer, encoder=bundle.encoder, codec=bundle.codec)
    cfg = StreamConfig(cache="static", max_speech_steps=400)
    answers, seconds = [], 0.0
    for i in range(0, n, batch_size):
        prompts = [gen.prompt(text=q, speak=output == "speech") for q in questions[i:i + batch_size]]
        start = time.perf_counter()
        # an older tree has no `rows`: leave it out unless asked for
        results = gen.generate_batch(prompts, output, cfg, **({"rows": rows} if rows else {}))
        seconds += time.perf_counter() - start
        answers += [{"text": r.text, "audio_sha256": None if r.audio is None else hashlib.sha256(r.audio.tobytes()).hexdigest()}
                    for r in results]
    return {"code": str(Path(deeptalk.__file__).parent), "questions": n, "output": output, "batch_size": batch_size,
            "rows": rows, "threads": threads,
            "generation_seconds": round(seconds, 2), "load_average": os.getloadavg(), "answers": answers}


def compare(before: Path, after: Path) -> dict:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    return {"before_seconds": a["generation_seconds"], "after_seconds": b["generation_seconds"],
            "change": round(b["generation_seconds"] / a["generation_seconds"] - 1, 4),
            "answers_identical": sum(x == y for x, y in zip(a["answers"], b["answers"])), "answers": len(a["answers"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--output", choices=("speech", "text"), default="speech")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = p.parse_args()
    if args.compare:
        print(json.dumps(compare(*args.compare)))
        return
    report = answer(args.questions, args.batch_size, args.threads, args.rows, args.output)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "answers"}))


if __name__ == "__main__":
    main()

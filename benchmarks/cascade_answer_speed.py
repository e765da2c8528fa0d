"""Seconds the cascade takes to answer, one request at a time vs handed over in batches,
and whether every answer is the same.

The cascade (Whisper tiny.en -> SmolLM2-135M-Instruct -> Piper joe) answers the held-out
development questions (benchmarks/data/general_knowledge_dev.jsonl; no task ships them)
with the spoken-QA tasks' instruction and budget, greedy, one thread: written or spoken
(Piper joe) question in, text or speech out. Each cell runs twice: request by request
(`generate([r])`, the streaming path) and `--batch-size` requests per `generate` call (the
batched greedy path). Written to `--out`: seconds per cell and way, and how many answers
agree in transcript, text, spoken sentences and token counts. The audio itself is not
compared (the committed figures were taken while Piper still drew its noise in call order).

    python benchmarks/cascade_answer_speed.py --questions 64 --out benchmarks/results/cascade_batching.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You are a helpful voice assistant. Answer the question in one short sentence."  # tasks/spoken_qa/_spoken_qa.yaml
CELLS = {"t2t": ("text", "text"), "s2t": ("speech", "text"), "t2s": ("text", "both"), "s2s": ("speech", "both")}


def _requests(questions: list[str], cell: str):
    from deeptalk_common.tts import synthesize
    from deeptalk_eval.api import Audio, GenerationOptions, Request

    given, output = CELLS[cell]
    opts = GenerationOptions(max_new_tokens=40, temperature=0.0)
    out = []
    for k, q in enumerate(questions):
        audio = Audio(*synthesize(q, engine="piper", voice="joe")) if given == "speech" else None
        out.append(Request(id=f"q{k}", text=None if audio is not None else q, audio=audio,
                           system=SYSTEM, output_modality=output, options=opts))
    return out


def _answer(resp) -> dict:
    return {"text": resp.text, "transcript": resp.extra.get("asr_transcript"),
            "spoken": resp.extra.get("spoken_sentences"), "tokens": resp.tokens,
            "stop_reason": resp.extra.get("stop_reason"), "has_audio": resp.audio is not None}


def measure(n: int, batch_size: int, cells: list[str], threads: int) -> dict:
    import torch

    from deeptalk_eval.models.cascade import Cascade

    torch.set_num_threads(threads)
    questions = [json.loads(line)["question"] for line in open(ROOT / "benchmarks/data/general_knowledge_dev.jsonl")][:n]
    cascade = Cascade()
    report: dict = {"questions": n, "batch_size": batch_size, "rows": cascade.llm.rows, "threads": threads, "cells": {}}
    for cell in cells:
        requests = _requests(questions, cell)
        start = time.perf_counter()
        alone = [cascade.generate([r])[0] for r in requests]
        t_alone = time.perf_counter() - start
        start = time.perf_counter()
        batched = [resp for b in range(0, n, batch_size) for resp in cascade.generate(requests[b:b + batch_size])]
        t_batched = time.perf_counter() - start
        a, b = [_answer(r) for r in alone], [_answer(r) for r in batched]
        same = [x == y for x, y in zip(a, b)]
        report["cells"][cell] = {
            "one_by_one_seconds": round(t_alone, 2), "batched_seconds": round(t_batched, 2),
            "speed_up": round(t_alone / t_batched, 2),
            "answers_identical": sum(same), "answers": n,
            "differences": [{"id": requests[k].id, "one_by_one": a[k], "batched": b[k]} for k in range(n) if not same[k]],
        }
        print(cell, {k: v for k, v in report["cells"][cell].items() if k != "differences"}, flush=True)
    report["load_average"] = os.getloadavg()
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64, help="requests per generate() call (the runner's greedy batch)")
    p.add_argument("--cells", default="t2t,s2t,t2s,s2s")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    report = measure(args.questions, args.batch_size, args.cells.split(","), args.threads)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

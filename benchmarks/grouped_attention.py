"""What keeping grouped-query heads grouped in sdpa (deeptalk/attention.py) buys a batch of
spoken answers on CPU, and whether they stay the same.

The same checkpoint and prompts (written questions of the held-out general-knowledge set,
answered in text and speech, greedy, batches of `--batch-size`) decoded with transformers'
`sdpa` (key/value heads copied by `repeat_kv`) and with the grouped sdpa the model now runs,
in alternating order: wall seconds of the decoding loop (the codec's rendering of the audio
is left out: it is the same for both), and every answer's text tokens, speech codes and stop
reason compared.

    python benchmarks/grouped_attention.py [--checkpoint checkpoints/reference] [--n 16]
        [--batch-size 8] [--threads 2] [--repeats 2] [--out benchmarks/results/grouped_attention.json]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from deeptalk.attention import GROUPED_SDPA
from deeptalk.checkpoint import load_checkpoint
from deeptalk.generate import SpeechGenerator, StreamConfig
from deeptalk_eval.results import atomic_write_text, hardware_info

QUESTIONS = Path(__file__).parent / "data" / "general_knowledge_dev.jsonl"
SYSTEM = "You are a helpful voice assistant. Answer the question in one short sentence."


def decode_all(gen: SpeechGenerator, questions: list[str], batch_size: int, cfg: StreamConfig):
    """(seconds in the decoding loop, per question: text ids, speech codes, stop reason)."""
    answers, seconds = [], 0.0
    for i in range(0, len(questions), batch_size):
        prompts = [gen.prompt(text=q, system=SYSTEM, speak=True) for q in questions[i:i + batch_size]]
        t0 = time.perf_counter()
        batch, _ = gen._answers(prompts, "both", cfg)
        seconds += time.perf_counter() - t0
        answers += [(ids, np.stack(grid, axis=-1).tolist() if grid else [], stop) for ids, grid, stop in batch]
    return seconds, answers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/reference")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-speech-steps", type=int, default=400)
    p.add_argument("--out", default="benchmarks/results/grouped_attention.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bundle = load_checkpoint(args.checkpoint)
    gen = SpeechGenerator(bundle.model, bundle.tokenizer, encoder=bundle.encoder, codec=bundle.codec)
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines()[: args.n]]
    cfg = StreamConfig(max_speech_steps=args.max_speech_steps)
    load_start = os.getloadavg()[0]
    seconds: dict[str, list[float]] = {"sdpa": [], GROUPED_SDPA: []}
    answers: dict[str, list] = {}
    for _ in range(args.repeats):
        for implementation in seconds:   # alternating, so a change in the machine's load hits both
            bundle.model.config._attn_implementation_internal = implementation
            s, a = decode_all(gen, questions, args.batch_size, cfg)
            seconds[implementation].append(round(s, 2))
            answers.setdefault(implementation, a)
            print(f"{implementation}: {s:.1f} s")
    same = [a == b for a, b in zip(answers["sdpa"], answers[GROUPED_SDPA])]
    best = {k: min(v) for k, v in seconds.items()}
    report = {
        "what": "decoding loop of greedy spoken answers (text + speech), transformers' sdpa vs the grouped sdpa",
        "command": (f"python benchmarks/grouped_attention.py --checkpoint {args.checkpoint} --n {args.n} "
                    f"--batch-size {args.batch_size} --threads {args.threads} --repeats {args.repeats} "
                    f"--max-speech-steps {args.max_speech_steps}"),
        "hardware": hardware_info(),
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average_1m": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "cache": cfg.cache,
        "seconds": seconds,
        "speedup_best_of_repeats": round(best["sdpa"] / best[GROUPED_SDPA], 3),
        "answers": len(same),
        "identical_answers": sum(same),
        "steps": sum(len(c[0]) if c else 0 for _, c, _ in answers[GROUPED_SDPA]),
        "stop_reasons": {r: sum(stop == r for _, _, stop in answers[GROUPED_SDPA])
                         for r in sorted({stop for _, _, stop in answers[GROUPED_SDPA]})},
    }
    atomic_write_text(Path(args.out), json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("seconds", "speedup_best_of_repeats", "identical_answers", "answers")}))


if __name__ == "__main__":
    main()

"""The ceiling of transcription through the LLM: perfect hearing (the sentence itself, written)
plus the ASR task's instruction. If the text path does not copy a written sentence, no
projector makes `asr_*` pass; what is missing is then on the LLM side.

    python benchmarks/transcribe_copy_probe.py --n 30 --out benchmarks/results/hearing/transcribe_copy_probe.json

Two layouts: the sentence then the instruction (how a spoken turn plus written text is laid
out) and the instruction first. Greedy, corpus WER after Whisper's English normaliser, on
the ASR task's own sentences (tasks/asr/data/sentences.jsonl) and the task's instruction.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "reference")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    from deeptalk.checkpoint import load_checkpoint
    from deeptalk.generate import SpeechGenerator, StreamConfig
    from deeptalk_eval.registry import TaskIndex

    instruction = TaskIndex.scan().load("asr_synth_piper_joe").prompt  # through its include: template
    sents = [json.loads(l)["text"] for l in (ROOT / "tasks" / "asr" / "data" / "sentences.jsonl").read_text().splitlines()
             if l.strip()][: a.n]
    b = load_checkpoint(a.checkpoint)
    gen = SpeechGenerator(b.model, b.tokenizer, encoder=None, codec=None)
    norm = EnglishTextNormalizer()
    layouts = {"sentence_then_instruction": lambda s: f"{s}\n{instruction}",
               "instruction_then_sentence": lambda s: f"{instruction}\n\n{s}"}
    out = {"checkpoint": str(a.checkpoint), "instruction": instruction, "n": len(sents), "threads": a.threads,
           "load_average": os.getloadavg(), "layouts": {}}
    t0 = time.monotonic()
    for name, render in layouts.items():
        hyps = [gen.generate(gen.prompt(text=render(s)), cfg=StreamConfig(max_new_tokens=64)).text for s in sents]
        wer = jiwer.process_words([norm(s) for s in sents], [norm(h) for h in hyps]).wer
        out["layouts"][name] = {"corpus_wer": round(wer, 4), "examples": [{"ref": s, "hyp": h} for s, h in
                                                                         zip(sents[:5], hyps[:5])]}
        print(f"{name}: WER {wer:.3f}", flush=True)
    out["seconds"] = round(time.monotonic() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""The ceiling of transcription through the LLM: perfect hearing (the sentence itself, written)
plus the ASR task's instruction. If the text path does not copy a written sentence, no
projector makes `asr_*` pass; what is missing is then on the LLM side.

    python benchmarks/transcribe_copy_probe.py --n 30 --out benchmarks/results/hearing/transcribe_copy_probe.json

Three layouts: the sentence then the instruction (how a spoken turn plus written text is laid
out for a projector into speech positions), the instruction first, and the instruction then
the sentence as a quoted block (how `build_prompt_ids` lays out heard text for a CTC head).
Greedy, corpus WER after Whisper's English normaliser, on the ASR task's own sentences
(tasks/asr/data/sentences.jsonl) or `--sentences held-out` (hearing-dev sentences, which no
task holds), with the task's instruction. `--heard` hands the sentence over the way a CTC
piece head does: lower case, no punctuation, after a space.

    python benchmarks/transcribe_copy_probe.py --checkpoint runs/ctc-assign/stage-assign --heard \
        --sentences held-out --n 100 --out benchmarks/results/hearing/transcribe_copy_heard_held_out.json
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
    ap.add_argument("--sentences", choices=("asr", "held-out"), default="asr")
    ap.add_argument("--heard", action="store_true", help="the sentence as a CTC piece head hears it")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    from deeptalk.checkpoint import load_checkpoint
    from deeptalk.generate import SpeechGenerator, StreamConfig
    from deeptalk.speech.char_ctc import spelled
    from deeptalk_eval.registry import TaskIndex

    instruction = TaskIndex.scan().load("asr_synth_piper_joe").prompt  # through its include: template
    if a.sentences == "held-out":
        from deeptalk.hearing_corpus import hearing_sentences

        sents = hearing_sentences(a.n, 0)  # the first of the hearing dev shard's (seed 0): no training shard holds them
    else:
        sents = [json.loads(l)["text"] for l in (ROOT / "tasks" / "asr" / "data" / "sentences.jsonl").read_text()
                 .splitlines() if l.strip()][: a.n]
    # what the LLM reads: the sentence, or what a piece head hands over (its ids follow a space)
    given = [" " + spelled(s) if a.heard else s for s in sents]
    b = load_checkpoint(a.checkpoint)
    gen = SpeechGenerator(b.model, b.tokenizer, encoder=None, codec=None)
    norm = EnglishTextNormalizer()
    layouts = {"sentence_then_instruction": lambda s: f"{s.strip()}\n{instruction}",
               "instruction_then_sentence": lambda s: f"{instruction}\n\n{s.strip()}",
               "instruction_then_quoted": lambda s: f'{instruction}\n\n"{s}"'}
    out = {"checkpoint": str(a.checkpoint), "instruction": instruction, "sentences": a.sentences, "heard": a.heard,
           "n": len(sents), "threads": a.threads, "load_average": os.getloadavg(), "layouts": {}}
    t0 = time.monotonic()
    for name, render in layouts.items():
        hyps = [gen.generate(gen.prompt(text=render(s)), cfg=StreamConfig(max_new_tokens=64)).text for s in given]
        wer = jiwer.process_words([norm(s) for s in sents], [norm(h) for h in hyps]).wer
        out["layouts"][name] = {"corpus_wer": round(wer, 4), "examples": [{"ref": s, "hyp": h} for s, h in
                                                                         zip(sents[:5], hyps[:5])]}
        print(f"{name}: WER {wer:.3f}", flush=True)
    out["seconds"] = round(time.monotonic() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

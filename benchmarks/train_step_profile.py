"""Seconds per stage-2.1 training step, with and without the two step savers of the trainer.

The batches are "repeat this sentence" turns in the reference-phones layout (phone units, the
words layout, answer routing "both", modality routing while training) built from
hearing-corpus sentences, as the speaking probe trains. For each setting it reports, over
one whole epoch of `--sentences` turns, the positions a step processes (batch x its longest
turn, padding included) and, on `--steps` steps spread evenly over that epoch, the measured
seconds per step (forward + backward, one thread by default):

- order: `shuffled` (the plain seeded order) or `grouped` (`group_by_length`, batching.py);
- text head: `every` position or only the `labelled` ones (`text_logits_where_labelled`).

    python benchmarks/train_step_profile.py --sentences 400 --steps 6 \
        --out benchmarks/results/train_step_profile.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints/reference"))
    ap.add_argument("--sentences", type=int, default=400)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per setting, spread over the epoch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    from speech_units_probe import TEMPLATES, with_codec_heads

    from deeptalk.checkpoint import load_checkpoint
    from deeptalk.hearing_corpus import hearing_sentences
    from deeptalk.speech.codec_loader import load_codec
    from deeptalk.training.batching import epoch_order
    from deeptalk.training.examples import collate, repeat_examples
    from deeptalk.training.param_groups import set_trainable

    bundle = load_checkpoint(a.checkpoint)
    codec = load_codec("phones")
    model = with_codec_heads(bundle.model, codec, "both", "words")
    texts = hearing_sentences(a.sentences, a.seed)
    units = [codec.encode_text(t)[0][None] for t in texts]
    examples = repeat_examples(texts, units, bundle.tokenizer, model.config, a.seed, TEMPLATES, codec=codec)
    set_trainable(model, bundle.encoder, "2.1", {"train": ["speech_experts", "audio"], "routing": "modality"})
    model.train()
    pad = bundle.tokenizer.pad_token_id
    lengths = [len(e.ids) for e in examples]
    n_steps = len(examples) // a.batch
    timed = [round(i * (n_steps - 1) / max(a.steps - 1, 1)) for i in range(a.steps)]

    rows = []
    for grouped in (False, True):
        order = epoch_order(lengths, a.batch, a.seed, 0, grouped)
        batches = [order[k * a.batch: (k + 1) * a.batch] for k in range(n_steps)]
        positions = [a.batch * max(lengths[i] for i in b) for b in batches]
        for where_labelled in (False, True):
            seconds = []
            for k in timed:
                batch = collate([examples[i] for i in batches[k]], pad, model.config.num_codebooks)
                t0 = time.perf_counter()
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            token_modality=batch["token_modality"], audio_codes=batch["audio_codes"],
                            labels=batch["labels"], audio_labels=batch["audio_labels"], use_cache=False,
                            text_logits_where_labelled=where_labelled)
                out.loss.backward()
                seconds.append(time.perf_counter() - t0)
                model.zero_grad(set_to_none=True)
            per_position = sum(seconds) / sum(positions[k] for k in timed)
            row = {"order": "grouped" if grouped else "shuffled", "text_head": "labelled" if where_labelled else "every",
                   "positions_per_step_epoch_mean": statistics.mean(positions),
                   "real_tokens_per_step_epoch_mean": sum(lengths) / n_steps,
                   "timed_steps": timed, "seconds_timed": [round(s, 2) for s in seconds],
                   "seconds_per_position": per_position,
                   "seconds_per_step_epoch_estimate": round(per_position * statistics.mean(positions), 2)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "timed_steps"}), flush=True)
    base = rows[0]["seconds_per_step_epoch_estimate"]
    result = {"checkpoint": a.checkpoint, "sentences": a.sentences, "batch": a.batch, "threads": a.threads,
              "load_average_at_end": os.getloadavg(), "torch": torch.__version__,
              "speedup_both": round(base / rows[-1]["seconds_per_step_epoch_estimate"], 2), "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"grouped + labelled: {result['speedup_both']}x fewer seconds per step than shuffled + every")
    return 0


if __name__ == "__main__":
    sys.exit(main())

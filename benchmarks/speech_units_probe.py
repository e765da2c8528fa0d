"""Learnability probe for speaking: can the reference's speech experts learn to speak a codec's codes?

Starts from a DeepTalk checkpoint (the shipped reference by default), gives it audio
embeddings and heads for the candidate codec (`--codec`: a units codec file, `phones` (phone
units spoken by Piper joe: codes from the pairs' texts), or `offline` to re-train the shipped
codec's heads from scratch the same way), and trains stage 2.1 (speech
experts + audio tensors, the paper's masked routing) on "repeat this sentence" turns built
from unit pairs (`deeptalk-units pairs`: hearing-corpus sentences, which no task
holds, read by Piper joe). Every `--steps-per-point` steps it measures, on held-out
sentences of the pairs' dev file:

- audio cross-entropy per code, teacher-forced (every dev utterance);
- greedy generation (`--eval-n` sentences, the tts task's instruction, the checkpoint's
  inference routing): the share of answers that end by themselves ("eos") before the cap
  (`--cap-factor` x Piper's length + 25 steps), and the spoken length against Piper's;
- speech WER of the generated audio (Whisper tiny.en, as `deeptalk-codec eval`) through the
  codec's decoder, unless `--no-asr` (then `--rescore-with CODEC` scores the saved points later);
  the answers are decoded in one greedy batch and their audio rendered as streamed, as the
  harness's tasks do;
- with `--names-dev N`: the same on N held-out WordNet people and places said in a sentence, and
  whether Whisper hears the name (the harness's spoken-QA answer match), beside what Whisper
  hears of the codec's own rendering of their phonemes (the ceiling). `--name-statements` and
  `--name-lists` add turns that say other names; `--paired-with RUN --paired-steps S` compares
  two runs' answers item by item.

The generated codes are kept (`points/point-*.json`) so a later decoder can re-score them:
    python benchmarks/speech_units_probe.py ... --out runs/units-probe --rescore-with CODEC

    python benchmarks/speech_units_probe.py --codec runs/units/dec/k512-p2-dec384.safetensors \
        --pairs runs/unit-pairs/joe --steps-per-point 100 --points 5 --out runs/units-probe [--resume]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEMPLATES = ("Repeat this sentence exactly, and say nothing else: {text}", "Say this: {text}",
             "Read this aloud: {text}", "Please say the following sentence: {text}")


def said_by_checkpoint(checkpoint: str) -> list[str]:
    """The "repeat this sentence" texts the checkpoint's recipe (its recipe.yaml) trained it on."""
    import yaml

    from deeptalk.training.recipe_data import speaking_texts

    path = Path(checkpoint) / "recipe.yaml"
    if not path.is_file():
        raise SystemExit(f"--unseen-by-checkpoint: {path} not found")
    repeat, _ = speaking_texts(yaml.safe_load(path.read_text(encoding="utf-8")))
    return repeat


def with_codec_heads(model, codec, answer_routing: str | None = None, answer_layout: str | None = None):
    """The same model with fresh audio embeddings and heads sized for `codec` (every other weight kept)."""
    from deeptalk.modeling import DeepTalkForCausalLM
    from deeptalk.upcycle import empty_model

    cfg = model.config.__class__.from_dict({**model.config.to_dict(), "num_codebooks": codec.num_codebooks,
                                            "codebook_size": codec.codebook_size,
                                            "answer_routing": answer_routing or model.config.answer_routing,
                                            "answer_layout": answer_layout or model.config.answer_layout})
    torch.manual_seed(0)
    new = empty_model(cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("model.audio_embed", "audio_head"))}
    missing, unexpected = new.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("model.audio_embed", "audio_head")) for k in missing), missing
    assert isinstance(new, DeepTalkForCausalLM)
    new.set_routing_mode(model.config.routing_mode)
    return new.eval()


@torch.no_grad()
def dev_audio_ce(model, examples, tokenizer, batch: int = 8) -> float:
    from deeptalk.training.examples import collate

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, n = 0.0, 0
    for s in range(0, len(examples), batch):
        b = collate(examples[s:s + batch], pad, model.config.num_codebooks)
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_modality=b["token_modality"],
                    audio_codes=b["audio_codes"], labels=b["labels"], audio_labels=b["audio_labels"], use_cache=False)
        k = int((b["audio_labels"] >= 0).sum())
        total, n = total + float(out.audio_loss) * k, n + k
    return total / max(1, n)


def generate_point(model, bundle, codec, dev: dict, n: int, cap_factor: float, asr, normalizer) -> dict:
    """Greedy answers to the first `n` dev sentences; where `dev` names the name each sentence says
    (`names`), whether Whisper heard it (the harness's spoken-QA answer match)."""
    from deeptalk.generate import SpeechGenerator, StreamConfig
    from deeptalk.speech.encoder import prepare_audio
    from deeptalk.speech.speech_wer import wer_counts
    from deeptalk_eval.scoring.match import answer_match

    gen = SpeechGenerator(model, bundle.tokenizer, bundle.encoder, codec)
    pairs = list(zip(dev["units"], dev["texts"]))[:n]
    caps = [int(cap_factor * len(units)) + 25 for units, _ in pairs]
    # one greedy batch (continuous batching, 16 rows) up to the longest cap; an answer that ran past
    # its own cap counts as capped, its codes cut at the cap (one decoded alone would have stopped there)
    results = gen.generate_batch([gen.prompt(TEMPLATES[0].format(text=text), speak=True) for _, text in pairs],
                                 output="both", cfg=StreamConfig(max_speech_steps=max(caps, default=1)), rows=16)
    rows = []
    for (units, text), cap, res in zip(pairs, caps, results):
        stop_reason, codes, audio = res.stop_reason, res.codes, res.audio
        if res.steps > cap:
            stop_reason = "max_steps"
            if codes is not None and codes.shape[1] > cap:
                codes = codes[:, :cap]
                audio = codec.decode(codes)
        row = {"text": text, "piper_units": len(units), "cap": cap, "stop_reason": stop_reason,
               "units": int(codes.shape[1]) if codes is not None else 0, "text_out": res.text,
               "codes": codes.tolist() if codes is not None else None}
        if asr is not None and audio is not None and len(audio):
            hyp = asr(prepare_audio(audio, codec.sample_rate).samples)
            row["asr"] = hyp
            row["wer_errors"], row["wer_words"] = wer_counts(text, hyp, normalizer)
        if asr is not None and dev.get("names"):
            row["name"] = dev["names"][len(rows)]
            row["name_hit"] = bool(answer_match(row.get("asr", ""), row["name"]))
        rows.append(row)
    return {**summarize(rows, scored=asr is not None), "rows": rows}


def summarize(rows: list[dict], scored: bool = True) -> dict:
    """A point's figures from its answers: the share that ended by themselves, their length against
    Piper's, and (scored) the speech WER, corpus and mean per utterance (no audio: 1.0), with
    95 % bootstrap CIs over the answers."""
    from deeptalk_eval.scoring.stats import bootstrap_ci

    ended = [float(r["stop_reason"] == "eos") for r in rows]
    ratio = [r["units"] / r["piper_units"] for r in rows if r["piper_units"]]
    out = {"n": len(rows), "ended_share": float(np.mean(ended)), "ended_share_ci": list(bootstrap_ci(ended)),
           "stop_reasons": sorted({r["stop_reason"] for r in rows}), "length_ratio_median": float(np.median(ratio)),
           "length_within_30pct": float(np.mean([abs(x - 1) <= 0.3 for x in ratio]))}
    if scored:
        e = [r.get("wer_errors", len(r["text"].split())) for r in rows]
        w = [r.get("wer_words", len(r["text"].split())) for r in rows]
        per = [ei / max(1, wi) if "wer_errors" in r else 1.0 for r, ei, wi in zip(rows, e, w)]
        out["speech_corpus_wer"] = sum(e) / max(1, sum(w))
        out["speech_wer_mean"], out["speech_wer_mean_ci"] = float(np.mean(per)), list(bootstrap_ci(per))
        out["speech_wer_median"] = float(np.median(per))   # one Whisper loop ("to be able to be able...") moves the mean
    hits = [float(r["name_hit"]) for r in rows if "name_hit" in r]
    if hits:
        out["name_hit_share"], out["name_hit_share_ci"] = float(np.mean(hits)), list(bootstrap_ci(hits))
    return out


def names_ceiling(codec, dev: dict, asr) -> dict:
    """What Whisper makes of the dev names said from their own phonemes by the codec's decoder
    (Piper joe's VITS for phone units): the most a model speaking those units could score."""
    from deeptalk.speech.encoder import prepare_audio
    from deeptalk_eval.scoring.match import answer_match
    from deeptalk_eval.scoring.stats import bootstrap_ci

    hits = []
    for units, name in zip(dev["units"], dev["names"]):
        hyp = asr(prepare_audio(codec.decode(np.asarray(units)[None]), codec.sample_rate).samples)
        hits.append(float(bool(answer_match(hyp, name))))
    return {"n": len(hits), "name_hit_share": float(np.mean(hits)), "name_hit_share_ci": list(bootstrap_ci(hits))}


def names_split(a):
    """The held-out names (with their statements) and, from the other names, the training name
    statements and name lists; plus `free(text)`: whether a text says no name of a held-out person
    or place (its synset's other names too, even inside a longer name), for every training turn."""
    import random
    import re

    import wordfreq

    from deeptalk.hearing_corpus import name_lists, proper_names

    names = proper_names()
    with_statement = [(n, st) for n, st, _ in names if st]
    random.Random(a.seed + 5).shuffle(with_statement)
    # held-out names as known as a quiz's answers are (Zipf >= 3: "Beethoven", "Tel Aviv", "Suez Canal")
    dev = [(n, st) for n, st in with_statement if wordfreq.zipf_frequency(n, "en") >= a.names_dev_min_zipf]
    dev = dev[: a.names_dev]
    dev_synsets = {syn for n, _, syn in names if n in {d for d, _ in dev}}
    held = sorted({n for n, _, syn in names if syn in dev_synsets})
    said = re.compile(r"\b(" + "|".join(re.escape(n) for n in held) + r")\b") if held else None

    def free(text: str) -> bool:
        return said is None or not said.search(text)

    train_statements = [st for n, st in with_statement if free(st)][: a.name_statements]
    lists = name_lists([n for n, _, _ in names if free(n)], a.name_lists, a.names_per_list, a.seed + 6)
    return {"texts": [st for _, st in dev], "names": [n for n, _ in dev]}, train_statements, lists, free


def resummarize(out: Path) -> int:
    """Recompute every point's figures in curve.json from its saved answers (summarize)."""
    curve = json.loads((out / "curve.json").read_text())
    for row in curve["points"]:
        point = json.loads((out / "points" / f"point-{row['steps']:05d}.json").read_text())
        plain = [r for r in point["rows"] if "name" not in r]   # the names dev set's answers carry their name
        row.update(summarize(plain, scored=any("asr" in r for r in plain) or "speech_corpus_wer" in row))
        if "names" in row:
            row["names"].update(summarize([r for r in point["rows"] if "name" in r]))
        print(json.dumps({k: v for k, v in row.items()}), flush=True)
    (out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    return 0


def paired(out: Path, other: Path, steps: int) -> int:
    """The same dev answers of two runs at `steps`, item by item (run `other` = A, `out` = B): the
    difference in name hits and per-answer speech WER, with paired bootstrap CIs and tests."""
    from deeptalk_eval.scoring.stats import paired_bootstrap

    def rows(run: Path) -> list[dict]:
        return json.loads((run / "points" / f"point-{steps:05d}.json").read_text())["rows"]

    a, b = rows(other), rows(out)
    if [r["text"] for r in a] != [r["text"] for r in b]:
        raise SystemExit(f"{other} and {out} did not answer the same dev sentences at step {steps}")
    report = {"a": str(other), "b": str(out), "steps": steps}
    for part, keep in (("sentences", lambda r: "name" not in r), ("names", lambda r: "name" in r)):
        ra, rb = [r for r in a if keep(r)], [r for r in b if keep(r)]
        if not ra or "wer_errors" not in ra[0]:
            continue
        wer = [[r["wer_errors"] / max(1, r["wer_words"]) for r in rs] for rs in (ra, rb)]
        report[part] = {"speech_wer": paired_bootstrap(*wer).to_dict()}
        if part == "names":
            hits = [[float(r["name_hit"]) for r in rs] for rs in (ra, rb)]
            report[part]["name_hit"] = paired_bootstrap(*hits).to_dict()
            report[part]["heard_by_b_only"] = sum(y > x for x, y in zip(*hits))
            report[part]["heard_by_a_only"] = sum(x > y for x, y in zip(*hits))
    print(json.dumps(report, indent=1))
    return 0


def rescore(out: Path, codec_path: str) -> int:
    """Decode the saved generated codes of every point with `codec_path` and add its speech WER."""
    from whisper.normalizers import EnglishTextNormalizer

    from deeptalk.speech.codec_loader import load_codec
    from deeptalk.speech.encoder import prepare_audio
    from deeptalk.speech.speech_wer import WhisperASR, wer_counts

    codec, asr, norm = load_codec(codec_path), WhisperASR(), EnglishTextNormalizer()
    curve = json.loads((out / "curve.json").read_text())
    for row in curve["points"]:
        point = json.loads((out / "points" / f"point-{row['steps']:05d}.json").read_text())
        errors = words = 0
        for r in point["rows"]:
            codes = np.asarray(r["codes"] or [[]], np.int64)
            hyp = asr(prepare_audio(codec.decode(codes), codec.sample_rate).samples) if codes.shape[1] else ""
            e, w = wer_counts(r["text"], hyp, norm)
            errors, words = errors + e, words + w
        row["speech_corpus_wer"], row["rescored_with"] = round(errors / max(1, words), 4), codec_path
        print(json.dumps({"steps": row["steps"], "speech_corpus_wer": row["speech_corpus_wer"]}), flush=True)
    (out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints/reference"))
    ap.add_argument("--codec", required=True, help="a units codec file, 'phones' (its units from the pairs' "
                                                    "texts), or 'offline'")
    ap.add_argument("--pairs", help="a `deeptalk-units pairs` folder (texts + Piper joe units)")
    ap.add_argument("--skip-untrained", action="store_true", help="no point at step 0 (the untrained heads)")
    ap.add_argument("--sentences", type=int, help="instead of --pairs (a codec that reads text: phones): this many "
                                                  "hearing-corpus sentences to train on")
    ap.add_argument("--dev-sentences", type=int, default=70, help="with --sentences: held-out sentences")
    ap.add_argument("--unseen-by-checkpoint", action="store_true", help="with --sentences: leave out the sentences "
                    "the checkpoint's recipe trained it to say (its repeat turns), for training and dev alike")
    ap.add_argument("--word-lists", type=int, default=0, help="with --sentences: add N turns that say a list of "
                    "words (8 each) drawn from other corpus sentences than the training and dev ones")
    ap.add_argument("--names-dev", type=int, default=0, help="with --sentences: a second dev set of N WordNet "
                    "people and places (their statements, \"Aleppo is a city in northwestern Syria.\"), scored by whether "
                    "Whisper hears the name; no training turn says these names")
    ap.add_argument("--name-statements", type=int, default=0, help="with --sentences: add N statements of other "
                    "WordNet people and places")
    ap.add_argument("--name-lists", type=int, default=0, help="with --sentences: add N turns that say a list of "
                    "other people and places (--names-per-list each)")
    ap.add_argument("--names-per-list", type=int, default=6)
    ap.add_argument("--names-dev-min-zipf", type=float, default=3.0, help="held-out names at least this frequent "
                    "(wordfreq Zipf of the whole name)")
    ap.add_argument("--keep-heads", action="store_true", help="train the checkpoint's own audio rows on (its codec "
                    "must be --codec); otherwise they start afresh")
    ap.add_argument("--train-utterances", type=int, default=None, help="use only the first N training utterances")
    ap.add_argument("--steps-per-point", type=int, default=100)
    ap.add_argument("--points", type=int, default=5)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lr-decay-steps", type=int, default=0, help="each point's last N steps decay the lr linearly "
                    "to 0.1x (the stage key lr_decay_steps)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--eval-n", type=int, default=24)
    ap.add_argument("--cap-factor", type=float, default=2.0)
    ap.add_argument("--answer-routing", choices=("speech", "both"), default=None,
                    help="where spoken-answer steps route (deeptalk/config.py); default: the checkpoint's")
    ap.add_argument("--answer-layout", choices=("block", "words"), default=None,
                    help="how the text channel lines up with the speech (deeptalk/config.py); default: the checkpoint's")
    ap.add_argument("--train-routing", choices=("masked", "modality", "all"), default=None,
                    help="stage 2.1's routing while training; default: the paper's masking")
    ap.add_argument("--audio-init", choices=("random", "symbols"), default="random",
                    help="fresh audio rows: random, or each code's row from the LLM's embedding of its symbol "
                         "(a codec whose codes are symbols: phones)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-asr", action="store_true", help="generate and keep the codes, but do not decode and score")
    ap.add_argument("--rescore-with", help="decode every saved point's codes with this codec, score them, and stop")
    ap.add_argument("--paired-with", type=Path, help="compare --out's answers at --paired-steps with this run's, "
                    "item by item, and stop")
    ap.add_argument("--paired-steps", type=int, default=0)
    ap.add_argument("--summarize", action="store_true", help="recompute the saved points' figures (CIs too) and stop")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    from accelerate import Accelerator

    from deeptalk.checkpoint import load_checkpoint
    from deeptalk.speech.codec_loader import load_codec
    from deeptalk.speech.unit_pairs import load_pairs
    from deeptalk.training.examples import NAME_LIST_TEMPLATES, WORD_LIST_TEMPLATES, repeat_examples
    from deeptalk.training.stage_loop import train_stage

    if a.rescore_with:
        return rescore(a.out, a.rescore_with)
    if a.summarize:
        return resummarize(a.out)
    if a.paired_with:
        return paired(a.out, a.paired_with, a.paired_steps)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "points").mkdir(exist_ok=True)
    bundle = load_checkpoint(a.checkpoint)
    codec = load_codec(a.codec)
    if codec.num_codebooks != 1:
        raise SystemExit("this probe speaks units: --codec must be a one-codebook codec (units)")
    inference_routing = bundle.model.config.routing_mode
    if a.keep_heads:
        if (bundle.model.config.num_codebooks, bundle.model.config.codebook_size) != (codec.num_codebooks,
                                                                                        codec.codebook_size):
            raise SystemExit(f"--keep-heads: {a.checkpoint}'s audio rows do not fit {a.codec}")
        model = bundle.model
    else:
        model = with_codec_heads(bundle.model, codec, a.answer_routing, a.answer_layout)
    if a.audio_init == "symbols":
        from deeptalk.audio_rows import init_audio_rows_from_symbols

        print(f"audio rows of {init_audio_rows_from_symbols(model, bundle.tokenizer, getattr(codec, 'symbols', {}))}"
              " codes from their symbols", flush=True)
    names_dev, name_statements, name_turns = None, [], []
    if a.sentences:
        from deeptalk.hearing_corpus import hearing_sentences, word_lists

        extra = 4 * a.word_lists   # sentences whose words make the lists (8 words from ~2 sentences' worth)
        names = bool(a.names_dev or a.name_statements or a.name_lists)
        seen = said_by_checkpoint(a.checkpoint) if a.unseen_by_checkpoint else []
        # with names, as many sentences again to stand in for those that say a held-out name
        texts = hearing_sentences((2 if names else 1) * a.sentences + a.dev_sentences + extra, a.seed,
                                  also_exclude=seen)
        train, dev = {"texts": texts[: a.sentences]}, {"texts": texts[a.sentences: a.sentences + a.dev_sentences]}
        lists = (word_lists(texts[a.sentences + a.dev_sentences: a.sentences + a.dev_sentences + extra], a.word_lists,
                            8, a.seed) if a.word_lists else [])
        if names:
            names_dev, name_statements, name_turns, free = names_split(a)
            train = {"texts": [t for t in texts[: a.sentences] + texts[a.sentences + a.dev_sentences + extra:]
                               if free(t)][: a.sentences]}
    elif a.pairs:
        files = sorted(Path(a.pairs).glob("pairs-*.npz"))
        parts = [load_pairs(f) for f in files]
        train = {"units": [u for p in parts for u in p["units"]], "texts": [t for p in parts for t in p["texts"]]}
        dev = load_pairs(Path(a.pairs) / "dev.npz")
    else:
        raise SystemExit("say what to train on: --pairs or --sentences")
    if a.train_utterances:
        train = {k: v[: a.train_utterances] for k, v in train.items()}
    for part in (train, dev) + ((names_dev,) if names_dev else ()):   # phone units: the codec reads the texts itself
        from_text = [codec.encode_text(t) for t in part["texts"]]
        if all(c is not None for c in from_text):
            part["units"] = [c[0] for c in from_text]
        elif "units" not in part:
            raise SystemExit(f"--sentences needs a codec that reads text (phones); {a.codec} does not")
    examples = repeat_examples(train["texts"], [u[None] for u in train["units"]], bundle.tokenizer, model.config,
                               a.seed, TEMPLATES, codec=codec)
    if a.sentences and lists:
        examples += repeat_examples(lists, [codec.encode_text(t)[0][None] for t in lists], bundle.tokenizer,
                                    model.config, a.seed + 1, WORD_LIST_TEMPLATES, codec=codec)
    if name_statements:
        examples += repeat_examples(name_statements, [codec.encode_text(t)[0][None] for t in name_statements],
                                    bundle.tokenizer, model.config, a.seed + 2, TEMPLATES, codec=codec)
    if name_turns:
        examples += repeat_examples(name_turns, [codec.encode_text(t)[0][None] for t in name_turns], bundle.tokenizer,
                                    model.config, a.seed + 3, NAME_LIST_TEMPLATES, codec=codec)
    dev_examples = repeat_examples(dev["texts"], [u[None] for u in dev["units"]], bundle.tokenizer, model.config,
                                   a.seed, TEMPLATES[:1], codec=codec)
    names_examples = repeat_examples(names_dev["texts"], [u[None] for u in names_dev["units"]], bundle.tokenizer,
                                     model.config, a.seed, TEMPLATES[:1], codec=codec) if names_dev else []
    asr = normalizer = None
    if not a.no_asr:
        from whisper.normalizers import EnglishTextNormalizer

        from deeptalk.speech.speech_wer import WhisperASR

        asr, normalizer = WhisperASR(threads=max(1, a.threads)), EnglishTextNormalizer()
    curve_path = a.out / "curve.json"
    saved = json.loads(curve_path.read_text()) if a.resume and curve_path.is_file() else {}
    curve = saved.get("points", [])
    ceiling = saved.get("names_ceiling")
    if names_dev and asr is not None and ceiling is None:
        ceiling = names_ceiling(codec, names_dev, asr)
        print(json.dumps({"names_ceiling": ceiling}), flush=True)
    scfg = {"lr": a.lr, "lr_decay_steps": a.lr_decay_steps, "batch_size": a.batch, "checkpoint_every": a.steps_per_point,
            "grad_clip": 1.0,
            "train": ["speech_experts", "audio"], **({"routing": a.train_routing} if a.train_routing else {})}
    print(f"probe: {len(examples)} training turns, {len(dev_examples)} dev, codec {a.codec}", flush=True)
    for p in range(0, a.points + 1):
        steps = p * a.steps_per_point
        if any(r["steps"] == steps for r in curve) or (steps == 0 and a.skip_untrained):
            continue
        stats = {"seconds": 0.0}
        if steps:
            # a fresh Accelerator each time: a second prepare() on one would look for its state as model 1
            stats = train_stage(Accelerator(cpu=True), "2.1", {**scfg, "max_steps": steps}, model, bundle.encoder, examples,
                                bundle.tokenizer, a.out / "stage-2.1", a.seed, resume=True)
        model.set_routing_mode(inference_routing)
        model.eval()
        t0 = time.time()
        ce = dev_audio_ce(model, dev_examples, bundle.tokenizer)
        point = generate_point(model, bundle, codec, dev, a.eval_n, a.cap_factor, asr, normalizer)
        row = {"steps": steps, "train_seconds": stats["seconds"], "dev_audio_ce": round(ce, 4),
               **{k: v for k, v in point.items() if k != "rows"}}
        rows = point["rows"]
        if names_dev:
            named = generate_point(model, bundle, codec, names_dev, len(names_dev["texts"]), a.cap_factor, asr,
                                   normalizer)
            row["names"] = {"dev_audio_ce": round(dev_audio_ce(model, names_examples, bundle.tokenizer), 4),
                            **{k: v for k, v in named.items() if k != "rows"}}
            rows = rows + named["rows"]
        row["eval_seconds"] = round(time.time() - t0, 1)
        (a.out / "points" / f"point-{steps:05d}.json").write_text(json.dumps({**row, "rows": rows}) + "\n")
        curve.append(row)
        curve_path.write_text(json.dumps({"codec": a.codec, "checkpoint": a.checkpoint, "pairs": a.pairs,
                                          "sentences": a.sentences, "dev_sentences": len(dev["texts"]),
                                          "answer_routing": model.config.answer_routing,
                                          "answer_layout": model.config.answer_layout,
                                          "train_routing": a.train_routing or "masked",
                                          "audio_init": a.audio_init, "word_lists": a.word_lists,
                                          "names_dev": a.names_dev, "names_dev_min_zipf": a.names_dev_min_zipf,
                                          "name_statements": a.name_statements,
                                          "name_lists": a.name_lists, "names_per_list": a.names_per_list,
                                          "names_ceiling": ceiling,
                                          "keep_heads": a.keep_heads, "unseen_by_checkpoint": a.unseen_by_checkpoint,
                                          "lr": a.lr, "lr_decay_steps": a.lr_decay_steps, "batch": a.batch, "seed": a.seed, "cap_factor": a.cap_factor,
                                          "train_turns": len(examples), "points": curve}, indent=1) + "\n")
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pipeline: build data, codec and model, run the recipe's stages in order, checkpoint and hook each."""
from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import torch
import yaml

from deeptalk.checkpoint import load_checkpoint, save_checkpoint
from deeptalk.training.assign_stage import assign_stage
from deeptalk.training.build import (
    build_base,
    build_codec,
    build_encoder,
    check_audio_inits,
    start_audio_rows,
    upcycled_model,
)
from deeptalk.training.examples import (
    NAME_LIST_TEMPLATES,
    WORD_LIST_TEMPLATES,
    asr_examples,
    corpus_examples,
    qa_examples,
    repeat_examples,
    spoken_codes,
    text_examples,
)
from deeptalk.training.hearing_stage import hearing_stage
from deeptalk.training.plots import plot_losses
from deeptalk.training.recipe import STAGES, recipe_hash, seed_everything
from deeptalk.training.recipe_data import build_data
from deeptalk.training.stage_loop import resumes, train_stage


def recipe_reading(encoder, recipe: dict):
    """How the model reads a piece head at inference (`decode`, `lexicon`) is the recipe's, also
    for stages a run finished before the recipe said so; training itself hears greedily."""
    for key in ("decode", "lexicon"):
        if key in recipe.get("speech_encoder", {}):
            setattr(encoder.config, key, recipe["speech_encoder"][key])
    return encoder


def run_hook(cmd: str | None, stage: str, checkpoint: Path, output: Path) -> dict | None:
    if not cmd:
        return None
    filled = cmd.format(stage=stage, checkpoint=str(checkpoint), output=str(output))
    t0 = time.monotonic()
    proc = subprocess.run(filled, shell=True, capture_output=True, text=True)
    rec = {"command": filled, "returncode": proc.returncode, "seconds": round(time.monotonic() - t0, 2),
           "stdout_tail": proc.stdout[-2000:], "stderr_tail": proc.stderr[-2000:]}
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage}: hook failed (exit {proc.returncode}): {filled}\n{proc.stderr[-2000:]}")
    return rec


def speaking_examples(recipe: dict, data: dict, qa_set, codec, encoder, tokenizer, config, spoken: bool = True) -> list:
    """Stage 2.1's turns: spoken questions answered in speech (`data.qa_written`: each also written;
    `spoken=False`: the written ones alone), then `data.repeat` "repeat this sentence" turns."""
    d = recipe["data"]
    ex = qa_examples(qa_set, encoder, tokenizer, config, written=bool(d.get("qa_written", False)), codec=codec,
                     spoken=spoken)
    texts = data.get("repeat_texts") or []
    if texts:
        # the "words" layout reads each word with the codec; the block layout needs the whole answers' codes
        codes = None if config.answer_layout == "words" else spoken_codes(codec, texts, d.get("answer_voice", "piper:joe"),
                                                                           int(recipe["seed"]))
        ex += repeat_examples(texts, codes, tokenizer, config, int(recipe["seed"]), codec=codec)
    lists = data.get("word_lists") or []
    if lists:   # `data.word_lists`: turns that say lists of content words (the words layout reads them)
        if config.answer_layout != "words":
            raise ValueError("data.word_lists needs answer_layout: words (the codec reads each word)")
        ex += repeat_examples(lists, None, tokenizer, config, int(recipe["seed"]) + 1, WORD_LIST_TEMPLATES, codec=codec)
    # `data.name_statements` / `data.name_lists`: names practised carry over to names never practised
    # (docs/training.md, "Names: does practising them teach the speech to say them?")
    statements, names = data.get("name_statements") or [], data.get("name_lists") or []
    if (statements or names) and config.answer_layout != "words":
        raise ValueError("data.name_statements and data.name_lists need answer_layout: words (the codec reads each word)")
    if statements:
        ex += repeat_examples(statements, None, tokenizer, config, int(recipe["seed"]) + 2, codec=codec)
    if names:
        ex += repeat_examples(names, None, tokenizer, config, int(recipe["seed"]) + 3, NAME_LIST_TEMPLATES, codec=codec)
    return ex


def joint_examples(pools: dict[str, list], mix: dict | None, seed: int) -> list:
    """Stage 3's turns. Without `mix`: every speaking and text turn, and as many ASR turns as
    speaking ones. `mix: {speaking: N, text: N, asr: N}`: N turns of each kind, a seeded draw
    without repeats while the kind has enough, whole passes then a draw when it has fewer
    (a kind left out gives none): a speaking set grown by thousands of repeat sentences would
    otherwise leave the stage's few ASR and text turns a few percent of its batches."""
    if mix is None:
        return pools["speaking"] + pools["text"] + pools["asr"][: len(pools["speaking"])]
    bad = set(mix) - set(pools)
    if bad:
        raise ValueError(f"stage 3 mix: unknown kind(s) {sorted(bad)}; kinds are {sorted(pools)}")
    rng = random.Random(seed + 3)
    out = []
    for kind in ("speaking", "text", "asr"):
        n, pool = int(mix.get(kind, 0)), pools[kind]
        if n < 0 or (n and not pool):
            raise ValueError(f"stage 3 mix: {kind}: {n} turns asked, {len(pool)} built")
        out += pool * (n // len(pool)) + rng.sample(pool, n % len(pool)) if n else []
    return out


def stage_done(path: Path) -> bool:
    p = path / "stage.json"
    return p.is_file() and json.loads(p.read_text()).get("done", False)


class RecipeMismatch(ValueError):
    """--resume asked to go on from stages another recipe trained."""


def check_resumable(recipe: dict, output: Path, stages: list[str], resume: bool) -> None:
    """A resumed run skips its finished stages: only if the recipe that trained them (the run's
    recipe.yaml) is this one, up to the settings of stages not yet finished (a budget may grow
    mid-run). Another design's folder, or a renamed recipe, is not continued silently."""
    if not resume or not (output / "recipe.yaml").is_file():
        return
    finished = [s for s in stages if stage_done(output / f"stage-{s}")]
    if not finished:
        return
    before = yaml.safe_load((output / "recipe.yaml").read_text()) or {}

    def design(r: dict) -> dict:
        out = {k: v for k, v in r.items() if k not in ("name", "extends", "hook", "stages") and not k.startswith("_")}
        return {**out, "stages": {s: (r.get("stages") or {}).get(s) for s in finished}}

    was, now = design(before), design(recipe)
    changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
    if changed:
        raise RecipeMismatch(f"{output} was trained by recipe {before.get('name')!r}, which differs from "
                             f"{recipe['name']!r} in {', '.join(changed)}: --resume goes on with the recipe that "
                             f"trained its finished stages ({', '.join(finished)}); train into another --output")


def run(recipe: dict, output: Path, stages: list[str], resume: bool = False, hook: str | None = None) -> dict:
    from accelerate import Accelerator, DistributedDataParallelKwargs

    check_resumable(recipe, output, stages, resume)

    acc = Accelerator(cpu=not torch.cuda.is_available(),
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    seed = int(recipe["seed"])
    seed_everything(seed)
    if recipe.get("torch_threads"):  # on a shared CPU, one thread per process can beat OpenMP's contention
        torch.set_num_threads(int(recipe["torch_threads"]))
    output.mkdir(parents=True, exist_ok=True)
    if acc.is_main_process:
        (output / "recipe.yaml").write_text(yaml.safe_dump({k: v for k, v in recipe.items() if not k.startswith("_")}))
    hook = hook if hook is not None else recipe.get("hook")
    t_run = time.monotonic()

    # data and codec are built by the main process first (cached), then read by all
    with acc.main_process_first():
        dense, tokenizer, base_name = build_base(recipe)
        data = build_data(recipe)
        codec, codec_ref = build_codec(recipe, output, data["asr"])
        check_audio_inits(recipe, codec)
        from deeptalk import data as D

        qa_set = D.build_spoken_qa(data["qa_questions"], data["qa_answers"], codec,
                                   json.dumps(codec.describe(), sort_keys=True, default=str),
                                   recipe["data"]["voices"], recipe["data"].get("answer_voice", "piper:joe"), seed)
    if "path" in codec_ref:
        codec_ref["src_dir"] = str(output)
    manifests = {k: v.manifest for k, v in (("asr", data["asr"]), ("spoken_qa", qa_set), ("text", data["text"]))}
    for k, m in manifests.items():
        acc.print(f"data {k}: {m['items']} items, failure rate {m['failure_rate']:.3f}")

    # the model: the last finished stage before this run's stages (or, resumed, before the first
    # of them left to train: no upcycling, 20 min on the reference, again), else the base upcycled
    order = [s for s in STAGES if s in stages]
    prev, finished = None, []
    for s in STAGES:
        done = stage_done(output / f"stage-{s}")
        if s in order and not (resume and done):
            break
        if done:
            prev = output / f"stage-{s}"
            finished += [s] if s in order else []
    if prev is not None:
        b = load_checkpoint(prev, decode="greedy")  # training hears greedily; decode: is for inference
        model, tokenizer, encoder = b.model, b.tokenizer, b.encoder
    else:
        seed_everything(seed)
        with acc.main_process_first():  # one process upcycles and writes the cache, the others read it
            model, tokenizer = upcycled_model(recipe, dense, tokenizer, codec, output / "upcycled",
                                              save=acc.is_main_process)
        seed_everything(seed)
        encoder = build_encoder(recipe, model.config.hidden_size, tokenizer)
    model.config.speech_encoder_dim = encoder.projector.fc1.in_features // encoder.config.stride
    model.config.answer_routing = recipe.get("answer_routing", model.config.answer_routing)
    model.config.answer_layout = recipe.get("answer_layout", model.config.answer_layout)
    model.config.validate()
    encoder.projector.to(model.dtype)
    encoder.tie(model.get_input_embeddings().weight, tokenizer)
    recipe_reading(encoder, recipe)

    asr_ex = qa_ex = text_ex = None

    def asr_turns() -> list:
        return asr_examples(data["asr"], encoder, tokenizer, model.config, recipe["data"].get("asr_instructions"), seed)
    summary = {"recipe": recipe["name"], "recipe_hash": recipe_hash(recipe), "seed": seed, "stages": {},
               "data": manifests, "base": base_name}
    for stage in order:
        path = output / f"stage-{stage}"
        if stage in finished:   # the model above is already the last of these
            acc.print(f"stage {stage}: done already")
            summary["stages"][stage] = json.loads((path / "stage.json").read_text())
            continue
        if stage_done(path) and resume:
            acc.print(f"stage {stage}: done already, loading {path}")
            b = load_checkpoint(path, decode="greedy")
            model, tokenizer, encoder = b.model, b.tokenizer, recipe_reading(b.encoder, recipe)
            summary["stages"][stage] = b.info
            continue
        scfg = recipe["stages"].get(stage)
        if scfg is None:
            raise ValueError(f"recipe {recipe['name']!r} has no settings for stage {stage!r}")
        t0 = time.monotonic()
        if stage == "assign":
            info = assign_stage(model, encoder, tokenizer, scfg, qa_set, data, path, seed, acc, codec)
        else:
            if stage == "1" and encoder.reads_as_text:
                ex = None  # CTC on the hearing corpus (deeptalk/hearing.py), the LLM untouched
            elif stage == "1":
                asr_ex = asr_ex or asr_turns()
                ex = asr_ex
            elif stage == "2.1":
                qa_ex = qa_ex or speaking_examples(recipe, data, qa_set, codec, encoder, tokenizer, model.config)
                ex = qa_ex
                start_audio_rows(model, tokenizer, codec, stage, scfg, fresh=not resumes(path, resume))
            elif stage == "2.2":
                text_ex = text_ex or text_examples(data["text"], tokenizer, model.config)
                corpus = int(recipe["data"].get("text_corpus_tokens", 0))
                ex = text_ex + (corpus_examples(tokenizer, corpus) if corpus else [])
            else:
                asr_ex = asr_ex or asr_turns()
                qa_ex = qa_ex or speaking_examples(recipe, data, qa_set, codec, encoder, tokenizer, model.config)
                text_ex = text_ex or text_examples(data["text"], tokenizer, model.config)
                ex = joint_examples({"speaking": qa_ex, "text": text_ex, "asr": asr_ex}, scfg.get("mix"), seed)
            acc.free_memory()  # forget the previous stage's prepared objects (save/load_state count them)
            if ex is None:
                info = hearing_stage(recipe, scfg, encoder, tokenizer, path, seed, resume, acc)
            else:
                info = train_stage(acc, stage, scfg, model, encoder, ex, tokenizer, path, seed, resume, teacher=dense)
        model.set_routing_mode(recipe.get("inference_routing", "all") if model.config.speech_experts is not None
                               else "all")
        if model.config.speech_experts is not None:
            model.set_trainable_modality(None)
        info.update({"done": True, "wall_seconds": round(time.monotonic() - t0, 2), "seed": seed,
                     "recipe": recipe["name"], "recipe_hash": recipe_hash(recipe), "base": base_name,
                     "data_answerer": data["answerer"], "routing_mode": model.config.routing_mode})
        if acc.is_main_process:
            if (path / "loss.csv").is_file():
                plot_losses(path / "loss.csv", path / "loss.png", f"{recipe['name']} stage {stage}")
            save_checkpoint(path, model, tokenizer, encoder, codec_ref, info)
            info["hook"] = run_hook(hook, stage, path, output)
            (path / "stage.json").write_text(json.dumps(info, indent=1, default=str))
        acc.wait_for_everyone()
        summary["stages"][stage] = info
    summary["wall_seconds"] = round(time.monotonic() - t_run, 2)
    if acc.is_main_process:
        (output / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    acc.end_training()
    return summary

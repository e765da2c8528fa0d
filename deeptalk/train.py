"""The staged trainer (`deeptalk-train`), on accelerate: the same command on a CPU or many GPUs.

    deeptalk-train --recipe tiny|reference|PATH [--stages 1,assign,2.1,2.2,3] [--output DIR]
                   [--resume] [--hook "CMD {stage} {checkpoint}"] [--export DIR]
    accelerate launch --multi_gpu --num_processes 2 -m deeptalk.train --recipe tiny ...   # 2 CPU processes
    (accelerate 1.15's `launch --cpu --num_processes 2` starts one process: it needs mpirun)

Stages (the paper's):
    1       align: the speech projector learns on ASR pairs (transcript CE given speech); LLM frozen
    assign  adaptive modality-expert assignment (deeptalk/experts.py): load matrices + heatmap
    2.1     speech experts + audio embeddings / heads on spoken QA (speech + text answers);
            routing "masked": text experts unreachable and frozen
    2.2     text experts on text instructions; speech experts unreachable and frozen
    3       joint: every expert, audio tensors and projector, unmasked routing
A recipe stage may list what it trains (`train: [speech_experts, audio, ...]`, see
TRAIN_GROUPS); the defaults above are the paper's. `text_experts_lowrank` with `lowrank_rank: r`
trains the text experts as W + B A (deeptalk/lowrank.py), merged when the stage ends, so the
shipped delta stores thin factors for them. `--export DIR` writes the last finished
stage as a delta over the base LLM (deeptalk/export.py), the form the reference ships in.

Every stage writes OUTPUT/stage-<tag>/: the model (save_pretrained, safetensors), the
projector, tokenizer, `stage.json` (steps, tokens, tokens/s, seconds, seed, hook result),
`loss.csv` + `loss.png`; while it runs, `state/` holds the last accelerate checkpoint, which
`--resume` continues from after a kill. After a stage, the hook command (if any) runs in a
shell with {stage}, {checkpoint} and {output} filled in; a non-zero exit stops the pipeline
(this is how CI gates a stage with `deeptalk-eval regress`; nothing here imports the harness).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from deeptalk.generate import SPEECH_MODALITY, TEXT_MODALITY, answer_steps, build_prompt_ids

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
STAGES = ("1", "assign", "2.1", "2.2", "3")
ASR_INSTRUCTION = "Transcribe what was said."
ENCODER_FILE, ENCODER_CONFIG, CODEC_FILE = "speech_encoder.safetensors", "speech_encoder.json", "codec.json"


# --------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------
def _merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, mappings merged key by key (a stage's settings included)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_recipe(name_or_path: str, _seen: tuple = ()) -> dict:
    """A recipe by name (deeptalk/recipes/<name>.yaml) or path; yaml.safe_load, checked.

    `extends: <recipe>` starts from that recipe and overrides what this one names: the
    ablations are the reference with one thing changed, so they share data and budget."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"recipe {name_or_path!r} not found (known: {known}, or a path to a .yaml)")
    recipe = yaml.safe_load(path.read_text())
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a mapping, got {type(recipe).__name__}")
    if "extends" in recipe:
        parent = recipe.pop("extends")
        if parent in _seen or str(path) in _seen:
            raise ValueError(f"{path}: `extends` loops through {parent!r}")
        base = load_recipe(parent, _seen + (str(path),))
        base.pop("_path", None)
        recipe = _merge(base, recipe)
        recipe["extends"] = parent
    for key in ("name", "seed", "base", "speech_encoder", "codec", "data", "stages"):
        if key not in recipe:
            raise ValueError(f"{path}: missing field {key!r}")
    unknown = set(recipe["stages"]) - set(STAGES)
    if unknown:
        raise ValueError(f"{path}: unknown stage(s) {sorted(unknown)}; stages are {STAGES}")
    recipe["_path"] = str(path)
    return recipe


def recipe_hash(recipe: dict) -> str:
    clean = {k: v for k, v in recipe.items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------
# Model, encoder, codec
# --------------------------------------------------------------------------------------
def build_base(recipe: dict):
    """(dense base LLM, tokenizer, base name). `random_tiny`: a tiny random Llama (real class)
    with the SmolLM2 tokenizer, for tests; otherwise a real base LLM (load_base_llm)."""
    from deeptalk.base_llm import load_base_llm, resolve_base

    b = recipe["base"]
    if b.get("kind") == "random_tiny":
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(resolve_base(b.get("tokenizer", "smollm2-135m-instruct")))
        torch.manual_seed(recipe["seed"])
        cfg = LlamaConfig(vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                          **b.get("config", {}))
        dense = LlamaForCausalLM(cfg).eval()
        dense.config.name_or_path = f"random_tiny:{recipe['seed']}"
        return dense, tok, dense.config.name_or_path
    dense, tok = load_base_llm(b["name"])
    return dense, tok, b["name"]


def build_codec(recipe: dict, out: Path, asr_set=None):
    """The codec named by the recipe: "offline" (shipped), a path, or {fit: {...}}: a small
    residual k-means codec fitted on the stage-1 speech and saved into the output."""
    from deeptalk.speech.codec import load_codec

    spec = recipe["codec"]
    if isinstance(spec, str):
        return load_codec(spec), {"name": spec}
    if "fit" not in spec:
        raise ValueError(f"recipe codec: expected a name, a path or {{fit: ...}}, got {spec}")
    path = out / "codec.safetensors"
    if path.is_file():
        return load_codec(path), {"path": path.name}
    if asr_set is None:
        raise ValueError("recipe codec {fit: ...} needs the stage-1 speech to fit on")
    from deeptalk.data import load_wav
    from deeptalk.speech.codec_offline import OfflineCodec, fit_residual_kmeans, stack_frames
    from deeptalk.speech.vocoder import MelConfig, MelFrontend

    f = spec["fit"]
    mel_cfg = MelConfig()
    front = MelFrontend(mel_cfg)
    import librosa

    mels = []
    for item in asr_set.items:
        wav = librosa.resample(load_wav(asr_set, item), orig_sr=16000, target_sr=mel_cfg.sample_rate)
        wav = np.pad(wav, (0, (-len(wav)) % (mel_cfg.hop_length * f["stack"])))
        mels.append(front.log_mel(wav.astype(np.float32)))
    allm = np.concatenate(mels, 1)
    mean, std = allm.mean(1), allm.std(1) + 1e-5
    vecs = np.concatenate([stack_frames((m - mean[:, None]) / std[:, None], f["stack"]) for m in mels])
    books = fit_residual_kmeans(vecs, f["num_codebooks"], f["codebook_size"], seed=recipe["seed"], progress=False)
    codec = OfflineCodec(books, mean, std, stack=f["stack"], mel=mel_cfg, gl_iters=f.get("gl_iters", 32))
    codec.save(path, {"fitted_by": "deeptalk-train", "recipe": recipe["name"], "vectors": int(len(vecs))})
    return load_codec(path), {"path": path.name}


def build_model(recipe: dict, dense, tokenizer, codec):
    """Upcycle the dense base into the DeepTalk MoE with speech heads sized for the codec."""
    from deeptalk.upcycle import extend_tokenizer, upcycle

    up = dict(recipe.get("upcycle", {}))
    model = upcycle(dense, tokenizer=tokenizer, seed=recipe["seed"], num_codebooks=codec.num_codebooks,
                    codebook_size=codec.codebook_size, **up)
    extend_tokenizer(tokenizer, model.config)
    return model


def build_encoder(recipe: dict, hidden_size: int, tokenizer=None):
    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig

    cfg = SpeechEncoderConfig(hidden_size=hidden_size, **recipe["speech_encoder"])
    vocab = None
    if cfg.projector == "ctc":  # the head emits the tokens of the hearing corpus
        from deeptalk.hearing import corpus_vocab

        vocab = corpus_vocab(tokenizer, seed=int(recipe["seed"]))
    return SpeechEncoder.from_whisper(cfg, ctc_vocab=vocab)


@dataclass
class Bundle:
    """Everything inference needs, as one checkpoint directory holds it."""

    model: nn.Module
    tokenizer: object
    encoder: object
    codec: object
    path: Path
    info: dict = field(default_factory=dict)


def save_checkpoint(path: Path, model, tokenizer, encoder, codec_ref: dict, info: dict) -> None:
    """model (safetensors) + tokenizer + projector + encoder config + codec reference + stage.json."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    save_file(encoder.projector_state(), str(tmp / ENCODER_FILE))
    (tmp / ENCODER_CONFIG).write_text(json.dumps(encoder.config.to_dict(), indent=1))
    ref = dict(codec_ref)
    if "path" in ref:  # a fitted codec travels with the checkpoint
        src = Path(ref.pop("src_dir")) / ref["path"] if "src_dir" in ref else None
        if src is not None and src.is_file():
            shutil.copy(src, tmp / ref["path"])
            if src.with_suffix(".json").is_file():
                shutil.copy(src.with_suffix(".json"), tmp / Path(ref["path"]).with_suffix(".json").name)
    (tmp / CODEC_FILE).write_text(json.dumps(ref))
    (tmp / "stage.json").write_text(json.dumps(info, indent=1, default=str))
    for name in ("loss.csv", "loss.png", "hearing_curve.csv", "assignment.json", "modality_load.safetensors", "modality_load.csv",
                 "modality_load.png"):
        if (path / name).is_file():
            shutil.copy(path / name, tmp / name)
    if (path / "state").is_dir() and info.get("done"):
        pass  # the finished stage's resume state is not needed any more
    elif (path / "state").is_dir():
        shutil.move(str(path / "state"), str(tmp / "state"))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def load_checkpoint(path, device: str = "cpu", dtype: torch.dtype = torch.float32, codec: str | None = None,
                    base=None) -> Bundle:
    """Load a stage checkpoint (or a shipped model directory in the same layout).

    `base`: for a delta checkpoint, the dense base model (default: the one delta.json names)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from deeptalk.modeling import DeepTalkForCausalLM
    from deeptalk.speech.codec import load_codec
    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig

    path = Path(path)
    missing = [n for n in ("config.json", ENCODER_FILE, ENCODER_CONFIG, CODEC_FILE) if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: not a DeepTalk checkpoint (missing {', '.join(missing)})")
    if (path / "delta.json").is_file():
        model = DeepTalkForCausalLM.load_delta(path, base=base, dtype=dtype)
    else:
        model = DeepTalkForCausalLM.from_pretrained(path, dtype=dtype)
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    enc_cfg = SpeechEncoderConfig(**json.loads((path / ENCODER_CONFIG).read_text()))
    state = load_file(str(path / ENCODER_FILE))
    encoder = SpeechEncoder.from_whisper(enc_cfg, ctc_vocab=state.get("vocab"))
    encoder.projector.load_state_dict(state)
    encoder = encoder.to(device).eval().tie(model.get_input_embeddings().weight)
    ref = json.loads((path / CODEC_FILE).read_text())
    codec_src = codec or (str(path / ref["path"]) if "path" in ref else ref["name"])
    info = json.loads((path / "stage.json").read_text()) if (path / "stage.json").is_file() else {}
    return Bundle(model, tokenizer, encoder, load_codec(codec_src), path, info)


# --------------------------------------------------------------------------------------
# Data -> token sequences
# --------------------------------------------------------------------------------------
def build_data(recipe: dict, tokenizer_dir_hint: str | None = None) -> dict:
    """Build (or reuse from the cache) the stage data sets of the recipe."""
    from deeptalk import data as D

    d = recipe["data"]
    seed = recipe["seed"]
    rng = random.Random(seed)
    questions = D.quiz_questions()
    rng.shuffle(questions)
    n_qa, n_asr, n_text = d["spoken_qa"], d["asr"], d["text"]
    qa_q = [q["question"] for q in questions[:n_qa]]
    prompts = D.instruction_prompts(seed)
    rng.shuffle(prompts)
    text_p = prompts[:n_text]

    from deeptalk.base_llm import load_base_llm

    answerer_name = d.get("answerer", "smollm2-135m-instruct")
    max_new = d.get("answer_max_new_tokens", 48)
    answerer_id = f"{answerer_name}|greedy|{max_new}|batch16"
    need = [p for p in qa_q + text_p]
    lazy = {}

    def answer(ps):
        if "fn" not in lazy:
            m, t = load_base_llm(answerer_name)
            lazy["fn"] = D.base_llm_answerer(m, t, max_new_tokens=max_new)
        return lazy["fn"](ps)

    answers = D.cached_answers(need, answer, answerer_id, desc="self-distilled answers")
    qa_a = [D.first_sentences(a, d.get("spoken_answer_max_words", 24)) for a in answers[:n_qa]]
    text_a = answers[n_qa:]
    # ASR sentences: questions not used for spoken QA, then answer sentences (natural text)
    asr_sents = [q["question"] for q in questions[n_qa:]][: n_asr // 2]
    asr_sents += [s for s in (D.first_sentences(a, 20) for a in answers) if s][: n_asr - len(asr_sents)]
    asr = D.build_asr_set(asr_sents, d["voices"], seed)
    return {"asr": asr, "qa_questions": qa_q, "qa_answers": qa_a, "text": D.build_text_set(text_p, text_a),
            "answerer": answerer_id}


@dataclass
class Example:
    ids: list[int]
    labels: list[int]
    modality: list[int]
    feats: torch.Tensor | None = None  # Whisper features [T, d] for the <|audio_in|> slots
    audio: torch.Tensor | None = None  # [Q, L] delayed codes (-1 = none) aligned with ids

    @property
    def tokens(self) -> int:
        return sum(l != -100 for l in self.labels)


def _answer_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _spoken_items(item_set, encoder, desc: str):
    """(item, Whisper features, number of speech positions) for every spoken item of a set."""
    from deeptalk.data import load_wav
    from deeptalk.speech.encoder import num_positions, prepare_audio

    for item in tqdm(item_set.items, desc=desc):
        feats = encoder.whisper_features(prepare_audio(load_wav(item_set, item), 16000, name=item["id"]))
        if encoder.reads_as_text:  # a CTC projector's positions are the tokens it hears (it is frozen after stage 1)
            with torch.no_grad():
                p = int(encoder([feats])[1][0])
        else:
            p = num_positions(feats.shape[0], encoder.config.stride)
        yield item, feats, p


def asr_examples(asr_set, encoder, tokenizer, config) -> list[Example]:
    out = []
    for item, feats, p in _spoken_items(asr_set, encoder, "whisper features (asr)"):
        ids, mod, _ = build_prompt_ids(tokenizer, config, ASR_INSTRUCTION, p, speak=False,
                                       speech_as_text=encoder.reads_as_text)
        ans = _answer_ids(tokenizer, item["text"]) + [tokenizer.eos_token_id]
        out.append(Example(ids + ans, [-100] * len(ids) + ans, mod + [TEXT_MODALITY] * len(ans), feats))
    return out


def qa_examples(qa_set, encoder, tokenizer, config) -> list[Example]:
    out = []
    for item, feats, p in _spoken_items(qa_set, encoder, "whisper features (spoken qa)"):
        ids, mod, _ = build_prompt_ids(tokenizer, config, None, p, speak=True, speech_as_text=encoder.reads_as_text)
        codes = np.load(qa_set.path(item, "codes"))
        text, grid = answer_steps(_answer_ids(tokenizer, item["answer"]), codes, config)
        audio = torch.full((config.num_codebooks, len(ids) + len(text)), -1, dtype=torch.long)
        audio[:, len(ids):] = grid
        out.append(Example(ids + text, [-100] * len(ids) + text, mod + [SPEECH_MODALITY] * len(text), feats, audio))
    return out


def text_examples(text_set, tokenizer, config) -> list[Example]:
    out = []
    for item in text_set.items:
        ids, mod, _ = build_prompt_ids(tokenizer, config, item["prompt"], None, speak=False)
        ans = _answer_ids(tokenizer, item["answer"]) + [tokenizer.eos_token_id]
        out.append(Example(ids + ans, [-100] * len(ids) + ans, mod + [TEXT_MODALITY] * len(ans)))
    return out


def corpus_examples(tokenizer, num_tokens: int, block: int = 256) -> list[Example]:
    """Plain offline prose (the upcycling calibration split, deeptalk/upcycle.py) as text-only
    language-modelling rows: broad text for stage 2.2 to heal the text path on, beside the
    instruction answers (`data.text_corpus_tokens` in a recipe)."""
    from deeptalk.upcycle import calibration_texts, token_blocks

    blocks = token_blocks(tokenizer, calibration_texts("calib"), num_tokens, block)
    return [Example(row.tolist(), row.tolist(), [TEXT_MODALITY] * block) for row in blocks]


def collate(examples: list[Example], pad_id: int, num_codebooks: int, max_len: int | None = None) -> dict:
    """Right-padded batch; audio rows -1 (nothing) / labels -100 where absent."""
    n = max(len(e.ids) for e in examples)
    if max_len is not None and n > max_len:
        raise ValueError(f"a training sequence has {n} tokens, more than max_len={max_len}: shorten the data")
    b = len(examples)
    ids = torch.full((b, n), pad_id, dtype=torch.long)
    labels = torch.full((b, n), -100, dtype=torch.long)
    modality = torch.zeros((b, n), dtype=torch.long)
    mask = torch.zeros((b, n), dtype=torch.long)
    audio = torch.full((b, num_codebooks, n), -1, dtype=torch.long) if num_codebooks else None
    has_audio = any(e.audio is not None for e in examples)
    for i, e in enumerate(examples):
        L = len(e.ids)
        ids[i, :L] = torch.tensor(e.ids)
        labels[i, :L] = torch.tensor(e.labels)
        modality[i, :L] = torch.tensor(e.modality)
        mask[i, :L] = 1
        if e.audio is not None:
            audio[i, :, :L] = e.audio
    batch = {"input_ids": ids, "labels": labels, "token_modality": modality, "attention_mask": mask,
             "feats": [e.feats for e in examples if e.feats is not None]}
    if has_audio:
        batch["audio_codes"] = audio
        batch["audio_labels"] = torch.where(audio >= 0, audio, torch.full_like(audio, -100))
    return batch


class Trainee(nn.Module):
    """Projector + LLM as one module, so accelerate / DDP wrap a single thing."""

    def __init__(self, model, projector, stride: int):
        super().__init__()
        self.model, self.projector, self.stride = model, projector, stride

    def forward(self, batch: dict):
        speech = None
        if batch["feats"]:
            w = self.projector.fc1.weight
            speech = torch.cat([self.projector(f.unsqueeze(0).to(w.device, w.dtype))[0] for f in batch["feats"]])
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          token_modality=batch["token_modality"], speech_embeds=speech,
                          audio_codes=batch.get("audio_codes"), labels=batch["labels"],
                          audio_labels=batch.get("audio_labels"), use_cache=False)


# --------------------------------------------------------------------------------------
# One training stage
# --------------------------------------------------------------------------------------
# What each stage trains (the paper's schedule). A recipe stage may name its own list under
# `train:` (e.g. the shipped reference keeps text experts frozen to fit its delta budget).
TRAIN_GROUPS = ("projector", "audio", "speech_experts", "text_experts", "text_experts_lowrank", "experts",
                "shared_experts", "routers", "llm_ffn", "llm")
DEFAULT_TRAIN = {
    "1": ["projector"],
    "2.1": ["speech_experts", "audio"],
    "2.2": ["text_experts"],
    "3": ["speech_experts", "text_experts", "audio", "projector"],
}
# no modality split (pure MoE) or no MoE at all (dense fine-tune): the same stages, no groups
DEFAULT_TRAIN_UNSPLIT = {
    "1": ["projector"],
    "2.1": ["experts", "audio"],
    "2.2": ["experts"],
    "3": ["experts", "audio", "projector"],
}


def stage_train_groups(model, stage: str, scfg: dict | None = None) -> list[str]:
    """The parameter groups `stage` trains: the recipe's `train:` list or the default schedule."""
    if stage not in DEFAULT_TRAIN:
        raise ValueError(f"not a training stage: {stage!r}")
    split = model.config.speech_experts is not None
    groups = list((scfg or {}).get("train") or (DEFAULT_TRAIN if split else DEFAULT_TRAIN_UNSPLIT)[stage])
    bad = [g for g in groups if g not in TRAIN_GROUPS]
    if bad:
        raise ValueError(f"stage {stage}: unknown train group(s) {bad}; groups are {TRAIN_GROUPS}")
    if {"text_experts", "text_experts_lowrank"} <= set(groups):
        raise ValueError(f"stage {stage}: train the text experts in full or low-rank, not both")
    if not split and {"speech_experts", "text_experts", "text_experts_lowrank"} & set(groups):
        raise ValueError(f"stage {stage}: train groups {groups} need a modality map; this model has none "
                         "(pure MoE / dense): use 'experts'")
    return groups


def _group_parameters(model, encoder, group: str) -> list:
    if group == "projector":
        return list(encoder.projector.parameters())
    if group == "audio":
        return [p for n, p in model.named_parameters() if n.startswith(("model.audio_embed", "audio_head"))]
    if group in ("speech_experts", "text_experts"):
        want = group == "speech_experts"
        return [p for moe in model.moe_layers for e, ex in enumerate(moe.experts) if bool(moe.speech_group[e]) == want
                for p in ex.parameters()]
    if group == "text_experts_lowrank":  # the factors train_stage registered (deeptalk/lowrank.py)
        from deeptalk.lowrank import lowrank_parameters

        return lowrank_parameters(model, "text")
    if group == "experts":
        return [p for moe in model.moe_layers for p in moe.experts.parameters()]
    if group == "shared_experts":
        return [p for moe in model.moe_layers if moe.shared_experts is not None for p in moe.shared_experts.parameters()]
    if group == "routers":
        return [p for moe in model.moe_layers for p in moe.router.parameters()]
    if group == "llm_ffn":  # every feed-forward layer, dense or MoE (the dense fine-tune ablation)
        return [p for layer in model.model.layers for p in layer.mlp.parameters()]
    if group == "llm":  # every LLM weight: the dense "native MLLM" full fine-tune
        return list(model.parameters())
    raise ValueError(f"unknown train group {group!r}")


def set_trainable(model, encoder, stage: str, scfg: dict | None = None) -> str:
    """Freeze everything, unfreeze the stage's groups; returns the routing mode used while training.

    Stages 2.1 / 2.2 of a split model route with the paper's masking (the frozen group's
    router logits are -inf); stage 1 and 3, and unsplit models, route over every expert.
    """
    groups = stage_train_groups(model, stage, scfg)
    model.requires_grad_(False)
    encoder.projector.requires_grad_(False)
    split = model.config.speech_experts is not None
    if split and stage in ("2.1", "2.2"):
        model.set_routing_mode("masked")
        model.set_trainable_modality("speech" if stage == "2.1" else "text")  # sets the mask (and expert grads)
        model.requires_grad_(False)
    else:
        model.set_routing_mode("all")
        if split:
            model.set_trainable_modality(None)
            model.requires_grad_(False)
    if "projector" in groups and encoder.reads_as_text and stage != "1":
        raise ValueError(f"stage {stage}: a CTC projector trains in stage 1 only (its positions are the tokens it "
                         "hears, fixed when the stage's examples are built): drop 'projector' from this stage's train list")
    for g in groups:
        params = _group_parameters(model, encoder, g)
        if not params:
            raise ValueError(f"stage {stage}: train group {g!r} has no parameters in this model")
        for p in params:
            p.requires_grad_(True)
    return model.config.routing_mode


def plot_losses(csv_path: Path, png_path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(csv_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    for col in ("loss", "text_loss", "audio_loss", "distill_loss"):
        if col in df and df[col].notna().any():
            ax.plot(df["step"], df[col], label=col)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def train_stage(acc, stage: str, scfg: dict, model, encoder, examples: list[Example], tokenizer, out: Path,
                seed: int, resume: bool, teacher=None) -> dict:
    """Train one stage; checkpoint every `checkpoint_every` steps into out/state; returns stats.

    `teacher`: the dense base LLM, needed when the stage sets `distill:` (deeptalk/distill.py)."""
    from deeptalk.distill import check_config, text_kl
    from deeptalk.lowrank import add_lowrank, merge_lowrank

    lowrank = "text_experts_lowrank" in stage_train_groups(model, stage, scfg)
    lowrank_rank = int(scfg.get("lowrank_rank", 8)) if lowrank else None
    if lowrank:  # W + B A on every text expert matrix, merged back once the stage ends
        add_lowrank(model, lowrank_rank, seed, "text")
    elif scfg.get("lowrank_rank") is not None:
        raise ValueError(f"stage {stage}: lowrank_rank is set but the stage does not train 'text_experts_lowrank'")
    routing = set_trainable(model, encoder, stage, scfg)
    dcfg = check_config(scfg["distill"], stage) if scfg.get("distill") else None
    if dcfg is not None:
        if teacher is None:
            raise ValueError(f"stage {stage}: distill needs the dense base LLM as teacher")
        n_teachable = sum(max(e.ids) < teacher.config.vocab_size for e in examples)
        if not n_teachable:
            raise ValueError(f"stage {stage}: distill is set but no training example is text-only "
                             "(the teacher only reads base-vocabulary tokens)")
        teacher = teacher.to(acc.device, model.dtype).eval()
    trainee = Trainee(model, encoder.projector, encoder.config.stride)
    params = [p for p in trainee.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    if not params:
        raise ValueError(f"stage {stage}: nothing to train")
    if not examples:
        raise ValueError(f"stage {stage}: no training examples")
    opt = torch.optim.AdamW(params, lr=float(scfg["lr"]), weight_decay=float(scfg.get("weight_decay", 0.0)))
    trainee.train()
    encoder.whisper.eval()
    wrapped, opt = acc.prepare(trainee, opt)
    world, rank = acc.num_processes, acc.process_index
    bs = int(scfg["batch_size"])
    max_steps, max_seconds = int(scfg["max_steps"]), float(scfg.get("max_seconds", 1e12))
    every = int(scfg.get("checkpoint_every", 50))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    q = model.config.num_codebooks

    state_dir, csv_path = out / "state", out / "loss.csv"
    start, seconds, tokens, seq_tokens = 0, 0.0, 0, 0
    if resume and (state_dir / "progress.json").is_file():
        prog = json.loads((state_dir / "progress.json").read_text())
        acc.load_state(str(state_dir / "accelerate"))
        start, seconds, tokens = prog["step"], prog["seconds"], prog["tokens"]
        seq_tokens = prog.get("seq_tokens", 0)
        acc.print(f"stage {stage}: resuming at step {start}")
        if acc.is_main_process and csv_path.is_file():  # drop rows logged after the checkpoint
            rows = list(csv.reader(csv_path.open()))
            keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= start]
            with csv_path.open("w", newline="") as f:
                csv.writer(f).writerows(keep)
    elif acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        with csv_path.open("w", newline="") as f:
            csv.writer(f).writerow(["step", "loss", "text_loss", "audio_loss", "tokens", "seconds", "distill_loss"])
    acc.wait_for_everyone()

    per_epoch = max(len(examples) // (bs * world), 1)

    def batch_for(step: int) -> list[Example]:
        # epoch order from (seed, epoch): resuming at any step replays the same batches
        epoch, k = divmod(step, per_epoch)
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        order = (order * math.ceil(bs * world / max(len(order), 1)))[: max(len(order), bs * world)]
        chunk = order[k * bs * world: (k + 1) * bs * world] or order[: bs * world]
        return [examples[i] for i in chunk[rank::world]]

    bar = tqdm(range(start, max_steps), desc=f"stage {stage}", disable=not acc.is_main_process, initial=start,
               total=max_steps)
    t_last = time.monotonic()
    step = start
    for step in bar:
        batch = collate(batch_for(step), pad_id, q, scfg.get("max_len"))
        out_ = wrapped(batch)
        loss_t, kl = out_.loss, None
        if dcfg is not None:
            kl, _ = text_kl(out_.logits, teacher, batch["input_ids"], batch["attention_mask"], dcfg["temperature"])
            loss_t = loss_t + dcfg["weight"] * kl
        acc.backward(loss_t)
        if scfg.get("grad_clip"):
            acc.clip_grad_norm_(params, float(scfg["grad_clip"]))
        opt.step()
        opt.zero_grad(set_to_none=True)
        # supervised tokens (labels) and every token the forward pass processed
        n_tok = int(acc.gather(torch.tensor([sum(e.tokens for e in batch_for(step))])).sum())
        seq_tokens += int(acc.gather(batch["attention_mask"].sum().reshape(1)).sum())
        now = time.monotonic()
        seconds += now - t_last
        t_last = now
        tokens += n_tok
        loss = float(acc.reduce(loss_t.detach(), "mean"))
        if acc.is_main_process:
            with csv_path.open("a", newline="") as f:
                tl = "" if out_.text_loss is None else float(out_.text_loss.detach())
                al = "" if out_.audio_loss is None else float(out_.audio_loss.detach())
                dl = "" if kl is None else float(kl.detach())
                csv.writer(f).writerow([step + 1, loss, tl, al, tokens, round(seconds, 3), dl])
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / max(seconds, 1e-9):.0f}")
        done = step + 1 >= max_steps or seconds >= max_seconds
        if (step + 1) % every == 0 or done:
            acc.save_state(str(state_dir / "accelerate"))
            if acc.is_main_process:
                (state_dir / "progress.json").write_text(json.dumps({"step": step + 1, "seconds": seconds,
                                                                     "tokens": tokens, "seq_tokens": seq_tokens}))
            acc.wait_for_everyone()
            t_last = time.monotonic()  # checkpoint writing is not training time
        if done:
            break
    steps_done = step + 1 if max_steps > start else start
    if lowrank:
        merge_lowrank(model)
    return {"stage": stage, "steps": steps_done, "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None, "seq_tokens": seq_tokens,
            "seq_tokens_per_s": round(seq_tokens / seconds, 1) if seconds else None, "routing_mode_train": routing,
            "trainable_params": n_trainable, "world_size": world, "batch_size": bs, "lr": scfg["lr"],
            "final_loss": loss if max_steps > start else None,
            "distill": dcfg, "distill_examples": n_teachable if dcfg is not None else None,
            "lowrank_rank": lowrank_rank}


# --------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------
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


def stage_done(path: Path) -> bool:
    p = path / "stage.json"
    return p.is_file() and json.loads(p.read_text()).get("done", False)


def run(recipe: dict, output: Path, stages: list[str], resume: bool = False, hook: str | None = None) -> dict:
    from accelerate import Accelerator, DistributedDataParallelKwargs

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
        from deeptalk import data as D

        qa_set = D.build_spoken_qa(data["qa_questions"], data["qa_answers"], codec,
                                   json.dumps(codec.describe(), sort_keys=True, default=str),
                                   recipe["data"]["voices"], recipe["data"].get("answer_voice", "piper:joe"), seed)
    if "path" in codec_ref:
        codec_ref["src_dir"] = str(output)
    manifests = {k: v.manifest for k, v in (("asr", data["asr"]), ("spoken_qa", qa_set), ("text", data["text"]))}
    for k, m in manifests.items():
        acc.print(f"data {k}: {m['items']} items, failure rate {m['failure_rate']:.3f}")

    # the model: resume from the last finished stage, or upcycle the base
    order = [s for s in STAGES if s in stages]
    prev = None
    for s in STAGES:
        if s in order:
            break
        if stage_done(output / f"stage-{s}"):
            prev = output / f"stage-{s}"
    if prev is not None:
        b = load_checkpoint(prev)
        model, tokenizer, encoder = b.model, b.tokenizer, b.encoder
    else:
        seed_everything(seed)
        model = build_model(recipe, dense, tokenizer, codec)
        seed_everything(seed)
        encoder = build_encoder(recipe, model.config.hidden_size, tokenizer)
    model.config.speech_encoder_dim = encoder.projector.fc1.in_features // encoder.config.stride
    encoder.projector.to(model.dtype)
    encoder.tie(model.get_input_embeddings().weight)

    asr_ex = qa_ex = text_ex = None
    summary = {"recipe": recipe["name"], "recipe_hash": recipe_hash(recipe), "seed": seed, "stages": {},
               "data": manifests, "base": base_name}
    for stage in order:
        path = output / f"stage-{stage}"
        if stage_done(path) and resume:
            acc.print(f"stage {stage}: done already, loading {path}")
            b = load_checkpoint(path)
            model, tokenizer, encoder = b.model, b.tokenizer, b.encoder
            summary["stages"][stage] = b.info
            continue
        scfg = recipe["stages"].get(stage)
        if scfg is None:
            raise ValueError(f"recipe {recipe['name']!r} has no settings for stage {stage!r}")
        t0 = time.monotonic()
        if stage == "assign":
            info = assign_stage(model, encoder, tokenizer, scfg, qa_set, data, path, seed, acc)
        else:
            if stage == "1" and encoder.reads_as_text:
                ex = None  # CTC on the hearing corpus (deeptalk/hearing.py), the LLM untouched
            elif stage == "1":
                asr_ex = asr_ex or asr_examples(data["asr"], encoder, tokenizer, model.config)
                ex = asr_ex
            elif stage == "2.1":
                qa_ex = qa_ex or qa_examples(qa_set, encoder, tokenizer, model.config)
                ex = qa_ex
            elif stage == "2.2":
                text_ex = text_ex or text_examples(data["text"], tokenizer, model.config)
                corpus = int(recipe["data"].get("text_corpus_tokens", 0))
                ex = text_ex + (corpus_examples(tokenizer, corpus) if corpus else [])
            else:
                asr_ex = asr_ex or asr_examples(data["asr"], encoder, tokenizer, model.config)
                qa_ex = qa_ex or qa_examples(qa_set, encoder, tokenizer, model.config)
                text_ex = text_ex or text_examples(data["text"], tokenizer, model.config)
                ex = qa_ex + text_ex + asr_ex[: len(qa_ex)]
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


def hearing_stage(recipe: dict, scfg: dict, encoder, tokenizer, path: Path, seed: int, resume: bool, acc) -> dict:
    """Stage 1 for a CTC projector: CTC on the hearing corpus, resumable (state in path/state)."""
    from deeptalk.hearing import HearingData, HearingTrain, build_hearing_data, train_ctc

    hd = dict(recipe["data"].get("hearing", {}))
    if "voices" in hd:
        hd["voices"] = tuple(hd["voices"])
    with acc.main_process_first():
        files, dev = build_hearing_data(HearingData(seed=seed, **hd), encoder, tokenizer)
    keys = {"lr", "batch_size", "max_steps", "max_seconds", "checkpoint_every", "eval_every", "warmup", "spec_augment"}
    cfg = HearingTrain(stride=encoder.config.stride, seed=seed, **{k: v for k, v in scfg.items() if k in keys})
    dtype = encoder.projector.fc1.weight.dtype
    encoder.projector.float()  # CTC trains in fp32 whatever the model's dtype
    res = train_ctc(encoder.projector, files, dev, tokenizer, cfg, path / "state", resume=resume, log=acc.print)
    encoder.projector.to(dtype)
    shutil.copy(path / "state" / "curve.csv", path / "hearing_curve.csv")
    return {"stage": "1", "steps": res["steps"], "seconds": round(res["seconds"], 2), "trains": "ctc projector",
            "dev_wer": res["dev_wer"], "utterances": res["utterances"],
            "trainable_parameters": sum(p.numel() for p in encoder.projector.parameters())}


def assign_stage(model, encoder, tokenizer, scfg: dict, qa_set, data, path: Path, seed: int, acc) -> dict:
    """Measure modality load on speech-only and text-only batches and install the modality map."""
    from deeptalk.experts import assign_modality_experts, measure_modality_load, random_assignment, write_assignment

    method, k = scfg.get("method", "adaptive"), int(scfg["speech_experts"])
    n = int(scfg.get("batches", 8))
    qa = qa_examples(qa_set, encoder, tokenizer, model.config)[:n]
    tx = text_examples(data["text"], tokenizer, model.config)[:n]
    if not qa or not tx:
        raise ValueError(f"assignment needs speech and text examples, got {len(qa)} and {len(tx)}")

    def forward_args(e: Example, speech: bool) -> dict:
        b = collate([e], tokenizer.eos_token_id, model.config.num_codebooks)
        args = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        if speech:  # only the speech positions (input frames + spoken answer steps) count as speech
            keep = b["token_modality"][0] == SPEECH_MODALITY
            args["token_modality"] = b["token_modality"]
            with torch.no_grad():
                args["speech_embeds"] = encoder.projector(e.feats.unsqueeze(0).to(encoder.projector.fc1.weight.dtype))[0]
            args["audio_codes"] = b["audio_codes"]
            args["attention_mask"] = args["attention_mask"]
            assert keep.any()
        return args

    path.mkdir(parents=True, exist_ok=True)
    rho_a = rho_t = None
    if method == "adaptive":
        rho_a, rho_t = measure_modality_load(model, [forward_args(e, True) for e in qa], [forward_args(e, False) for e in tx])
        experts = assign_modality_experts(rho_a, rho_t, k)
    elif method == "random":
        experts = random_assignment(model.config.num_moe_layers, model.config.num_routed_experts, k, seed)
    elif method == "pure":
        experts = None
    else:
        raise ValueError(f"assignment method {method!r}: expected adaptive, random or pure")
    record = write_assignment(model, experts, path if acc.is_main_process else None, rho_a, rho_t, method=method,
                              k=k, seed=seed)
    return {"stage": "assign", **record, "speech_batches": len(qa), "text_batches": len(tx)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deeptalk-train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="reference", help="tiny | reference | path to a recipe YAML")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma list out of {','.join(STAGES)}")
    ap.add_argument("--output", default=None, help="output dir (default runs/<recipe>)")
    ap.add_argument("--resume", action="store_true", help="skip finished stages, continue the running one")
    ap.add_argument("--hook", default=None, help="shell command after each stage ({stage} {checkpoint} {output})")
    ap.add_argument("--export", default=None, metavar="DIR",
                    help="afterwards, write the last finished stage as a delta over the base LLM into DIR")
    ap.add_argument("--export-dtype", default="bfloat16", help="bfloat16 | float16 | float32 (exact)")
    ap.add_argument("--export-max-mb", type=float, default=64.0, help="refuse a delta bigger than this")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    recipe = load_recipe(a.recipe)
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        ap.error(f"unknown stage(s) {bad}; stages are {','.join(STAGES)}")
    out = Path(a.output or Path("runs") / recipe["name"])
    if stages:
        summary = run(recipe, out, stages, resume=a.resume, hook=a.hook)
        print(json.dumps({s: {k: v.get(k) for k in ("steps", "tokens_per_s", "final_loss", "wall_seconds") if k in v}
                          for s, v in summary["stages"].items()}, indent=1))
    if a.export:
        from deeptalk.export import export_checkpoint

        last = [out / f"stage-{s}" for s in STAGES if stage_done(out / f"stage-{s}")]
        if not last:
            raise SystemExit(f"--export: no finished stage under {out}")
        dense = build_base(recipe)[0] if recipe["base"].get("kind") == "random_tiny" else None
        try:
            meta = export_checkpoint(last[-1], a.export, dtype=a.export_dtype, max_mb=a.export_max_mb, base=dense,
                                     run_files={"recipe.yaml": out / "recipe.yaml", "summary.json": out / "summary.json"})
        except ValueError as e:
            raise SystemExit(f"--export: {e}")
        print(f"exported {last[-1]} -> {a.export}: {meta['size_mb']} MB delta ({meta['dtype']})")
    elif not stages:
        ap.error("nothing to do: give --stages and/or --export")
    return 0


if __name__ == "__main__":
    sys.exit(main())

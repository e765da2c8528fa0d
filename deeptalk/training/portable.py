"""A stage that travels: packed here, trained on a borrowed accelerator, brought back.

A GPU lent for minutes has no network, none of Whisper, Piper, espeak-ng or the packaged base
LLM, and takes ~64 MB a transfer. A stage whose examples hold no audio inputs (2.1's written
questions and "repeat this sentence" turns answered in speech; 2.2's text) needs little there
once built here: its start as a delta over the base (a few MB with the projector), its examples
as token ids and codes, and the base's GGUF (carried in parts).

    python -m deeptalk.training.portable pack --run runs/reference-phones --stage 2.1 --out .gpu/pack [--repeat 12000]
    python -m deeptalk.training.portable train --pack .gpu/pack --base /tmp/base.gguf --out /tmp/result \\
        --max-seconds 330 --batch-size 32 --bundle-to "$OUT"
    python -m deeptalk.training.portable unpack --pack .gpu/pack --result DIR --run runs/reference-phones-gpu

`train` is the pipeline's own stage loop (stage_loop.train_stage) under accelerate; `unpack`
writes the stage folder the pipeline writes, so `deeptalk-train --resume` goes on from it.
Stage 2.1 packed here is the recipe's 2.1 without the spoken questions (their Whisper
features are ~150 KB each): the written ones and the repeat turns, answered in speech.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

import torch
import yaml
from torch import nn

from deeptalk.training.examples import Example

PORTABLE_STAGES = ("2.1", "2.2")
FORMAT, VERSION = "deeptalk-portable-stage", 1
RESULT_PART = "result.tar.part-"


class ProjectorOnly(nn.Module):
    """The speech encoder's trainable half, without Whisper: a pack's examples hold no audio."""

    def __init__(self, projector: nn.Module, config):
        super().__init__()
        self.projector, self.config = projector, config

    @property
    def reads_as_text(self) -> bool:
        from deeptalk.speech.encoder import TEXT_PROJECTORS

        return self.config.projector in TEXT_PROJECTORS


def _previous_stage(run: Path, stage: str) -> Path:
    from deeptalk.training.pipeline import stage_done
    from deeptalk.training.recipe import STAGES

    if stage not in PORTABLE_STAGES:
        raise ValueError(f"stage {stage!r} cannot travel: its examples hold audio inputs (portable: {PORTABLE_STAGES})")
    prev = run / f"stage-{STAGES[STAGES.index(stage) - 1]}"
    if not stage_done(prev):
        raise ValueError(f"{prev}: not a finished stage; stage {stage} starts from it")
    return prev


def save_examples(examples: list[Example], path: Path) -> None:
    """Token ids, labels, modality and codes of every example, flat, with offsets (no audio inputs)."""
    from safetensors.torch import save_file

    if any(e.feats is not None for e in examples):
        raise ValueError("an example holds Whisper features: it cannot travel in a pack")
    lengths = torch.tensor([0] + [len(e.ids) for e in examples])
    q = max((e.audio.shape[0] for e in examples if e.audio is not None), default=0)
    audio = torch.full((q, int(lengths.sum())), -2, dtype=torch.int16)  # -2: the example has no codes
    offsets = lengths.cumsum(0)
    for e, a in zip(examples, offsets[:-1].tolist()):
        if e.audio is not None:
            audio[:, a: a + len(e.ids)] = e.audio.to(torch.int16)
    def cat(field, dtype=torch.int32):
        return torch.tensor([v for e in examples for v in getattr(e, field)], dtype=dtype)

    save_file({"ids": cat("ids"), "labels": cat("labels"), "modality": cat("modality", torch.int8),
               "audio": audio, "offsets": offsets},
              str(path), metadata={"format": "deeptalk-examples"})


def load_examples(path: Path) -> list[Example]:
    from safetensors.torch import load_file

    t = load_file(str(path))
    off = t["offsets"].tolist()
    out = []
    for a, b in zip(off[:-1], off[1:]):
        audio = t["audio"][:, a:b].long() if t["audio"].shape[0] else None
        out.append(Example(t["ids"][a:b].tolist(), t["labels"][a:b].tolist(), t["modality"][a:b].long().tolist(),
                           audio=None if audio is None or bool((audio == -2).all()) else audio))
    return out


def pack(run: Path, stage: str, out: Path, repeat: int | None = None) -> dict:
    """Write `out`: the stage's start (delta over the base, float32), its examples, pack.json."""
    from transformers import AutoTokenizer

    from deeptalk.config import DeepTalkConfig
    from deeptalk.delta import base_fingerprint
    from deeptalk.export import export_checkpoint
    from deeptalk.training.build import build_base, build_codec
    from deeptalk.training.examples import corpus_examples, text_examples
    from deeptalk.training.pipeline import speaking_examples
    from deeptalk.training.recipe_data import build_data

    start = _previous_stage(run, stage)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    seed = int(recipe["seed"])
    dense, _, base_name = build_base(recipe)
    tokenizer = AutoTokenizer.from_pretrained(start)
    config = DeepTalkConfig.from_pretrained(start)
    config.answer_routing = recipe.get("answer_routing", config.answer_routing)   # as the pipeline sets them
    config.answer_layout = recipe.get("answer_layout", config.answer_layout)
    data = build_data(recipe)
    if stage == "2.1":
        from deeptalk import data as D

        codec, _ = build_codec(recipe, run, data["asr"])
        qa_set = D.build_spoken_qa(data["qa_questions"], data["qa_answers"], codec,
                                   json.dumps(codec.describe(), sort_keys=True, default=str),
                                   recipe["data"]["voices"], recipe["data"].get("answer_voice", "piper:joe"), seed)
        if repeat is not None:  # more "repeat this sentence" turns than the recipe's (the same first ones)
            from deeptalk.hearing_corpus import hearing_sentences

            data = {**data, "repeat_texts": hearing_sentences(repeat, seed + 21)}
        examples = speaking_examples(recipe, data, qa_set, codec, None, tokenizer, config, spoken=False)
    else:
        examples = text_examples(data["text"], tokenizer, config)
        corpus = int(recipe["data"].get("text_corpus_tokens", 0))
        examples += corpus_examples(tokenizer, corpus) if corpus else []
    if not examples:
        raise ValueError(f"stage {stage} of {run}: no example without audio inputs (2.1 travels with "
                         "data.qa_written and data.repeat, or --repeat N)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_examples(examples, tmp / "examples.safetensors")
    export_checkpoint(start, tmp / "start", dtype="float32", max_mb=None, base=dense)
    meta = {"format": FORMAT, "version": VERSION, "stage": stage, "recipe": recipe, "run": str(run),
            "start": start.name, "examples": len(examples), "repeat_texts": len(data.get("repeat_texts") or []),
            "base": base_name, "base_fingerprint": base_fingerprint(dense)}
    (tmp / "pack.json").write_text(json.dumps(meta, indent=1, default=str))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return meta


def _load_base(base: str | None, meta: dict):
    """The dense base LLM: a GGUF file (converted once into the cache), a model folder, or
    (`base` None) the pack's recipe's own base, as the pipeline builds it."""
    from deeptalk.training.build import build_base
    from deeptalk_common.base_llm import convert_gguf, load_base_llm
    from deeptalk_common.paths import cache_dir

    if base is None:
        return build_base(meta["recipe"])[0]
    if base.endswith(".gguf"):
        folder = cache_dir() / "base_llm" / Path(base).stem
        if not (folder / "model.safetensors").is_file():
            convert_gguf(Path(base), folder)
        base = str(folder)
    return load_base_llm(base)[0]


def train(pack_dir: Path, out: Path, base: str | None = None, overrides: dict | None = None,
          export_dtype: str = "bfloat16") -> dict:
    """Train the packed stage with the pipeline's stage loop; write `out`/delta (over the base),
    `out`/projector.safetensors, `out`/loss.csv and `out`/stage.json."""
    from accelerate import Accelerator
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from deeptalk.checkpoint import ENCODER_CONFIG, ENCODER_FILE
    from deeptalk.delta import base_fingerprint, load_delta, save_delta
    from deeptalk.speech.char_ctc import pieces_from_state
    from deeptalk.speech.encoder import SpeechEncoderConfig, build_projector
    from deeptalk.training.recipe import seed_everything
    from deeptalk.training.stage_loop import train_stage
    from deeptalk_common.dtypes import torch_dtype

    t0 = time.monotonic()
    meta = json.loads((pack_dir / "pack.json").read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{pack_dir / 'pack.json'}: not a {FORMAT} v{VERSION} pack")
    recipe, stage, seed = meta["recipe"], meta["stage"], int(meta["recipe"]["seed"])
    scfg = {**recipe["stages"][stage], **(overrides or {})}
    dense = _load_base(base, meta)
    if base_fingerprint(dense) != meta["base_fingerprint"]:
        raise ValueError(f"the base LLM {base or meta['base']!r} is not the one the pack was made with (fingerprint)")
    start = pack_dir / "start"
    model = load_delta(start, base=dense)
    tokenizer = AutoTokenizer.from_pretrained(start)
    enc_cfg = SpeechEncoderConfig(**json.loads((start / ENCODER_CONFIG).read_text()))
    state = load_file(str(start / ENCODER_FILE))
    projector = build_projector(enc_cfg, model.config.speech_encoder_dim, state.get("vocab"), pieces_from_state(state))
    projector.load_state_dict(state)
    encoder = ProjectorOnly(projector, enc_cfg)
    examples = load_examples(pack_dir / "examples.safetensors")
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights, TF32 products: the stage's numbers, GPU speed
    torch.backends.cudnn.allow_tf32 = True
    acc = Accelerator(cpu=not torch.cuda.is_available())
    seed_everything(seed)
    info = train_stage(acc, stage, scfg, model, encoder, examples, tokenizer, out / "stage", seed, resume=False,
                       teacher=dense if scfg.get("distill") else None)
    model = model.cpu()
    model.set_routing_mode(recipe.get("inference_routing", "all") if model.config.speech_experts is not None else "all")
    if model.config.speech_experts is not None:
        model.set_trainable_modality(None)
    stored = torch_dtype(export_dtype, "export dtype")
    save_delta(model, out / "delta", dense.cpu(), dtype=None if stored is torch.float32 else stored)
    save_file({k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()},
              str(out / "projector.safetensors"))
    shutil.rmtree(out / "stage" / "state", ignore_errors=True)  # optimizer state: not coming back
    shutil.move(str(out / "stage" / "loss.csv"), str(out / "loss.csv"))
    shutil.rmtree(out / "stage", ignore_errors=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    info.update({"done": True, "wall_seconds": round(time.monotonic() - t0, 2), "seed": seed,
                 "recipe": recipe["name"], "base": meta["base"], "routing_mode": model.config.routing_mode,
                 "portable": {"device": device, "torch": torch.__version__, "overrides": overrides or {},
                              "export_dtype": export_dtype, "pack_examples": meta["examples"],
                              "repeat_texts": meta["repeat_texts"], "start": meta["start"]}})
    (out / "stage.json").write_text(json.dumps(info, indent=1, default=str))
    return info


def bundle(result: Path, dest: Path, part_mb: float = 15.0) -> list[Path]:
    """`result` as one tar cut into parts of at most `part_mb` MiB (a transfer's per-file limit)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(result, arcname="result")
    data, size = buf.getvalue(), int(part_mb * 2**20)
    dest.mkdir(parents=True, exist_ok=True)
    parts = []
    for k in range(0, len(data), size):
        parts.append(dest / f"{RESULT_PART}{k // size:02d}")
        parts[-1].write_bytes(data[k: k + size])
    return parts


def unbundle(folder: Path, dest: Path) -> Path:
    """The result folder from its parts (or `folder` itself when it is one)."""
    if (folder / "stage.json").is_file():
        return folder
    parts = sorted(folder.glob(f"{RESULT_PART}*"))
    if not parts:
        raise FileNotFoundError(f"{folder}: neither a result folder nor {RESULT_PART}NN parts")
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r") as tar:
        tar.extractall(dest, filter="data")
    return dest / "result"


def unpack(pack_dir: Path, result: Path, run: Path) -> Path:
    """Write `run`/stage-<stage> from a trained result, as the pipeline writes a finished stage."""
    import tempfile

    from safetensors.torch import load_file

    from deeptalk.checkpoint import load_checkpoint, save_checkpoint
    from deeptalk.delta import load_delta
    from deeptalk.training.build import build_base
    from deeptalk.training.plots import plot_losses

    meta = json.loads((pack_dir / "pack.json").read_text())
    stage, recipe = meta["stage"], meta["recipe"]
    if not (run / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{run}/recipe.yaml missing: unpack writes a stage into an existing run folder")
    with tempfile.TemporaryDirectory() as tmp:
        res = unbundle(result, Path(tmp))
        dense = build_base(recipe)[0]
        start = load_checkpoint(pack_dir / "start", base=dense)
        model = load_delta(res / "delta", base=dense)
        start.encoder.projector.load_state_dict(load_file(str(res / "projector.safetensors")))
        info = json.loads((res / "stage.json").read_text())
        path = run / f"stage-{stage}"
        path.mkdir(parents=True, exist_ok=True)
        shutil.copy(res / "loss.csv", path / "loss.csv")
        plot_losses(path / "loss.csv", path / "loss.png", f"{recipe['name']} stage {stage} ({info['portable']['device']})")
        ref = json.loads((pack_dir / "start" / "codec.json").read_text())
        if "path" in ref:
            ref["src_dir"] = str(pack_dir / "start")
        save_checkpoint(path, model, start.tokenizer, start.encoder, ref, info)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deeptalk.training.portable", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="build a stage's start and examples into a folder")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--stage", required=True, choices=PORTABLE_STAGES)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--repeat", type=int, default=None, help="repeat turns (default: the recipe's data.repeat)")
    t = sub.add_parser("train", help="train a pack's stage (on whatever accelerator torch sees)")
    t.add_argument("--pack", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--base", default=None, help="the base LLM: a .gguf file, a model folder or a name (default: the pack's)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--max-seconds", type=float)
    t.add_argument("--checkpoint-every", type=int, help="default: once, at the end")
    t.add_argument("--export-dtype", default="bfloat16")
    t.add_argument("--bundle-to", type=Path, help="also write the result as tar parts of <= --part-mb MiB here")
    t.add_argument("--part-mb", type=float, default=15.0)
    u = sub.add_parser("unpack", help="write the trained stage into a run folder")
    u.add_argument("--pack", type=Path, required=True)
    u.add_argument("--result", type=Path, required=True, help="the result folder or the folder of its tar parts")
    u.add_argument("--run", type=Path, required=True)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "pack":
            meta = pack(a.run, a.stage, a.out, a.repeat)
            print(f"packed stage {a.stage}: {meta['examples']} examples, start {meta['start']} -> {a.out}")
        elif a.cmd == "train":
            names = {"batch_size": a.batch_size, "lr": a.lr, "max_steps": a.max_steps, "max_seconds": a.max_seconds}
            overrides = {k: v for k, v in names.items() if v is not None}
            overrides["checkpoint_every"] = a.checkpoint_every or 10**9
            info = train(a.pack, a.out, a.base, overrides, a.export_dtype)
            print(json.dumps({k: info[k] for k in ("steps", "seconds", "final_loss", "portable")}, default=str))
            if a.bundle_to:
                print("bundled:", [p.name for p in bundle(a.out, a.bundle_to, a.part_mb)])
        else:
            print("wrote", unpack(a.pack, a.result, a.run))
    except (ValueError, FileNotFoundError) as e:
        print(f"portable {a.cmd}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

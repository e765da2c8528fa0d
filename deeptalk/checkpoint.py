"""A DeepTalk checkpoint directory: write one (the trainer, after each stage) and read one (inference).

    <dir>/config.json + model.safetensors   the model (or delta.json + delta.safetensors, deeptalk/delta.py)
    <dir>/tokenizer files
    <dir>/speech_encoder.safetensors + .json  the speech projector and the encoder's settings
    <dir>/codec.json                          the codec: a name, or a fitted codec file beside it
    <dir>/stage.json                          what the stage did (steps, tokens, seconds, seed, hook)

Loading imports the model, the encoder and the codec, never the trainer.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

ENCODER_FILE, ENCODER_CONFIG, CODEC_FILE = "speech_encoder.safetensors", "speech_encoder.json", "codec.json"


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
                    base=None, decode: str | None = None, written: str | None = None) -> Bundle:
    """Load a stage checkpoint (or a shipped model directory in the same layout).

    `base`: for a delta checkpoint, the dense base model (default: the one delta.json names).
    `decode`: how a piece head's transcript is read ("greedy" | "lexicon"; default: the
    checkpoint's speech_encoder.json); `written`: how heard words are written for the LLM
    ("plain" | "sentence" | "true_case", deeptalk/speech/written_form.py; default: the same file's
    lexicon settings, else "true_case")."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from deeptalk.delta import load_delta
    from deeptalk.modeling import DeepTalkForCausalLM
    from deeptalk.speech.char_ctc import pieces_from_state
    from deeptalk.speech.codec_loader import load_codec
    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig, check_decode

    path = Path(path)
    missing = [n for n in ("config.json", ENCODER_FILE, ENCODER_CONFIG, CODEC_FILE) if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: not a DeepTalk checkpoint (missing {', '.join(missing)})")
    enc_cfg = SpeechEncoderConfig(**json.loads((path / ENCODER_CONFIG).read_text()))
    decode = decode or enc_cfg.decode  # the config keeps the checkpoint's own choice
    check_decode(enc_cfg, decode, owner="checkpoint")  # before the weights load: a mistake costs nothing
    if (path / "delta.json").is_file():
        model = load_delta(path, base=base, dtype=dtype)
    else:
        model = DeepTalkForCausalLM.from_pretrained(path, dtype=dtype)
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    state = load_file(str(path / ENCODER_FILE))
    encoder = SpeechEncoder.from_whisper(enc_cfg, ctc_vocab=state.get("vocab"), pieces=pieces_from_state(state))
    encoder.projector.load_state_dict(state)
    encoder = encoder.to(device).eval().tie(model.get_input_embeddings().weight, tokenizer)
    if decode == "lexicon":
        from deeptalk.speech.lexicon_decode import LexiconConfig, llm_scorer
        from deeptalk.speech.written_form import turn_scorer

        lexicon = {**enc_cfg.lexicon, **({"written": written} if written is not None else {})}
        cfg = LexiconConfig(**lexicon)
        encoder.projector.use_lexicon(cfg, llm_scorer(model, tokenizer, any_case=cfg.any_case),
                                      turn_scorer(model, tokenizer))
    ref = json.loads((path / CODEC_FILE).read_text())
    codec_src = codec or (str(path / ref["path"]) if "path" in ref else ref["name"])
    info = json.loads((path / "stage.json").read_text()) if (path / "stage.json").is_file() else {}
    return Bundle(model, tokenizer, encoder, load_codec(codec_src), path, info)

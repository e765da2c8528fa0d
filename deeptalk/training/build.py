"""The model, speech encoder and codec a recipe names, built before the first stage."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch


def build_base(recipe: dict):
    """(dense base LLM, tokenizer, base name). `random_tiny`: a tiny random Llama (real class)
    with the SmolLM2 tokenizer, for tests; otherwise a real base LLM (load_base_llm)."""
    from deeptalk_common.base_llm import load_base_llm, resolve_base

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
    from deeptalk.speech.codec_loader import load_codec

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


def upcycled_model(recipe: dict, dense, tokenizer, codec, cache: Path, save: bool = True):
    """build_model, kept on disk under `cache` so a resumed run does not upcycle again (about
    20 min on the reference: the calibration pass and router fitting). The cache is keyed by
    everything the upcycled weights depend on, upcycle.py's source included; a stale one is rebuilt."""
    from transformers import AutoTokenizer

    import deeptalk.upcycle
    from deeptalk.modeling import DeepTalkForCausalLM

    key = {"base": recipe["base"], "upcycle": recipe.get("upcycle", {}),
           "seed": recipe["seed"], "codebooks": [codec.num_codebooks, codec.codebook_size],
           "upcycle_source": hashlib.sha256(Path(deeptalk.upcycle.__file__).read_bytes()).hexdigest()[:16]}
    key_file = cache / "upcycle_key.json"
    fresh = not (key_file.is_file() and json.loads(key_file.read_text()) == json.loads(json.dumps(key, default=str)))
    if fresh:
        model = build_model(recipe, dense, tokenizer, codec)
        if not save:
            return model, tokenizer
        if cache.exists():
            shutil.rmtree(cache)
        model.save_pretrained(cache, safe_serialization=True)
        tokenizer.save_pretrained(cache)
        key_file.write_text(json.dumps(key, default=str, indent=1))  # last: a half-written cache has no key
    # read back even when just built: weights laid out as loaded, so a run and its resumption
    # compute bit for bit the same (freshly sliced expert weights differ in the last float bit)
    return DeepTalkForCausalLM.from_pretrained(cache, dtype=dense.dtype), AutoTokenizer.from_pretrained(cache)


def build_encoder(recipe: dict, hidden_size: int, tokenizer=None):
    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig

    cfg = SpeechEncoderConfig(hidden_size=hidden_size, **recipe["speech_encoder"])
    vocab = pieces = None
    if cfg.projector == "ctc":  # the head emits the tokens of the hearing corpus
        from deeptalk.hearing import corpus_vocab

        vocab = corpus_vocab(tokenizer, seed=int(recipe["seed"]))
    if cfg.projector == "ctc_chars" and cfg.pieces:  # the head spells in pieces learnt on that corpus
        from deeptalk.hearing import hearing_pieces

        pieces = hearing_pieces(cfg.pieces, seed=int(recipe["seed"]))
    return SpeechEncoder.from_whisper(cfg, ctc_vocab=vocab, pieces=pieces)


AUDIO_INITS = ("random", "symbols")


def audio_init_of(stage: str, scfg: dict) -> str:
    how = scfg.get("audio_init", "random")
    if how not in AUDIO_INITS:
        raise ValueError(f"stage {stage}: audio_init must be one of {AUDIO_INITS}, got {how!r}")
    return how


def check_audio_inits(recipe: dict, codec) -> None:
    """Before anything trains: `audio_init` only where it is read (stage 2.1, which first trains
    the audio rows), known, and servable by the codec."""
    for stage, scfg in (recipe.get("stages") or {}).items():
        if "audio_init" in (scfg or {}) and stage != "2.1":
            raise ValueError(f"stage {stage}: audio_init is read by stage 2.1 only (the stage that first trains "
                             "the audio rows)")
        if audio_init_of(stage, scfg or {}) == "symbols" and not getattr(codec, "symbols", None):
            raise ValueError(f"stage {stage}: audio_init symbols needs a codec whose codes are symbols (phones); "
                             f"codec {recipe.get('codec')!r} has none")


def start_audio_rows(model, tokenizer, codec, stage: str, scfg: dict, fresh: bool) -> None:
    """A stage's `audio_init`: the audio rows it starts from when it starts fresh (a resumed
    stage reads them from its state). `symbols`: each code's rows from the LLM's embedding of
    the symbol it stands for (deeptalk/audio_rows.py); `random` (default): as upcycled."""
    if audio_init_of(stage, scfg) == "symbols" and fresh:
        from deeptalk.audio_rows import init_audio_rows_from_symbols

        init_audio_rows_from_symbols(model, tokenizer, getattr(codec, "symbols", {}))

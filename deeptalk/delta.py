"""Delta checkpoints: a DeepTalk model stored as what differs from its upcycled base LLM.

The base LLM ships offline (deeptalk/base_llm.py), and upcycling copies its tensors into
the MoE deterministically once each MoE layer's `neuron_index` (which dense neuron every
expert neuron came from) is known. So a checkpoint only needs the tensors that differ:

  <dir>/config.json          DeepTalkConfig (its `base_model` names the base LLM)
  <dir>/delta.json           {"format": "deeptalk-delta", "version": 2, "base": ..., "base_fingerprint": sha256,
                               "dtype": "bfloat16", "tensors": {name: "full" | "rows" | "base"}}
  <dir>/delta.safetensors    "full":  name                        -> the whole tensor
                             "rows":  name + ".rows" (int64 row ids), name + ".values" (those rows)
                             "lowrank": name + ".lowrank_u" [m, r], name + ".lowrank_v" [r, n]:
                                        the tensor is its base value + u @ v
                             every `neuron_index` buffer, always, exactly
  <dir>/tokenizer files      when a tokenizer is given

"base" tensors are rebuilt from the base LLM (`copy_from_dense`). "rows" is used for 2-D
tensors where fewer than half of the rows changed (e.g. embeddings with new special
tokens). "lowrank" is used for 2-D tensors whose change from the base has a low rank (experts
trained as W + B A, deeptalk/lowrank.py), when the factors take under half the numbers of the
whole tensor; the factors hold the change, so bf16 rounds the change, not the weight. Stored floating tensors are cast to `dtype` (bf16 by default, None keeps them):
loading gives the model back exactly for dtype=None, to bf16 rounding otherwise.
The base fingerprint guards against rebuilding from a different base LLM.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import DeepTalkConfig
from .lowrank import lowrank_factors
from .modeling import DeepTalkForCausalLM

FORMAT, VERSION = "deeptalk-delta", 2
READABLE_VERSIONS = (1, 2)  # version 1 had no "lowrank" tensors
LOWRANK_MAX_NUMEL = 1 << 22  # an SVD per changed tensor: only for tensors up to 4 M numbers
DELTA_META, DELTA_TENSORS = "delta.json", "delta.safetensors"


def base_fingerprint(dense_model) -> str:
    """sha256 over the dense model's token embeddings and last layer: cheap, and any other base differs."""
    sd = dense_model.state_dict()
    h = hashlib.sha256()
    last = dense_model.config.num_hidden_layers - 1
    for name in ("model.embed_tokens.weight", f"model.layers.{last}.mlp.down_proj.weight"):
        h.update(sd[name].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _rebuilt_from_base(model: DeepTalkForCausalLM, dense_model) -> dict[str, torch.Tensor]:
    """The state dict the base alone gives, for the model's neuron_index (non-base tensors are NaN)."""
    from .upcycle import copy_from_dense, empty_model

    ref = empty_model(model.config, model.dtype)
    with torch.no_grad():
        for p in ref.parameters():
            p.fill_(float("nan"))
        for name, buf in ref.named_buffers():
            if name.endswith("neuron_index"):
                buf.copy_(model.get_buffer(name))
    copy_from_dense(ref, dense_model, derive_new_rows=False)
    return ref.state_dict()


def _skip(model, name: str) -> bool:
    return model.config.tie_word_embeddings and name == "lm_head.weight"


def save_delta(model: DeepTalkForCausalLM, path, base, dtype: torch.dtype | None = torch.bfloat16,
               tokenizer=None, max_row_fraction: float = 0.5) -> dict:
    """Write `model` as a delta over `base` (a dense model, or a name/path for load_base_llm)."""
    from deeptalk_common.base_llm import load_base_llm

    base_name = base if isinstance(base, str) else (model.config.base_model or getattr(base.config, "name_or_path", None))
    dense = load_base_llm(base)[0] if isinstance(base, str) else base
    ref = _rebuilt_from_base(model, dense)
    tensors: dict[str, torch.Tensor] = {}
    kinds: dict[str, str] = {}
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    for name, t in model.state_dict().items():
        if _skip(model, name):
            continue
        t = t.detach().cpu()
        if name.endswith("neuron_index"):
            tensors[name], kinds[name] = t.contiguous(), "full"
            continue
        r = ref[name]
        if r.shape == t.shape and torch.equal(r, t):
            kinds[name] = "base"
            continue
        if t.dim() == 2 and r.shape[1:] == t.shape[1:]:
            same = torch.zeros(t.shape[0], dtype=torch.bool)
            n = min(r.shape[0], t.shape[0])
            same[:n] = (r[:n] == t[:n]).all(1)
            changed = (~same).nonzero().squeeze(1)
            if len(changed) < max_row_fraction * t.shape[0]:
                tensors[name + ".rows"] = changed.contiguous()
                tensors[name + ".values"] = cast(t[changed]).contiguous()
                kinds[name] = "rows"
                continue
        # factors reproduce the change to rounding, not bit for bit: only when storage rounds anyway
        if (dtype is not None and t.dim() == 2 and r.shape == t.shape and t.is_floating_point()
                and t.numel() <= LOWRANK_MAX_NUMEL):
            m, n = t.shape
            factors = lowrank_factors(t.float() - r.float(), max_rank=int(0.5 * m * n / (m + n)))
            if factors is not None:
                tensors[name + ".lowrank_u"], tensors[name + ".lowrank_v"] = (cast(f).contiguous() for f in factors)
                kinds[name] = "lowrank"
                continue
        tensors[name], kinds[name] = cast(t).contiguous(), "full"
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.config.base_model = base_name
    model.config.save_pretrained(out)
    save_file(tensors, str(out / DELTA_TENSORS), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "version": VERSION, "base": base_name, "base_fingerprint": base_fingerprint(dense),
            "dtype": str(dtype).replace("torch.", "") if dtype is not None else None, "tensors": kinds,
            "bytes": (out / DELTA_TENSORS).stat().st_size}
    (out / DELTA_META).write_text(json.dumps(meta, indent=1))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return meta


def load_delta(path, base=None, dtype: torch.dtype = torch.float32) -> DeepTalkForCausalLM:
    """Rebuild a DeepTalk model from a delta directory and its base LLM (`base` overrides delta.json)."""
    from deeptalk_common.base_llm import load_base_llm

    from .upcycle import copy_from_dense, empty_model

    path = Path(path)
    meta_file = path / DELTA_META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} missing: {path} is not a deeptalk delta checkpoint")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT or meta.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{meta_file}: format {meta.get('format')!r} v{meta.get('version')}, expected {FORMAT!r} "
                         f"v{' or v'.join(map(str, READABLE_VERSIONS))}")
    dense = base if base is not None and not isinstance(base, str) else load_base_llm(base or meta["base"])[0]
    if base_fingerprint(dense) != meta["base_fingerprint"]:
        raise ValueError(f"{path}: the base LLM {meta['base']!r} loaded here is not the one the delta was saved against "
                         "(fingerprint differs)")
    config = DeepTalkConfig.from_pretrained(path)
    model = empty_model(config, dtype)
    stored = load_file(str(path / DELTA_TENSORS))
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("neuron_index"):
                if name not in stored:
                    raise ValueError(f"{path / DELTA_TENSORS}: {name} missing")
                buf.copy_(stored[name])
        copy_from_dense(model, dense, derive_new_rows=False)
        state = model.state_dict()
        expected = {n for n in state if not _skip(model, n)}
        if set(meta["tensors"]) != expected:
            missing, extra = sorted(expected - set(meta["tensors"]))[:5], sorted(set(meta["tensors"]) - expected)[:5]
            raise ValueError(f"{meta_file}: tensor list does not match the config (missing {missing}, unknown {extra})")
        for name, kind in meta["tensors"].items():
            if kind == "full":
                state[name].copy_(stored[name])
            elif kind == "rows":
                state[name][stored[name + ".rows"]] = stored[name + ".values"].to(state[name].dtype)
            elif kind == "lowrank":
                change = stored[name + ".lowrank_u"].float() @ stored[name + ".lowrank_v"].float()
                state[name].copy_((state[name].float() + change).to(state[name].dtype))
            elif kind != "base":
                raise ValueError(f"{meta_file}: tensor {name} has unknown kind {kind!r}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()

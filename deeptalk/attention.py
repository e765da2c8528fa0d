"""Scaled dot-product attention that keeps grouped-query heads grouped on CPU.

transformers' `sdpa` copies every key/value head `num_key_value_groups` times (`repeat_kv`)
whenever there is an attention mask, which a batch of left-padded answers always has: it
does so because the CUDA kernels fall back to the slow math path for grouped heads with a
mask. On CPU that copy of the whole KV cache, per layer and per decoding step, took a third
of a spoken answer's decoding time, and `enable_gqa=True` gives the same numbers without it
(bit for bit on this torch; tests/test_attention.py). Elsewhere (CUDA, other devices) this
is exactly transformers' `sdpa`.

A static KV cache is as long as the whole step budget (a spoken answer's 400 steps), and
its mask hides the positions not yet written: attending over them cost each decoding step
as much as over the written ones. Key positions that no query may see are cut off first;
they add exactly nothing to the softmax, so the output is the same
(tests/test_attention.py).

DeepTalk models pick it wherever transformers would pick `sdpa` (modeling.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.import_utils import is_torch_greater_or_equal

GROUPED_SDPA = "deeptalk_grouped_sdpa"
_HAS_ENABLE_GQA = is_torch_greater_or_equal("2.5", accept_dev=True)


def grouped_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """query [B, H, T, D], key/value [B, H_kv, S, D] -> ([B, T, H, D], None), as transformers' sdpa."""
    groups = getattr(module, "num_key_value_groups", 1)
    if query.device.type != "cpu" or groups == 1 or kwargs.get("output_attentions") or kwargs.get("head_mask") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
        if attention_mask.dtype == torch.bool:
            used = seen_keys(attention_mask)
            if used < key.shape[-2]:
                attention_mask, key, value = attention_mask[..., :used], key[:, :, :used], value[:, :, :used]
    if is_causal is None:
        is_causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", True)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, is_causal=bool(is_causal), enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


ALL_ATTENTION_FUNCTIONS.register(GROUPED_SDPA, grouped_sdpa_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED_SDPA, sdpa_mask)


def seen_keys(mask: torch.Tensor) -> int:
    """How many leading key positions some query may attend to (mask [B, 1, T, S] bool):
    one past the last True column; S when no column is True (nothing to cut)."""
    seen = mask.reshape(-1, mask.shape[-1]).any(0)
    return mask.shape[-1] - int(seen.flip(0).to(torch.uint8).argmax()) if bool(seen.any()) else mask.shape[-1]


def prefer_grouped(implementation: str) -> str:
    """The implementation a DeepTalk model runs for the one transformers chose."""
    return GROUPED_SDPA if implementation == "sdpa" and _HAS_ENABLE_GQA else implementation

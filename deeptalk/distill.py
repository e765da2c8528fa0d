"""Logit distillation from the dense base LLM (a stage's `distill:` setting).

The text path of the upcycled MoE loses whatever its speech experts used to compute for text.
Cross-entropy on self-distilled answers teaches it the base's greedy answers only; the KL
divergence to the base's whole next-token distribution, at every text position of the
sequence, carries far more of what the base knew per token (Hinton et al., 2015).

    loss = stage loss + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

over the base vocabulary, on every attended position of the rows made only of base-vocabulary
tokens (a row with speech or protocol tokens has no teacher).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KEYS = {"weight", "temperature"}


def check_config(dcfg, stage: str) -> dict:
    """The stage's `distill:` mapping with defaults; a clear error for anything else."""
    if not isinstance(dcfg, dict):
        raise ValueError(f"stage {stage}: distill must be a mapping like {{weight: 1.0, temperature: 1.0}}, got {dcfg!r}")
    bad = set(dcfg) - KEYS
    if bad:
        raise ValueError(f"stage {stage}: unknown distill key(s) {sorted(bad)}; keys are {sorted(KEYS)}")
    out = {"weight": float(dcfg.get("weight", 1.0)), "temperature": float(dcfg.get("temperature", 1.0))}
    if out["weight"] <= 0 or out["temperature"] <= 0:
        raise ValueError(f"stage {stage}: distill weight and temperature must be > 0, got {out}")
    return out


def teachable_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, base_vocab: int) -> torch.Tensor:
    """[B] bool: rows whose attended tokens are all in the teacher's vocabulary."""
    return ((input_ids < base_vocab) | (attention_mask == 0)).all(dim=1)


def text_kl(student_logits: torch.Tensor, teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            temperature: float = 1.0) -> tuple[torch.Tensor, int]:
    """(T^2 * mean KL over the teachable rows' attended positions, number of those positions).

    student_logits [B, T, V_student >= V_base]; teacher: a causal LM over the base vocabulary.
    Zero (with a gradient path) when no row is teachable.
    """
    base_vocab = teacher.config.vocab_size
    rows = teachable_rows(input_ids, attention_mask, base_vocab)
    if not bool(rows.any()):
        return student_logits.sum() * 0.0, 0
    ids, mask = input_ids[rows], attention_mask[rows]
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits.float()
    s_logits = student_logits[rows][..., :base_vocab].float()
    keep = mask.bool()
    log_p_s = F.log_softmax(s_logits[keep] / temperature, dim=-1)
    log_p_t = F.log_softmax(t_logits[keep] / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
    return kl * temperature**2, int(keep.sum())

"""The top blocks of the Whisper encoder, trained with the CTC projector (`tune_blocks`).

Whisper's frozen output was shaped for its own decoder's cross-attention, not for reading
tokens off frame by frame; retraining its last blocks under the CTC loss lets the features
move toward what the projector needs. The frozen lower blocks still run once per utterance
(their output is what the hearing shards cache), and the trained copies travel in the
projector's state, so a checkpoint carries them and the packaged Whisper stays untouched.

A padded batch masks its padding out of attention (openai-whisper's blocks take no padding
mask), so a batched utterance reads the same frames as the utterance alone.
"""
from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn


class WhisperTop(nn.Module):
    """Copies of Whisper encoder blocks [first:] and its final layer norm, trainable."""

    def __init__(self, whisper_encoder: nn.Module, first: int):
        super().__init__()
        if not 0 <= first < len(whisper_encoder.blocks):
            raise ValueError(f"tune_blocks must leave 0..{len(whisper_encoder.blocks) - 1} frozen blocks, got first={first}")
        self.blocks = nn.ModuleList(deepcopy(b) for b in whisper_encoder.blocks[first:])
        self.ln_post = deepcopy(whisper_encoder.ln_post)
        self.requires_grad_(True)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, D] frames after the frozen blocks -> [B, T, D] final features; `padding` [B, T]
        is True past each utterance's end."""
        keep = None if padding is None else (~padding)[:, None, None, :]  # [B, 1, 1, T]: True = attend
        for block in self.blocks:
            x = x + _self_attention(block.attn, block.attn_ln(x), keep)
            x = x + block.mlp(block.mlp_ln(x))
        return self.ln_post(x)


def _self_attention(attn: nn.Module, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """openai-whisper's MultiHeadAttention over x alone, with a key padding mask."""
    b, t, d = x.shape
    h = attn.n_head
    q, k, v = (m(x).view(b, t, h, d // h).transpose(1, 2) for m in (attn.query, attn.key, attn.value))
    out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    return attn.out(out.transpose(1, 2).reshape(b, t, d))

"""The unit decoder: semantic units (25/s) -> normalised log-mel (100 frames/s) in one voice.

A table of each unit's mean log-mel cannot say how a unit sounds next to its neighbours,
and a small refiner on that table overfits 20 minutes of speech (docs/codec.md). This net
reads the units themselves:

    units [U] -> embedding -> `unit_blocks` causal dilated conv blocks at the unit rate
              -> repeat each unit `stack` times (+ the frame's place in its unit)
              -> `frame_blocks` causal conv blocks at the frame rate -> n_mels

Every conv looks only back; the decoder sees `lookahead` units ahead because its output
for unit t is read at input position t + lookahead (the input is padded at the end with a
pad unit, id = codebook_size, for the last units). So streaming decodes exactly once it
has `lookahead` units beyond a chunk and `left_context` units before it
(`UnitCodec.stream_decoder` uses both). Normalisation is per time step (LayerNorm over
channels), never over time, for the same reason.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class UnitDecoderConfig:
    codebook_size: int = 512
    n_mels: int = 80
    stack: int = 4              # mel frames per unit
    channels: int = 384         # unit-rate width
    unit_blocks: int = 10
    kernel: int = 3
    dilations: tuple[int, ...] = (1, 2, 4, 8)   # cycled over the unit blocks
    lookahead: int = 4          # units ahead the output depends on (4 = 160 ms at 25/s)
    frame_channels: int = 192
    frame_blocks: int = 4
    frame_kernel: int = 5
    dropout: float = 0.1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UnitDecoderConfig:
        return cls(**{**d, "dilations": tuple(d.get("dilations", cls.dilations))})

    @property
    def left_context(self) -> int:
        """Units before a chunk that change its output: the unit blocks' receptive field plus the
        frame blocks' (in whole units), less the lookahead (output t reads inputs up to t + lookahead)."""
        unit = sum((self.kernel - 1) * self.dilations[i % len(self.dilations)] for i in range(self.unit_blocks))
        frame = -(-(self.frame_kernel - 1) * self.frame_blocks // self.stack)
        return max(0, unit + frame - self.lookahead)


class _CausalConv(nn.Conv1d):
    def forward(self, x):
        return super().forward(nn.functional.pad(x, ((self.kernel_size[0] - 1) * self.dilation[0], 0)))


class _Block(nn.Module):
    """x + pointwise(gelu(causal dilated conv(LayerNorm(x))))."""

    def __init__(self, c: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.conv = _CausalConv(c, c, kernel, dilation=dilation)
        self.point = nn.Conv1d(c, c, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):                       # [B, C, T]
        h = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return x + self.drop(self.point(nn.functional.gelu(self.conv(h))))


class UnitDecoder(nn.Module):
    def __init__(self, cfg: UnitDecoderConfig = UnitDecoderConfig()):
        super().__init__()
        self.cfg = cfg
        c, f = cfg.channels, cfg.frame_channels
        self.embed = nn.Embedding(cfg.codebook_size + 1, c)          # + the pad unit
        self.unit_blocks = nn.ModuleList(_Block(c, cfg.kernel, cfg.dilations[i % len(cfg.dilations)], cfg.dropout)
                                         for i in range(cfg.unit_blocks))
        self.to_frames = nn.Conv1d(c, f, 1)
        self.phase = nn.Parameter(torch.zeros(f, cfg.stack))
        self.frame_blocks = nn.ModuleList(_Block(f, cfg.frame_kernel, 1, cfg.dropout) for _ in range(cfg.frame_blocks))
        self.norm = nn.LayerNorm(f)
        self.out = nn.Conv1d(f, cfg.n_mels, 1)

    @property
    def pad_id(self) -> int:
        return self.cfg.codebook_size

    def forward(self, units: torch.Tensor) -> torch.Tensor:
        """units [B, U + lookahead] (already padded at the end) -> log-mel [B, n_mels, U * stack]."""
        la = self.cfg.lookahead
        h = self.embed(units).transpose(1, 2)                         # [B, C, U + la]
        for block in self.unit_blocks:
            h = block(h)
        h = self.to_frames(h[:, :, la:])                              # unit t reads inputs <= t + la
        h = h.repeat_interleave(self.cfg.stack, dim=2)
        h = h + self.phase.repeat(1, h.shape[2] // self.cfg.stack)[None]
        for block in self.frame_blocks:
            h = block(h)
        return self.out(self.norm(h.transpose(1, 2)).transpose(1, 2))

    def pad_end(self, units: torch.Tensor) -> torch.Tensor:
        """[B, U] -> [B, U + lookahead]: pad units after the last, as at an utterance's end."""
        return nn.functional.pad(units, (0, self.cfg.lookahead), value=self.pad_id)

    @torch.inference_mode()
    def decode(self, units: np.ndarray, right: np.ndarray | None = None) -> np.ndarray:
        """units [U] -> normalised log-mel [n_mels, U * stack]. `right`: the units that follow
        (up to `lookahead` of them; fewer means the utterance ends there)."""
        if len(units) == 0:
            return np.zeros((self.cfg.n_mels, 0), np.float32)
        p = next(self.parameters())
        right = np.zeros(0, np.int64) if right is None else np.asarray(right, np.int64)[: self.cfg.lookahead]
        ids = np.concatenate([np.asarray(units, np.int64), right,
                              np.full(self.cfg.lookahead - len(right), self.pad_id, np.int64)])
        return self(torch.from_numpy(ids)[None].to(p.device))[0].float().cpu().numpy()


def state_to_tensors(model: UnitDecoder, prefix: str = "decoder.") -> dict[str, torch.Tensor]:
    """fp16 weights for the codec file."""
    return {prefix + k: v.detach().half().cpu().contiguous() for k, v in model.state_dict().items()}


def from_tensors(tensors: dict[str, torch.Tensor], cfg: dict, prefix: str = "decoder.") -> UnitDecoder:
    model = UnitDecoder(UnitDecoderConfig.from_dict(cfg))
    model.load_state_dict({k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)})
    return model.eval()

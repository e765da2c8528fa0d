"""Supervised semantic units: a VQ bottleneck on Whisper features, trained so Whisper still transcribes.

k-means over the encoder's output keeps its largest variance, not what was said: Whisper's
own decoder reads 1.9 WER back from k-means centroids where it reads 0.12 from the
features they quantise (benchmarks/units_content_probe.py). This module trains the
bottleneck for what was said, as GLM-4-Voice's speech tokenizer does (a VQ inside a
Whisper encoder trained with the ASR loss), but on the cached features alone:

    exact-window Whisper features (50 Hz) -> mean over `pool` frames
      -> LayerNorm -> Linear(d -> code_dim) -> L2-normalise -> nearest of K unit vectors  = the unit
      -> Linear(code_dim -> d) -> `post_layers` transformer layers -> repeat `pool` times
      -> the frozen Whisper decoder, teacher-forced on the transcript: cross-entropy
      (+ `recon_weight` x the squared distance of the post layers' output to the pooled
       features, which Whisper reads at 0.12 WER: a dense signal while the CE is still flat)

The codebook learns by the VQ loss (codebook and commitment terms, straight-through
gradient); codes unused for `restart_every` steps restart at random current vectors. Only
the encoding half (norm, down, codebook) is a codec's: `UnitCodec` stores it as `pre` +
centroids; the post layers exist to check and train it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


def pool_frames(feats: torch.Tensor, pool: int) -> torch.Tensor:
    """[..., T, D] -> [..., ceil(T / pool), D]: means of `pool` frames; the last unit averages the
    frames it has (repeat-padded). Every units path (codec, pairs, VQ, probes) pools with this."""
    pad = (-feats.shape[-2]) % pool
    if pad:
        feats = torch.cat([feats, feats[..., -1:, :].expand(*feats.shape[:-2], pad, feats.shape[-1])], -2)
    return feats.reshape(*feats.shape[:-2], -1, pool, feats.shape[-1]).mean(-2)


@dataclass(frozen=True)
class VQConfig:
    d_in: int = 384
    code_dim: int = 32
    codebook_size: int = 1024
    pool: int = 2
    post_layers: int = 2
    heads: int = 6
    max_units: int = 1500          # positions of the post layers' learned position table
    beta: float = 0.25             # commitment weight

    def to_dict(self) -> dict:
        return asdict(self)


class UnitPre(nn.Module):
    """The encoding half: pooled Whisper features [.., d] -> unit-normalised code space [.., code_dim]."""

    def __init__(self, d_in: int, code_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.down = nn.Linear(d_in, code_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.down(self.norm(x)), dim=-1)


class UnitVQ(nn.Module):
    def __init__(self, cfg: VQConfig = VQConfig()):
        super().__init__()
        self.cfg = cfg
        self.pre = UnitPre(cfg.d_in, cfg.code_dim)
        self.codebook = nn.Parameter(nn.functional.normalize(torch.randn(cfg.codebook_size, cfg.code_dim), dim=-1))
        self.up = nn.Linear(cfg.code_dim, cfg.d_in)
        self.pos = nn.Parameter(torch.zeros(cfg.max_units, cfg.d_in))
        layer = nn.TransformerEncoderLayer(cfg.d_in, cfg.heads, 4 * cfg.d_in, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.post = nn.TransformerEncoder(layer, cfg.post_layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(cfg.d_in)

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, T, d] at 50 Hz -> [B, ceil(T / pool), d] (the last unit averages what it has: repeat-padded)."""
        return pool_frames(feats, self.cfg.pool)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.codebook_normed().T).argmax(-1)          # cosine: both sides unit length

    def codebook_normed(self) -> torch.Tensor:
        return nn.functional.normalize(self.codebook, dim=-1)

    def forward(self, feats: torch.Tensor, key_padding: torch.Tensor | None = None):
        """feats [B, T, d] -> (decoder input [B, units * pool, d], codes [B, units], vq loss,
        reconstruction error [B, units]: squared distance of the post layers' output to the pooled features)."""
        pooled = self.pool(feats)
        z = self.pre(pooled)
        codes = self.codes(z)
        e = self.codebook_normed()[codes]
        vq_loss = ((z.detach() - e) ** 2).sum(-1).mean() + self.cfg.beta * ((z - e.detach()) ** 2).sum(-1).mean()
        q = z + (e - z).detach()                                   # straight-through
        h = self.up(q) + self.pos[: q.shape[1]]
        h = self.out_norm(self.post(h, src_key_padding_mask=key_padding))
        recon = ((h - pooled) ** 2).mean(-1)
        return h.repeat_interleave(self.cfg.pool, 1), codes, vq_loss, recon

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, units] -> the decoder input the units give (what the content probe reads)."""
        h = self.up(self.codebook_normed()[codes]) + self.pos[: codes.shape[1]]
        return self.out_norm(self.post(h)).repeat_interleave(self.cfg.pool, 1)

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, used: torch.Tensor, generator: torch.Generator) -> int:
        """Codes unused since the last call move to random current vectors `z` [N, code_dim]."""
        dead = (~used).nonzero().flatten()
        if len(dead) and len(z):
            pick = torch.randint(0, len(z), (len(dead),), generator=generator)
            self.codebook.data[dead] = z[pick] + 0.01 * torch.randn(len(dead), z.shape[1], generator=generator)
        return int(len(dead))


def transcript_batch(texts: list[str], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing input [B, L] (start-of-transcript, no timestamps, text) and targets [B, L]
    (text, end of text; -100 on the prompt and padding)."""
    sot = list(tokenizer.sot_sequence_including_notimestamps)
    rows = [tokenizer.encode(" " + t.strip()) for t in texts]
    n = max(len(r) for r in rows) + len(sot)
    inp = torch.full((len(rows), n), tokenizer.eot, dtype=torch.long)
    tgt = torch.full((len(rows), n), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        seq = sot + r
        inp[i, : len(seq)] = torch.tensor(seq)
        tgt[i, len(sot) - 1: len(seq) - 1] = torch.tensor(r)
        tgt[i, len(seq) - 1] = tokenizer.eot
    return inp, tgt


@torch.no_grad()
def greedy_transcribe(decoder, audio_features: torch.Tensor, tokenizer, max_tokens: int = 96) -> str:
    """Whisper's decoder, greedy, on features of any length [1, T, d] (no 30-s window needed)."""
    tokens = list(tokenizer.sot_sequence_including_notimestamps)
    start = len(tokens)
    suppress = torch.tensor([t for t in range(tokenizer.eot + 1, decoder.token_embedding.num_embeddings)])
    for _ in range(max_tokens):
        logits = decoder(torch.tensor([tokens]), audio_features)[0, -1]
        logits[suppress] = -math.inf                               # no special tokens after the prompt
        nxt = int(logits.argmax())
        if nxt == tokenizer.eot:
            break
        tokens.append(nxt)
    return tokenizer.decode(tokens[start:]).strip()

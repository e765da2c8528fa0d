"""The delay pattern of parallel codebook generation (MusicGen / Mini-Omni style).

Each decoding step emits one text token and one token per codebook. Codebook `i` runs
`i + 1` steps behind the text, so frame `f` of codebook `i` is emitted at step
`f + i + 1`. Before its first frame a codebook emits `pad_id`; right after its last frame it
emits `eos_id` once, then `pad_id` again. The full grid for `T` frames and `Q` codebooks
therefore has `T + Q + 1` steps, and frame `f` is complete (all codebooks known) after
step `f + Q`.

    codes [Q, T]  --build_delay_pattern-->  grid [Q, T + Q + 1]  --undo_delay_pattern-->  codes
"""
from __future__ import annotations

import torch


def delayed_length(num_frames: int, num_codebooks: int) -> int:
    """Steps in the grid for `num_frames` frames: the last codebook's EOS is the last step."""
    return num_frames + num_codebooks + 1


def steps_until_frames(num_frames: int, num_codebooks: int) -> int:
    """Decoding steps needed before the first `num_frames` frames are complete."""
    return num_frames + num_codebooks


def build_delay_pattern(codes: torch.Tensor, pad_id: int, eos_id: int) -> torch.Tensor:
    """codes [..., Q, T] -> grid [..., Q, T + Q + 1] with codebook i shifted right by i + 1."""
    if codes.dim() < 2:
        raise ValueError(f"codes must be [..., Q, T], got shape {tuple(codes.shape)}")
    *lead, q, t = codes.shape
    grid = torch.full((*lead, q, delayed_length(t, q)), pad_id, dtype=codes.dtype, device=codes.device)
    for i in range(q):
        grid[..., i, i + 1 : i + 1 + t] = codes[..., i, :]
        grid[..., i, i + 1 + t] = eos_id
    return grid


def undo_delay_pattern(grid: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
    """grid [..., Q, S] -> codes [..., Q, T]: the frames that every codebook has emitted.

    Steps 0..S-1 complete frames 0..S-1-Q, so `num_frames` defaults to S - Q. A full grid
    from `build_delay_pattern` has one more step (the EOS): pass `num_frames` (or use
    `frame_count_from_eos`) to drop it.
    """
    *lead, q, s = grid.shape
    complete = max(s - q, 0)
    t = complete if num_frames is None else num_frames
    if t > complete:
        raise ValueError(f"grid of {s} steps holds only {complete} complete frames of {q} codebooks, asked {t}")
    out = torch.empty((*lead, q, t), dtype=grid.dtype, device=grid.device)
    for i in range(q):
        out[..., i, :] = grid[..., i, i + 1 : i + 1 + t]
    return out


def frame_count_from_eos(grid: torch.Tensor, eos_id: int) -> int:
    """Frames of a generated grid [Q, S]: where codebook 0 emitted EOS (minus its delay)."""
    hits = (grid[0] == eos_id).nonzero()
    if len(hits) == 0:
        return max(grid.shape[-1] - grid.shape[-2], 0)
    return int(hits[0]) - 1

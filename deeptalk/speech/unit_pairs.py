"""(units, log-mel) training pairs for the unit decoder: how they are made and stored.

`deeptalk-units pairs` (deeptalk/training/units_data.py) builds them from the hearing
corpus's cached shards (Whisper features + 16 kHz audio), so no new synthesis is needed.
For each utterance in the decoder's voice(s):

    cached Whisper features (50 Hz) -> pool -> nearest centroid of the units codec -> units [T]
    cached 16 kHz audio -> the codec's log-mel (hop 160) -> normalised by the codec's stats
                        -> uint8 (a step of 12 / 255 over [-6, 6]: 0.014 RMS, far below the decoder's error)
                        -> stored as differences between frames (mod 256): zlib packs them 28 % smaller

Pairs are written as compressed files (`pairs-NNN.npz`) small enough to travel to an
accelerator; `dev.npz` holds the decoder's held-out check. This module needs numpy and
torch only (no Whisper, no TTS): the trainer reads pairs on a bare GPU machine.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MEL_RANGE = 6.0    # normalised log-mel is clipped to [-6, 6] before uint8 (0.01 % of values clip)


def mel_to_uint8(mel: np.ndarray) -> np.ndarray:
    x = (np.clip(mel, -MEL_RANGE, MEL_RANGE) + MEL_RANGE) * (255.0 / (2 * MEL_RANGE))
    return np.round(x).astype(np.uint8)


def mel_from_uint8(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * (2 * MEL_RANGE / 255.0) - MEL_RANGE


def utterance_pair(codec, feats, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(units [T], normalised log-mel frames [T * stack, n_mels]) of one utterance, same length in units."""
    import torch

    from deeptalk.speech.units_vq import pool_frames

    units = codec.quantize(pool_frames(torch.as_tensor(feats).float(), codec.pool).numpy())[0]
    mel = codec.features(wav, codec.sample_rate).reshape(-1, codec.mel_cfg.n_mels)   # [T' * stack, n_mels]
    n = min(len(units), len(mel) // codec.stack)
    return units[:n].astype(np.int16), mel[: n * codec.stack]


def write_pairs(rows: list[dict], codec, voices: set[str], path: Path) -> dict:
    """One npz of every utterance of `voices` in `rows` ({"id", "text", "voice", "feats" (Whisper,
    50 Hz), "wav" (16 kHz)} each: a hearing shard's rows)."""
    units, mels, lengths, ids, texts = [], [], [], [], []
    for r in rows:
        if r["voice"] not in voices:
            continue
        u, m = utterance_pair(codec, r["feats"], r["wav"])
        units.append(u)
        mels.append(mel_to_uint8(m))
        lengths.append(len(u))
        ids.append(r["id"])
        texts.append(r["text"])
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, units=np.concatenate(units) if units else np.zeros(0, np.int16),
                        mel_delta=_delta(np.concatenate(mels) if mels else np.zeros((0, codec.mel_cfg.n_mels), np.uint8)),
                        lengths=np.asarray(lengths, np.int64), ids=np.asarray(ids), texts=np.asarray(texts))
    tmp.rename(path)
    return {"file": path.name, "utterances": len(lengths), "units": int(sum(lengths)),
            "seconds": round(sum(lengths) / codec.frame_rate, 1), "bytes": path.stat().st_size}


def _delta(q: np.ndarray) -> np.ndarray:
    return np.diff(q, axis=0, prepend=np.zeros((1, q.shape[1]), np.uint8))    # uint8 arithmetic wraps: exact


def load_pairs(path: str | Path) -> dict:
    """A pairs file -> {"units": [N] int64 arrays, "mel": [N] float32 [T*stack, n_mels] arrays, "ids", "texts"}."""
    z = np.load(path)
    q = np.cumsum(z["mel_delta"], axis=0, dtype=np.uint8)
    bounds = np.cumsum(np.concatenate([[0], z["lengths"]]))
    stack = len(q) // max(1, len(z["units"]))
    units = [z["units"][a:b].astype(np.int64) for a, b in zip(bounds[:-1], bounds[1:])]
    mel = [mel_from_uint8(q[a * stack:b * stack]) for a, b in zip(bounds[:-1], bounds[1:])]
    return {"units": units, "mel": mel, "ids": [str(i) for i in z["ids"]],
            "texts": [str(t) for t in z["texts"]], "stack": stack}

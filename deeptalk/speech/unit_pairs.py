"""`deeptalk-codec unit-pairs`: (units, log-mel) training pairs for the unit decoder.

The speech is the hearing corpus's (deeptalk/hearing.py: WordNet and fortune sentences
that no task holds, spoken by seeded voices, with their Whisper features cached per
shard), so building pairs costs no new synthesis once the hearing shards exist. For each
utterance in the decoder's voice(s):

    cached Whisper features (50 Hz) -> pool -> nearest centroid of the units codec -> units [T]
    cached 16 kHz audio -> the codec's log-mel (hop 160) -> normalised by the codec's stats
                        -> uint8 (a step of 12 / 255 over [-6, 6]: 0.014 RMS, far below the decoder's error)
                        -> stored as differences between frames (mod 256): zlib packs them 28 % smaller

Pairs are written as compressed shards (`pairs-NNN.npz`) small enough to travel to an
accelerator; the hearing dev shard's utterances become `dev.npz`, the decoder's held-out
check. The quiz sentences that `deeptalk-codec eval` scores never enter.
"""
from __future__ import annotations

import json
import time
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

    f = torch.as_tensor(feats).float()
    pad = (-len(f)) % codec.pool
    if pad:   # the last unit averages the frames it has, as UnitCodec.pooled_features does
        f = torch.cat([f, f[-1:].expand(pad, -1)])
    units = codec.quantize(f.reshape(-1, codec.pool, f.shape[1]).mean(1).numpy())[0]
    mel = codec.features(wav, codec.sample_rate).reshape(-1, codec.mel_cfg.n_mels)   # [T' * stack, n_mels]
    n = min(len(units), len(mel) // codec.stack)
    return units[:n].astype(np.int16), mel[: n * codec.stack]


def write_pairs(rows: list[dict], codec, voices: set[str], path: Path) -> dict:
    """One npz of every utterance of `voices` in `rows` (a hearing shard's rows + audio)."""
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


def _shard_rows(features_file: Path) -> list[dict]:
    """A hearing shard's cached rows, each with its 16 kHz audio."""
    import torch

    rows = torch.load(features_file, weights_only=True)
    items = {json.loads(line)["id"]: json.loads(line) for line in (features_file.parent / "items.jsonl").open()}
    for r in rows:
        r["wav"] = np.load(features_file.parent / items[r["id"]]["wav"])
    return rows


def cmd_unit_pairs(args) -> dict:
    import torch
    from tqdm import tqdm

    from deeptalk.hearing import HearingData, build_hearing_data
    from deeptalk.speech.codec_units import UnitCodec
    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig
    from deeptalk_common.base_llm import load_base_llm

    torch.set_num_threads(args.threads)
    t0 = time.time()
    codec = UnitCodec.load(args.units_from)
    voices = set(args.voices.split(","))
    encoder = SpeechEncoder.from_whisper(SpeechEncoderConfig(whisper=codec.whisper_name, hidden_size=1))
    train_files, dev_file = build_hearing_data(HearingData(sentences=args.sentences, dev=args.dev, seed=args.seed),
                                               encoder, load_base_llm()[1])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, f in enumerate(tqdm([dev_file] + train_files, desc="unit pairs", unit="shard")):
        shards.append(write_pairs(_shard_rows(f), codec, voices, out / ("dev.npz" if k == 0 else f"pairs-{k - 1:03d}.npz")))
    manifest = {"units_codec": {"file": str(args.units_from), "file_sha256": codec.manifest.get("file_sha256")},
                "voices": sorted(voices), "hearing": {"sentences": args.sentences, "dev": args.dev, "seed": args.seed},
                "mel": {**codec.mel_cfg.to_dict(), "normalised_by": "the units codec's mel_mean / mel_std",
                        "uint8_range": [-MEL_RANGE, MEL_RANGE]},
                "stack": codec.stack, "frame_rate": codec.frame_rate, "shards": shards,
                "hours_train": round(sum(s["seconds"] for s in shards[1:]) / 3600, 2),
                "seconds": round(time.time() - t0, 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(shards)} pair files to {out}: {manifest['hours_train']} h of training speech, "
          f"{sum(s['bytes'] for s in shards) / 1e6:.1f} MB")
    return manifest


def add_parser(sub) -> None:
    p = sub.add_parser("unit-pairs", help="(units, log-mel) pairs of one voice for the unit decoder")
    p.add_argument("--units-from", required=True, help="the units codec file whose units and mel stats to use")
    p.add_argument("--voices", default="piper:joe", help="comma-separated hearing voices whose speech is kept")
    p.add_argument("--sentences", type=int, default=16000, help="hearing training utterances (the shards)")
    p.add_argument("--dev", type=int, default=300, help="hearing dev utterances (the decoder's held-out set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_unit_pairs)

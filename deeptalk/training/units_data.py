"""The hearing corpus's cached shards as the semantic units' training data (`deeptalk-units pairs`).

The hearing shards (deeptalk/hearing.py: WordNet and fortune sentences no task holds,
nine seeded voices, exact-window Whisper features and 16 kHz audio cached per shard of
1 000) serve twice: the supervised units train on their features and transcripts
(units_vq_fit.py), and the unit decoder on their Piper joe speech (unit pairs).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch


def hearing_shards(sentences: int, dev: int, seed: int, whisper: str = "tiny.en") -> tuple[list[Path], Path]:
    """(training shard files, dev shard file), built and cached on first use."""
    from deeptalk.hearing import HearingData, build_hearing_data
    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig
    from deeptalk_common.base_llm import load_base_llm

    encoder = SpeechEncoder.from_whisper(SpeechEncoderConfig(whisper=whisper, hidden_size=1))
    return build_hearing_data(HearingData(sentences=sentences, dev=dev, seed=seed), encoder, load_base_llm()[1])


def hearing_shard_rows(features_file: Path) -> list[dict]:
    """A hearing shard's cached rows ({"id", "text", "voice", "feats", "ids"}), each with its 16 kHz "wav"."""
    rows = torch.load(features_file, weights_only=True)
    items = {json.loads(line)["id"]: json.loads(line) for line in (features_file.parent / "items.jsonl").open()}
    for r in rows:
        r["wav"] = np.load(features_file.parent / items[r["id"]]["wav"])
    return rows


def cmd_pairs(args) -> dict:
    from tqdm import tqdm

    from deeptalk.speech.codec_units import UnitCodec
    from deeptalk.speech.unit_pairs import MEL_RANGE, write_pairs

    torch.set_num_threads(args.threads)
    t0 = time.time()
    codec = UnitCodec.load(args.units_from)
    voices = set(args.voices.split(","))
    train_files, dev_file = hearing_shards(args.sentences, args.dev, args.seed, codec.whisper_name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, f in enumerate(tqdm([dev_file] + train_files, desc="unit pairs", unit="shard")):
        name = "dev.npz" if k == 0 else f"pairs-{k - 1:03d}.npz"
        shards.append(write_pairs(hearing_shard_rows(f), codec, voices, out / name))
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
    p = sub.add_parser("pairs", help="(units, log-mel) pairs of one voice for the unit decoder")
    p.add_argument("--units-from", required=True, help="the units codec file whose units and mel stats to use")
    p.add_argument("--voices", default="piper:joe", help="comma-separated hearing voices whose speech is kept")
    p.add_argument("--sentences", type=int, default=16000, help="hearing training utterances (the shards)")
    p.add_argument("--dev", type=int, default=300, help="hearing dev utterances (the decoder's held-out set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_pairs)

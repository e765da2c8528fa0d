"""Build the offline ASR sets (tasks/asr/data/).

    python tasks/asr/build_asr_sets.py

- alsa.jsonl       the real human recordings Debian alsa-utils ships
                   (/usr/share/sounds/alsa/*.wav); the transcript is the file name
                   ("Front_Left.wav" -> "front left"). Noise.wav holds no speech and is left
                   out. The audio stays where Debian put it; the JSONL holds its path.
- sentences.jsonl  prose for synthesised speech (spoken per voice by the asr_synth_* tasks):
                   the sentences of the game instructions Debian bsdgames ships
                   (cribbage.instr, fish.instr, wump.info) with 6-20 plain words (letters
                   and ,;'.!?- only, so the reference needs no number or symbol reading).
Deterministic; the outputs are small and committed.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALSA_DIR = Path("/usr/share/sounds/alsa")
NO_SPEECH = {"Noise.wav"}
BSDGAMES = Path("/usr/share/games/bsdgames")
PROSE_FILES = ("cribbage.instr", "fish.instr", "wump.info")
PLAIN = re.compile(r"[A-Za-z ,;'.!?-]+")


def build_alsa(alsa_dir: Path = ALSA_DIR) -> list[dict]:
    wavs = sorted(p for p in alsa_dir.glob("*.wav") if p.name not in NO_SPEECH)
    if not wavs:
        raise FileNotFoundError(f"no recordings in {alsa_dir}: install the Debian package alsa-utils")
    return [{"id": f"alsa-{p.stem.lower()}", "audio": str(p), "text": p.stem.replace("_", " ").lower(),
             "source": f"alsa-utils {p.name}"} for p in wavs]


def build_sentences(src_dir: Path = BSDGAMES, files=PROSE_FILES) -> list[dict]:
    rows = []
    for name in files:
        path = src_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: install the Debian package bsdgames")
        text = " ".join(path.read_text(encoding="latin-1").split())
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
            if 6 <= len(s.split()) <= 20 and PLAIN.fullmatch(s) and s[-1] in ".!?":
                rows.append({"id": f"asr-{len(rows):03d}", "text": s, "source": f"bsdgames {name}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=HERE / "data")
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in {"alsa": build_alsa(), "sentences": build_sentences()}.items():
        with open(args.out_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"{name}: {len(rows)} items")


if __name__ == "__main__":
    main()

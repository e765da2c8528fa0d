"""Wav files of the harness: task inputs read, and the audio of per-sample logs written
and read back (lossless float, with the file's sha256 so a changed file is noticed).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from deeptalk_eval.api import Audio
from deeptalk_eval.errors import UsageError


def read_wav(path: Path) -> Audio:
    """Float32 mono (the channels averaged); soundfile's errors pass through."""
    import soundfile as sf

    samples, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return Audio(samples.mean(axis=1), sr)


def write_wav(path: Path, audio: Audio) -> str:
    """Lossless float wav; returns the file's sha256. The same samples give the same bytes:
    scipy writes no PEAK chunk (libsndfile's float WAV carries a write timestamp in one)."""
    import numpy as np
    from scipy.io import wavfile

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    wavfile.write(tmp, audio.sample_rate, np.asarray(audio.samples, dtype=np.float32))
    tmp.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_wav_checked(path: Path, sha256: str | None) -> Audio:
    """A logged wav file, refused when missing or changed since it was logged."""
    if not path.is_file():
        raise UsageError(f"{path}: logged audio file is missing")
    if sha256 and hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise UsageError(f"{path}: logged audio does not match its sha256 (file changed)")
    return read_wav(path)

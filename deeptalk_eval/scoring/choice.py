"""Closed-answer extraction: which choice (a letter, or yes / no) a free-form reply commits to.

VoiceBench's multiple-choice and BBH scorers try a long list of phrasings and, when none
fits, pick a random letter (or a random yes/no). This module never guesses: a reply that
does not commit to exactly one choice is *unparsed*, scored wrong, and its rate is
reported as its own metric (`unparsed`). The rules, tried in order; the first rule that
finds anything decides, and if it finds more than one different choice the reply is
ambiguous (unparsed) — a later rule is not asked to break the tie:

Letters (`extract_letter`, letters "ABCD" unless told):

1. `explicit`: an announced answer — "answer is B", "answer: (b)", "correct option is C",
   "I choose D", "I'd go with (A)", "option b", "choice C". Lower-case letters count here
   only when they stand alone ("option b.", "answer is (c)"); "the answer is a dog" is no
   letter. Past an explicit letter, another letter in brackets ("(A) is wrong; the answer
   is C") makes the reply ambiguous.
2. `bare`: the whole reply is a letter — "B", "(b)", "B.", "b)".
3. `leading`: the reply opens with a letter and a bracket or stop — "B) photosynthesis",
   "(C) because ...", "D. It is ...". An opening "A " is an article, not a choice.
4. `bracketed`: exactly one letter in brackets somewhere — "... so (B)".
5. `option_text`: only when the doc gives the options' texts: no letter at all in the reply
   and exactly one option's text occurs in it (whole words, `answer_match_v1`
   tokens), e.g. "It's a steel spoon." for the option "a steel spoon". This counts: a
   spoken answer naming the option is an answer, not a guess; its share is reported
   (`rule_option_text`). A reply naming two options, or an option text inside another
   option's text matched twice, is ambiguous.

So "B and C" is ambiguous (no rule finds a single letter), "I think it's option b." is B
(rule 1), a reply without a letter or an option's text is unparsed, and so is every reply
that is empty.

Yes / no (`extract_yes_no`, for BBH's yes/no items and any boolean question): the reply
announces it ("the answer is no", "answer: yes") or starts with it ("Yes.", "No, because
..."); "true"/"false" count the same way when announced or when they are the whole reply.
A reply that says both ("Yes ... the answer is no"), or neither ("I think yes" announces
nothing and does not start with it), is unparsed.

The scorer `choice_match` reads the gold answer and picks the extractor from it: a letter
(optionally bracketed: "B", "(B)", or a 0-based index) or yes/no (also true/false).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deeptalk_eval.scoring.base import SampleView, ScoringContext, register_scorer
from deeptalk_eval.scoring.normalise import answer_tokens

CHOICE_RULES = ("explicit", "bare", "leading", "bracketed", "option_text")
YES_NO_RULES = ("explicit", "leading", "bare")
EXTRACTOR_NAME = "choice_extract_v1"  # recorded with every figure; bump when a rule changes


@dataclass(frozen=True)
class Choice:
    value: str | None  # "B" / "yes" / "no"; None when the reply commits to none (or to several)
    rule: str | None = None  # which rule decided; None when unparsed
    ambiguous: bool = False  # a rule found several different choices

    @property
    def parsed(self) -> bool:
        return self.value is not None


# words that announce a choice: "answer (is)", "option", "choice", "I (would|'d|will) choose / pick / ..."
_ANNOUNCE = r"\b(?:answer|option|choice|i(?:\s+would|'d|\s+will)?\s+(?:choose|pick|select|go\s+with))"


def _letter_rules(letters: str) -> list[tuple[str, str]]:
    up = re.escape(letters)
    anycase = re.escape(letters + letters.lower())
    # A letter that stands alone: not followed by a word character (nor an apostrophe: "A's").
    alone = r"(?![\w'])"
    return [
        # "answer is B", "answer: (b)", "option b", "I choose D", "answer is option C"
        ("explicit", rf"(?i:{_ANNOUNCE})\s*(?:(?i:is|was|would\s+be|should\s+be|will\s+be)\s*)?[:\-]?\s*"
                     rf"(?:(?i:option|choice|letter)\s*)?"
                     rf"(?:\(([{anycase}])\)|([{up}]){alone}|([{anycase}])(?=\s*[.,;:!?)]|\s*$))"),
        ("bare", rf"^\s*\(?([{anycase}])\)?\s*[.):]?\s*$"),
        ("leading", rf"^\s*(?:\(([{anycase}])\)|([{up}])[.):])(?:\s|$)"),
        ("bracketed", rf"\(([{anycase}])\)"),
    ]


def _found(pattern: str, text: str) -> set[str]:
    out = set()
    for m in re.finditer(pattern, text):
        groups = [g for g in m.groups() if g]
        if groups:
            out.add(groups[0].upper())
    return out


def extract_letter(reply: str | None, letters: str = "ABCD", options: Sequence[str] | None = None) -> Choice:
    """The letter `reply` commits to (module docstring), never a guess."""
    if not reply or not reply.strip():
        return Choice(None)
    if options is not None and len(options) > len(letters):
        raise ValueError(f"{len(options)} options but only {len(letters)} letters ({letters})")
    text = reply.strip()
    rules = _letter_rules(letters)
    bracketed = _found(rules[-1][1], text)
    for name, pattern in rules:
        got = _found(pattern, text)
        if not got:
            continue
        if len(got) > 1:
            return Choice(None, ambiguous=True)
        (letter,) = got
        if name == "explicit" and not bracketed <= {letter}:
            return Choice(None, ambiguous=True)
        return Choice(letter, name)
    if options:
        pred = f" {' '.join(answer_tokens(text))} "
        hits = {letters[i] for i, o in enumerate(options)
                if answer_tokens(o) and f" {' '.join(answer_tokens(o))} " in pred}
        if len(hits) == 1:
            return Choice(hits.pop(), "option_text")
        if len(hits) > 1:
            return Choice(None, ambiguous=True)
    return Choice(None)


_YES = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}


def extract_yes_no(reply: str | None) -> Choice:
    """"yes" / "no" as `reply` commits to it (module docstring), never a guess."""
    if not reply or not reply.strip():
        return Choice(None)
    words = answer_tokens(reply)
    if not words:
        return Choice(None)
    text = " ".join(words)
    announced = {_YES[m] for m in re.findall(r"\banswer (?:is |would be |should be )?(?:a |simply )?"
                                             r"(yes|no|true|false)\b", text)}
    leading = {words[0]} if words[0] in ("yes", "no") else set()
    found = announced | leading
    if len(found) > 1:  # "Yes ... the answer is no"
        return Choice(None, ambiguous=True)
    if found:
        return Choice(found.pop(), "explicit" if announced else "leading")
    if len(words) == 1 and words[0] in _YES:
        return Choice(_YES[words[0]], "bare")
    return Choice(None)


def gold_choice(gold: Any, letters: str) -> tuple[str, str]:
    """("letter", "B") or ("yes_no", "yes") from a gold answer; ValueError when it is neither."""
    if isinstance(gold, int) and not isinstance(gold, bool):
        if not 0 <= gold < len(letters):
            raise ValueError(f"gold index {gold} outside letters {letters}")
        return "letter", letters[gold]
    g = str(gold).strip()
    if g.lower() in _YES:
        return "yes_no", _YES[g.lower()]
    m = re.fullmatch(r"\(?\s*([A-Za-z])\s*\)?\.?", g)
    if m and m.group(1).upper() in letters:
        return "letter", m.group(1).upper()
    raise ValueError(f"gold answer {gold!r} is neither one of the letters {letters} nor yes/no")


@register_scorer("choice_match")
def choice_match(sample: SampleView, ctx: ScoringContext, answer_field: str = "answer",
                 options_field: str | None = None, letters: str = "ABCD") -> dict[str, float | None]:
    """Closed answers (letters or yes/no) by `extract_letter` / `extract_yes_no`: no guessing.

    acc: the extracted choice equals the gold one (unparsed = wrong); unparsed: the reply
    commits to no single choice (ambiguous replies included; `ambiguous` counts those alone);
    rule_option_text: the choice came from an option's text rather than a letter;
    no_answer: the reply is empty.
    """
    from deeptalk_eval.scoring.scorers import _field, _has_text, _sample_id

    ctx.info.setdefault("extractors", {})["choice_match"] = EXTRACTOR_NAME
    gold = _field(sample, ctx, answer_field)
    try:
        kind, want = gold_choice(gold, letters)
    except ValueError as e:
        raise ValueError(f"sample {_sample_id(sample, ctx)!r}: field {answer_field!r}: {e}") from None
    options = None
    if options_field and kind == "letter":
        options = sample.doc.get(options_field)
        if options is not None and not (isinstance(options, (list, tuple))
                                        and all(isinstance(o, str) for o in options)):
            raise ValueError(f"sample {_sample_id(sample, ctx)!r}: options field {options_field!r} "
                             f"must be a list of strings")
    reply = sample.channel_text
    got = extract_letter(reply, letters, options) if kind == "letter" else extract_yes_no(reply)
    return {"acc": float(got.value == want), "unparsed": float(not got.parsed), "ambiguous": float(got.ambiguous),
            "rule_option_text": float(got.rule == "option_text"), "no_answer": float(not _has_text(reply))}

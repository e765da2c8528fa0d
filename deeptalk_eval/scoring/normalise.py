"""Text normalisers used before answer matching and WER.

Two normalisers, each with a name+version string that every result records:

- `answer_match_v1`: the spoken-QA rule of docs/design.md §3 — lower-case, every punctuation
  character except the apostrophe becomes a space, split on whitespace.
- `whisper_en:openai-whisper==<version>`: openai-whisper's `EnglishTextNormalizer`
  (spelling, contractions, number words -> digits, fillers removed).

Numbers: `parse_number` reads an alias that is *only* a number ("1,984", "3.5",
"twenty five"); `numbers_in_digits` / `numbers_in_words` find the numbers a prediction
states. word2number alone is too lenient for aliases ("Seven Years War" -> 7), hence the
vocabulary check.
"""
from __future__ import annotations

import functools
import re
import string
from importlib import metadata

ANSWER_MATCH_NAME = "answer_match_v1"

# Punctuation except the apostrophe: these become spaces.
_PUNCT_NO_APOSTROPHE = "".join(c for c in string.punctuation if c != "'")
_PUNCT_TABLE = str.maketrans({c: " " for c in _PUNCT_NO_APOSTROPHE})
# Typographic quotes/dashes seen in model output; the curly apostrophe counts as "'".
_UNICODE_TABLE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": " ", "\u201d": " ",
                                "\u2013": " ", "\u2014": " ", "\u00a0": " "})

# "1,984", "3.5", "-2"; not "3rd" or "v1.5" (a word character touches them).
_DIGIT_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\w)")


def answer_tokens(text: str | None) -> list[str]:
    """`answer_match_v1` tokens: lower-cased, punctuation except `'` to spaces, split."""
    if not text:
        return []
    return text.translate(_UNICODE_TABLE).lower().translate(_PUNCT_TABLE).split()


def normalise_answer(text: str | None) -> str:
    return " ".join(answer_tokens(text))


@functools.lru_cache(maxsize=1)
def _whisper_normaliser():
    # Imported lazily: `whisper` pulls in torch.
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


@functools.lru_cache(maxsize=1)
def whisper_normaliser_name() -> str:
    return f"whisper_en:openai-whisper=={metadata.version('openai-whisper')}"


def whisper_normalise(text: str | None) -> str:
    """openai-whisper's EnglishTextNormalizer; None -> ""."""
    if not text:
        return ""
    return _whisper_normaliser()(text)


def normaliser_names() -> dict[str, str]:
    """The normalisers this package applies, as recorded in results."""
    return {"answer_match": ANSWER_MATCH_NAME, "whisper_en": whisper_normaliser_name()}


# -- numbers ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _number_vocab() -> frozenset[str]:
    from word2number import w2n

    return frozenset(w2n.american_number_system) | {"and"}


def _parse_digits(token: str) -> float | None:
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return None


_MULTIPLIERS = ("hundred", "thousand", "million", "billion")
_RUN_BREAK = re.compile(r"[^\w\s'-]")


def _words_to_number(words: list[str]) -> float | None:
    from word2number import w2n

    words = list(words)
    # Drop a leading "and"/"a", except "a" meaning "one" before a multiplier ("a hundred").
    while words and words[0] in ("and", "a"):
        if words[0] == "a" and len(words) > 1 and words[1] in _MULTIPLIERS:
            words[0] = "one"
            break
        words.pop(0)
    while words and words[-1] == "and":
        words.pop()
    if not words:
        return None
    if words[0] in _MULTIPLIERS:
        # word2number reads a bare "hundred and three" as 300.
        words.insert(0, "one")
    try:
        return float(w2n.word_to_num(" ".join(words)))
    except ValueError:  # word2number rejects malformed sequences ("point point")
        return None


def parse_number(text: str | None) -> float | None:
    """The value of a text that is nothing but a number ("1,984", "3.5", "twenty-five").

    Returns None for anything else ("Seven Years War", "5 feet"), so a number fallback
    only fires for aliases that are numbers.
    """
    if not text:
        return None
    stripped = text.strip().translate(_UNICODE_TABLE)
    m = _DIGIT_NUMBER.fullmatch(stripped.rstrip("."))
    if m:
        return _parse_digits(m.group(0))
    words = stripped.lower().replace("-", " ").translate(_PUNCT_TABLE).split()
    if not words or any(w not in _number_vocab() and w != "a" for w in words):
        return None
    return _words_to_number(words)


def numbers_in_digits(text: str | None) -> list[float]:
    """Numbers written with digits in a text ("1,984", "3.5", "-2")."""
    if not text:
        return []
    return [v for v in (_parse_digits(m.group(0)) for m in _DIGIT_NUMBER.finditer(text)) if v is not None]


def numbers_in_words(text: str | None) -> list[float]:
    """Numbers spelled out in a text: each maximal run of number words, via word2number.

    Punctuation other than `-` and `'` ends a run, so "five, six" reads as 5 and 6.
    """
    if not text:
        return []
    vocab = _number_vocab()
    values: list[float] = []
    for segment in _RUN_BREAK.split(text.translate(_UNICODE_TABLE).lower()):
        run: list[str] = []
        for w in segment.replace("-", " ").split() + [""]:  # sentinel flushes the last run
            if w in vocab:
                run.append(w)
                continue
            if run:
                v = _words_to_number(run)
                if v is not None:
                    values.append(v)
            # "a" may start a run ("a hundred"); _words_to_number drops it otherwise.
            run = ["a"] if w == "a" else []
    return values

"""Build the offline factoid QA set from the Debian `bsdgames` quiz files.

    python tasks/spoken_qa/build_factoid.py            # writes tasks/spoken_qa/data/factoid.jsonl

The quiz files hold one fact per line, fields separated by ':' (a trailing '\\' continues
a line). Inside a field, '|' separates alternatives, '{x}' marks an optional part and
'[a|b]' a group of alternatives; they nest. We expand every field into all its spellings:
the cleanest full spelling names the subject in the question, and the clean spellings of
the answer field become the alias list that the QA scorer matches against.

The output is deterministic (no randomness), small and committed; audio is synthesised
at load time by the task's `tts:` block (cached).
"""
from __future__ import annotations

import argparse
import json
import re
from itertools import product
from pathlib import Path

QUIZ_DIR = Path("/usr/share/games/bsdgames/quiz")
OUT = Path(__file__).resolve().parent / "data" / "factoid.jsonl"
MAX_SPELLINGS = 512  # a field with more spellings than this is a parse error, not data

# quiz file -> (question template over the subject, index of subject field, index of answer field)
SOURCES: list[tuple[str, str, int, int]] = [
    ("africa", "What is the capital of {}?", 0, 1),
    ("america", "What is the capital of {}?", 0, 1),
    ("asia", "What is the capital of {}?", 0, 1),
    ("europe", "What is the capital of {}?", 0, 1),
    ("state", "What is the capital of the U.S. state of {}?", 0, 1),
    ("province", "What is the capital of {} in Canada?", 0, 1),
    ("elements", "Which chemical element has the atomic number {}?", 1, 3),
    ("pres", "Who succeeded {} as President of the United States?", 0, 3),
]
CATEGORY = {"africa": "capital", "america": "capital", "asia": "capital", "europe": "capital",
            "state": "us_state_capital", "province": "canada_capital",
            "elements": "element", "pres": "president"}
THE_NAMES = re.compile(r"^(United |Isle of |Republic |Democratic |Czech |Central African )"
                       r"|(Islands|Republic|Territories|Emirates|Netherlands|Philippines|Maldives)$")
CLEAN_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 .,'-]*$")


class QuizSyntaxError(ValueError):
    pass


def expand(field: str) -> list[str]:
    """All spellings of one quiz field, in file order ("{G{eorge} }Bush" -> 3 spellings)."""
    alts, end = _parse_alternatives(field, 0, closer=None)
    if end != len(field):
        raise QuizSyntaxError(f"unbalanced bracket at position {end} in {field!r}")
    out = list(dict.fromkeys(" ".join(a.split()) for a in alts))
    return [a for a in out if a]


def _parse_alternatives(s: str, i: int, closer: str | None) -> tuple[list[str], int]:
    """Parse 'a|b|c' up to `closer` (or the end); returns spellings and the index after it."""
    alternatives: list[str] = []
    current = [""]
    while i < len(s):
        c = s[i]
        if c == closer:
            return alternatives + current, i + 1
        if c in "}]":
            raise QuizSyntaxError(f"unexpected {c!r} at position {i} in {s!r}")
        if c == "|":
            alternatives += current
            current = [""]
            i += 1
            continue
        if c in "{[":
            inner, i = _parse_alternatives(s, i + 1, "}" if c == "{" else "]")
            options = inner + [""] if c == "{" else inner
        else:
            options, i = [c], i + 1
        current = [a + b for a, b in product(current, options)]
        if len(current) > MAX_SPELLINGS:
            raise QuizSyntaxError(f"more than {MAX_SPELLINGS} spellings in {s!r}")
    if closer is not None:
        raise QuizSyntaxError(f"missing {closer!r} in {s!r}")
    return alternatives + current, i


def canonical(field: str) -> str:
    """The fullest clean spelling: optional parts kept when they hold a letter or digit,
    in a group the choice with the fewest marks (accents are spelt "'e", "e'" or "e")."""
    alts, _ = _canonical_alternatives(field, 0, None)
    best = max((" ".join(a.split()) for a in alts), key=len)
    return re.sub(r"\s*\(.*?\)", "", best).strip()  # "(1st term)" is a note, not a name


def with_article(name: str) -> str:
    """'United Kingdom' -> 'the United Kingdom', so the spoken question sounds natural."""
    if re.match(r"(?i)the ", name) or not THE_NAMES.search(name):
        return name
    return "the " + name


def _marks(s: str) -> int:
    return sum(not (ch.isalnum() or ch == " ") for ch in s)


def _canonical_alternatives(s: str, i: int, closer: str | None) -> tuple[list[str], int]:
    alternatives: list[str] = []
    current = ""
    while i < len(s):
        c = s[i]
        if c == closer:
            return alternatives + [current], i + 1
        if c == "|":
            alternatives.append(current)
            current = ""
            i += 1
        elif c == "{":
            inner, i = _canonical_alternatives(s, i + 1, "}")
            part = inner[0]
            current += part if any(ch.isalnum() for ch in part) else ""
        elif c == "[":
            inner, i = _canonical_alternatives(s, i + 1, "]")
            current += min(inner, key=_marks)  # min keeps the first among ties
        else:
            current += c
            i += 1
    return alternatives + [current], i


def aliases(field: str) -> list[str]:
    """Clean spellings of an answer. Spellings with a one-letter word ("J Adams") are dropped
    when a longer one exists: the containment match would accept any prediction with a "j"."""
    spellings = [a.strip(" ,") for a in expand(field)]
    clean = [a for a in dict.fromkeys(spellings) if CLEAN_ALIAS.match(a)]
    full = [a for a in clean if all(len(w.strip(".,")) > 1 for w in a.split())]
    return full or clean


def read_quiz(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) per fact; '\\' at a line end joins it with the next line."""
    facts, buf, start = [], "", None
    for n, line in enumerate(path.read_text(encoding="latin-1").splitlines(), 1):
        start = n if not buf else start
        if line.endswith("\\"):
            buf += line[:-1]
            continue
        buf += line
        if buf.strip():
            facts.append((start, buf.split(":")))
        buf = ""
    if buf:
        raise QuizSyntaxError(f"{path}: file ends inside a continued line (from line {start})")
    return facts


def build(quiz_dir: Path = QUIZ_DIR) -> list[dict]:
    if not quiz_dir.is_dir():
        raise FileNotFoundError(f"{quiz_dir} not found: install the Debian package bsdgames")
    rows, seen, ambiguous = [], {}, set()
    for name, template, q_idx, a_idx in SOURCES:
        path = quiz_dir / name
        for lineno, fields in read_quiz(path):
            where = f"{path}:{lineno}"
            if len(fields) <= max(q_idx, a_idx):
                raise QuizSyntaxError(f"{where}: expected > {max(q_idx, a_idx)} fields, got {fields}")
            try:
                subject = canonical(fields[q_idx])
                answers = aliases(fields[a_idx])
                answer = canonical(fields[a_idx])
            except QuizSyntaxError as e:
                raise QuizSyntaxError(f"{where}: {e}") from None
            if not answers:  # e.g. the last president has no successor yet
                continue
            question = template.format(with_article(subject) if CATEGORY[name].endswith("capital") else subject)
            key = question.lower()
            if key in seen:
                # Armenia is in asia and europe (same answer): keep one. Grover Cleveland
                # served twice (two successors): the question is ambiguous, drop it.
                if seen[key] != answers:
                    ambiguous.add(key)
                continue
            seen[key] = answers
            rows.append({
                "id": f"{name}-{lineno:03d}",
                "category": CATEGORY[name],
                "question": question,
                "answer": answer,
                "answers": list(dict.fromkeys([answer, *answers])),  # the canonical form is an alias too
                "source": f"bsdgames quiz/{name} line {lineno}",
            })
    return [r for r in rows if r["question"].lower() not in ambiguous]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quiz-dir", type=Path, default=QUIZ_DIR)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = build(args.quiz_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} questions to {args.out}")


if __name__ == "__main__":
    main()

"""Broad English text for teaching the model to hear: sentences and questions from offline sources.

Stage 1 (hearing) wants thousands of varied sentences, with the names, places and question
forms that general-knowledge questions use. Two Debian packages carry such text:

    wordnet-base  /usr/share/wordnet/data.*   ~117 k glosses ("Paris: the capital and largest
                                               city of France ...") and quoted usage examples
    fortunes      /usr/share/games/fortunes/  short quotations

Glosses become statements ("Paris is the capital and largest city of France.") and questions
("Who was the English poet who wrote Paradise Lost?", "What is a large burrowing rodent?"),
so the corpus holds the question forms of spoken QA without holding any question of it.
Any sentence that equals or contains a text of the harness's task sets (tasks/*/data) is
dropped: the evaluation never hears a sentence the model was trained to hear.
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
LEXFILE_PERSON, LEXFILE_LOCATION = 18, 15  # WordNet lexicographer files noun.person / noun.location
_CLEAN = re.compile(r"^[A-Za-z0-9 ,.'?!;:-]+$")


class CorpusError(ValueError):
    """A text source is missing (names the package to install)."""


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def evaluation_texts(tasks_dir: Path = TASKS_DIR, answers: bool = False) -> set[str]:
    """Normalised text of every string field of every bundled task data file (and, with
    `answers`, every answer and alias, and the held-out questions in benchmarks/tasks)."""
    out: set[str] = set()
    paths = sorted(tasks_dir.glob("*/data/*.jsonl"))
    if answers:
        paths += sorted((tasks_dir.parent / "benchmarks" / "tasks").glob("*/data/*.jsonl"))
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            values = [row.get(k) for k in ("text", "question", "prompt", "sentence")]
            if answers:
                values += [row.get("answer"), *(row.get("answers") or [])]
            out.update(_norm(v) for v in values if isinstance(v, str) and v.strip())
    return out


def _sentence(text: str) -> str:
    text = " ".join(text.replace("`", "'").replace("_", " ").split()).strip(" ;,")
    return text[:1].upper() + text[1:] if text else text


def _ok(text: str, min_words: int, max_words: int) -> bool:
    n = len(text.split())
    return min_words <= n <= max_words and bool(_CLEAN.match(text))


def wordnet_sentences(rng: random.Random, min_words: int = 4, max_words: int = 24) -> list[str]:
    """Statements, questions and usage examples from WordNet's noun and verb glosses."""
    if not (WORDNET_DIR / "data.noun").is_file():
        raise CorpusError(f"{WORDNET_DIR}/data.noun missing (apt-get install wordnet-base)")
    out: list[str] = []
    for part in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET_DIR / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # licence header
            head, gloss = line.split("|", 1)
            fields = head.split()
            lexfile, lemma = int(fields[1]), fields[4].replace("_", " ")
            lemma = re.sub(r"\(.*?\)", "", lemma).strip()
            parts = [p.strip() for p in gloss.split(";")]
            definition = re.sub(r"\(.*?\)", "", parts[0]).strip()
            examples = [p.strip('" ') for p in parts[1:] if p.startswith('"')]
            out += [_sentence(e) for e in examples[:2]]
            if part != "noun" or not definition:
                continue
            proper = lemma[:1].isupper()
            if lexfile == LEXFILE_PERSON and proper:
                out.append(_sentence(f"{lemma} was {definition}."))
                out.append(_sentence(f"Who was {definition}?"))
            elif lexfile == LEXFILE_LOCATION and proper:
                out.append(_sentence(f"{lemma} is {definition}."))
                out.append(_sentence(rng.choice([f"Where is {lemma}?", f"What is {definition}?"])))
            elif proper:
                out.append(_sentence(f"{lemma} is {definition}."))
            else:
                art = "an" if lemma[:1].lower() in "aeiou" else "a"
                out.append(_sentence(rng.choice([f"What is {art} {lemma}?", f"{art} {lemma} is {definition}.",
                                                 f"What do you call {definition}?"])))
    return [s for s in out if _ok(s, min_words, max_words)]


def fortune_sentences(min_words: int = 4, max_words: int = 24) -> list[str]:
    """One-line quotations of the `fortunes` package (attribution lines dropped)."""
    if not FORTUNE_DIR.is_dir():
        raise CorpusError(f"{FORTUNE_DIR} missing (apt-get install fortunes)")
    out: list[str] = []
    for path in sorted(FORTUNE_DIR.iterdir()):
        if path.suffix or not path.is_file():
            continue  # .dat indexes and .u8 copies
        for entry in path.read_text(encoding="latin-1").split("\n%\n"):
            lines = [l for l in entry.splitlines() if l.strip() and not l.strip().startswith("--")]
            text = _sentence(" ".join(lines).replace('"', ""))
            if _ok(text, min_words, max_words):
                out.append(text)
    return out


def hearing_sentences(n: int, seed: int, sources: tuple[str, ...] = ("wordnet", "fortunes"),
                      exclude: set[str] | None = None, also_exclude: Iterable[str] = ()) -> list[str]:
    """`n` distinct sentences (seeded sample), none equal to or containing an evaluation text, nor
    equal to one of `also_exclude` (e.g. the sentences a checkpoint was trained to say)."""
    rng = random.Random(seed)
    pool: list[str] = []
    if "wordnet" in sources:
        pool += wordnet_sentences(rng)
    if "fortunes" in sources:
        pool += fortune_sentences()
    exclude = evaluation_texts() if exclude is None else exclude
    long_ex = [e for e in exclude if len(e.split()) >= 4]
    if also_exclude:  # equal only: no containment test against thousands of sentences
        exclude = exclude | {_norm(t) for t in also_exclude}
    seen: set[str] = set()
    keep = []
    for s in pool:
        key = _norm(s)
        if key in seen or key in exclude or any(e in key for e in long_ex):
            continue
        seen.add(key)
        keep.append(s)
    rng.shuffle(keep)
    if len(keep) < n:
        raise CorpusError(f"asked for {n} hearing sentences, the sources hold {len(keep)}")
    return keep[:n]


def proper_names(min_letters: int = 3) -> list[tuple[str, str, int]]:
    """(name, statement, synset) for every WordNet person and place with a proper-noun lemma
    ("Aleppo", "Aleppo is a city in northwestern Syria.", its synset's offset: "Graham Greene" and
    "Henry Graham Greene" share one), sorted by name; acronyms left out. A name that any bundled
    task or held-out question holds (as a question's words or an answer) is left out too: what the
    speech learns of names is measured on names it never practised."""
    if not (WORDNET_DIR / "data.noun").is_file():
        raise CorpusError(f"{WORDNET_DIR}/data.noun missing (apt-get install wordnet-base)")
    evaluation = evaluation_texts(answers=True)
    padded = [f" {e} " for e in evaluation]
    out: dict[str, tuple[str, int]] = {}
    for line in (WORDNET_DIR / "data.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith("  ") or "|" not in line:
            continue
        head, gloss = line.split("|", 1)
        fields = head.split()
        lexfile, n_lemmas = int(fields[1]), int(fields[3], 16)
        if lexfile not in (LEXFILE_PERSON, LEXFILE_LOCATION):
            continue
        definition = re.sub(r"\(.*?\)", "", gloss.split(";")[0]).strip()
        verb = "was" if lexfile == LEXFILE_PERSON else "is"
        for i in range(n_lemmas):
            name = re.sub(r"\(.*?\)", "", fields[4 + 2 * i]).replace("_", " ").strip()
            letters = name.replace(" ", "").replace("-", "").replace(".", "").replace("'", "")
            if (not name[:1].isupper() or name.isupper() or len(letters) < min_letters or not letters.isalpha()
                    or name in out):
                continue
            key = f" {_norm(name)} "
            if any(key in e for e in padded):
                continue
            statement = _sentence(f"{name} {verb} {definition}.")
            out[name] = (statement if definition and _ok(statement, 4, 24) else "", int(fields[0]))
    return sorted((name, statement, synset) for name, (statement, synset) in out.items())


def name_lists(names: list[str], n: int, per_list: int, seed: int) -> list[str]:
    """`n` lists of `per_list` names ("Aleppo, Mason City, John Philip Sousa."), each name once before
    any repeats (seeded order)."""
    if n and not names:
        raise CorpusError("name lists: no names to list")
    return _lists(names, n, per_list, seed)


def _lists(items: list[str], n: int, per_list: int, seed: int) -> list[str]:
    """`n` comma lists of `per_list` items, in a seeded order, each item once before any repeats."""
    rng = random.Random(seed)
    pool = list(items)
    rng.shuffle(pool)
    need = n * per_list
    pool = (pool * (need // max(1, len(pool)) + 1))[:need]
    return [", ".join(pool[k * per_list:(k + 1) * per_list]) + "." for k in range(n)]


def word_lists(sentences: list[str], n: int, per_list: int, seed: int) -> list[str]:
    """`n` lists of `per_list` distinct words drawn from `sentences` (spelling kept, so names keep
    their capitals), each type once before any repeats: the words a sentence dilutes with "the"
    and "of", most of them seen once or never by a stage 2.1, given whole turns of their own.
    Words as common as "have" or more (wordfreq Zipf >= 5.5) and shorter than 3 letters are left out."""
    import wordfreq

    seen, types = set(), []
    for s in sentences:
        for w in re.split(r"[\s,.;:?!]+", s):
            key = w.lower()
            if len(w) >= 3 and w.isalpha() and key not in seen and wordfreq.zipf_frequency(key, "en") < 5.5:
                seen.add(key)
                types.append(w)
    if n and not types:
        raise CorpusError(f"word lists: no word of the {len(sentences)} sentences qualifies")
    return _lists(types, n, per_list, seed)

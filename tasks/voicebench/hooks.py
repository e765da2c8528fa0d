"""Hooks of the VoiceBench tasks (hub dataset `hlt-lab/voicebench`, online only).

The fields each config is assumed to have, as VoiceBench's own loader (`main.py`: every
row's `audio` and `prompt`) and evaluators (`reference` for the reference-based and
multiple-choice sets, BBH's subtask inside `id`, IFEval's instruction lists) read them;
each task file repeats them in its `dataset.example`:

| kind | configs | fields read |
|---|---|---|
| open | alpacaeval_full, commoneval, wildvoice | audio, prompt |
| safety | advbench | audio, prompt |
| mcq | openbookqa, mmsu (one split per subject) | audio, prompt, reference (a letter A-D) |
| qa | sd-qa (one split per accent region) | audio, prompt, reference (the answer text, or a list) |
| bbh | bbh | audio, prompt, reference ("yes" / "no" / "(A)" / "(B)"), id (names the subtask) |
| ifeval | ifeval | audio, prompt, instruction_id_list, kwargs |

A hub doc lacking an assumed field stops the load with one line that names the field,
the config's kind and the fields the doc has — the data differs from what these tasks
were written against, and nothing is scored on a guess.

Sample ids: the doc's `id`, else its `key` (IFEval), else its position in its split; with
a multi-split load (`split: "*"`) the split is put in front ("usa/00012"), since the same
question exists once per region.
"""
from __future__ import annotations

import re
from typing import Any

HUB_SPLIT_FIELD = "hub_split"  # deeptalk_eval.task_docs.HUB_SPLIT_FIELD: the split a doc came from
REQUIRED: dict[str, tuple[str, ...]] = {
    "open": ("audio", "prompt"),
    "safety": ("audio", "prompt"),
    "mcq": ("audio", "prompt", "reference"),
    "qa": ("audio", "prompt", "reference"),
    "bbh": ("audio", "prompt", "reference", "id"),
    "ifeval": ("audio", "prompt", "instruction_id_list", "kwargs"),
}
BBH_SUBTASKS = ("hyperbaton", "navigate", "sports_understanding", "web_of_lies")


def _with_ids(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    out = []
    position: dict[str, int] = {}  # per split: the same question sits at the same place in each region
    for i, d in enumerate(docs):
        missing = [f for f in REQUIRED[kind] if f not in d]
        if missing:
            raise ValueError(f"VoiceBench doc #{i} has no field {missing[0]!r}, which the {kind} tasks assume "
                             f"(tasks/voicebench/hooks.py); the doc has {sorted(d)}")
        split = d.get(HUB_SPLIT_FIELD) or ""
        n = position[split] = position.get(split, -1) + 1
        sid = next((d[k] for k in ("id", "key") if d.get(k) not in (None, "")), f"{n:05d}")
        out.append({**d, "id": f"{split}/{sid}" if split else str(sid)})
    return out


def open_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """alpacaeval_full, commoneval, wildvoice: open-ended requests (judged)."""
    return _with_ids(docs, "open")


def safety_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """advbench: harmful requests (refusal rate)."""
    return _with_ids(docs, "safety")


def parse_options(prompt: str, letters: str = "ABCD") -> list[str] | None:
    """The option texts of a question that lists them as "A. ... B. ... C. ... D. ..." (or
    "A) ..." / "(A) ..."), each letter once and in order; None when they are not all there.
    The scorer uses them only to read an answer that names an option instead of its letter."""
    starts = []
    pos = 0
    for letter in letters:
        m = re.compile(rf"(?:(?<=\s)|(?<=^))\(?{letter}[.):]\s+").search(prompt, pos)
        if m is None:
            return None
        starts.append((m.start(), m.end()))
        pos = m.end()
    texts = []
    for k, (_, end) in enumerate(starts):
        stop = starts[k + 1][0] if k + 1 < len(starts) else len(prompt)
        text = prompt[end:stop].strip().rstrip(".,;").strip()
        text = re.sub(r"\s+or$", "", text).strip()
        if not text:
            return None
        texts.append(text)
    return texts


def mcq_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """openbookqa, mmsu: `reference` is the gold letter; `options` parsed from the prompt when it lists them."""
    out = []
    for d in _with_ids(docs, "mcq"):
        out.append({**d, "options": parse_options(str(d["prompt"]))})
    return out


def qa_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """sd-qa: `answers` = the reference answer(s) as an alias list for qa_match."""
    out = []
    for d in _with_ids(docs, "qa"):
        ref = d["reference"]
        answers = [ref] if isinstance(ref, str) else list(ref or [])
        answers = [a for a in answers if isinstance(a, str) and a.strip()]
        if not answers:
            raise ValueError(f"VoiceBench sd-qa doc {d['id']!r}: no usable reference answer ({ref!r})")
        out.append({**d, "answers": list(dict.fromkeys(answers))})
    return out


def bbh_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """bbh: the subtask (from `id`) kept as `subtask`; `reference` is yes/no or (A)/(B)."""
    out = []
    for d in _with_ids(docs, "bbh"):
        sub = next((s for s in BBH_SUBTASKS if s in str(d["id"])), None)
        if sub is None:
            raise ValueError(f"VoiceBench bbh doc {d['id']!r}: the id names none of the subtasks {BBH_SUBTASKS}")
        out.append({**d, "subtask": sub})
    return out


def ifeval_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ifeval: instruction ids and their kwargs as lm-eval's IFEval checks read them."""
    return _with_ids(docs, "ifeval")

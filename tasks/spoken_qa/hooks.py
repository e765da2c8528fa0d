"""Hooks of the spoken-QA tasks: the audio controls and the online data sets."""
from __future__ import annotations

import random
from typing import Any

import numpy as np

CONTROL_SEED = 1234  # fixed: the controls must pick and pair the same items every run
CONTROL_SIZE = 100  # enough to tell chance from a model that hears the question
SILENCE_SECONDS, SILENCE_SR = 2.0, 16000


def control_subset(docs: list[dict], n: int = CONTROL_SIZE, seed: int = CONTROL_SEED) -> list[dict]:
    """A seeded sample of `n` docs, kept in file order."""
    if len(docs) < n:
        raise ValueError(f"the control needs {n} docs, the data file has {len(docs)}")
    keep = set(random.Random(seed).sample(range(len(docs)), n))
    return [d for i, d in enumerate(docs) if i in keep]


def silent_audio(docs: list[dict]) -> list[dict]:
    """Every question replaced by the same 2 s of digital silence (written once to the cache)."""
    import soundfile as sf

    from deeptalk_common.paths import cache_dir

    path = cache_dir() / "controls" / f"silence_{SILENCE_SECONDS:g}s_{SILENCE_SR}.wav"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.wav")
        sf.write(tmp, np.zeros(int(SILENCE_SECONDS * SILENCE_SR), np.int16), SILENCE_SR, subtype="PCM_16")
        tmp.replace(path)
    return [{**d, "audio": str(path)} for d in control_subset(docs)]


def shuffled_audio(docs: list[dict]) -> list[dict]:
    """Each item is spoken with another item's question (a seeded derangement). Scored
    against its own answers (a model that hears should fail) and against the answers of
    the question it actually heard (`heard_answers`: a model that hears should pass)."""
    sub = control_subset(docs)
    order = list(range(len(sub)))
    random.Random(CONTROL_SEED + 1).shuffle(order)
    # Pair each item with the next one in a shuffled cycle: nobody keeps its own question.
    partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
    out = []
    for i, d in enumerate(sub):
        other = sub[partner[i]]
        out.append({**d, "spoken": other["question"], "spoken_id": other["id"],
                    "heard_answers": other["answers"]})
    return out


def online_qa_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hub spoken-QA sets name their fields differently; give every doc `id`, `question`
    and an `answers` alias list. A doc without a usable answer is an error, not a skip."""
    out = []
    for i, d in enumerate(docs):
        q = d.get("question", d.get("Questions", d.get("Question")))
        a = d.get("answers", d.get("answer", d.get("Answer")))
        if isinstance(a, dict):  # TriviaQA: {"value": ..., "aliases": [...], ...}
            a = [a["value"], *a.get("aliases", [])] if "value" in a else a.get("aliases")
        if isinstance(a, str):
            a = [a]
        if not q or not a or not all(isinstance(x, str) and x.strip() for x in a):
            raise ValueError(f"hub doc #{i} (id {d.get('id', d.get('question_id'))!r}): no usable "
                             f"question/answers; fields: {sorted(d)}")
        sid = d.get("id", d.get("question_id", f"{i:05d}"))
        out.append({**d, "id": str(sid), "question": q, "answers": list(dict.fromkeys(a))})
    return out

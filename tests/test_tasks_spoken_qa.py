"""The factoid set built from bsdgames quiz files, and the spoken-QA control hooks."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QA_DIR = ROOT / "tasks" / "spoken_qa"
QUIZ = Path("/usr/share/games/bsdgames/quiz")


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def build():
    return _module(QA_DIR / "build_factoid.py", "build_factoid_under_test")


@pytest.fixture(scope="module")
def hooks():
    return _module(QA_DIR / "hooks.py", "spoken_qa_hooks_under_test")


@pytest.fixture(scope="module")
def committed():
    return [json.loads(line) for line in (QA_DIR / "data" / "factoid.jsonl").read_text().splitlines()]


def test_quiz_grammar(build):
    assert build.expand("{G{eorge} }Washington") == ["George Washington", "G Washington", "Washington"]
    assert build.expand("Bahr[a|e]in") == ["Bahrain", "Bahrein"]
    assert build.expand("Vienna|Wien") == ["Vienna", "Wien"]
    assert build.expand("Hen[ry|] [I|1]") == ["Henry I", "Henry 1", "Hen I", "Hen 1"]
    for bad in ("Bahr[a|ein", "Wash}ington", "{G{eorge} Washington"):
        with pytest.raises(build.QuizSyntaxError):
            build.expand(bad)


def test_canonical_spelling_and_aliases(build):
    # accents are spelt "'e", "e'" or "e": the canonical form takes the plain letter
    assert build.canonical("Yaound['e|e'|e]") == "Yaounde"
    assert build.canonical("Cal{if{ornia}}|CA") == "California"
    assert build.canonical("P{'}yongyang") == "Pyongyang"
    assert build.canonical("{G{rover} }Cleveland{ (1st term)}") == "Grover Cleveland"
    # initials would make the containment match accept almost anything: dropped
    al = build.aliases("{J{ohn} }{Q{uincy} }Adams")
    assert "John Quincy Adams" in al and "Adams" in al and not any(" Q " in f" {a} " for a in al)
    assert build.aliases("Vienna|Wien") == ["Vienna", "Wien"]


@pytest.mark.skipif(not QUIZ.is_dir(), reason="Debian bsdgames is not installed")
def test_build_is_reproducible_and_large_enough(build, committed):
    rows = build.build()
    assert rows == committed, "tasks/spoken_qa/data/factoid.jsonl is stale: rerun build_factoid.py"
    assert len(rows) >= 300


def test_committed_factoid_set(committed):
    assert len(committed) >= 300
    ids = [r["id"] for r in committed]
    assert len(set(ids)) == len(ids)
    questions = [r["question"].lower() for r in committed]
    assert len(set(questions)) == len(questions)
    for r in committed:
        assert r["question"].endswith("?") and r["answers"], r
        assert all(isinstance(a, str) and a.strip() == a and a for a in r["answers"]), r
        assert "[" not in r["question"] and "{" not in r["question"] and "|" not in r["question"], r
    cats = {r["category"] for r in committed}
    assert {"capital", "element", "president"} <= cats
    by_id = {r["id"]: r for r in committed}
    assert by_id["europe-028"]["question"] == "What is the capital of Italy?"
    assert set(by_id["europe-028"]["answers"]) == {"Rome", "Roma"}


def test_gold_answers_match_their_own_aliases(committed):
    """The spoken-QA scorer must accept the canonical answer said in a sentence."""
    from deeptalk_eval.scoring.match import answer_match

    misses = [r["id"] for r in committed if not answer_match(f"I think it is {r['answer']}.", r["answers"])]
    assert misses == []


def test_controls_are_seeded_and_well_formed(hooks, committed):
    a, b = hooks.control_subset(committed), hooks.control_subset(committed)
    assert a == b and len(a) == hooks.CONTROL_SIZE
    shuffled = hooks.shuffled_audio(committed)
    assert [d["id"] for d in shuffled] == [d["id"] for d in a]
    assert all(d["spoken_id"] != d["id"] and d["spoken"] != d["question"] for d in shuffled)
    assert sorted(d["spoken_id"] for d in shuffled) == sorted(d["id"] for d in a)  # a permutation
    silent = hooks.silent_audio(committed)
    import soundfile as sf

    wav, sr = sf.read(silent[0]["audio"])
    assert sr == hooks.SILENCE_SR and len(wav) == int(hooks.SILENCE_SECONDS * sr) and abs(wav).max() == 0
    with pytest.raises(ValueError, match="needs 100 docs"):
        hooks.control_subset(committed[:10])


def test_online_docs_are_normalised_or_refused(hooks):
    docs = hooks.online_qa_docs([
        {"question": "Who wrote Hamlet?", "answer": "Shakespeare"},
        {"question_id": "q7", "question": "Capital of Peru?", "answer": {"value": "Lima", "aliases": ["Lima", "Lima, Peru"]}},
        {"question": "Largest ocean?", "answers": ["Pacific", "Pacific Ocean"]},
    ])
    assert [d["id"] for d in docs] == ["00000", "q7", "00002"]
    assert docs[1]["answers"] == ["Lima", "Lima, Peru"]
    with pytest.raises(ValueError, match="hub doc #0"):
        hooks.online_qa_docs([{"question": "No answer here?", "answer": ""}])

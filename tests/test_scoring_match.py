"""The spoken-QA answer-match rule, its Whisper-normalised variant and MC letter extraction."""
import pytest

from deeptalk_eval.scoring.match import answer_match, answer_match_whisper, extract_choice
from deeptalk_eval.scoring.normalise import (
    ANSWER_MATCH_NAME,
    answer_tokens,
    normaliser_names,
    numbers_in_words,
    parse_number,
)


@pytest.mark.parametrize("pred, answers, correct, rule", [
    ("The capital of Algeria is Algiers.", ["Algiers"], True, "words"),
    ("ALGIERS", "Algiers", True, "words"),
    ("It is Porto Novo, in Benin.", ["Porto-Novo"], True, "words"),  # '-' -> space on the alias
    ("It's Porto-Novo.", ["Porto-Novo"], True, "words"),  # and on the prediction
    ("Novo", ["Porto-Novo"], False, None),  # every alias word must occur
    ("Paris", ["Lyon", "paris"], True, "words"),  # any alias
    ("It was Abraham Lincoln", ["Lincoln", "Abe Lincoln"], True, "words"),
    ("I don't know", ["don't"], True, "words"),  # apostrophes stay inside words
    ("I do not know", ["don't"], False, None),
    ("banana", ["a"], False, None),  # tokens, not substrings
    ("Cairo is in Egypt", ["air"], False, None),
    ("There are 12 months.", ["twelve"], True, "number_in_digits"),
    ("There are 1,984 of them", ["one thousand nine hundred eighty-four"], True, "number_in_digits"),
    ("It has twenty-five", ["25"], True, "number_in_words"),
    ("about a hundred and three", ["103"], True, "number_in_words"),
    ("Seven", ["7"], True, "number_in_words"),
    ("I say 7", ["Seven Years War"], False, None),  # not a number alias: no number fallback
    ("It has 24 or 26", ["25"], False, None),
    ("", ["Algiers"], False, None),
    (None, ["Algiers"], False, None),
    ("   ", ["Algiers"], False, None),
])
def test_answer_match(pred, answers, correct, rule):
    m = answer_match(pred, answers)
    assert m.correct is correct
    assert m.rule == rule
    assert bool(m) is correct


def test_answer_match_bad_gold():
    with pytest.raises(ValueError, match="no gold answers"):
        answer_match("x", [])
    with pytest.raises(TypeError, match="alias"):
        answer_match("x", [None])


@pytest.mark.parametrize("pred, answers, correct", [
    ("nineteen eighty four", ["1984"], True),  # Whisper reads years; word2number does not
    ("The colour is red", ["color"], True),  # British -> American spelling
    ("Mr. Smith", ["Mister Smith"], True),
    ("uh the answer is um five", ["5"], True),
    ("Lyon", ["Paris"], False),
    (None, ["Paris"], False),
])
def test_answer_match_whisper(pred, answers, correct):
    m = answer_match_whisper(pred, answers)
    assert m.correct is correct
    assert m.rule == ("whisper_words" if correct else None)


def test_rule_differences_are_visible():
    # The two normalisers disagree here, which is why both figures are reported.
    assert not answer_match("nineteen eighty four", ["1984"]).correct
    assert answer_match_whisper("nineteen eighty four", ["1984"]).correct


def test_number_helpers():
    assert parse_number("1,984") == 1984
    assert parse_number("twenty-five") == 25
    assert parse_number("a hundred") == 100
    assert parse_number("5 feet") is None
    assert parse_number("Seven Years War") is None
    assert numbers_in_words("five or six, twenty-five and a hundred and three") == [5, 6, 25, 103]
    assert answer_tokens("It\u2019s Washington, D.C.!") == ["it's", "washington", "d", "c"]


def test_normaliser_names_are_versioned():
    names = normaliser_names()
    assert names["answer_match"] == ANSWER_MATCH_NAME == "answer_match_v1"
    assert names["whisper_en"].startswith("whisper_en:openai-whisper==")
    assert names["whisper_en"].split("==")[1][:4].isdigit()


@pytest.mark.parametrize("pred, letter", [
    ("B", "B"), ("(c)", "C"), ("d.", "D"), ("The answer is (D).", "D"), ("Answer: C", "C"),
    ("ANSWER IS A", "A"), ("B) because it is larger", "B"), ("I pick (A), surely", "A"),
    ("The answer is B. Not (C).", "B"),
    ("The answer is a city", None),  # lower-case article, no choice
    ("A cat sat", None), ("Maybe A or B", None), ("(A) or (B)", None),
    ("", None), (None, None), ("no idea", None),
])
def test_extract_choice(pred, letter):
    assert extract_choice(pred) == letter


def test_extract_choice_by_option_text_and_letters():
    opts = ["Paris", "London", "Rome", "Berlin"]
    assert extract_choice("I think it is London", options=opts) == "B"
    assert extract_choice("London or Rome", options=opts) is None  # ambiguous: no guess
    assert extract_choice("E", letters="ABCDE") == "E"
    assert extract_choice("E") is None
    with pytest.raises(ValueError, match="options"):
        extract_choice("x", letters="AB", options=opts)


def test_extract_choice_never_guesses():
    # The same unparseable reply always gives None, never some letter.
    assert {extract_choice("hmm, hard to say") for _ in range(20)} == {None}

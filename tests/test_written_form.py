"""Heard words in written form: capitals and end mark chosen by the LLM (deeptalk/speech/written_form.py)."""
import pytest
import torch

from deeptalk.speech.written_form import WrittenForm, gains_by_rows, turn_scorer, written


def names_scorer(names: dict[str, str | None], end: str = "?"):
    """A fake turn scorer. A whole turn: 0 if it ends in `end`, else -1. A turn's start: +1 for
    each capitalised word that `names` holds (the value, if any, is the word that must come
    just before it), -1 for any other capital after the first word."""
    def score(texts, whole=True):
        if whole:
            return [0.0 if t.endswith(end) else -1.0 for t in texts]
        out = []
        for t in texts:
            w = t.split()
            s = 0.0
            for j in range(1, len(w)):
                if w[j][0].isupper():
                    ok = w[j] in names and (names[w[j]] is None or w[j - 1] == names[w[j]])
                    s += 1.0 if ok else -1.0
            out.append(s)
        return out
    return score


def test_the_end_mark_and_each_capital_are_the_scorers_choice():
    assert written("what is the capital of france", names_scorer({"France": None})) == \
        "What is the capital of France?"
    assert written("what is the capital of france", names_scorer({}, end=".")) == "What is the capital of france."


def test_a_second_pass_reads_the_words_decided_before():
    """'War' is a name only after 'World': the first pass writes 'World', the second 'War'."""
    score = names_scorer({"World": None, "War": "World"})
    assert written("when did world war one end", score, WrittenForm(passes=2)) == "When did World War one end?"
    assert written("when did world war one end", score, WrittenForm(passes=1)) == "When did World war one end?"


def test_forms_and_errors():
    score = names_scorer({}, end=".")
    assert written("hello there", score, WrittenForm(form="plain")) == "hello there"
    assert written("hello there", score, WrittenForm(form="sentence")) == "Hello there."
    assert written("", score) == ""
    with pytest.raises(ValueError, match="written form must be one of"):
        WrittenForm(form="title")


def test_the_base_llm_writes_a_heard_question_as_typed():
    """The real SmolLM2 as the turn scorer: the question mark and the country's capital."""
    from deeptalk_common.base_llm import load_base_llm

    llm, tok = load_base_llm()
    score = turn_scorer(llm.eval(), tok)
    assert written("what is the largest river in south america", score) == \
        "What is the largest river in South America?"
    a, b = score(["The sun is a star.", "The sun is a star"])
    assert score(["The sun is a star"])[0] == pytest.approx(b, abs=1e-3)  # padding changes nothing
    assert a > b  # a turn that ends on its full stop
    # a turn's start: "Paris" likelier than "paris" after "The capital of France is"
    low, cap = score(["The capital of France is paris", "The capital of France is Paris"], whole=False)
    assert cap > low
    # the head read once and shared: the same numbers as one plain forward of the whole row
    ids = score.head + score._ids("who wrote hamlet") + score.tail
    with torch.no_grad():
        lp = llm(input_ids=torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
    plain = float(lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])][len(score.head) - 1:].sum())
    assert score(["who wrote hamlet"])[0] == pytest.approx(plain, abs=1e-3)
    # the cheap capital gains (one row, capitals of several tokens apart) = two rows a word
    words = "When did the titanic sink near newfoundland".split()
    todo = list(range(1, len(words)))
    assert any(len(score._ids(w.capitalize())) > 1 for w in words)  # both kinds of capital are met
    assert score.capital_gains(words, todo) == pytest.approx(gains_by_rows(score)(words, todo), abs=1e-3)


def test_a_piece_head_hands_over_the_written_form():
    """CharCTC.transcribe with a turn scorer writes the lexicon's words in the scorer's form."""
    from deeptalk.speech.char_ctc import CharCTC, train_pieces
    from deeptalk.speech.lexicon_decode import LexiconConfig

    h = CharCTC(8, 16, 2, hidden=16, pieces=train_pieces(["the sun is a star", "which planet is red"] * 40, 42))
    rows = []
    for word in "the sun is a star".split():  # each piece heard over two frames, then a blank frame
        for c in h.spell_word(word):
            rows += [torch.nn.functional.one_hot(torch.tensor(c), h.chars.out_features).float() * 20] * 2
        rows.append(torch.nn.functional.one_hot(torch.tensor(0), h.chars.out_features).float() * 20)
    heard = torch.stack(rows)[None]
    h.logits = lambda feats, lengths=None: heard  # the head hears exactly these pieces
    feats = torch.zeros(1, 2 * len(rows), 8)
    h.use_lexicon(LexiconConfig(words=20_000))
    assert h.transcribe(feats)[0] == "the sun is a star"
    h.use_lexicon(LexiconConfig(words=20_000), turn_score=lambda ts, whole=True: [float(t.endswith(".")) for t in ts])
    assert h.transcribe(feats)[0] == "The sun is a star."
    h.use_lexicon(LexiconConfig(words=20_000, written="plain"), turn_score=lambda ts, whole=True: [0.0] * len(ts))
    assert h.transcribe(feats)[0] == "the sun is a star"

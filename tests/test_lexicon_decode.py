"""Hearing in words: CTC beam search over English words (flashlight-text, wordfreq), n best
rescored by the LLM (deeptalk/speech/lexicon_decode.py)."""
import pytest
import torch

from deeptalk.speech.char_ctc import CharCTC, train_pieces
from deeptalk.speech.ctc_projector import _runs
from deeptalk.speech.lexicon_decode import LexiconConfig, LexiconDecoder, llm_scorer


@pytest.fixture(scope="module")
def head():
    texts = ["the capital of france is paris", "what is the largest planet in the solar system",
             "which planet is red", "the sun is a star"] * 40
    torch.manual_seed(0)
    return CharCTC(8, 16, 2, hidden=16, pieces=train_pieces(texts, 42))


def emissions(head, spoken: list[list[tuple[str, float]]], frames: int = 3) -> torch.Tensor:
    """Log-probs [T, C] of a head that hears each entry of `spoken` (one list per piece slot:
    (word, probability) alternatives, each spelled in the head's pieces, aligned piece by
    piece), `frames` frames per piece, a blank frame between pieces."""
    n = head.chars.out_features
    rows = []
    for alts in spoken:
        spellings = [(head.spell_word(w), p) for w, p in alts]
        for k in range(max(len(s) for s, _ in spellings)):
            row = torch.full((n,), 1e-4)
            for s, p in spellings:
                if k < len(s):
                    row[s[k]] += p
            rows += [row] * frames
            blank = torch.full((n,), 1e-4)
            blank[0] = 1.0
            rows.append(blank)
    x = torch.stack(rows)
    return (x / x.sum(-1, keepdim=True)).log()


def test_words_of_the_lexicon_replace_what_greedy_spells(head):
    """Greedy reads 'planit' (a slightly likelier letter); over English words the beam reads
    'planet', and every word it writes is a word."""
    dec = LexiconDecoder(head.spell_word, head.chars.out_features, "abcdefghijklmnopqrstuvwxyz'0123456789",
                         LexiconConfig(words=20_000))
    assert "planet" in dec.words and "planit" not in dec.words
    # slot by slot: "the" | "largest" | "planit" 0.55 vs "planet" 0.45
    x = emissions(head, [[("the", 1.0)], [("largest", 1.0)], [("planit", 0.55), ("planet", 0.45)]])
    greedy = [c for c, _ in _runs(x.argmax(-1)) if c]
    assert " ".join(head.bpe.decode([c - 1 for c in greedy]).split()) == "the largest planit"
    assert dec.decode(x) == "the largest planet"
    best = dec.nbest(x)
    assert best[0][0] == "the largest planet" and len({t for t, _ in best}) == len(best)


def test_the_llm_chooses_among_the_best_and_alpha_zero_keeps_the_beams_choice(head):
    assert len(head.spell_word("sun")) == len(head.spell_word("son"))  # aligned piece by piece
    x = emissions(head, [[("the", 1.0)], [("sun", 0.5), ("son", 0.5)], [("is", 1.0)], [("a", 1.0)], [("star", 1.0)]])
    cfg = LexiconConfig(words=20_000, alpha=0.0)
    dec = LexiconDecoder(head.spell_word, head.chars.out_features, "abcdefghijklmnopqrstuvwxyz'0123456789", cfg)
    texts = [t for t, _ in dec.nbest(x)]
    assert {"the sun is a star", "the son is a star"} <= set(texts)
    prefer = {t: (0.0 if t == texts[1] else -50.0) for t in texts}
    assert dec.decode(x, lambda ts: [prefer[t] for t in ts]) == texts[0]  # alpha 0: the beam's best
    cfg.alpha = 1.0
    assert dec.decode(x, lambda ts: [prefer[t] for t in ts]) == texts[1]


def test_llm_scorer_prefers_a_sentence_to_its_words_shuffled():
    from deeptalk_common.base_llm import load_base_llm

    llm, tok = load_base_llm()
    score = llm_scorer(llm.eval(), tok)
    good, bad, short = score(["the sun is a star", "star a the is sun", "the sun"])
    assert good > bad
    assert score(["the sun"])[0] == pytest.approx(short, abs=1e-4)  # padding changes nothing


def test_lexicon_decoding_needs_a_piece_head():
    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig

    with pytest.raises(ValueError, match="needs a piece head"):
        CharCTC(8, 16, 2, hidden=16).use_lexicon()
    with pytest.raises(ValueError, match="needs a piece head"):
        SpeechEncoder.from_whisper(SpeechEncoderConfig(projector="ctc_chars", decode="lexicon"))
    with pytest.raises(ValueError, match="'greedy' or 'lexicon'"):
        SpeechEncoder.from_whisper(SpeechEncoderConfig(decode="beam"))


def test_transcribe_reads_words_once_a_lexicon_is_set(head):
    """The head's transcribe (what the LLM is handed) goes through the lexicon once set."""
    torch.manual_seed(1)
    h = CharCTC(8, 16, 2, hidden=16, pieces=bytes(head.pieces.tolist()).decode())
    feats = torch.randn(1, 30, 8)
    h.use_lexicon(LexiconConfig(words=20_000))
    out = h.transcribe(feats)[0]
    assert all(w in h.lexicon.words for w in out.split())


def test_bodies_read_as_one_prefix_tree_score_as_each_alone():
    """Tree attention (shared prefixes computed once) gives each body's numbers as a plain forward
    of head + body alone, for bodies that share prefixes, repeat, nest, or share nothing."""
    from deeptalk.speech.lexicon_decode import _prefix_tree, next_token_logprobs, read_head, sequence_logprobs
    from deeptalk_common.base_llm import load_base_llm

    llm, tok = load_base_llm()
    llm.eval()
    head = tok("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    texts = ["the sun is a star", "the son is a star", "the sun is a star", "the sun", "a moon of mars"]
    bodies = [tok(" " + t, add_special_tokens=False)["input_ids"] for t in texts]
    tokens, parents, at = _prefix_tree(head[-1], bodies)
    assert len(tokens) < 1 + sum(len(b) for b in bodies)  # shared prefixes are one node
    assert all(len(p) == len(b) for p, b in zip(at, bodies))
    for past in (None, read_head(llm, head)):
        logp = next_token_logprobs(llm, head, bodies, past)
        seq = sequence_logprobs(llm, head, bodies, past)
        for k, body in enumerate(bodies):
            with torch.no_grad():
                alone = llm(input_ids=torch.tensor([head + body])).logits[0].float().log_softmax(-1)
            want = alone[len(head) - 1: len(head) - 1 + len(body)]
            assert torch.allclose(logp[k, : len(body)], want, atol=2e-4)
            assert seq[k] == pytest.approx(float(want[torch.arange(len(body)), torch.tensor(body)].sum()), abs=1e-3)
    # a one-token head: no past, the tree alone
    one = next_token_logprobs(llm, head[-1:], bodies[:2])
    with torch.no_grad():
        alone = llm(input_ids=torch.tensor([head[-1:] + bodies[1]])).logits[0].float().log_softmax(-1)
    assert torch.allclose(one[1, : len(bodies[1])], alone[: len(bodies[1])], atol=2e-4)


def test_any_case_scores_each_word_as_itself_or_its_capital():
    """A piece head hears no case: with any_case the LLM reads "chile" as "chile" or "Chile"."""
    import math

    from deeptalk.speech.lexicon_decode import sequence_logprobs
    from deeptalk_common.base_llm import load_base_llm

    llm, tok = load_base_llm()
    llm.eval()
    plain, cased = llm_scorer(llm, tok), llm_scorer(llm, tok, any_case=True)
    texts = ["what is the capital of chill", "what is the capital of chile"]
    assert plain(texts)[0] > plain(texts)[1]  # in lower case the name loses
    assert cased(texts)[1] > cased(texts)[0]  # as itself or its capital it wins
    assert all(c >= p for c, p in zip(cased(texts), plain(texts)))
    # the number is the sum over words of log(p(word) + p(Word)) after the words before as heard
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    words, want = "the sun of paris".split(), 0.0
    for i, w in enumerate(words):
        before = tok(" " + " ".join(words[:i]), add_special_tokens=False)["input_ids"] if i else []
        rows = [before + tok(" " + v, add_special_tokens=False)["input_ids"] for v in (w, w.capitalize())]
        lp = sequence_logprobs(llm, [start], rows)
        head = sequence_logprobs(llm, [start], [before])[0] if before else 0.0
        want += math.log(math.exp(lp[0] - head) + math.exp(lp[1] - head))
    assert cased(["the sun of paris"])[0] == pytest.approx(want, abs=2e-3)


def test_an_empty_text_scores_zero_beside_others():
    """A hypothesis with no words (an utterance heard as nothing) costs nothing and changes no other
    row's score, in both scorers."""
    from deeptalk_common.base_llm import load_base_llm

    llm, tok = load_base_llm()
    for any_case in (False, True):
        score = llm_scorer(llm.eval(), tok, any_case=any_case)
        alone = score(["the sun is a star"])[0]
        empty, other = score(["", "the sun is a star"])
        assert empty == 0.0 and other == pytest.approx(alone, abs=1e-3)
        assert score([""]) == [0.0]

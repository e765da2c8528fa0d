"""WER: per utterance, corpus vs mean per-utterance, missing hypotheses, consistency."""
import pytest

from deeptalk_eval.scoring.wer import consistency_wer, corpus_wer, utterance_wer, wer_normaliser_name


def test_utterance_wer_counts_edit_operations():
    u = utterance_wer("the cat sat on the mat", "the cat sat on a mat mat")
    assert (u.substitutions, u.deletions, u.insertions) == (1, 0, 1)
    assert u.errors == 2 and u.ref_words == 6
    assert u.wer == pytest.approx(2 / 6)


def test_normalisation_before_wer():
    # Case, punctuation, number words and British spelling do not count as errors.
    assert utterance_wer("Twenty-five colours, please!", "25 colors please").wer == 0.0
    assert utterance_wer("Twenty-five colours", "25 colors please", normalise=False).wer > 0


def test_missing_and_empty_hypothesis_count_as_one():
    missing = utterance_wer("hello big world", None)
    assert missing.wer == 1.0 and missing.missing and missing.deletions == 3
    empty = utterance_wer("hello big world", "")
    assert empty.wer == 1.0 and not empty.missing


def test_empty_reference_is_an_error_naming_the_sample():
    with pytest.raises(ValueError, match="sample q7"):
        utterance_wer("  ", "hello", sample_id="q7")
    with pytest.raises(ValueError, match="empty after normalisation"):
        utterance_wer("um", "hello")  # Whisper's normaliser drops fillers


def test_corpus_wer_differs_from_mean_per_utterance():
    refs = ["the quick brown fox jumps over the lazy sleeping dog", "hello"]
    hyps = ["the quick brown fox jumps over the lazy sleeping dog", "goodbye"]
    c = corpus_wer(refs, hyps, ids=["long", "short"])
    assert c.corpus_wer == pytest.approx(1 / 11)  # sum errors / sum words
    assert c.mean_wer == pytest.approx(0.5)  # Seed-TTS-eval: mean of 0.0 and 1.0
    assert c.n == 2 and c.missing == 0
    assert c.normaliser == wer_normaliser_name()


def test_missing_audio_is_never_skipped():
    refs = ["a quick test", "another quick test"]
    full = corpus_wer(refs, ["a quick test", "another quick test"])
    one_missing = corpus_wer(refs, ["a quick test", None])
    assert full.corpus_wer == 0.0
    assert one_missing.n == 2 and one_missing.missing == 1
    assert one_missing.mean_wer == pytest.approx(0.5)
    assert one_missing.corpus_wer == pytest.approx(3 / 6)
    assert one_missing.to_dict()["missing_rate"] == 0.5
    assert len(one_missing.to_dict(per_utterance=True)["utterances"]) == 2


def test_corpus_wer_input_errors():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        corpus_wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="zero utterances"):
        corpus_wer([], [])
    with pytest.raises(ValueError, match="sample b"):
        corpus_wer(["x y", ""], ["x y", "z"], ids=["a", "b"])


def test_consistency_wer():
    assert consistency_wer("The answer is twenty five.", "the answer is 25").wer == 0.0
    assert consistency_wer("The answer is Paris.", "the answer is london").wer == pytest.approx(0.25)
    assert consistency_wer("The answer is Paris.", None).wer == 1.0  # no speech
    assert consistency_wer(None, "anything") is None  # no text channel: undefined
    assert consistency_wer("", "anything") is None

"""The registered text scorers on hand-made samples."""
import pytest

from deeptalk_eval.api import Response
from deeptalk_eval.scoring import SampleView, ScoringContext, get_scorer, scorer_names


def view(doc, text, channel="text", response_text=None, failed=False):
    response = None if failed else Response(text=response_text if response_text is not None else text)
    return SampleView(doc=doc, response=response, channel=channel, channel_text=text,
                      error="adapter raised" if failed else None)


def ctx():
    return ScoringContext(task_config={"dataset": {"id_field": "qid"}})


def test_builtin_scorers_are_registered():
    assert {"exact_match", "qa_match", "mc_letter", "wer", "consistency_wer"} <= set(scorer_names())


def test_qa_match_values_and_rules():
    qa = get_scorer("qa_match")
    doc = {"qid": "q1", "answers": ["Algiers"]}
    c = ctx()
    assert qa(view(doc, "It is Algiers."), c) == {
        "acc": 1.0, "acc_whisper_norm": 1.0, "rule_words": 1.0, "rule_number": 0.0, "no_answer": 0.0}
    assert qa(view(doc, "It is Oran."), c)["acc"] == 0.0
    num = qa(view({"qid": "q2", "answers": ["twelve"]}, "There are 12."), c)
    assert num["acc"] == 1.0 and num["rule_number"] == 1.0 and num["rule_words"] == 0.0
    years = qa(view({"qid": "q3", "answers": ["1984"]}, "nineteen eighty four"), c)
    assert years["acc"] == 0.0 and years["acc_whisper_norm"] == 1.0
    assert all(isinstance(v, float) for v in num.values())
    assert c.info["normalisers"]["qa_match_acc"] == "answer_match_v1"
    assert c.info["normalisers"]["qa_match_acc_whisper_norm"].startswith("whisper_en:openai-whisper==")


@pytest.mark.parametrize("text, failed", [(None, False), ("", False), ("  ", False), (None, True)])
def test_qa_match_missing_output_is_wrong(text, failed):
    out = get_scorer("qa_match")(view({"qid": "q1", "answers": ["x"]}, text, failed=failed), ctx())
    assert out["acc"] == 0.0 and out["acc_whisper_norm"] == 0.0 and out["no_answer"] == 1.0


def test_qa_match_bad_doc_names_sample_and_field():
    with pytest.raises(KeyError, match=r"sample 'q9'.*'answers'"):
        get_scorer("qa_match")(view({"qid": "q9", "answer": "x"}, "x"), ctx())
    with pytest.raises(ValueError, match=r"sample 'q9'.*empty"):
        get_scorer("qa_match")(view({"qid": "q9", "answers": []}, "x"), ctx())


def test_exact_match():
    em = get_scorer("exact_match")
    doc = {"qid": "e1", "answers": ["Twenty-five"]}
    assert em(view(doc, "25"), ctx())["exact_match"] == 1.0  # Whisper-normalised
    assert em(view(doc, "It is 25"), ctx())["exact_match"] == 0.0  # whole answer must match
    assert em(view(doc, "twenty five!"), ctx(), normaliser="answer_match")["exact_match"] == 1.0
    assert em(view(doc, "25"), ctx(), normaliser="answer_match")["exact_match"] == 0.0
    assert em(view(doc, None), ctx()) == {"exact_match": 0.0, "no_answer": 1.0}
    with pytest.raises(ValueError, match="unknown normaliser"):
        em(view(doc, "x"), ctx(), normaliser="nope")


def test_mc_letter():
    mc = get_scorer("mc_letter")
    assert mc(view({"qid": "m1", "answer": "B"}, "The answer is (B)."), ctx()) == {"acc": 1.0, "unparsed": 0.0}
    assert mc(view({"qid": "m1", "answer": 2}, "C"), ctx())["acc"] == 1.0  # gold as index
    assert mc(view({"qid": "m1", "answer": "B"}, "no idea"), ctx()) == {"acc": 0.0, "unparsed": 1.0}
    assert mc(view({"qid": "m1", "answer": "B"}, None), ctx()) == {"acc": 0.0, "unparsed": 1.0}
    by_text = mc(view({"qid": "m2", "answer": "B", "choices": ["Paris", "Rome"]}, "Rome, surely"), ctx(),
                 choices_field="choices", letters="AB")
    assert by_text["acc"] == 1.0
    with pytest.raises(ValueError, match=r"sample 'm3'.*not one of"):
        mc(view({"qid": "m3", "answer": "Z"}, "A"), ctx())


def test_wer_scorer_and_missing_audio():
    w = get_scorer("wer")
    doc = {"qid": "w1", "text": "The quick brown fox."}
    out = w(view(doc, "the quick brown box", channel="speech"), ctx())
    assert out == {"wer": 0.25, "wer_errors": 1.0, "wer_ref_words": 4.0, "no_output": 0.0}
    missing = w(view(doc, None, channel="speech"), ctx())
    assert missing == {"wer": 1.0, "wer_errors": 4.0, "wer_ref_words": 4.0, "no_output": 1.0}


def test_consistency_wer_scorer():
    cw = get_scorer("consistency_wer")
    doc = {"qid": "c1"}
    same = cw(view(doc, "the answer is 25", channel="speech", response_text="The answer is twenty-five."), ctx())
    assert same == {"consistency_wer": 0.0, "consistency_errors": 0.0, "consistency_ref_words": 4.0}
    no_speech = cw(view(doc, None, channel="speech", response_text="Paris."), ctx())
    assert no_speech["consistency_wer"] == 1.0
    no_text = cw(view(doc, "paris", channel="speech", response_text=""), ctx())
    assert no_text["consistency_wer"] is None
    with pytest.raises(ValueError, match="channel: speech"):
        cw(view(doc, "x", channel="text"), ctx())


@pytest.mark.parametrize("reason, hit", [("max_steps", 1.0), ("max_new_tokens", 1.0), ("eos", 0.0),
                                         ("stop_string", 0.0), ("server_stream_end", 0.0), (None, None)])
def test_stop_reports_whether_the_answer_ran_to_its_budget(reason, hit):
    extra = {} if reason is None else {"stop_reason": reason}
    sample = SampleView(doc={"qid": "q"}, response=Response(text="x", extra=extra), channel="text", channel_text="x")
    assert get_scorer("stop")(sample, ctx()) == {"hit_cap": hit}
    failed = SampleView(doc={"qid": "q"}, response=None, channel="text", channel_text=None, error="raised")
    assert get_scorer("stop")(failed, ctx()) == {"hit_cap": None}

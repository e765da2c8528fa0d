"""The ASR -> LLM -> TTS cascade end to end on the real offline parts (Whisper tiny.en,
SmolLM2-135M-Instruct, Piper joe)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jiwer
import numpy as np
import pytest

from deeptalk_eval.api import Audio, GenerationOptions, Request, UnsupportedRequest
from deeptalk_eval.models.cascade import Cascade, SentenceBuffer, parse_tts_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cascade():
    model = Cascade(asr="tiny.en", llm="smollm2-135m-instruct", tts="piper:joe")
    yield model
    model.close()


def _norm(text: str) -> str:
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()(text)


def test_sentence_buffer_splits_on_sentence_ends():
    buf = SentenceBuffer()
    assert buf.push("Paris is the capital") == []
    assert buf.push(" of France. It has 2.1 million") == ["Paris is the capital of France."]
    assert buf.push(' people!" Also\nmuseums') == ['It has 2.1 million people!"', "Also"]
    assert buf.flush() == "museums" and buf.flush() is None


def test_tts_spec():
    assert parse_tts_spec("piper:joe") == ("piper", "joe")
    assert parse_tts_spec("flite") == ("flite", "slt")
    with pytest.raises(ValueError, match="tts='festival:x'"):
        parse_tts_spec("festival:x")


def test_speech_in_text_and_speech_out(cascade):
    from deeptalk_common.tts import synthesize

    question = "What is the capital of France?"
    wav, sr = synthesize(question, engine="piper", voice="joe")
    req = Request(id="q1", audio=Audio(wav, sr), text="Answer in one short sentence.", output_modality="both",
                  options=GenerationOptions(max_new_tokens=40))
    (resp,) = cascade.generate([req])

    # The ASR leg heard the question; the LLM got the instruction, then the transcript.
    assert _norm(resp.extra["asr_transcript"]) == _norm(question)
    assert f"Answer in one short sentence.\n\n{resp.extra['asr_transcript']}<|im_end|>" in resp.prompt
    assert "paris" in resp.text.lower()
    # The speech channel says what the text channel says: Whisper on the cascade's own audio.
    assert resp.audio is not None and resp.audio.sample_rate == 22050 and resp.audio.duration > 1.0
    heard = cascade.transcriber(resp.audio)
    ref, hyp = _norm(resp.text), _norm(heard)
    assert jiwer.cer(ref, hyp) < 0.25, (ref, hyp)
    assert jiwer.process_words(ref, hyp).wer < 0.5, (ref, hyp)
    t = resp.timings
    assert 0 < t["asr_done"] < t["llm_first_token"] <= t["first_text"] <= t["first_sentence"] < t["first_audio"]
    assert t["first_audio"] <= t["total"]
    assert resp.tokens["completion"] > 0
    assert resp.extra["stop_reason"] == "eos"      # the LLM leg's: a short answer ends by itself


def test_stream_speaks_first_sentence_before_the_llm_is_done(cascade):
    req = Request(id="s1", text="Tell me about Paris in three short sentences.", output_modality="both",
                  options=GenerationOptions(max_new_tokens=48))
    events = list(cascade.stream(req))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "end" and "asr_done" not in [e.name for e in events]  # text in: no ASR
    played = [e for e in events if e.kind in ("text", "audio")]
    assert [e.t for e in played] == sorted(e.t for e in played)
    marks = {e.name: e.t for e in events if e.kind == "mark"}
    audio = [e for e in events if e.kind == "audio"]
    # One chunk per spoken sentence, each after the text that completed it.
    assert len(audio) == len(events[-1].info["spoken_sentences"]) >= 2  # the end says what it spoke
    for ev in audio:
        before = "".join(e.text for e in events[: events.index(ev)] if e.kind == "text")
        assert any(c in before for c in ".!?\n")
    # Pipelining: the first sentence is audible before the LLM has produced its last token.
    assert marks["llm_first_token"] < audio[0].t < marks["llm_last_token"]
    assert all(a.audio.sample_rate == 22050 and len(a.audio.samples) > 0 for a in audio)


def test_text_only_output_skips_tts(cascade):
    (resp,) = cascade.generate([Request(id="t1", text="Say yes.", options=GenerationOptions(max_new_tokens=8))])
    assert resp.text and resp.audio is None and "first_sentence" not in resp.timings


def test_silent_input_gets_no_answer_and_empty_input_is_an_error(cascade):
    # Silence is a legitimate input (the silent-audio control): the ASR hears nothing, so the
    # cascade says nothing — scored as no answer, never a guess and never a pipeline failure.
    (resp,) = cascade.generate([Request(id="quiet", audio=Audio(np.zeros(16000, np.float32), 16000),
                                        output_modality="both")])
    assert not resp.text and resp.audio is None and "asr_done" in resp.timings
    with pytest.raises(UnsupportedRequest, match="request none: neither text nor audio"):
        cascade.generate([Request(id="none", text="  ")])


def test_a_batch_answers_what_each_request_gets_alone(cascade):
    # The runner hands greedy requests over in batches: one batched ASR pass, the LLM's batched
    # greedy path, then TTS per sentence. Each answer must be the one the request gets alone.
    from deeptalk_common.tts import synthesize

    def spoken(q):
        return Audio(*synthesize(q, engine="piper", voice="joe"))

    opts = GenerationOptions(max_new_tokens=40)
    reqs = [
        Request(id="s2t", audio=spoken("What is the capital of France?"), output_modality="text", options=opts),
        Request(id="s2s", audio=spoken("What colour is the sky?"), text="Answer in one sentence.",
                output_modality="both", options=opts),
        Request(id="t2s", text="Tell me about Paris in two short sentences.", output_modality="speech", options=opts),
        Request(id="t2t", text="Say yes.", options=opts),
        Request(id="quiet", audio=Audio(np.zeros(16000, np.float32), 16000), output_modality="both", options=opts),
    ]
    batched = cascade.generate(reqs)
    for r, b in zip(reqs, batched):
        (a,) = cascade.generate([r])
        assert b.extra.pop("batch") == len(reqs)
        b.extra.pop("reused")
        assert (b.text, b.prompt, b.tokens, b.extra) == (a.text, a.prompt, a.tokens, a.extra), r.id
        assert (a.audio is None) == (b.audio is None), r.id
        if a.audio is not None:  # the same sentences; Piper draws its noise from each sentence's phonemes
            assert b.audio.sample_rate == a.audio.sample_rate
            assert np.array_equal(b.audio.samples, a.audio.samples), r.id
    assert batched[2].text is None and len(batched[2].extra["spoken_sentences"]) >= 2
    assert batched[4].extra["asr_transcript"] == "" and batched[4].audio is None
    assert batched[0].timings["asr_done"] <= batched[0].timings["llm_done"] <= batched[0].timings["total"]


def test_a_batch_computes_each_leg_input_once_and_streaming_never_reuses(cascade, monkeypatch):
    # S2S asks the transcripts and LLM requests S2T asked; T2S the requests of T2T. Within a run
    # each distinct leg input is computed once, the answers those a fresh cascade gives.
    from deeptalk_common.tts import synthesize

    opts = GenerationOptions(max_new_tokens=24)
    question = Audio(*synthesize("What is the largest planet in the solar system?", engine="piper", voice="joe"))
    s2t = [Request(id="q1", audio=question, output_modality="text", options=opts),
           Request(id="q2", text="Name a colour.", output_modality="text", options=opts)]
    s2s = [Request(id="q1", audio=Audio(question.samples.copy(), question.sample_rate), output_modality="both",
                   options=opts),
           Request(id="q2", text="Name a colour.", output_modality="speech", options=opts)]
    cascade.heard_memo.__init__()
    cascade.answer_memo.__init__()
    cascade.spoken_memo.__init__()
    first = cascade.generate(s2t)
    assert [r.extra["reused"] for r in first] == [[], []]
    calls = {"asr": 0, "llm": 0, "tts": 0, "heard_streaming": 0}
    for leg, obj, name in (("asr", cascade.transcriber, "transcribe_many"), ("llm", cascade.llm, "generate"),
                           ("tts", cascade, "speak"), ("heard_streaming", cascade, "_hear")):
        real = getattr(obj, name)

        def counted(*a, _real=real, _leg=leg, **k):
            calls[_leg] += 1
            return _real(*a, **k)

        monkeypatch.setattr(obj, name, counted)
    second = cascade.generate(s2s)
    assert calls["asr"] == 0 and calls["llm"] == 0 and calls["tts"] >= 2  # new sentences are spoken
    assert [r.extra["reused"] for r in second] == [["asr", "llm"], ["llm"]]
    assert [r.text for r in second] == [first[0].text, None]
    assert second[0].extra["asr_transcript"] == first[0].extra["asr_transcript"]
    again = cascade.generate(s2s)  # the sentences too, now: the same audio
    assert calls["tts"] == len(second[0].extra["spoken_sentences"]) + len(second[1].extra["spoken_sentences"])
    assert all("tts" in r.extra["reused"] for r in again)
    assert all(np.array_equal(a.audio.samples, b.audio.samples) for a, b in zip(second, again))
    streamed = cascade.generate([s2s[0]])[0]  # one request: stream(), which the latency task times
    assert calls["heard_streaming"] == 1 and "reused" not in streamed.extra
    assert streamed.text == second[0].text


def test_fingerprint_and_describe(cascade):
    d = cascade.describe()
    identity = d["tts"].pop("identity")
    assert d["asr"]["model"] == "tiny.en" and d["tts"] == {"engine": "piper", "voice": "joe", "cache": False}
    assert identity.startswith("piper-tts ") and "voice " in identity
    assert d["llm"]["path"] == "smollm2-135m-instruct"
    assert cascade.fingerprint().startswith("cascade:")


def test_a_new_tts_engine_version_is_a_new_cascade_fingerprint(cascade, monkeypatch):
    before = cascade.fingerprint()
    monkeypatch.setattr(cascade._tts, "engine_identity", lambda engine, voice: "piper-tts 9.9; another voice")
    assert cascade.fingerprint() != before   # its cached answers were spoken by the old engine


def test_text_path_scores_like_its_llm(cascade):
    # Retention of a cascade is the retention of its LLM leg: the same numbers, not a copy.
    pairs = [("The capital of France is", " Paris"), ("Two plus two is", " four")]
    assert cascade.capabilities.loglikelihood
    assert cascade.loglikelihood(pairs) == cascade.llm.loglikelihood(pairs)
    assert cascade.loglikelihood_rolling(["Water boils at one hundred degrees."]) == \
        cascade.llm.loglikelihood_rolling(["Water boils at one hundred degrees."])


def test_lm_eval_contexts_reach_the_llm_untemplated(cascade):
    # generate_until tasks (BBH) must see the few-shot context as base_llm does, not inside a chat turn
    opts = GenerationOptions(max_new_tokens=4, stop=("\n",))
    context = "Q: Is the sky blue?\nA: Yes\n\nQ: Is grass red?\nA:"
    (resp,) = cascade.generate([Request(id="bbh", text=context, options=opts, raw_prompt=True)])
    (direct,) = cascade.llm.generate([Request(id="bbh", text=context, options=opts, raw_prompt=True)])
    assert resp.prompt == context == direct.prompt and resp.text == direct.text
    (chat,) = cascade.generate([Request(id="chat", text=context, options=opts)])
    assert chat.prompt != context and "<|im_start|>" in chat.prompt

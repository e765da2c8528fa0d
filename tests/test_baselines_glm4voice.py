"""GLM4Voice adapter against a protocol-faithful local server (no GLM weights here)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from glm4voice_fake_server import (
    FakeGLM4VoiceServer,
    FrameSpeechTokenizer,
    ToneDecoder,
    WordTokenizer,
    speech_tokens_for,
)

from deeptalk_eval.api import Audio, GenerationOptions, Request, Turn, UnsupportedRequest
from deeptalk_eval.models.glm4voice import GLM4Voice, GLM4VoiceConfigError
from deeptalk_eval.models.glm4voice_protocol import (
    DECODER_BLOCK_SIZES,
    GLM4VoiceServerError,
    build_prompt,
    build_request_body,
    interleave,
    parse_stream_line,
    route_token,
    speech_tokens_to_text,
)

QUESTION = "What is the capital of France?"
# Long enough for several 13/26 blocks and more than one decoder block (25, then 50).
ANSWER = ("The capital of France is Paris, a city on the river Seine that has been the seat "
          "of French government for many centuries and is known for its museums.")


@pytest.fixture()
def tokenizer():
    return WordTokenizer()


@pytest.fixture()
def server(tokenizer):
    with FakeGLM4VoiceServer(tokenizer, answers={QUESTION: ANSWER}, token_delay_s=0.001) as srv:
        yield srv


def make_model(server, tokenizer, **kw):
    return GLM4Voice(url=server.url, text_tokenizer=tokenizer, speech_tokenizer=FrameSpeechTokenizer(),
                     decoder=kw.pop("decoder", ToneDecoder()), **kw)


# -- the protocol, checked against the strings of THUDM/GLM-4-Voice web_demo.py ---------------

def test_prompt_matches_web_demo_for_text_input():
    expected = ("<|system|>\nUser will provide you with a text instruction. Do it step by step. First, think "
                "about the instruction and respond in a interleaved manner, with 13 text token followed by 26 "
                "audio tokens.<|user|>\nHi there<|assistant|>streaming_transcription\n")
    assert build_prompt("Hi there", speech_input=False) == expected


def test_prompt_matches_web_demo_for_speech_input():
    user = speech_tokens_to_text([3, 0, 16383])
    assert user == "<|begin_of_audio|><|audio_3|><|audio_0|><|audio_16383|><|end_of_audio|>"
    prompt = build_prompt(user, speech_input=True)
    # The demo's speech-input system prompt ends with a space before <|user|>.
    assert prompt.startswith("<|system|>\nUser will provide you with a speech instruction.")
    assert "26 audio tokens. <|user|>\n<|begin_of_audio|><|audio_3|>" in prompt
    assert prompt.endswith("<|end_of_audio|><|assistant|>streaming_transcription\n")
    # A continuing conversation keeps its first system turn only.
    again = build_prompt("next", speech_input=False, previous=prompt + "answer ")
    assert again.count("<|system|>") == 1 and again.endswith("<|user|>\nnext<|assistant|>streaming_transcription\n")


def test_request_body_and_stream_lines():
    body = json.loads(build_request_body("p", 0.2, 0.8, 2000))
    assert body == {"prompt": "p", "temperature": 0.2, "top_p": 0.8, "max_new_tokens": 2000}
    assert parse_stream_line(b'{"token_id": 151, "error_code": 0}\n') == 151
    assert parse_stream_line(b"  \n") is None
    with pytest.raises(GLM4VoiceServerError, match="error_code=1.*Server Error"):
        parse_stream_line(b'{"text": "Server Error", "error_code": 1}', 7)
    with pytest.raises(GLM4VoiceServerError, match="line 3 is not JSON"):
        parse_stream_line(b"<html>", 3)
    with pytest.raises(GLM4VoiceServerError, match="no valid token_id"):
        parse_stream_line(b'{"error_code": 0}', 1)


def test_interleave_and_route():
    text, speech = list(range(100, 130)), list(range(60))
    ids = interleave(text, speech, audio_offset=1000)
    assert ids[:13] == text[:13] and ids[13:39] == [1000 + s for s in speech[:26]]
    assert ids[39:52] == text[13:26]
    routed = [route_token(i, 1000, end_token_id=7) for i in ids]
    assert [r.value for r in routed if r.kind == "text"] == text
    assert [r.value for r in routed if r.kind == "audio"] == speech
    assert route_token(7, 1000, 7).kind == "end"


# -- the adapter against the local server ------------------------------------------------------

def test_text_in_text_and_speech_out(server, tokenizer):
    decoder = ToneDecoder()
    model = make_model(server, tokenizer, decoder=decoder)
    req = Request(id="q1", text=QUESTION, output_modality="both",
                  options=GenerationOptions(max_new_tokens=2000, temperature=0.2, top_p=0.8))
    (resp,) = model.generate([req])

    assert resp.text == ANSWER
    assert resp.prompt == build_prompt(QUESTION, speech_input=False)
    assert server.received == [{"prompt": resp.prompt, "temperature": 0.2, "top_p": 0.8, "max_new_tokens": 2000}]
    speech = speech_tokens_for(ANSWER)
    assert resp.tokens == {"text": len(tokenizer.encode(ANSWER)), "audio": len(speech)}
    # Every speech token decoded once, in order, in the demo's block schedule.
    assert [t for block, _ in decoder.blocks for t in block] == speech
    sizes = [len(b) for b, _ in decoder.blocks]
    assert sizes[0] == DECODER_BLOCK_SIZES[0] and sizes[1] == DECODER_BLOCK_SIZES[1]
    assert [fin for _, fin in decoder.blocks] == [False] * (len(sizes) - 1) + [True]
    assert resp.audio.sample_rate == 22050
    assert len(resp.audio.samples) == len(speech) * ToneDecoder.samples_per_token
    # Timings: the first text token arrives before the first speech token (13 text come first),
    # and the first audio chunk waits for 25 speech tokens to be decoded.
    t = resp.timings
    assert 0 < t["first_text_token"] <= t["first_text"] < t["first_audio_token"] < t["first_audio"] <= t["total"]
    assert resp.extra["ended"] is True and resp.extra["decoded_blocks"] == sizes


def test_stream_events_are_ordered_and_timed(server, tokenizer):
    model = make_model(server, tokenizer)
    events = list(model.stream(Request(id="s", text=QUESTION, output_modality="both",
                                       options=GenerationOptions(max_new_tokens=2000))))
    times = [e.t for e in events]
    assert times == sorted(times)
    kinds = [e.kind if e.kind != "mark" else e.name for e in events]
    assert kinds[0] == "first_text_token" and kinds[1] == "text" and kinds[-1] == "end"
    assert kinds.index("first_audio_token") < kinds.index("audio") < kinds.index("end_of_turn")
    # Text arrives in deltas (one per word here), interleaved with audio chunks.
    assert sum(k == "text" for k in kinds) == len(tokenizer.encode(ANSWER))
    assert kinds.index("audio") < len(kinds) - 1 - kinds[::-1].index("text")


def test_speech_in_uses_speech_tokens(server, tokenizer):
    sr = 16000
    audio = Audio(np.sin(np.linspace(0, 400, sr)).astype(np.float32) * np.linspace(0, 1, sr), sr)
    tokens = FrameSpeechTokenizer()(audio)
    user = speech_tokens_to_text(tokens)
    server.answers[user] = "Paris."
    model = make_model(server, tokenizer)
    (resp,) = model.generate([Request(id="a1", audio=audio, output_modality="text")])
    assert len(tokens) == 12  # 1 s at 12.5 Hz
    assert resp.prompt == build_prompt(user, speech_input=True)
    assert resp.text == "Paris."
    assert resp.audio is None  # text asked: speech tokens counted, not decoded
    assert resp.tokens["audio"] == len(speech_tokens_for("Paris."))
    assert "speech_tokens_done" in resp.timings


def test_history_is_replayed_in_demo_format(server, tokenizer):
    model = make_model(server, tokenizer)
    req = Request(id="h", text=QUESTION, output_modality="text",
                  history=[Turn("user", text="Hello"), Turn("assistant", text="Hi, how can I help?")])
    (resp,) = model.generate([req])
    first = build_prompt("Hello", speech_input=False)
    assert resp.prompt == build_prompt(QUESTION, speech_input=False, previous=first + "Hi, how can I help?")
    assert resp.text == ANSWER


def test_tokens_after_end_tag_are_ignored(tokenizer):
    with FakeGLM4VoiceServer(tokenizer, default_answer="Yes.", tokens_after_end=20) as srv:
        (resp,) = make_model(srv, tokenizer).generate([Request(id="e", text="Is it?", output_modality="both")])
    assert resp.text == "Yes." and resp.tokens == {"text": 1, "audio": 4}


def test_max_new_tokens_cut_still_decodes_last_block(tokenizer):
    decoder = ToneDecoder()
    with FakeGLM4VoiceServer(tokenizer, default_answer=ANSWER) as srv:
        model = make_model(srv, tokenizer, decoder=decoder)
        (resp,) = model.generate([Request(id="m", text="?", output_modality="both",
                                          options=GenerationOptions(max_new_tokens=30))])
    assert resp.tokens == {"text": 13, "audio": 17}
    assert resp.extra["ended"] is False and decoder.blocks == [(speech_tokens_for(ANSWER)[:17], True)]


# -- clear errors -------------------------------------------------------------------------------

def test_missing_url_says_where_to_set_it():
    with pytest.raises(GLM4VoiceConfigError, match=r"url=http://HOST:10000.*docs/baselines.md"):
        GLM4Voice()


def test_missing_parts_say_what_and_where(server):
    model = GLM4Voice(url=server.url)
    with pytest.raises(GLM4VoiceConfigError, match="model_path="):
        model.generate([Request(id="x", text="hi")])
    model = GLM4Voice(url=server.url, model_path="/nowhere")
    with pytest.raises(GLM4VoiceConfigError, match="trust_remote_code=true"):
        model.generate([Request(id="x", text="hi")])
    model = GLM4Voice(url=server.url, text_tokenizer=WordTokenizer())
    with pytest.raises(GLM4VoiceConfigError, match="flow_path=.*repo_path="):
        model.generate([Request(id="x", text="hi", output_modality="speech")])
    with pytest.raises(GLM4VoiceConfigError, match="tokenizer_path="):
        model.generate([Request(id="x", audio=Audio(np.zeros(1600), 16000))])
    model = GLM4Voice(url=server.url, text_tokenizer=WordTokenizer(), flow_path="/x")
    with pytest.raises(GLM4VoiceConfigError, match="repo_path=/path/to/GLM-4-Voice"):
        model.generate([Request(id="x", text="hi", output_modality="speech")])
    from deeptalk_eval.model_args import bind_model_args

    with pytest.raises(ValueError, match="trust_remote_code='maybe' is not a boolean"):  # read by its declared type
        bind_model_args(GLM4Voice, {"url": server.url, "trust_remote_code": "maybe"}, "glm4voice")


def test_unreachable_server_and_server_error(tokenizer):
    with FakeGLM4VoiceServer(tokenizer) as srv:
        url = srv.url
    with pytest.raises(GLM4VoiceServerError, match=f"cannot reach .*{url}/generate_stream"):
        GLM4Voice(url=url, text_tokenizer=tokenizer).generate([Request(id="x", text="hi")])
    with FakeGLM4VoiceServer(tokenizer, default_answer=ANSWER, fail_after=5) as srv:
        with pytest.raises(GLM4VoiceServerError, match="error_code=1"):
            make_model(srv, tokenizer).generate([Request(id="x", text="hi")])


def test_unsupported_requests_are_refused(server, tokenizer):
    model = make_model(server, tokenizer)
    with pytest.raises(UnsupportedRequest, match="stop strings"):
        model.generate([Request(id="x", text="hi", options=GenerationOptions(stop=("\n",)))])
    with pytest.raises(UnsupportedRequest, match="request y: .*not both"):
        model.generate([Request(id="y", text="hi", audio=Audio(np.ones(1600) * 0.1, 16000))])
    with pytest.raises(UnsupportedRequest, match="request z: neither text nor audio"):
        model.generate([Request(id="z")])
    assert server.received == []  # refused before anything was sent


def test_fingerprint_changes_with_args(server, tokenizer):
    a = GLM4Voice(url=server.url, text_tokenizer=tokenizer, temperature=0.2)
    b = GLM4Voice(url=server.url, text_tokenizer=tokenizer, temperature=0.3)
    assert a.fingerprint() != b.fingerprint() and a.fingerprint() == GLM4Voice(
        url=server.url, text_tokenizer=tokenizer, temperature=0.2).fingerprint()
    assert a.describe()["server"] == server.url + "/generate_stream"


def test_system_policy():
    req = Request(id="p", text="hi", system="Answer in one word.")
    tok = WordTokenizer()
    with FakeGLM4VoiceServer(tok) as srv:
        demo = GLM4Voice(url=srv.url, text_tokenizer=tok)
        (resp,) = demo.generate([req])
        assert resp.prompt == build_prompt("hi", speech_input=False)
        assert resp.extra["system_not_sent"] == "Answer in one word."
        task = GLM4Voice(url=srv.url, text_tokenizer=tok, system="task")
        assert task.build_prompt(req).startswith("<|system|>\nAnswer in one word.<|user|>\nhi")
        both = GLM4Voice(url=srv.url, text_tokenizer=tok, system="demo+task")
        assert "26 audio tokens. Answer in one word.<|user|>" in both.build_prompt(req)
    with pytest.raises(ValueError, match="system='mine'"):
        GLM4Voice(url="http://127.0.0.1:1", system="mine")


def test_cli_runs_glm4voice_through_the_harness(cli, test_tasks, tmp_path):
    """The adapter inside the real runner: a generate task and a streamed (timed) task."""
    model = f"{Path(__file__).parent / 'glm4voice_fake_server.py'}:GLM4VoiceOnFakeServer"
    code, out, err = cli("--model-path", model, "--model-args", "token_delay_s=0.002", "--include-path", test_tasks,
                         "--tasks", "echo_qa,echo_stream", "--limit", "5", "--log-samples",
                         "--output-dir", tmp_path, "--no-progress")
    assert code == 0, err
    (res_file,) = tmp_path.glob("*/*.json")
    r = json.loads(res_file.read_text())
    for task in ("echo_qa", "echo_stream"):
        m = r["results"][task]
        # The fake server echoes the question: q03 says "rome" where the gold answer is Madrid.
        assert m["samples"] == 5 and m["failed"] == 0 and m["exact_match"] == pytest.approx(4 / 5), task
    assert r["results"]["echo_stream"]["ttft"] > 0
    recs = [json.loads(x) for x in (res_file.parent / r["samples_files"]["echo_qa"]).read_text().splitlines()]
    assert recs[0]["output"]["prompt"] == build_prompt("paris", speech_input=False)
    assert r["model_info"]["server"].endswith("/generate_stream")

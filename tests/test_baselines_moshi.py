"""The moshi adapter on a tiny random checkpoint of transformers' MoshiForConditionalGeneration
with Mimi (tests/tiny_speech_models.py): the full-duplex prompt, the answer window cut after
the user's audio, audio in at any rate, Mimi's 24 kHz audio out with the inner-monologue
text, and runs through the real runner with its response cache. Random weights answer
nonsense: protocol and shapes are checked, never scores."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
from tiny_speech_models import SPOKEN_QA_TASK, tone, write_spoken_qa_task

from deeptalk_eval.api import Audio, GenerationOptions, Request, Turn, UnsupportedRequest
from deeptalk_eval.errors import UsageError

ANSWER_S = 1.0  # 13 frames of 80 ms


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, one_torch_thread):
    from tiny_speech_models import build_moshi

    return build_moshi(tmp_path_factory.mktemp("moshi"))


@pytest.fixture(scope="module")
def moshi(checkpoint):
    from deeptalk_eval.models.moshi import Moshi

    return Moshi(path=str(checkpoint), answer_seconds=ANSWER_S)


def test_capabilities_and_defaults(moshi):
    caps = moshi.capabilities
    assert caps.audio_in and not caps.text_in and caps.audio_out and caps.text_out
    assert not caps.streaming and not caps.loglikelihood
    d = moshi.describe()
    assert d["dtype"] == "float32" and d["device"] == "cpu" and d["sample_rate"] == 24000 and d["frame_rate"] == 12.5
    assert d["answer_frames"] == 13 and d["full_duplex"] is True and "inner monologue" in d["text_channel"]
    assert d["streaming"] is False and d["max_batch_size"] == 1
    with pytest.raises(NotImplementedError):
        moshi.loglikelihood([("a", "b")])


@pytest.mark.parametrize("rate", [8000, 44100])
def test_answer_window_follows_the_user_audio(moshi, rate):
    user = tone(1.3, rate)  # 1.3 s: 17 frames of 80 ms once resampled to 24 kHz and padded
    (r,) = moshi.generate([Request("q", audio=user, output_modality="both", system="Answer in one word.")])
    prompt_frames = math.ceil(round(1.3 * 24000) / 1920)
    assert r.tokens["prompt_frames"] == r.extra["prompt_frames"] == prompt_frames == 17
    w = r.extra["answer_window"]
    assert w["starts_at_s"] == pytest.approx(prompt_frames * 0.08) and w["frames"] == 13
    # audio: Mimi's 24 kHz, the N generated frames less the one the codebook delay costs
    assert r.audio.sample_rate == 24000 and r.audio.samples.dtype == np.float32 and r.audio.samples.ndim == 1
    assert r.audio.samples.size == (13 - 1) * 1920 and np.isfinite(r.audio.samples).all()
    # text: the inner monologue over the window (one token per generated frame)
    assert isinstance(r.text, str) and r.text == r.extra["inner_monologue"] and r.tokens["text"] == 13
    assert r.extra["text_channel"] == "inner_monologue" and r.extra["system_not_sent"] == "Answer in one word."
    assert r.timings["first_audio"] == r.timings["first_text"] <= r.timings["total"]
    assert r.extra["streaming"] is False and r.extra["first_audio_is_whole_answer"] is True


def test_prompt_streams_are_aligned_and_the_cut_is_after_the_prompt(moshi, monkeypatch):
    """What reaches transformers' generate: P user frames, P silent Moshi frames, P text pads;
    what comes back: the decoded prompt frames are dropped, the rest is the answer."""
    seen = {}
    real = moshi.model.generate

    def spy(**kw):
        seen.update(kw)
        out = real(**kw)
        seen["full_samples"] = out.audio_sequences.shape[-1]
        return out

    monkeypatch.setattr(moshi.model, "generate", spy)
    # 0.5 s -> 7 frames of 80 ms, the last one partly silence
    (r,) = moshi.generate([Request("q", audio=tone(0.5, 16000), output_modality="both")])
    user, mine, ids = seen["user_input_values"], seen["moshi_input_values"], seen["input_ids"]
    assert user.shape == mine.shape == (1, 1, 7 * 1920) and not mine.any()
    assert ids.tolist() == [[moshi.pad_id] * 7] and seen["max_new_tokens"] == 13
    assert seen["full_samples"] - r.audio.samples.size == 7 * 1920


def test_seeded_and_cacheable(moshi):
    a, b = (moshi.generate([Request("q", audio=tone(0.7, 22050), output_modality="both")])[0] for _ in range(2))
    assert a.text == b.text and np.array_equal(a.audio.samples, b.audio.samples)
    c = moshi.generate([Request("q", audio=tone(0.7, 22050), options=GenerationOptions(seed=7))])[0]
    assert c.extra["seed"] == 7 and a.extra["seed"] == 0


def test_sampling_follows_the_request_when_asked(checkpoint):
    from deeptalk_eval.models.moshi import Moshi

    m = Moshi(path=str(checkpoint), answer_seconds=0.5, sampling="request")
    hot = Request("q", audio=tone(0.4, 16000), output_modality="both",
                  options=GenerationOptions(temperature=1.0, seed=3))
    a, b = m.generate([hot]), m.generate([hot])
    assert a[0].text == b[0].text and np.array_equal(a[0].audio.samples, b[0].audio.samples)  # seeded
    assert a[0].extra["sampling"] == "request" and a[0].extra["seed"] == 3


def test_refusals_are_clear(moshi, checkpoint):
    from deeptalk_eval.models.moshi import Moshi

    with pytest.raises(UnsupportedRequest, match="speech only"):
        moshi.generate([Request("t", text="hello")])
    with pytest.raises(UnsupportedRequest, match="no turns"):
        moshi.generate([Request("h", audio=tone(0.3, 16000), history=[Turn("user", text="hi")])])
    with pytest.raises(UnsupportedRequest, match="empty audio"):
        moshi.generate([Request("e", audio=Audio(np.zeros(0, np.float32), 16000))])
    with pytest.raises(UnsupportedRequest, match="exceed Moshi's 3000 frames"):
        moshi.generate([Request("l", audio=tone(240.0, 1000))])
    with pytest.raises(UsageError, match="no such folder"):
        Moshi(path="./no/such/moshi")
    with pytest.raises(UsageError, match="answer_seconds"):
        Moshi(path=str(checkpoint), answer_seconds=0)
    with pytest.raises(UsageError, match="sampling='greedy'"):
        Moshi(path=str(checkpoint), sampling="greedy")


RATES = {"q1": 8000, "q2": 44100, "q3": 16000}


def test_runner_end_to_end_with_cache(cli, checkpoint, tmp_path):
    tasks = write_spoken_qa_task(tmp_path / "tasks", RATES, seconds=0.5, step=0.3)
    (tasks / "tiny_text_qa.yaml").write_text(SPOKEN_QA_TASK.replace("task: tiny_spoken_qa", "task: tiny_text_qa").replace(
        "  modality: speech\n  audio_field: wav", "  modality: text\n  text_field: id"))
    args = ["--model", "moshi", "--model-args", f"path={checkpoint},answer_seconds={ANSWER_S}", "--include-path", tasks,
            "--tasks", "tiny_spoken_qa,tiny_text_qa", "--log-samples", "--output-dir", tmp_path / "out", "--no-progress"]
    code, _, err = cli(*args)
    assert code == 0, err
    (res,) = (tmp_path / "out").glob("*/*.json")
    r = json.loads(res.read_text())
    m = r["results"]["tiny_spoken_qa"]
    assert m["samples"] == 3 and m["failed"] == 0 and 0 <= m["acc"] <= 1
    assert r["status"]["tiny_text_qa"] == "skipped: capability text_in missing"
    recs = [json.loads(x) for x in (res.parent / r["samples_files"]["tiny_spoken_qa"]).read_text().splitlines()]
    for rec in recs:
        samples, sr = sf.read(res.parent / rec["output"]["audio"]["path"], dtype="float32")
        assert sr == 24000 and samples.size == 12 * 1920
        assert rec["output"]["extra"]["answer_window"]["frames"] == 13
    assert r["run"]["model_calls"] == 3 and r["run"]["cache_hits"] == 0
    code, _, err = cli(*args)
    assert code == 0, err
    second = max((tmp_path / "out").glob("*/*.json"), key=lambda p: p.stat().st_mtime_ns)
    r2 = json.loads(second.read_text())
    assert second != res and r2["run"]["model_calls"] == 0 and r2["run"]["cache_hits"] == 3
    assert r2["results"]["tiny_spoken_qa"]["acc"] == m["acc"]

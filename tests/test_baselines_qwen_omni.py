"""The qwen2_5_omni and qwen3_omni adapters on tiny random checkpoints of transformers' real
classes (tests/tiny_speech_models.py): prompts, audio in at any rate, the talker's 24 kHz audio
out, text scoring on the thinker, and runs through the real runner with its response cache.
Random weights answer nonsense: protocol and shapes are checked, never scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tiny_speech_models import SPOKEN_QA_TASK, tone, write_spoken_qa_task

from deeptalk_eval.api import Audio, GenerationOptions, Request, Turn, UnsupportedRequest
from deeptalk_eval.errors import UsageError

FAMILIES = {"qwen2_5_omni": "build_qwen25_omni", "qwen3_omni": "build_qwen3_omni"}
TALKER_STEPS = 8  # keeps the talker (and its waveform) short on a CPU


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, one_torch_thread):
    import tiny_speech_models

    root = tmp_path_factory.mktemp("qwen_omni")
    return {name: getattr(tiny_speech_models, build)(root / name) for name, build in FAMILIES.items()}


@pytest.fixture(scope="module")
def adapters(checkpoints):
    from deeptalk_eval.models.qwen_omni import Qwen3Omni, Qwen25Omni

    return {"qwen2_5_omni": Qwen25Omni(path=str(checkpoints["qwen2_5_omni"]), talker_max_new_tokens=TALKER_STEPS),
            "qwen3_omni": Qwen3Omni(path=str(checkpoints["qwen3_omni"]), talker_max_new_tokens=TALKER_STEPS)}


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_with_safe_defaults(adapters, family):
    m = adapters[family]
    d = m.describe()
    assert d["dtype"] == "float32" and d["device"] == "cpu"  # auto on a CPU machine
    assert m.trust_remote_code is False
    assert d["streaming"] is False and d["max_batch_size"] == 1 and d["output_sample_rate"] == 24000
    assert m.capabilities.loglikelihood and not m.capabilities.streaming and m.capabilities.audio_in
    assert d["input_sample_rate"] == 16000
    speakers = {"qwen2_5_omni": ["Chelsie", "Ethan"], "qwen3_omni": ["aiden", "chelsie", "ethan"]}[family]
    assert d["speakers"] == speakers and d["speaker"].lower() == {"qwen2_5_omni": "chelsie", "qwen3_omni": "ethan"}[family]
    assert len(d["checkpoint_digest"]) == 64


def test_prompts_follow_each_models_template_and_system_policy(adapters):
    q25, q3 = adapters["qwen2_5_omni"], adapters["qwen3_omni"]
    req = Request("p", audio=tone(1.0, 16000), text="Answer briefly.", system="Answer in one word.")
    extra: dict = {}
    prompt, inputs = q25.build_inputs(req, extra)
    # Qwen2.5-Omni speaks only under its own system prompt: the task's is recorded, not sent
    assert prompt.startswith("<|im_start|>system\nYou are Qwen, a virtual human developed by the Qwen Team")
    assert "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>Answer briefly.<|im_end|>\n<|im_start|>assistant\n" in prompt
    assert extra["system_not_sent"] == "Answer in one word." and "Answer in one word" not in prompt
    # the processor expands the audio placeholder to one token per 40 ms of audio
    n_audio = int((inputs["input_ids"] == q25.tokenizer.convert_tokens_to_ids("<|AUDIO|>")).sum())
    assert n_audio == 25
    extra = {}
    prompt3, _ = q3.build_inputs(req, extra)
    assert prompt3.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\n"
                              "<|audio_start|><|audio_pad|><|audio_end|>Answer briefly.")
    assert "system_not_sent" not in extra
    # history: user turns with their audio, assistant turns as text
    hist = Request("h", text="And then?", history=[Turn("user", audio=tone(0.5, 16000)), Turn("assistant", text="Paris.")])
    prompt, inputs = q3.build_inputs(hist, {})
    assert "<|im_start|>assistant\nParis.<|im_end|>\n<|im_start|>user\nAnd then?" in prompt
    assert inputs["input_features"].shape[0] == 1
    # an lm-eval context goes in untemplated
    raw, enc = q25.build_inputs(Request("r", text="Q: 2+2?\nA:", raw_prompt=True), {})
    assert raw == "Q: 2+2?\nA:" and enc["input_ids"][0].tolist() == q25.tokenizer("Q: 2+2?\nA:")["input_ids"]


@pytest.mark.parametrize("family", FAMILIES)
def test_audio_at_any_rate_is_resampled_for_the_feature_extractor(adapters, family):
    m = adapters[family]
    counts = []
    for rate in (8000, 16000, 44100):
        _, inputs = m.build_inputs(Request("r", audio=tone(1.0, rate)), {})
        counts.append(int(inputs["feature_attention_mask"].sum()))
    assert counts[0] == counts[1] == counts[2] == 100  # 1 s at 16 kHz: 100 mel frames whatever came in
    # the Whisper feature extractor keeps its chunk_length (30 s in this tiny one): the rest is cut, and said so
    extra: dict = {}
    _, inputs = m.build_inputs(Request("long", audio=tone(31.0, 8000)), extra)
    assert extra["input_truncated_s"] == pytest.approx(1.0) and int(inputs["feature_attention_mask"].sum()) == 3000


@pytest.mark.parametrize("family", FAMILIES)
def test_speech_in_both_out(adapters, family):
    m = adapters[family]
    (r,) = m.generate([Request("s", audio=tone(1.2, 44100), output_modality="both",
                               options=GenerationOptions(max_new_tokens=5))])
    assert isinstance(r.text, str) and r.text == r.extra["thinker_text"]
    assert 1 <= r.tokens["text"] <= 5 and r.tokens["prompt"] > 0
    assert r.audio is not None and r.audio.sample_rate == 24000
    assert isinstance(r.audio.samples, np.ndarray) and r.audio.samples.dtype == np.float32
    assert r.audio.samples.ndim == 1 and r.audio.samples.size > 0 and np.isfinite(r.audio.samples).all()
    if family == "qwen2_5_omni":  # BigVGAN: 240 samples per mel frame (100 frames a second at 24 kHz)
        assert r.audio.samples.size % 240 == 0
    assert r.extra["audio_seconds"] == pytest.approx(r.audio.duration, abs=1e-3)
    # not streamed: text and audio both arrive when generate returns; nothing is invented earlier
    assert r.timings["first_audio"] == r.timings["first_text"] <= r.timings["total"]
    assert r.timings["inputs_ready"] <= r.timings["first_audio"]
    assert r.extra["streaming"] is False and r.extra["first_audio_is_whole_answer"] is True
    # the same request again: the seeded talker says the same
    (again,) = m.generate([Request("s", audio=tone(1.2, 44100), output_modality="both",
                                   options=GenerationOptions(max_new_tokens=5))])
    assert again.text == r.text and np.array_equal(again.audio.samples, r.audio.samples)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_out_skips_the_talker_and_speech_out_keeps_the_text(adapters, family):
    m = adapters[family]
    t, s = m.generate([Request("t", text="Say hi.", options=GenerationOptions(max_new_tokens=4)),
                       Request("v", text="Say hi.", audio=tone(0.5, 8000), output_modality="speech",
                               options=GenerationOptions(max_new_tokens=4))])
    assert isinstance(t.text, str) and t.audio is None and "first_audio" not in t.timings
    assert s.text is None and isinstance(s.extra["thinker_text"], str) and s.audio.sample_rate == 24000


@pytest.mark.parametrize("family", FAMILIES)
def test_refusals_are_clear(adapters, family):
    m = adapters[family]
    with pytest.raises(UnsupportedRequest, match="empty audio"):
        m.generate([Request("e", audio=Audio(np.zeros(0, np.float32), 16000))])
    bad = tone(0.2, 16000)
    bad.samples[3] = np.nan
    with pytest.raises(UnsupportedRequest, match="NaN"):
        m.generate([Request("n", audio=bad)])
    with pytest.raises(UnsupportedRequest, match="stop strings"):
        m.generate([Request("st", text="hi", output_modality="both", options=GenerationOptions(stop=("\n",)))])
    with pytest.raises(UnsupportedRequest, match="neither text nor audio"):
        m.generate([Request("x")])


def test_speaker_and_setup_errors(checkpoints):
    from deeptalk_eval.models.qwen_omni import Qwen3Omni, Qwen25Omni

    with pytest.raises(UsageError, match=r"speaker='Nobody'.*\['Chelsie', 'Ethan'\]"):
        Qwen25Omni(path=str(checkpoints["qwen2_5_omni"]), speaker="Nobody")
    with pytest.raises(UsageError, match="system='mine'"):
        Qwen25Omni(path=str(checkpoints["qwen2_5_omni"]), system="mine")
    with pytest.raises(UsageError, match="path='/no/such/qwen': no such folder"):
        Qwen25Omni(path="/no/such/qwen")
    with pytest.raises(UsageError, match="dtype='float8'"):
        Qwen25Omni(path=str(checkpoints["qwen2_5_omni"]), dtype="float8")
    text_only = Qwen3Omni(path=str(checkpoints["qwen3_omni"]), speaker="CHELSIE", talker=False)
    assert text_only.speaker == "chelsie" and not hasattr(text_only.model, "talker")
    with pytest.raises(UsageError, match="talker=false"):
        text_only.generate([Request("v", text="hi", output_modality="speech")])


@pytest.mark.parametrize("family", FAMILIES)
def test_loglikelihood_on_the_thinker(adapters, family):
    m = adapters[family]
    pairs = [("The capital of France is", " Paris"), ("", "Hello world"), ("One two", " three four five")]
    res = m.loglikelihood(pairs)
    assert len(res) == 3 and all(lp < 0 and isinstance(g, bool) for lp, g in res)
    # batching (right padding over the thinker's multimodal rope) does not change a score
    alone = [m.loglikelihood([p])[0][0] for p in pairs]
    assert np.allclose([lp for lp, _ in res], alone, atol=1e-4)
    (roll,) = m.loglikelihood_rolling(["One two three four."])
    assert roll < 0


STREAM_TASK = SPOKEN_QA_TASK.replace("task: tiny_spoken_qa", "task: tiny_spoken_latency").replace(
    "output: both", "kind: stream\noutput: both").replace(
    "scorers:\n  - {name: qa_match, channel: text, args: {answers_field: answers}}\nmetrics:\n"
    "  - {name: acc, aggregation: mean, on_failure: zero}\n  - {name: no_answer, aggregation: mean, on_failure: one}\n",
    "scorers:\n  - {name: latency}\nmetrics:\n  - {name: ttfa, aggregation: p50, on_failure: exclude}\n")
RATES = {"q1": 8000, "q2": 44100, "q3": 16000, "q4": 24000}


def write_task(folder: Path) -> Path:
    write_spoken_qa_task(folder, RATES, seconds=0.6, step=0.2, system="Answer in one word.")
    (folder / "tiny_spoken_latency.yaml").write_text(STREAM_TASK)
    return folder


@pytest.mark.parametrize("family", FAMILIES)
def test_runner_end_to_end_with_cache(cli, checkpoints, family, tmp_path):
    tasks = write_task(tmp_path / "tasks")
    args = ["--model", family, "--model-args", f"path={checkpoints[family]},talker_max_new_tokens={TALKER_STEPS}",
            "--include-path", tasks, "--tasks", "tiny_spoken_qa,tiny_spoken_latency", "--log-samples",
            "--output-dir", tmp_path / "out", "--no-progress"]
    code, out, err = cli(*args)
    assert code == 0, err
    (res,) = (tmp_path / "out").glob("*/*.json")
    r = json.loads(res.read_text())
    m = r["results"]["tiny_spoken_qa"]
    assert m["samples"] == 4 and m["failed"] == 0 and 0 <= m["acc"] <= 1
    # the transformers API does not stream: the latency task is skipped, said so
    assert r["status"]["tiny_spoken_latency"] == "skipped: capability streaming missing"
    assert r["model_info"]["streaming"] is False and r["model_info"]["max_batch_size"] == 1
    recs = [json.loads(x) for x in (res.parent / r["samples_files"]["tiny_spoken_qa"]).read_text().splitlines()]
    assert [rec["id"] for rec in recs] == list(RATES)
    for rec in recs:
        assert rec["error"] is None and isinstance(rec["output"]["text"], str)
        samples, sr = sf.read(res.parent / rec["output"]["audio"]["path"], dtype="float32")
        assert sr == 24000 and samples.ndim == 1 and samples.size > 0
        assert rec["output"]["extra"]["streaming"] is False
    assert r["run"]["model_calls"] == 4 and r["run"]["cache_hits"] == 0
    # the same command again: every answer comes from the response cache, the figures repeat
    code, _, err = cli(*args)
    assert code == 0, err
    second = max((tmp_path / "out").glob("*/*.json"), key=lambda p: p.stat().st_mtime_ns)
    r2 = json.loads(second.read_text())
    assert second != res and r2["run"]["model_calls"] == 0 and r2["run"]["cache_hits"] == 4
    assert r2["results"]["tiny_spoken_qa"]["acc"] == m["acc"]


def test_lm_eval_bridge_runs_on_the_thinker(adapters):
    """What a `kind: lm_eval` retention task asks of a model, through the harness's lm-eval
    bridge: loglikelihoods and raw-prompt generation on the thinker, text only."""
    from lm_eval.api.instance import Instance

    from deeptalk_eval.lm_bridge import SpokenModelLM

    lm = SpokenModelLM(adapters["qwen2_5_omni"])
    ll = lm.loglikelihood([Instance("loglikelihood", {}, ("Q: Capital of France?\nA:", " Paris"), 0)])
    assert len(ll) == 1 and ll[0][0] < 0
    (gen,) = lm.generate_until([Instance("generate_until", {}, ("Q: 2+2?\nA:", {"until": ["\n"], "max_gen_toks": 3}), 0)])
    assert isinstance(gen, str) and "\n" not in gen

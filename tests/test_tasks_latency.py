"""The latency scorer on hand-made event logs, the harness-side clock of record_stream, and the
end event's info kept by both folds of a stream (collect_stream for generate, record_stream)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from deeptalk_eval.api import Audio, Response, StreamEvent, collect_stream
from deeptalk_eval.scoring.base import SampleView, ScoringContext, get_scorer
from deeptalk_eval.scoring.latency import latency_metrics, record_stream

SR = 1000  # 200 samples = 0.2 s per chunk keeps the arithmetic readable


def chunk(t, rms=0.1, n=200):
    return {"kind": "audio", "t_rel": t, "n_samples": n, "sr": SR, "rms": rms}


# hand-over at 0; encoder 0.1, prefill to 0.25, first codes at 0.4, first chunk (silent) 0.5,
# then chunks at 0.6 (due 0.7), 1.0 (due 0.9: a 0.1 s stall, playback resumes at 1.0),
# 1.1 (due 1.2), end at 1.3.
EVENTS = [
    {"kind": "mark", "t_rel": 0.1, "name": "encoder_done"},
    {"kind": "mark", "t_rel": 0.25, "name": "prefill_done"},
    {"kind": "text", "t_rel": 0.3, "n_chars": 4},
    {"kind": "mark", "t_rel": 0.4, "name": "first_codes_done"},
    chunk(0.5, rms=0.0),
    chunk(0.6),
    chunk(1.0),
    chunk(1.1),
    {"kind": "end", "t_rel": 1.3},
]


def test_hand_made_sequence():
    m = latency_metrics(EVENTS)
    assert m["ttft"] == pytest.approx(0.3)
    assert m["ttfa"] == pytest.approx(0.5)
    assert m["ttfa_nonsilent"] == pytest.approx(0.6)
    assert m["audio_duration"] == pytest.approx(0.8)
    assert m["gen_time"] == pytest.approx(1.3)
    assert m["rtf"] == pytest.approx(1.3 / 0.8)
    assert m["stalls"] == 1
    assert m["stall_time"] == pytest.approx(0.1)
    assert m["encoder"] == pytest.approx(0.1)
    assert m["prefill"] == pytest.approx(0.15)
    assert m["decode_first"] == pytest.approx(0.15)
    assert m["codec_first"] == pytest.approx(0.1)


def test_rebuffering_counts_one_slow_chunk_once():
    # The 2nd chunk is 1 s late; later chunks arrive on time relative to the resumed playback.
    ev = [chunk(0.0), chunk(1.2), chunk(1.3), chunk(1.5), {"kind": "end", "t_rel": 1.6}]
    m = latency_metrics(ev)
    assert m["stalls"] == 1 and m["stall_time"] == pytest.approx(1.0)
    # Faster than real time: no stalls at all.
    ev = [chunk(0.0), chunk(0.05), chunk(0.1), {"kind": "end", "t_rel": 0.1}]
    m = latency_metrics(ev)
    assert m["stalls"] == 0 and m["rtf"] == pytest.approx(0.1 / 0.6)


def test_text_only_and_missing_marks():
    m = latency_metrics([{"kind": "text", "t_rel": 0.2, "n_chars": 3}, {"kind": "end", "t_rel": 0.5}])
    assert m["ttft"] == pytest.approx(0.2)
    assert m["ttfa"] is None and m["rtf"] is None and m["stalls"] is None
    assert m["encoder"] is None and m["codec_first"] is None
    # All audio silent: TTFA exists, first non-silent audio does not.
    m = latency_metrics([chunk(0.3, rms=0.001), {"kind": "end", "t_rel": 0.4}])
    assert m["ttfa"] == pytest.approx(0.3) and m["ttfa_nonsilent"] is None


def test_adapter_mark_names_are_understood():
    # the cascade's names: ASR done, first LLM token, first sentence handed to TTS
    ev = [{"kind": "mark", "t_rel": 0.2, "name": "asr_done"},
          {"kind": "mark", "t_rel": 0.5, "name": "llm_first_token"},
          {"kind": "mark", "t_rel": 0.9, "name": "first_sentence"},
          chunk(1.2), {"kind": "end", "t_rel": 1.4}]
    m = latency_metrics(ev)
    assert m["encoder"] == pytest.approx(0.2) and m["prefill"] == pytest.approx(0.3)
    assert m["decode_first"] == pytest.approx(0.4) and m["codec_first"] == pytest.approx(0.3)


def test_bad_events_are_named():
    with pytest.raises(ValueError, match="event #0"):
        latency_metrics([{"t_rel": 0.1}])
    with pytest.raises(ValueError, match="audio event #1"):
        latency_metrics([chunk(0.1), {"kind": "audio", "t_rel": 0.2}])


def _sample(doc, extra):
    return SampleView(doc=doc, response=Response(extra=extra), channel="text", channel_text=None)


def test_scorer_splits_cold_and_warm():
    import deeptalk_eval.scoring.latency  # noqa: F401  (registers the scorer)

    score = get_scorer("latency")
    ctx = ScoringContext()
    cold = score(_sample({"id": "a", "cold": True}, {"events": EVENTS}), ctx)
    assert cold["cold_ttfa"] == pytest.approx(0.5) and cold["ttfa"] is None
    warm = score(_sample({"id": "b"}, {"events": EVENTS}), ctx)
    assert warm["ttfa"] == pytest.approx(0.5) and warm["cold_ttfa"] is None
    # The runner's send order wins over the doc flag.
    warm2 = score(_sample({"id": "a", "cold": True}, {"events": EVENTS, "request_index": 3, "load_average": 1.5}), ctx)
    assert warm2["ttfa"] == pytest.approx(0.5)
    assert warm2["load_average"] == 1.5 and warm["load_average"] is None  # as the runner recorded it, or unknown
    assert ctx.info["latency"]["silence_rms"] > 0
    with pytest.raises(ValueError, match="extra\\['events'\\]"):
        score(_sample({"id": "c"}, {}), ctx)


def test_record_stream_against_an_independent_clock():
    """The harness stamps events on receipt; a model that lies in ev.t cannot fool it.
    time.perf_counter (a different clock from the monotonic one used inside) checks it."""
    sr = 8000
    wall: dict[str, float] = {}

    def slow_model():
        time.sleep(0.05)
        yield StreamEvent("mark", time.monotonic(), name="prefill_done")
        time.sleep(0.10)
        wall["text"] = time.perf_counter()
        yield StreamEvent("text", 0.0, text="Paris")  # lying stamp
        time.sleep(0.10)
        wall["audio"] = time.perf_counter()
        yield StreamEvent("audio", 0.0, audio=Audio(np.full(800, 0.2, np.float32), sr))
        time.sleep(0.05)
        yield StreamEvent("audio", 0.0, audio=Audio(np.full(800, 0.2, np.float32), sr))
        yield StreamEvent("end", 0.0)

    p0 = time.perf_counter()
    resp = record_stream(slow_model(), start=time.monotonic())
    m = latency_metrics(resp.extra["events"])
    assert m["ttft"] == pytest.approx(wall["text"] - p0, abs=0.01)
    assert m["ttfa"] == pytest.approx(wall["audio"] - p0, abs=0.01)
    assert m["ttfa"] >= 0.25 - 0.01
    assert m["audio_duration"] == pytest.approx(0.2)
    assert m["stalls"] == 0  # the second chunk came 0.05 s after the first, inside its 0.1 s
    assert resp.text == "Paris" and resp.audio.samples.size == 1600
    assert resp.timings["ttfa"] == pytest.approx(m["ttfa"])


def test_latency_task_marks_exactly_one_cold_doc():
    from deeptalk_eval.task_config import load_task
    from deeptalk_eval.task_docs import load_docs

    cfg = load_task(Path(__file__).resolve().parents[1] / "tasks" / "latency" / "latency_spoken.yaml")
    docs = load_docs(cfg)
    assert cfg.kind == "stream" and len(docs) >= 20
    assert [d["cold"] for d in docs].count(True) == 1 and docs[0]["cold"] is True


def _answer_with_end_info():
    yield StreamEvent("text", time.monotonic(), text="Hi")
    yield StreamEvent("end", time.monotonic(), info={"prompt": "USER: hi", "tokens": {"prompt": 3, "completion": 1},
                                                     "stop_reason": "eos"})


def test_both_folds_keep_what_the_end_event_knows():
    for resp in (collect_stream(_answer_with_end_info()), record_stream(_answer_with_end_info(), time.monotonic())):
        assert resp.text == "Hi" and resp.prompt == "USER: hi" and resp.tokens == {"prompt": 3, "completion": 1}
        assert resp.extra["stop_reason"] == "eos"
    assert [e["kind"] for e in record_stream(_answer_with_end_info(), time.monotonic()).extra["events"]] == \
        ["text", "end"]


def test_latency_samples_log_the_end_info(cli, scripted, test_tasks, tmp_path):
    code, _, err = cli("--model-path", scripted, "--include-path", test_tasks, "--tasks", "echo_stream", "--limit", "2",
                       "--log-samples", "--output-dir", tmp_path, "--no-progress")
    assert code == 0, err
    (results,) = tmp_path.glob("*/*.json")
    r = json.loads(results.read_text())
    (log,) = [results.parent / f for f in r["samples_files"].values()]
    out = json.loads(log.read_text().splitlines()[0])["output"]
    assert out["prompt"].startswith("USER: ") and out["tokens"]["text"] >= 1
    assert out["extra"]["stop_reason"] == "end_of_text" and out["extra"]["events"][-1]["kind"] == "end"
    assert out["extra"]["load_average"] >= 0  # the machine's load while it was timed

"""The latency task bounds its spoken answers in decoding steps (generation: max_speech_steps),
and the bound reaches the deeptalk adapter's StreamConfig."""
from __future__ import annotations

from pathlib import Path

import pytest

from deeptalk_eval.api import GenerationOptions, Request
from deeptalk_eval.cache import request_key
from deeptalk_eval.task_config import load_task

LATENCY = Path(__file__).resolve().parents[1] / "tasks" / "latency" / "latency_spoken.yaml"


def _adapter_config(cap: int, request: Request):
    """DeepTalkAdapter._config on a bare adapter: no checkpoint needed for the mapping."""
    from deeptalk.generate import StreamConfig
    from deeptalk_eval.models.deeptalk import DeepTalkAdapter

    m = object.__new__(DeepTalkAdapter)
    m.stream_config = StreamConfig(max_speech_steps=cap)
    return DeepTalkAdapter._config(m, request)


def test_latency_task_bounds_spoken_answers():
    cfg = load_task(LATENCY)
    assert cfg.version == 2
    assert cfg.generation.max_speech_steps == 160 and cfg.generation.max_new_tokens == 48
    assert "160 decoding steps" in cfg.description
    # (160 - 8 delayed codebooks) frames at 21.5 Hz: ~7 s of audio, enough for RTF over many chunks
    assert 6.0 <= (160 - 8) / 21.533203125 <= 8.0


def test_the_bound_reaches_the_adapter_stream_config():
    opts = load_task(LATENCY).generation
    req = Request("q", text="What is a baby lion called?", output_modality="speech", options=opts)
    c = _adapter_config(400, req)
    assert c.max_speech_steps == 160 and c.max_new_tokens == 48 and c.temperature == 0.0
    assert _adapter_config(100, req).max_speech_steps == 100  # a lower model cap still wins
    assert _adapter_config(400, Request("q", text="hi")).max_speech_steps == 400  # unset: the model's cap


def test_unset_bound_keeps_request_keys():
    # tasks without the option keep their cached responses: the key's options are unchanged
    assert "max_speech_steps" not in GenerationOptions().to_dict()
    req = Request("q", text="hi")
    assert request_key("m", "t", req) == request_key("m", "t", Request("q", text="hi",
                                                                       options=GenerationOptions(max_speech_steps=None)))
    assert request_key("m", "t", req) != request_key("m", "t", Request("q", text="hi",
                                                                       options=GenerationOptions(max_speech_steps=160)))


@pytest.mark.parametrize("bad", [0, -3, 2.5, "160", True])
def test_bad_bound_is_refused(bad):
    with pytest.raises(ValueError, match="max_speech_steps"):
        GenerationOptions.from_dict({"max_speech_steps": bad})

"""The shipped reference checkpoint: small, a delta that keeps the base LLM's text experts,
loadable offline, and answering on both paths."""
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REF = Path(__file__).resolve().parents[1] / "checkpoints" / "reference"


def test_size_and_layout():
    total = sum(f.stat().st_size for f in REF.iterdir())
    assert total <= 64 * 2**20, f"{total / 2**20:.1f} MB"
    assert not (REF / "model.safetensors").exists() and not (REF / "tokenizer.model").exists()
    for name in ("delta.json", "delta.safetensors", "config.json", "speech_encoder.safetensors", "assignment.json",
                 "modality_load.png", "training.json", "recipe.yaml"):
        assert (REF / name).is_file(), name


def test_text_experts_are_the_base_llms_own():
    config = json.loads((REF / "config.json").read_text())
    kinds = json.loads((REF / "delta.json").read_text())["tensors"]
    assert config["routing_mode"] == "modality" and config["base_model"] == "smollm2-135m-instruct"
    first_moe = config["first_k_dense_layers"]
    for i, speech in enumerate(config["speech_experts"]):
        layer = first_moe + i
        for e in range(config["num_routed_experts"]):
            kind = kinds[f"model.layers.{layer}.mlp.experts.{e}.up_proj.weight"]
            assert (kind == "base") == (e not in speech), (layer, e, kind)
    stages = json.loads((REF / "training.json").read_text())
    assert set(stages) == {"stage-1", "stage-assign", "stage-2.1", "stage-2.2", "stage-3"}
    assert all(s["done"] for s in stages.values())


@pytest.fixture(scope="module")
def bundle():
    from deeptalk.checkpoint import load_checkpoint

    return load_checkpoint(REF)


def test_loads_and_answers_text_and_speech(bundle):
    from deeptalk.generate import SpeechGenerator, StreamConfig

    assert bundle.info["stage"] == "3" and bundle.model.config.routing_mode == "modality"
    tok = bundle.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = bundle.model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert answer.strip(), "empty text answer"
    # a spoken answer streams audio chunks at the codec's rate
    gen = SpeechGenerator(bundle.model, tok, bundle.encoder, bundle.codec)
    events = list(gen.stream(gen.prompt(text="Say hello.", speak=True), output="speech",
                             cfg=StreamConfig(max_speech_steps=24)))
    audio = [e for e in events if e.kind == "audio"]
    assert audio and all(e.sample_rate == bundle.codec.sample_rate for e in audio)
    assert sum(len(e.audio) for e in audio) > 0 and events[-1].kind == "end"

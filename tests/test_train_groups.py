"""What each training stage unfreezes: the paper's schedule, recipe overrides, and clear errors."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from deeptalk.training.param_groups import set_trainable, stage_train_groups
from deeptalk.upcycle import upcycle


def dense_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=200, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def make(split=True, dense_layers=1):
    model = upcycle(dense_llama(), num_routed_experts=6, num_shared_experts=2, top_k=2, calibrate_tokens=0,
                    first_k_dense_layers=dense_layers, num_codebooks=2, codebook_size=8)
    if split and model.moe_layers:
        model.set_modality_map([[0, 1]] * model.config.num_moe_layers)
    return model, SimpleNamespace(projector=nn.Linear(4, 48), reads_as_text=False)


def trainable(model, enc):
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return names, any(p.requires_grad for p in enc.projector.parameters())


def expert_names(names, moe_layer, experts):
    return {n for n in names if any(f"layers.{moe_layer}.mlp.experts.{e}." in n for e in experts)}


def test_default_stage_2_1_trains_speech_experts_and_audio_only():
    model, enc = make()
    assert set_trainable(model, enc, "2.1") == "masked"
    names, proj = trainable(model, enc)
    assert not proj
    assert expert_names(names, 1, [0, 1]) and not expert_names(names, 1, [2, 3, 4, 5])
    assert any(n.startswith("audio_head") for n in names) and any("audio_embed" in n for n in names)
    assert not any("shared_experts" in n or "router" in n or "self_attn" in n for n in names)
    assert all(m.trainable_modality == "speech" for m in model.moe_layers)


def test_recipe_override_trains_only_the_named_groups_under_the_stage_mask():
    model, enc = make()
    routing = set_trainable(model, enc, "2.2", {"train": ["shared_experts"]})
    names, proj = trainable(model, enc)
    assert routing == "masked" and all(m.trainable_modality == "text" for m in model.moe_layers)
    assert names and all("shared_experts" in n for n in names) and not proj
    set_trainable(model, enc, "3", {"train": ["speech_experts", "projector"]})
    names, proj = trainable(model, enc)
    assert proj and model.config.routing_mode == "all"
    assert expert_names(names, 1, [0, 1]) | expert_names(names, 2, [0, 1]) == names


def test_a_stage_can_train_under_the_inference_routing():
    model, enc = make()
    routing = set_trainable(model, enc, "2.1", {"routing": "modality"})
    names, _ = trainable(model, enc)
    assert routing == "modality" and all(m.trainable_modality is None for m in model.moe_layers)
    # only the stage's groups learn: the text experts stay frozen although text tokens reach them
    assert expert_names(names, 1, [0, 1]) and not expert_names(names, 1, [2, 3, 4, 5])
    assert set_trainable(model, enc, "3", {"routing": "masked"}) == "masked"
    assert all(m.trainable_modality == "speech" for m in model.moe_layers)
    with pytest.raises(ValueError, match="routing 'sideways'"):
        set_trainable(model, enc, "2.1", {"routing": "sideways"})
    unsplit, enc = make(split=False)
    with pytest.raises(ValueError, match="needs a model with speech experts"):
        set_trainable(unsplit, enc, "2.1", {"routing": "modality"})


def test_unsplit_models_train_all_experts_and_reject_groups():
    model, enc = make(split=False)
    assert stage_train_groups(model, "2.1") == ["experts", "audio"]
    set_trainable(model, enc, "2.1")
    names, _ = trainable(model, enc)
    assert expert_names(names, 1, range(6))
    with pytest.raises(ValueError, match="need a modality map"):
        stage_train_groups(model, "2.1", {"train": ["speech_experts"]})
    with pytest.raises(ValueError, match="unknown train group"):
        stage_train_groups(model, "2.1", {"train": ["attention"]})
    with pytest.raises(ValueError, match="not a training stage"):
        stage_train_groups(model, "assign")


def test_dense_model_trains_its_ffn_and_says_it_has_no_experts():
    model, enc = make(split=False, dense_layers=3)
    assert not model.moe_layers
    set_trainable(model, enc, "2.1", {"train": ["llm_ffn", "audio"]})
    names, _ = trainable(model, enc)
    assert {n for n in names if ".mlp." in n} == {n for n, _ in model.named_parameters() if ".mlp." in n}
    assert not any("self_attn" in n for n in names)
    with pytest.raises(ValueError, match="'experts' has no parameters"):
        set_trainable(model, enc, "2.1")

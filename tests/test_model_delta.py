"""Delta checkpoints over the base LLM: only changed tensors stored, exact round trip."""
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from deeptalk.delta import load_delta, save_delta
from deeptalk.upcycle import upcycle


def dense_llama(seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=200, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def base():
    return dense_llama(0)


@pytest.fixture
def trained(base):
    model = upcycle(base, num_routed_experts=6, num_shared_experts=2, top_k=2, calibrate_tokens=0,
                    num_codebooks=2, codebook_size=8)
    with torch.no_grad():  # what a training stage changes: one expert, one base embedding row, new tensors
        model.moe_layers[0].neuron_index.copy_(torch.randperm(96, generator=torch.Generator().manual_seed(1)))
        from deeptalk.upcycle import copy_from_dense

        copy_from_dense(model, base)  # a permuted layer must still rebuild from the base
        model.moe_layers[1].experts[3].up_proj.weight.add_(0.01)
        model.model.embed_tokens.weight[17].add_(0.01)
    return model


def test_delta_round_trip_exact(base, trained, tmp_path):
    meta = save_delta(trained, tmp_path, base, dtype=None)
    kinds = json.loads((tmp_path / "delta.json").read_text())["tensors"]
    assert kinds["model.layers.2.mlp.experts.3.up_proj.weight"] == "full"
    assert kinds["model.layers.2.mlp.experts.2.up_proj.weight"] == "base"
    assert kinds["model.layers.1.mlp.experts.0.down_proj.weight"] == "base"  # permuted, still derived
    assert kinds["model.layers.0.self_attn.q_proj.weight"] == "base"
    assert kinds["model.embed_tokens.weight"] == "rows"  # row 17 + the special-token rows
    assert kinds["model.layers.1.mlp.router.weight"] == "full"
    loaded = load_delta(tmp_path, base=base)
    state = loaded.state_dict()
    for name, t in trained.state_dict().items():
        assert torch.equal(t, state[name]), name
    ids = torch.randint(0, 200, (1, 9))
    torch.testing.assert_close(loaded(ids).logits, trained.eval()(ids).logits, atol=1e-6, rtol=0)
    full = sum(t.numel() * t.element_size() for t in trained.state_dict().values())
    assert meta["bytes"] < full / 3


def test_delta_bf16_and_wrong_base(base, trained, tmp_path):
    save_delta(trained, tmp_path, base)  # default: stored tensors in bf16
    loaded = load_delta(tmp_path, base=base)
    w = trained.moe_layers[1].experts[3].up_proj.weight
    torch.testing.assert_close(loaded.moe_layers[1].experts[3].up_proj.weight, w, atol=1e-2, rtol=1e-2)
    assert torch.equal(loaded.moe_layers[1].experts[2].up_proj.weight, trained.moe_layers[1].experts[2].up_proj.weight)
    with pytest.raises(ValueError, match="fingerprint"):
        load_delta(tmp_path, base=dense_llama(1))
    with pytest.raises(FileNotFoundError, match="not a deeptalk delta"):
        load_delta(tmp_path / "nothing", base=base)

"""Upcycling a dense Llama into the DeepTalk MoE: exactness, clustering, router calibration."""
import json
import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from deeptalk.upcycle import balanced_kmeans, config_from_dense, upcycle

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class CharTokenizer:
    """Bytes as tokens: enough to feed real text through a tiny random model."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [b % 120 + 1 for b in text.encode()]}


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=121, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def all_experts_on(model):
    for moe in model.moe_layers:
        moe.top_k = moe.num_experts
    return model


@pytest.mark.parametrize("calibrate", [0, 512])
def test_every_expert_active_reproduces_dense_logits(dense, calibrate):
    moe = upcycle(dense, num_routed_experts=6, num_shared_experts=2, top_k=2, calibrate_tokens=calibrate,
                  tokenizer=CharTokenizer(), calibration_text=["the quick brown fox jumps over the lazy dog. " * 20],
                  router_steps=20)
    assert moe.config.gate_mode == "unit"
    if calibrate:  # clustering really permuted the neurons, so exactness is not an accident of order
        assert not torch.equal(moe.moe_layers[0].neuron_index, torch.arange(96))
        assert sorted(moe.moe_layers[0].neuron_index.tolist()) == list(range(96))
    all_experts_on(moe)
    ids = torch.randint(0, 121, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = dense(ids).logits
        got = moe(ids, return_audio_logits=False).logits[..., :121]
    assert (got - want).abs().max() < 1e-4
    # top-2 of 6 drops experts: no longer exact (the test can fail)
    for m in moe.moe_layers:
        m.top_k = 2
    with torch.no_grad():
        assert (moe(ids, return_audio_logits=False).logits[..., :121] - want).abs().max() > 1e-4


def test_special_tokens_extend_vocabulary(dense):
    cfg = config_from_dense(dense.config, num_routed_experts=6, num_shared_experts=2, top_k=2, num_codebooks=2,
                            codebook_size=8)
    assert cfg.base_vocab_size == 121 and cfg.vocab_size == 121 + len(cfg.special_tokens)
    assert cfg.special_token_id("<|audio_in|>") == 121 and cfg.audio_vocab_size == 11
    with pytest.raises(ValueError, match="not divisible"):
        config_from_dense(dense.config, num_routed_experts=7, num_shared_experts=2)


def test_balanced_kmeans_equal_sizes_and_recovers_planted_groups():
    g = torch.Generator().manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(4, 32, generator=g), dim=1)
    feats = torch.nn.functional.normalize(centers.repeat_interleave(8, 0) + 0.05 * torch.randn(32, 32, generator=g), dim=1)
    assign = balanced_kmeans(feats, 4, seed=1)
    assert torch.bincount(assign).tolist() == [8, 8, 8, 8]
    for grp in range(4):  # every planted group lands in one cluster
        assert len(set(assign[grp * 8:(grp + 1) * 8].tolist())) == 1


def test_calibrated_router_beats_chance(dense):
    text = ["Routers learn which experts carry the most output for each token. " * 30]
    moe = upcycle(dense, num_routed_experts=6, num_shared_experts=2, top_k=2, calibrate_tokens=512,
                  tokenizer=CharTokenizer(), calibration_text=text, router_steps=60)
    recalls = [layer["topk_recall"] for layer in moe.upcycle_report["layers"]]
    assert len(recalls) == 2 and min(recalls) > 2 / 6  # random top-2 of 6 recalls 1/3 of the oracle experts


@pytest.mark.slow
def test_smollm2_every_expert_active_reproduces_dense_logits():
    from deeptalk_common.base_llm import load_base_llm

    dense, tok = load_base_llm()
    moe = all_experts_on(upcycle(dense, num_routed_experts=30, num_shared_experts=2, top_k=6, calibrate_tokens=0))
    ids = tok("The capital of France is Paris, and the capital of Germany is", return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (moe(ids, return_audio_logits=False).logits[..., :49152] - dense(ids).logits).abs().max()
    assert diff < 1e-4


def test_base_tokenizer_saves_without_the_gguf_copy(tmp_path):
    """The bundled base's tokenizer must not drag the 98 MB GGUF into every saved checkpoint."""
    from transformers import AutoTokenizer

    from deeptalk_common.base_llm import drop_gguf_copy, resolve_base

    src = Path(resolve_base("smollm2-135m-instruct"))
    assert not (src / "tokenizer.model").exists()
    tok = AutoTokenizer.from_pretrained(src)
    tok.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "tokenizer.model").exists()
    assert AutoTokenizer.from_pretrained(tmp_path / "saved")("Paris, <|im_end|>").input_ids == tok("Paris, <|im_end|>").input_ids
    # the rule removes only a GGUF copy, never a real sentencepiece vocabulary
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "tokenizer.model").write_bytes(b"GGUF" + bytes(8))
    (tmp_path / "spm").mkdir()
    (tmp_path / "spm" / "tokenizer.model").write_bytes(b"\n\x0e" + bytes(8))
    drop_gguf_copy(tmp_path / "gguf")
    drop_gguf_copy(tmp_path / "spm")
    assert not (tmp_path / "gguf" / "tokenizer.model").exists() and (tmp_path / "spm" / "tokenizer.model").exists()


def test_upcycled_cache_is_reused_and_rebuilt_when_its_key_changes(tmp_path):
    """A resumed training run loads the upcycled model from its cache instead of upcycling again."""
    from types import SimpleNamespace

    from deeptalk.training.build import build_base, upcycled_model
    from deeptalk.training.recipe import load_recipe

    recipe = load_recipe("tiny")
    codec = SimpleNamespace(num_codebooks=2, codebook_size=16)
    dense, tok, _ = build_base(recipe)
    built, tok_built = upcycled_model(recipe, dense, tok, codec, tmp_path / "upcycled")
    assert (tmp_path / "upcycled" / "upcycle_key.json").is_file()
    dense2, tok2, _ = build_base(recipe)
    loaded, tok_loaded = upcycled_model(recipe, dense2, tok2, codec, tmp_path / "upcycled")
    assert len(tok_loaded) == len(tok_built) and len(tok2) < len(tok_built)  # the cached tokenizer has the speech tokens
    ids = torch.tensor([tok_built("the cat sat on the mat")["input_ids"]])
    with torch.no_grad():
        a, b = built.eval()(ids).logits, loaded.eval()(ids).logits
        assert torch.equal(a, b)
    stamp = (tmp_path / "upcycled" / "model.safetensors").stat().st_mtime_ns
    upcycled_model(recipe, dense2, tok2, codec, tmp_path / "upcycled")
    assert (tmp_path / "upcycled" / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rewritten
    recipe["upcycle"] = {**recipe["upcycle"], "top_k": 3}
    other, _ = upcycled_model(recipe, build_base(recipe)[0], build_base(recipe)[1], codec, tmp_path / "upcycled")
    assert other.config.num_experts_per_tok == 3
    assert json.loads((tmp_path / "upcycled" / "upcycle_key.json").read_text())["upcycle"]["top_k"] == 3

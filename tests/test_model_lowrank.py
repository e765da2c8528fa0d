"""Low-rank training of the text experts (train group `text_experts_lowrank`) and the delta's
"lowrank" tensors: training starts at the base exactly, touches only the text experts'
factors, merges into rank-r changes, resumes after a kill, and ships as thin factors."""
import json
from types import SimpleNamespace

import pytest
import torch
from test_train_distill import batch, dense_llama, split_moe
from torch import nn
from torch.nn.utils import parametrize

from deeptalk.delta import load_delta, save_delta
from deeptalk.distill import text_kl
from deeptalk.lowrank import add_lowrank, lowrank_factors, lowrank_parameters
from deeptalk.training.examples import Example
from deeptalk.training.param_groups import set_trainable, stage_train_groups
from deeptalk.training.stage_loop import train_stage

RANK = 2


def expert_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".experts." in n or "shared" in n}


def test_factors_start_at_the_base_and_only_they_train():
    dense = dense_llama()
    model = split_moe(dense)
    ids, mask = batch([[5, 6, 7, 8, 9, 10]])
    before = model(input_ids=ids, attention_mask=mask).logits.detach()
    params = add_lowrank(model, RANK, seed=0)
    n_text = sum(1 for moe in model.moe_layers for e in range(6) if not moe.speech_group[e])
    assert len(params) == 2 * 3 * n_text and lowrank_parameters(model) == params
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, before, atol=0, rtol=0)
    encoder = SimpleNamespace(projector=nn.Linear(4, 48))
    set_trainable(model, encoder, "2.2", {"train": ["text_experts_lowrank"]})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith((".a", ".b")) and "parametrizations" in n for n in trainable)
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.endswith((".a", ".b")))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    with pytest.raises(ValueError, match="already carry"):
        add_lowrank(model, RANK, seed=0)


@pytest.mark.parametrize("scfg,msg", [({"train": ["text_experts", "text_experts_lowrank"]}, "not both")])
def test_full_and_lowrank_text_experts_exclude_each_other(scfg, msg):
    with pytest.raises(ValueError, match=msg):
        stage_train_groups(split_moe(dense_llama()), "2.2", scfg)


def test_lowrank_factors_find_the_planted_rank():
    g = torch.Generator().manual_seed(0)
    planted = torch.randn(48, 3, generator=g) @ torch.randn(3, 80, generator=g)
    u, v = lowrank_factors(planted, max_rank=10)
    assert u.shape == (48, 3) and v.shape == (3, 80)
    torch.testing.assert_close(u @ v, planted, atol=1e-4, rtol=1e-4)
    assert lowrank_factors(torch.randn(48, 80, generator=g), max_rank=10) is None  # full rank
    assert lowrank_factors(torch.zeros(4, 4), max_rank=2) is None
    assert lowrank_factors(torch.full((4, 4), float("nan")), max_rank=2) is None


def _stage(tmp_path, model, dense, examples, max_steps, resume=False):
    from accelerate import Accelerator

    encoder = SimpleNamespace(projector=nn.Linear(4, 48), config=SimpleNamespace(stride=1), whisper=nn.Identity())
    scfg = {"lr": 1e-2, "batch_size": 4, "max_steps": max_steps, "checkpoint_every": 6, "lowrank_rank": RANK,
            "train": ["text_experts_lowrank"], "distill": {"weight": 20.0}}
    return train_stage(Accelerator(cpu=True), "2.2", scfg, model, encoder, examples,
                       SimpleNamespace(pad_token_id=0, eos_token_id=0), tmp_path, seed=0, resume=resume, teacher=dense)


@pytest.fixture(scope="module")
def data():
    dense = dense_llama()
    ids, mask = batch([list(range(5 + i, 25 + i)) for i in range(4)])
    with torch.no_grad():
        greedy = dense(input_ids=ids).logits.argmax(-1)
    examples = [Example(ids=r.tolist(), labels=[-100] + g[:-1].tolist(), modality=[0] * len(r))
                for r, g in zip(ids, greedy)]
    return dense, ids, mask, examples


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    dense, ids, mask, examples = data
    model = split_moe(dense)
    start = expert_weights(model)
    with torch.no_grad():
        before, _ = text_kl(model(input_ids=ids, attention_mask=mask).logits, dense, ids, mask)
    info = _stage(tmp_path_factory.mktemp("lowrank"), model, dense, examples, max_steps=12)
    model.set_routing_mode("modality")
    model.eval()
    return model, start, float(before), info


def test_a_lowrank_stage_changes_text_experts_by_rank_r_and_moves_towards_the_base(data, trained):
    dense, ids, mask, _ = data
    model, start, before, info = trained
    text_matrices = [lin.weight for moe in model.moe_layers for e, ex in enumerate(moe.experts) if not moe.speech_group[e]
                     for lin in (ex.gate_proj, ex.up_proj, ex.down_proj)]
    assert info["lowrank_rank"] == RANK and info["trainable_params"] == sum(RANK * sum(w.shape) for w in text_matrices)
    assert lowrank_parameters(model) == []
    assert not any(parametrize.is_parametrized(m) for m in model.modules())  # merged: plain weights again
    assert set(expert_weights(model)) == set(start)
    speech = model.moe_layers[0].speech_group
    for name, w in expert_weights(model).items():
        layer = int(name.split(".")[2]) - model.config.first_k_dense_layers
        is_text_expert = ".experts." in name and not speech[int(name.split(".")[5])] and layer >= 0
        change = w - start[name]
        if is_text_expert:
            assert change.abs().max() > 0 and torch.linalg.matrix_rank(change) <= RANK, name
        else:
            assert torch.equal(w, start[name]), name  # speech and shared experts untouched
    with torch.no_grad():
        after, _ = text_kl(model(input_ids=ids, attention_mask=mask).logits, dense, ids, mask)
    assert float(after) < 0.8 * before


def test_a_killed_lowrank_stage_resumes_to_the_same_weights(data, trained, tmp_path, monkeypatch):
    from deeptalk.training import stage_loop

    dense, _, _, examples = data
    model = split_moe(dense)
    _stage(tmp_path, model, dense, examples, max_steps=6)  # "killed" after its step-6 checkpoint
    steps = []
    forward = stage_loop.Trainee.forward
    monkeypatch.setattr(stage_loop.Trainee, "forward", lambda self, b: steps.append(1) or forward(self, b))
    resumed = split_moe(dense)  # a fresh process: the previous stage's weights, then the state
    _stage(tmp_path, resumed, dense, examples, max_steps=12, resume=True)
    assert len(steps) == 6  # it went on from the checkpoint, with the factors it had saved
    for name, w in expert_weights(trained[0]).items():
        torch.testing.assert_close(expert_weights(resumed)[name], w, atol=1e-6, rtol=0)


def test_the_delta_stores_lowrank_changes_as_factors(data, trained, tmp_path):
    dense, ids, mask, _ = data
    model = trained[0]
    meta = save_delta(model, tmp_path / "bf16", dense)  # bf16: factors of the change
    kinds = json.loads((tmp_path / "bf16" / "delta.json").read_text())["tensors"]
    text_expert = f"model.layers.1.mlp.experts.{int((~model.moe_layers[0].speech_group).nonzero()[0])}.up_proj.weight"
    assert kinds[text_expert] == "lowrank" and meta["version"] == 2
    loaded = load_delta(tmp_path / "bf16", base=dense)
    loaded.set_routing_mode("modality")
    w = model.get_parameter(text_expert)
    err_factors = (loaded.get_parameter(text_expert) - w).abs().max()
    err_full_bf16 = (w.to(torch.bfloat16).float() - w).abs().max()
    assert err_factors < err_full_bf16  # the change is rounded, not the weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits,
                                   model(input_ids=ids, attention_mask=mask).logits, atol=5e-2, rtol=0)
    save_delta(model, tmp_path / "exact", dense, dtype=None)  # no rounding asked for: whole tensors, exactly
    assert json.loads((tmp_path / "exact" / "delta.json").read_text())["tensors"][text_expert] == "full"

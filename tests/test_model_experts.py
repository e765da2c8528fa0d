"""Adaptive modality-expert assignment: load measurement, top-k choice, ablations, outputs."""
import json

import pandas as pd
import pytest
import torch

from deeptalk import DeepTalkConfig, DeepTalkForCausalLM
from deeptalk.experts import assign_modality_experts, measure_modality_load, random_assignment, write_assignment


def test_assignment_on_planted_loads_picks_planted_experts():
    g = torch.Generator().manual_seed(0)
    rho_t = torch.rand(5, 12, generator=g) * 0.5
    rho_a = torch.rand(5, 12, generator=g) * 0.3
    planted = [[1, 4, 9], [0, 2, 11], [3, 5, 7], [6, 8, 10], [0, 1, 2]]
    for l, experts in enumerate(planted):
        rho_a[l, experts] = 0.9  # speech loves them ...
        rho_t[l, experts] = 0.05  # ... text hardly visits
    # a trap: heavy on speech but also heavy on text must not be chosen
    rho_a[0, 3], rho_t[0, 3] = 1.0, 0.95
    assert assign_modality_experts(rho_a, rho_t, 3) == planted
    with pytest.raises(ValueError, match="k=12"):
        assign_modality_experts(rho_a, rho_t, 12)


def test_random_assignment_is_seeded():
    a = random_assignment(4, 10, 3, seed=1)
    assert a == random_assignment(4, 10, 3, seed=1) != random_assignment(4, 10, 3, seed=2)
    assert all(len(set(row)) == 3 and all(0 <= e < 10 for e in row) for row in a)


@pytest.fixture
def planted_model():
    """Routers that send +v inputs to experts 0, 1 and -v inputs to experts 2, 3."""
    torch.manual_seed(0)
    cfg = DeepTalkConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_routed_experts=8, num_shared_experts=0, expert_intermediate_size=8, num_experts_per_tok=2)
    model = DeepTalkForCausalLM(cfg).eval()
    v = torch.nn.functional.normalize(torch.randn(32), dim=0)
    with torch.no_grad():
        for moe in model.moe_layers:
            w = torch.zeros(8, 32)
            w[0], w[1], w[2], w[3] = 10 * v, 9 * v, -10 * v, -9 * v
            moe.router.weight.copy_(w)
    return model, v


def test_measure_modality_load_counts_planted_routing(planted_model):
    model, v = planted_model
    def emb(sign):
        return (sign * 5 * v + 0.1 * torch.randn(2, 6, 32)).float()

    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0  # padded positions are not counted
    speech = [{"inputs_embeds": emb(1), "attention_mask": mask}]
    text = [{"inputs_embeds": emb(-1)}, {"inputs_embeds": emb(-1)}]
    rho_a, rho_t = measure_modality_load(model, speech, text)
    assert rho_a.shape == rho_t.shape == (2, 8)
    torch.testing.assert_close(rho_a.sum(1), torch.full((2,), 2.0))  # each token picks k = 2 experts
    torch.testing.assert_close(rho_a[:, :2], torch.ones(2, 2))
    torch.testing.assert_close(rho_t[:, 2:4], torch.ones(2, 2))
    assert assign_modality_experts(rho_a, rho_t, 2) == [[0, 1], [0, 1]]
    with pytest.raises(ValueError, match="no speech tokens"):
        measure_modality_load(model, [], text)


def test_write_assignment_outputs_and_config(planted_model, tmp_path):
    model, _ = planted_model
    rho_a = torch.rand(2, 8)
    rho_t = torch.rand(2, 8)
    chosen = assign_modality_experts(rho_a, rho_t, 3)
    record = write_assignment(model, chosen, tmp_path, rho_a, rho_t, method="adaptive", k=3)
    assert model.config.speech_experts == chosen == record["speech_experts"]
    assert json.loads((tmp_path / "assignment.json").read_text())["speech_experts"] == chosen
    table = pd.read_csv(tmp_path / "modality_load.csv")
    assert len(table) == 16 and table.speech_expert.sum() == 6
    assert (tmp_path / "modality_load.png").stat().st_size > 1000
    assert (tmp_path / "modality_load.safetensors").is_file()
    write_assignment(model, None, method="pure")  # pure MoE: no split
    assert model.config.speech_experts is None
    with pytest.raises(ValueError, match="speech_experts"):
        write_assignment(model, [[0]], method="adaptive")  # one layer given, two MoE layers exist


def test_measure_modality_load_with_its_own_top_k(planted_model):
    model, v = planted_model
    speech = [{"inputs_embeds": (5 * v + 0.1 * torch.randn(1, 4, 32)).float()}]
    text = [{"inputs_embeds": (-5 * v + 0.1 * torch.randn(1, 4, 32)).float()}]
    rho_a, _ = measure_modality_load(model, speech, text, top_k=1)
    torch.testing.assert_close(rho_a.sum(1), torch.ones(2))   # k = 1 while measuring ...
    assert rho_a[:, 0].tolist() == [1.0, 1.0]                  # ... the strongest planted expert
    assert [moe.top_k for moe in model.moe_layers] == [2, 2]  # and the model's k afterwards
    with pytest.raises(ValueError, match="top_k=8"):
        measure_modality_load(model, speech, text, top_k=8)


def test_speech_copies_leave_the_text_path_exact(tmp_path):
    """Copy mode: text tokens under modality routing (unit gates, top-k = every text expert)
    give the logits of the model before the split; the copies train apart from the originals."""
    from deeptalk.experts import add_speech_copies

    torch.manual_seed(0)
    cfg = DeepTalkConfig(vocab_size=64, hidden_size=32, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                         num_routed_experts=8, num_shared_experts=2, expert_intermediate_size=8, num_experts_per_tok=8,
                         gate_mode="unit")
    model = DeepTalkForCausalLM(cfg).eval()
    for moe in model.moe_layers:   # a permuted neuron map, as upcycling leaves it
        moe.neuron_index = torch.randperm(len(moe.neuron_index))
    ids = torch.randint(0, 64, (2, 7))
    before = model(input_ids=ids).logits
    chosen = [[1, 5], [0, 7]]
    speech = add_speech_copies(model, chosen)
    assert speech == [[8, 9], [8, 9]] and model.config.num_routed_experts == 10
    record = write_assignment(model, speech, tmp_path, torch.rand(2, 8), torch.rand(2, 8), k=2, copied_from=chosen,
                              copies_down_start="copied")
    model.set_routing_mode("modality")
    saved = json.loads((tmp_path / "assignment.json").read_text())
    assert record["copied_from"] == chosen and saved["speech_experts"] == speech
    assert saved["copies_down_start"] == "copied" and saved["copied_from"] == chosen
    marked = pd.read_csv(tmp_path / "modality_load.csv").query("speech_expert")
    assert sorted(zip(marked.moe_layer, marked.expert)) == [(0, 1), (0, 5), (1, 0), (1, 7)]
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=1e-5)
    for moe, ids_l in zip(model.moe_layers, chosen):
        n, w = 8, cfg.expert_intermediate_size
        for j, e in enumerate(ids_l):
            assert torch.equal(moe.experts[n + j].down_proj.weight, moe.experts[e].down_proj.weight)
            assert moe.experts[n + j].down_proj.weight.data_ptr() != moe.experts[e].down_proj.weight.data_ptr()
            assert torch.equal(moe.router.weight[n + j], moe.router.weight[e])
            shared = w * cfg.num_shared_experts
            assert torch.equal(moe.neuron_index[shared + (n + j) * w: shared + (n + j + 1) * w],
                               moe.neuron_index[shared + e * w: shared + (e + 1) * w])
    # a saved and reloaded model keeps the grown layers
    model.save_pretrained(tmp_path / "m")
    again = DeepTalkForCausalLM.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(again(input_ids=ids).logits, before, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="already has a modality map"):
        add_speech_copies(model, chosen)


def test_zeroed_copies_keep_a_spoken_answer_step_at_the_base_ffn():
    """Answer routing "both" (text top-k + every speech expert): with the copies' down
    projections at zero the step starts as the unsplit model; full copies would count the
    copied experts twice."""
    from deeptalk.experts import add_speech_copies
    from deeptalk.moe import ANSWER

    ids = torch.randint(0, 64, (1, 6))
    answer = torch.full((1, 6), ANSWER)
    outs = {}
    for zero in (True, False):
        torch.manual_seed(0)   # the model's config grows with the copies: a fresh one each time
        cfg = DeepTalkConfig(vocab_size=64, hidden_size=32, intermediate_size=80, num_hidden_layers=3,
                             num_attention_heads=4, num_routed_experts=8, num_shared_experts=2,
                             expert_intermediate_size=8, num_experts_per_tok=8, gate_mode="unit", answer_routing="both")
        model = DeepTalkForCausalLM(cfg).eval()
        before = model(input_ids=ids).logits
        model.set_modality_map(add_speech_copies(model, [[2, 3], [4, 5]], zero_down=zero))
        model.set_routing_mode("modality")
        outs[zero] = model(input_ids=ids, token_modality=answer).logits
        assert all(bool((m.experts[-1].down_proj.weight == 0).all()) == zero for m in model.moe_layers)
    torch.testing.assert_close(outs[True], before, rtol=0, atol=1e-5)
    assert not torch.allclose(outs[False], before, atol=1e-3)

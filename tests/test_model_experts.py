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

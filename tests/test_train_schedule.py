"""The learning rate over a stage: constant, or annealed linearly over its last steps."""
import pytest
import torch
from accelerate import Accelerator

from deeptalk.training.examples import Example
from deeptalk.training.stage_loop import decayed_lr, train_stage
from tests.test_train_groups import make


def test_constant_unless_asked_then_down_to_the_final_ratio_at_the_last_step():
    const = decayed_lr(1e-3, 10, 0, 0.1)
    assert [const(s) for s in range(10)] == [1e-3] * 10
    lr = decayed_lr(1e-3, 10, 4, 0.1)
    got = [lr(s) for s in range(10)]
    assert got[:6] == [1e-3] * 6
    assert got[6:] == pytest.approx([1e-3 * (1 - 0.9 * k / 4) for k in (1, 2, 3, 4)])
    assert got[-1] == pytest.approx(1e-4) and all(a > b for a, b in zip(got[5:], got[6:]))


@pytest.mark.parametrize("steps, ratio", [(-1, 0.1), (5, 1.5), (5, -0.1)])
def test_a_bad_schedule_is_named(steps, ratio):
    with pytest.raises(ValueError, match="lr_decay_steps must be >= 0 and lr_final_ratio in"):
        decayed_lr(1e-3, 10, steps, ratio)


def test_the_stage_loop_steps_with_the_scheduled_rate(tmp_path, monkeypatch):
    model, enc = make()
    enc.config = type("C", (), {"stride": 4})()
    seen = []
    step = torch.optim.AdamW.step

    def record(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    rows = [Example([3, 4, 5, 6], [3, 4, 5, 6], [0] * 4) for _ in range(8)]
    tok = type("T", (), {"pad_token_id": 0, "eos_token_id": 0})()
    info = train_stage(Accelerator(cpu=True), "2.2", {"lr": 1e-2, "batch_size": 2, "max_steps": 5, "lr_decay_steps": 2,
                                                      "lr_final_ratio": 0.5, "train": ["shared_experts"]},
                       model, enc, rows, tok, tmp_path, seed=0, resume=False)
    assert seen == pytest.approx([1e-2, 1e-2, 1e-2, 0.75e-2, 0.5e-2])
    assert info["lr_decay_steps"] == 2 and info["lr_final_ratio"] == 0.5


def test_a_batch_that_reaches_no_trained_part_is_an_idle_step_not_a_crash(tmp_path, monkeypatch):
    """Stage 3 on the speech experts under per-token routing: text-only turns never reach them."""
    model, enc = make()
    enc.config = type("C", (), {"stride": 4})()
    steps = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or step(self, *a, **k))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = [Example([3, 4, 5, 6], [3, 4, 5, 6], [0] * 4) for _ in range(4)]
    tok = type("T", (), {"pad_token_id": 0, "eos_token_id": 0})()
    info = train_stage(Accelerator(cpu=True), "3", {"lr": 1e-2, "batch_size": 2, "max_steps": 3, "routing": "modality",
                                                    "train": ["speech_experts"]},
                       model, enc, rows, tok, tmp_path, seed=0, resume=False)
    assert info["steps"] == 3 and info["idle_steps"] == 3 and not steps
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # the same turns train the shared experts: no idle step
    info = train_stage(Accelerator(cpu=True), "3", {"lr": 1e-2, "batch_size": 2, "max_steps": 3, "routing": "modality",
                                                    "train": ["shared_experts"]},
                       model, enc, rows, tok, tmp_path / "shared", seed=0, resume=False)
    assert info["idle_steps"] == 0 and len(steps) == 3

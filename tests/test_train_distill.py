"""Logit distillation from the dense base (a stage's `distill:`): the loss, which rows it
reads, and that a distilling stage moves the text path towards the base."""
import csv
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from deeptalk.distill import check_config, teachable_rows, text_kl
from deeptalk.training.examples import Example
from deeptalk.training.stage_loop import train_stage
from deeptalk.upcycle import upcycle

VOCAB = 200


def dense_llama():
    torch.manual_seed(0)
    # large init: a peaked next-token distribution, so losing experts visibly changes it
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, initializer_range=0.2)
    return LlamaForCausalLM(cfg).eval()


def split_moe(dense):
    """The upcycled MoE with 2 of 6 experts per layer given to speech: its text path differs from the base."""
    model = upcycle(dense, num_routed_experts=6, num_shared_experts=2, top_k=6, calibrate_tokens=0,
                    first_k_dense_layers=1, num_codebooks=2, codebook_size=8)
    model.set_modality_map([[0, 1]] * model.config.num_moe_layers)
    model.set_routing_mode("modality")
    return model


def batch(rows):
    n = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def test_student_equal_to_teacher_has_zero_kl():
    dense = dense_llama()
    moe = upcycle(dense, num_routed_experts=6, num_shared_experts=2, top_k=6, calibrate_tokens=0,
                  first_k_dense_layers=1)  # every expert active: the dense model exactly
    ids, mask = batch([[5, 6, 7, 8, 9], [10, 11, 12]])
    with torch.no_grad():
        kl, n = text_kl(moe(input_ids=ids, attention_mask=mask).logits, dense, ids, mask)
    assert n == 8 and abs(float(kl)) < 1e-5


def test_only_base_vocabulary_rows_are_read():
    dense = dense_llama()
    ids, mask = batch([[5, 6, 7, 8], [5, VOCAB + 3, 7], [9, 9]])  # row 1 holds a protocol token
    assert teachable_rows(ids, mask, VOCAB).tolist() == [True, False, True]
    student = torch.randn(3, 4, VOCAB + 10, requires_grad=True)
    kl, n = text_kl(student, dense, ids, mask)
    assert n == 4 + 2 and float(kl.detach()) > 0
    kl.backward()
    assert student.grad[1].abs().sum() == 0  # the unteachable row gets no gradient
    assert student.grad[0, :, VOCAB:].abs().sum() == 0  # nor do the tokens the teacher lacks
    assert all(p.grad is None for p in dense.parameters())
    none, n0 = text_kl(student, dense, ids[1:2], mask[1:2])
    assert n0 == 0 and float(none.detach()) == 0


@pytest.mark.parametrize("bad,msg", [("yes", "mapping"), ({"weight": 1, "alpha": 2}, "unknown distill key"),
                                     ({"temperature": 0}, "> 0")])
def test_bad_distill_settings_are_named(bad, msg):
    with pytest.raises(ValueError, match=msg):
        check_config(bad, "2.2")


def _train_2_2(tmp_path, distill):
    """(KL to the base before, after) a short stage 2.2 on the shared experts, with or without distill."""
    from accelerate import Accelerator

    dense = dense_llama()
    model = split_moe(dense)
    ids, mask = batch([list(range(5 + i, 25 + i)) for i in range(4)])
    with torch.no_grad():
        before, _ = text_kl(model(input_ids=ids, attention_mask=mask).logits, dense, ids, mask)
        greedy = dense(input_ids=ids).logits.argmax(-1)  # labels: the base's greedy tokens (self-distilled)
    examples = [Example(ids=r.tolist(), labels=[-100] + g[:-1].tolist(), modality=[0] * len(r))
                for r, g in zip(ids, greedy)]
    encoder = SimpleNamespace(projector=nn.Linear(4, 48), config=SimpleNamespace(stride=1), whisper=nn.Identity())
    scfg = {"lr": 1e-3, "batch_size": 4, "max_steps": 12, "checkpoint_every": 100, "train": ["shared_experts"]}
    if distill:
        scfg["distill"] = distill
    args = (Accelerator(cpu=True), "2.2", scfg, model, encoder, examples, SimpleNamespace(pad_token_id=0, eos_token_id=0))
    if distill:
        with pytest.raises(ValueError, match="teacher"):
            train_stage(*args, tmp_path / "x", seed=0, resume=False)
    info = train_stage(*args, tmp_path, seed=0, resume=False, teacher=dense)
    model.set_routing_mode("modality")
    model.eval()
    with torch.no_grad():
        after, _ = text_kl(model(input_ids=ids, attention_mask=mask).logits, dense, ids, mask)
    return float(before), float(after), info


def test_a_distilling_stage_moves_the_text_path_towards_the_base(tmp_path):
    # weight 20: the KL term outweighs the one-hot labels of this near-uniform toy teacher
    before, after, info = _train_2_2(tmp_path / "kl", {"weight": 20.0})
    assert info["distill"] == {"weight": 20.0, "temperature": 1.0} and info["distill_examples"] == 4
    rows = list(csv.DictReader((tmp_path / "kl" / "loss.csv").open()))
    assert len(rows) == 12 and all(float(r["distill_loss"]) > 0 for r in rows)
    _, after_ce, info_ce = _train_2_2(tmp_path / "ce", None)
    assert info_ce["distill"] is None
    assert after < 0.7 * before and after < after_ce  # the KL term, not the labels, did it

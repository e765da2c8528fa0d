"""DeepTalk model on a tiny random config: routing modes, masking, aux loss, KV cache, save/load."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from deeptalk import DeepTalkConfig, DeepTalkForCausalLM
from deeptalk.moe import MoEFeedForward

SPEECH = [[0, 1, 2], [3, 4, 5], [1, 3, 5]]


def tiny_config(**kw):
    base = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, num_routed_experts=8, num_shared_experts=1, expert_intermediate_size=8,
                num_experts_per_tok=2, first_k_dense_layers=1, num_codebooks=3, codebook_size=16,
                speech_experts=SPEECH, routing_mode="masked", aux_loss_alpha=0.01)
    base.update(kw)
    return DeepTalkConfig(**base)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return DeepTalkForCausalLM(tiny_config())


def batch(cfg, b=2, t=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (b, t), generator=g)
    codes = torch.randint(0, cfg.audio_vocab_size, (b, cfg.num_codebooks, t), generator=g)
    return ids, codes


def test_shapes_and_losses(model):
    cfg = model.config
    ids, codes = batch(cfg)
    model.train()
    out = model(input_ids=ids, audio_codes=codes, labels=ids, audio_labels=codes)
    assert out.logits.shape == (2, 10, cfg.vocab_size)
    assert out.audio_logits.shape == (2, 10, cfg.num_codebooks, cfg.codebook_size + 3)
    assert out.aux_loss > 0
    torch.testing.assert_close(out.loss, out.text_loss + out.audio_loss + out.aux_loss)


@pytest.mark.parametrize("modality", ["speech", "text"])
def test_masked_stage_frozen_group_gets_no_tokens_and_no_gradient(model, modality):
    cfg = model.config
    model.train()
    model.set_trainable_modality(modality)
    # even with gradients enabled everywhere, the mask alone must keep the frozen group out
    for p in model.parameters():
        p.requires_grad_(True)
    ids, codes = batch(cfg)
    out = model(input_ids=ids, audio_codes=codes, labels=ids, audio_labels=codes)
    out.loss.backward()
    for l, moe in enumerate(model.moe_layers):
        group = set(SPEECH[l]) if modality == "speech" else set(range(8)) - set(SPEECH[l])
        assert set(moe.last_topk_idx.unique().tolist()) <= group
        for e, expert in enumerate(moe.experts):
            grads = [p.grad for p in expert.parameters()]
            if e in group:
                continue
            assert all(g is None or not g.any() for g in grads), f"frozen expert {e} of layer {l} got a gradient"
        assert any(p.grad is not None and p.grad.any() for e in group for p in moe.experts[e].parameters())


def test_set_trainable_modality_sets_requires_grad(model):
    model.set_trainable_modality("text")
    moe = model.moe_layers[0]
    assert [moe.experts[e].gate_proj.weight.requires_grad for e in range(8)] == [e not in SPEECH[0] for e in range(8)]
    names = {n for n, _ in model.modality_expert_parameters("speech")}
    assert "model.layers.1.mlp.experts.0.up_proj.weight" in names and "model.layers.1.mlp.experts.7.up_proj.weight" not in names
    model.set_trainable_modality(None)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="trainable modality"):
        model.set_trainable_modality("audio")


def test_modality_routing_sends_each_token_to_its_group():
    torch.manual_seed(0)
    m = DeepTalkForCausalLM(tiny_config(routing_mode="modality")).eval()
    ids, codes = batch(m.config)
    tm = torch.zeros_like(ids)
    tm[:, 5:] = 1
    m(input_ids=ids, audio_codes=codes, token_modality=tm)
    for l, moe in enumerate(m.moe_layers):
        idx = moe.last_topk_idx.view(2, 10, -1)
        speech = set(SPEECH[l])
        assert set(idx[:, 5:].unique().tolist()) - {-1} <= speech
        assert not set(idx[:, :5].unique().tolist()) & speech
        # each group routes with its own k: text tokens keep top_k beside speech tokens
        assert (idx[:, :5] >= 0).sum(-1).eq(m.config.num_experts_per_tok).all()


def test_a_text_token_routes_the_same_with_or_without_speech_beside_it():
    torch.manual_seed(0)
    cfg = tiny_config(routing_mode="modality", num_experts_per_tok=4)
    moe = MoEFeedForward(cfg, 0).eval()
    x = torch.randn(1, 6, cfg.hidden_size)
    mixed = torch.tensor([[0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        alone, _ = moe(x[:, :3], torch.zeros(1, 3, dtype=torch.long))
        both, _ = moe(x, mixed)
    torch.testing.assert_close(both[:, :3], alone, atol=1e-6, rtol=1e-5)


def test_a_spoken_answer_step_takes_its_text_top_k_and_every_speech_expert():
    """ANSWER (2) under modality routing = the text token's output + every speech expert's; with unit
    gates and top-k = every text expert, that is the whole FFN (every routed expert once)."""
    torch.manual_seed(0)
    cfg = tiny_config(routing_mode="modality", num_experts_per_tok=5, gate_mode="unit")
    moe = MoEFeedForward(cfg, 0).eval()
    x = torch.randn(1, 6, cfg.hidden_size)
    with torch.no_grad():
        as_text, _ = moe(x, torch.zeros(1, 6, dtype=torch.long))
        as_speech, _ = moe(x, torch.ones(1, 6, dtype=torch.long))
        as_answer, _ = moe(x, torch.full((1, 6), 2))
        mixed, _ = moe(x, torch.tensor([[0, 2, 1, 2, 0, 1]]))
        moe.routing_mode = "all"
        moe.top_k = 8
        whole, _ = moe(x, torch.zeros(1, 6, dtype=torch.long))
    shared = moe.shared_experts(x)
    torch.testing.assert_close(as_answer, as_text + as_speech - shared, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(as_answer, whole, atol=1e-5, rtol=1e-5)
    want = torch.stack([as_text[0, 0], as_answer[0, 1], as_speech[0, 2], as_answer[0, 3], as_text[0, 4],
                        as_speech[0, 5]])[None]
    torch.testing.assert_close(mixed, want, atol=1e-5, rtol=1e-5)
    # under the paper's routings an answer step is a token like any other
    moe.routing_mode, moe.top_k = "masked", 5
    moe.trainable_modality = "speech"
    with torch.no_grad():
        torch.testing.assert_close(moe(x, torch.full((1, 6), 2))[0], moe(x, torch.ones(1, 6, dtype=torch.long))[0])


def test_answer_routing_is_checked():
    with pytest.raises(ValueError, match="answer_routing"):
        tiny_config(answer_routing="text").validate()


@pytest.mark.parametrize("mode,k", [("all", 6), ("all", 2), ("masked", 8), ("modality", 5), ("modality", 2)])
def test_fused_experts_equal_the_gathered_loop(mode, k):
    """Dense-ish routing takes the fused path; outputs, aux loss and every gradient match the loop."""
    torch.manual_seed(0)
    cfg = tiny_config(routing_mode=mode, num_experts_per_tok=k)
    ref = MoEFeedForward(cfg, 1).train()
    ref.trainable_modality = "text" if mode == "masked" else None
    fused = MoEFeedForward(cfg, 1).train()
    fused.load_state_dict(ref.state_dict())
    fused.trainable_modality, ref.fused = ref.trainable_modality, False
    x = torch.randn(2, 7, cfg.hidden_size)
    tm = (torch.arange(7) >= 4).long().expand(2, -1)
    outs = []
    for m in (ref, fused):
        xi = x.clone().requires_grad_(True)
        y, aux = m(xi, tm)
        (y.square().sum() + aux).backward()
        outs.append((y, aux, xi.grad, {n: p.grad for n, p in m.named_parameters()}))
    (y0, a0, g0, p0), (y1, a1, g1, p1) = outs
    torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a1, a0)
    torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-5)
    for n in p0:
        if p0[n] is None:
            assert p1[n] is None or not p1[n].any(), n
        else:
            torch.testing.assert_close(p1[n], p0[n], atol=1e-5, rtol=1e-5, msg=n)


def test_fused_weight_cache_follows_in_place_updates():
    torch.manual_seed(0)
    cfg = tiny_config(routing_mode="all", num_experts_per_tok=8, speech_experts=None)
    moe = MoEFeedForward(cfg, 0).eval()
    x = torch.randn(1, 3, cfg.hidden_size)
    with torch.no_grad():
        before, _ = moe(x)
        moe.experts[2].up_proj.weight.mul_(2.0)  # what an optimizer step or load_state_dict does
        after, _ = moe(x)
        moe.fused = False
        loop, _ = moe(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, loop, atol=1e-5, rtol=1e-5)


def test_aux_loss_hand_made_case():
    moe = MoEFeedForward(tiny_config(num_experts_per_tok=1, num_routed_experts=4, speech_experts=None,
                                     routing_mode="all", aux_loss_alpha=0.001), 0)
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1]])
    topk = torch.tensor([[0], [1]])
    # f = E/(kT) * counts = 2 * [1, 1, 0, 0]; P = [0.4, 0.35, 0.15, 0.1]; sum f P = 1.5
    torch.testing.assert_close(moe.balance_loss(probs, topk, None, None), torch.tensor(0.0015))
    # a padded token is left out: T = 1, f = 4 * [1, 0, 0, 0], P = probs[0]
    torch.testing.assert_close(moe.balance_loss(probs, topk, None, torch.tensor([True, False])), torch.tensor(0.001 * 2.8))


@pytest.mark.parametrize("mode", ["all", "modality"])
def test_kv_cache_decoding_equals_full_forward(mode):
    torch.manual_seed(0)
    m = DeepTalkForCausalLM(tiny_config(routing_mode=mode)).eval()
    ids, codes = batch(m.config, t=12)
    tm = (torch.arange(12) >= 6).long().expand(2, -1)
    with torch.no_grad():
        full = m(input_ids=ids, audio_codes=codes, token_modality=tm, use_cache=False)
        out = m(input_ids=ids[:, :6], audio_codes=codes[..., :6], token_modality=tm[:, :6], use_cache=True)
        cache, steps, audio = out.past_key_values, [out.logits], [out.audio_logits]
        for t in range(6, 12):
            out = m(input_ids=ids[:, t:t + 1], audio_codes=codes[..., t:t + 1], token_modality=tm[:, t:t + 1],
                    past_key_values=cache, use_cache=True)
            steps.append(out.logits)
            audio.append(out.audio_logits)
    torch.testing.assert_close(torch.cat(steps, 1), full.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(audio, 1), full.audio_logits, atol=1e-5, rtol=1e-5)


def test_negative_audio_codes_add_nothing(model):
    ids, _ = batch(model.config)
    none = -torch.ones(2, 3, 10, dtype=torch.long)
    torch.testing.assert_close(model.embed_inputs(ids, audio_codes=none), model.embed_inputs(ids))


def test_speech_embeds_fill_audio_in_placeholders(model):
    cfg = model.config
    slot = cfg.vocab_size - 1  # a config without special tokens: declare one
    cfg2 = tiny_config(vocab_size=100, base_vocab_size=96, special_tokens=["<|audio_in|>", "a", "b", "c"])
    m = DeepTalkForCausalLM(cfg2)
    slot = cfg2.special_token_id("<|audio_in|>")
    ids = torch.tensor([[5, slot, slot, 7]])
    frames = torch.randn(1, 2, 32)
    emb = m.embed_inputs(ids, speech_embeds=frames)
    torch.testing.assert_close(emb[0, 1:3], frames[0])
    with pytest.raises(ValueError, match="placeholders"):
        m.embed_inputs(ids, speech_embeds=torch.randn(1, 3, 32))


def test_bad_inputs_name_the_problem(model):
    ids, codes = batch(model.config)
    with pytest.raises(ValueError, match="audio_codes must be"):
        model(input_ids=ids, audio_codes=codes[:, :2])
    with pytest.raises(ValueError, match="input_ids outside"):
        model(input_ids=ids + 1000)
    with pytest.raises(ValueError, match="token_modality"):
        model(input_ids=ids, token_modality=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="speech_experts has 2 layers"):
        tiny_config(speech_experts=[[0], [1]])
    with pytest.raises(ValueError, match="routing_mode"):
        tiny_config(speech_experts=None, routing_mode="masked")


def test_save_load_round_trip_identical_logits(model, tmp_path):
    model.eval()
    model.set_modality_map([[7], [6], [5]])
    ids, codes = batch(model.config)
    before = model(input_ids=ids, audio_codes=codes)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    for loaded in (DeepTalkForCausalLM.from_pretrained(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)):
        assert isinstance(loaded, DeepTalkForCausalLM)
        assert loaded.config.speech_experts == [[7], [6], [5]] and loaded.config.routing_mode == "masked"
        after = loaded.eval()(input_ids=ids, audio_codes=codes)
        state = loaded.state_dict()
        assert all(torch.equal(t, state[n]) for n, t in model.state_dict().items())
        # the weights are bit-identical; logits may differ in the last bit because loaded
        # tensors sit at other memory alignments (different SIMD paths in the CPU kernels)
        torch.testing.assert_close(after.logits, before.logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(after.audio_logits, before.audio_logits, atol=1e-6, rtol=0)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DeepTalkConfig)


def test_text_generation_through_transformers(model):
    model.eval()
    ids, _ = batch(model.config, b=1, t=5)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0)
    manual = ids
    for _ in range(4):
        nxt = model(input_ids=manual, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        manual = torch.cat([manual, nxt], 1)
    assert torch.equal(out, manual)


def test_text_logits_where_labelled_give_the_full_heads_loss_and_gradients(model):
    cfg = model.config
    ids, codes = batch(cfg, b=3, t=12)
    labels = ids.clone()
    labels[0, :7] = -100          # a prompt with no text labels
    labels[1, ::2] = -100
    labels[2, :] = -100           # a row with none at all
    model.train()
    runs = []
    for where in (False, True):
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, audio_codes=codes, labels=labels, audio_labels=codes,
                    text_logits_where_labelled=where)
        out.loss.backward()
        runs.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (full, g_full), (sparse, g_sparse) = runs
    assert sparse.logits.shape == (int((labels[:, 1:] != -100).sum()), cfg.vocab_size)
    torch.testing.assert_close(sparse.text_loss, full.text_loss)
    torch.testing.assert_close(sparse.loss, full.loss)
    torch.testing.assert_close(sparse.logits, full.logits[:, :-1][labels[:, 1:] != -100])
    assert g_full.keys() == g_sparse.keys()
    for name in g_full:
        torch.testing.assert_close(g_sparse[name], g_full[name], msg=name)
    with pytest.raises(ValueError, match="needs labels"):
        model(input_ids=ids, text_logits_where_labelled=True)


def test_the_fused_weights_follow_an_expert_weight_changed_in_place_or_replaced():
    torch.manual_seed(0)
    moe = DeepTalkForCausalLM(tiny_config(routing_mode="modality")).eval().moe_layers[0]
    ids = tuple(range(moe.num_experts))
    rows = moe.experts[0].gate_proj.weight.shape[0]
    with torch.no_grad():
        moe._fused_weights(ids)   # cached from here on
        moe.experts[0].gate_proj.weight = torch.nn.Parameter(torch.ones_like(moe.experts[0].gate_proj.weight))
        assert torch.equal(moe._fused_weights(ids)[0][:rows], torch.ones_like(moe.experts[0].gate_proj.weight))
        moe.experts[1].up_proj.weight.mul_(0)
        assert moe._fused_weights(ids)[1][rows:2 * rows].abs().sum() == 0

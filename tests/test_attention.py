"""The grouped-query sdpa DeepTalk runs on CPU gives what transformers' sdpa gives."""
import torch
from test_model_moe import batch, tiny_config

from deeptalk import DeepTalkForCausalLM
from deeptalk.attention import GROUPED_SDPA


def run(model, implementation, ids, codes, mask):
    """Logits of a left-padded prefill and of two cached decoding steps after it."""
    model.config._attn_implementation_internal = implementation
    out = model(input_ids=ids, audio_codes=codes, attention_mask=mask, use_cache=True)
    logits = [out.logits]
    past = out.past_key_values
    for step in range(2):
        nxt, nxt_codes = ids[:, step:step + 1], codes[:, :, step:step + 1]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=nxt, audio_codes=nxt_codes, attention_mask=mask, past_key_values=past, use_cache=True)
        logits.append(out.logits)
        past = out.past_key_values
    return logits


def padded_batch(cfg):
    ids, codes = batch(cfg, b=3, t=9)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0   # left padding, as a batch of answers has
    mask[2, :1] = 0
    return ids, codes, mask


def test_a_deeptalk_model_on_cpu_runs_the_grouped_sdpa():
    model = DeepTalkForCausalLM(tiny_config(routing_mode="modality"))
    assert model.config._attn_implementation == GROUPED_SDPA
    assert model.config.num_attention_heads != model.config.num_key_value_heads   # the case it exists for


def test_grouped_sdpa_gives_the_logits_of_sdpa_with_padding_and_a_cache():
    torch.manual_seed(0)
    model = DeepTalkForCausalLM(tiny_config(routing_mode="modality")).eval()
    ids, codes, mask = padded_batch(model.config)
    with torch.no_grad():
        grouped = run(model, GROUPED_SDPA, ids, codes, mask)
        plain = run(model, "sdpa", ids, codes, mask)
    for g, p in zip(grouped, plain):
        valid = torch.isfinite(p)
        assert torch.equal(g[valid], p[valid])


def test_grouped_sdpa_gives_the_gradients_of_sdpa():
    torch.manual_seed(0)
    model = DeepTalkForCausalLM(tiny_config(routing_mode="modality")).train()
    ids, codes, mask = padded_batch(model.config)
    grads = {}
    for implementation in (GROUPED_SDPA, "sdpa"):
        model.zero_grad()
        model.config._attn_implementation_internal = implementation
        out = model(input_ids=ids, audio_codes=codes, attention_mask=mask, labels=ids, audio_labels=codes)
        out.loss.backward()
        grads[implementation] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[GROUPED_SDPA].keys() == grads["sdpa"].keys()
    for name, g in grads[GROUPED_SDPA].items():
        torch.testing.assert_close(g, grads["sdpa"][name], rtol=1e-5, atol=1e-7, msg=name)


def test_grouped_sdpa_over_a_static_cache_skips_unwritten_positions_with_the_same_logits(monkeypatch):
    from transformers import StaticCache

    import deeptalk.attention as attention

    keys_seen = []
    sdpa = attention.F.scaled_dot_product_attention

    def spy(query, key, value, **kw):
        keys_seen.append(key.shape[-2])
        return sdpa(query, key, value, **kw)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    model = DeepTalkForCausalLM(tiny_config(routing_mode="modality")).eval()
    ids, codes, mask = padded_batch(model.config)
    logits = {}
    for implementation in (GROUPED_SDPA, "sdpa"):
        model.config._attn_implementation_internal = implementation
        past = StaticCache(config=model.config, max_cache_len=40)   # far longer than what is written
        step_mask = mask
        with torch.no_grad():
            out = model(input_ids=ids, audio_codes=codes, attention_mask=step_mask, past_key_values=past,
                        use_cache=True)
            logits[implementation] = [out.logits]
            for step in range(2):
                step_mask = torch.cat([step_mask, torch.ones_like(step_mask[:, :1])], dim=1)
                out = model(input_ids=ids[:, step:step + 1], audio_codes=codes[:, :, step:step + 1],
                            attention_mask=step_mask, past_key_values=past, use_cache=True,
                            cache_position=torch.tensor([ids.shape[1] + step]))
                logits[implementation].append(out.logits)
        if implementation == GROUPED_SDPA:   # the prefill's 9 positions, then 10, then 11: never the cache's 40
            layers = model.config.num_hidden_layers
            assert keys_seen == [9] * layers + [10] * layers + [11] * layers
    for g, p in zip(logits[GROUPED_SDPA], logits["sdpa"]):
        valid = torch.isfinite(p)
        torch.testing.assert_close(g[valid], p[valid], rtol=1e-6, atol=1e-6)


def test_seen_keys_is_one_past_the_last_column_any_query_may_see():
    from deeptalk.attention import seen_keys

    mask = torch.zeros(2, 1, 3, 10, dtype=torch.bool)
    assert seen_keys(mask) == 10          # nothing visible: nothing is cut
    mask[0, 0, 2, :4] = True
    mask[1, 0, 0, 6] = True
    assert seen_keys(mask) == 7
    mask[1, 0, 1, 9] = True
    assert seen_keys(mask) == 10

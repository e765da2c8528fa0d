"""Streaming generation on a tiny random DeepTalk (the real classes) with the real SmolLM2 tokenizer.

- streaming yields exactly the tokens of non-streaming generation (greedy and seeded sampling)
- audio chunks concatenate to the full decode (exactly, for a frame-local codec; to the same
  length, for the offline Griffin-Lim codec whose chunks re-estimate phase)
- the delay pattern holds in the emitted grid; marks come in order
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from deeptalk.config import SPECIAL_TOKENS, DeepTalkConfig
from deeptalk.generate import SpeechGenerator, StreamConfig
from deeptalk.modeling import DeepTalkForCausalLM
from deeptalk.speech.codec import SpeechCodec

Q, K = 3, 16


class FrameTableCodec(SpeechCodec):
    """A frame-local codec: every code adds a fixed waveform to its frame. Decoding a chunk
    equals the same frames inside the full decode, so chunked output must match exactly."""

    name = "frame-table"

    def __init__(self, q=Q, k=K, spf=80, seed=0):
        self.sample_rate, self.samples_per_frame = 8000, spf
        self.frame_rate, self.num_codebooks, self.codebook_size = 8000 / spf, q, k
        self.table = np.random.default_rng(seed).uniform(-0.3, 0.3, (q, k, spf)).astype(np.float32)

    def encode(self, wav, sr):
        wav = self.check_wav(wav, sr)
        frames = np.pad(wav, (0, (-len(wav)) % self.samples_per_frame)).reshape(-1, self.samples_per_frame)
        codes, resid = [], frames
        for q in range(self.num_codebooks):
            idx = ((resid[:, None, :] - self.table[q][None]) ** 2).sum(-1).argmin(1)
            codes.append(idx)
            resid = resid - self.table[q][idx]
        return np.stack(codes).astype(np.int64)

    def decode(self, codes, *, frame_offset=0):
        codes = self.check_codes(codes)
        return sum(self.table[q][codes[q]] for q in range(self.num_codebooks)).reshape(-1).astype(np.float32) \
            if codes.shape[1] else np.zeros(0, np.float32)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from deeptalk_common.base_llm import resolve_base

    return AutoTokenizer.from_pretrained(resolve_base("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    torch.manual_seed(0)
    cfg = DeepTalkConfig(vocab_size=len(tokenizer) + len(SPECIAL_TOKENS), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_routed_experts=4, num_shared_experts=1,
                         num_experts_per_tok=2, num_codebooks=Q, codebook_size=K, base_vocab_size=len(tokenizer),
                         special_tokens=list(SPECIAL_TOKENS), eos_token_id=tokenizer.eos_token_id)
    model = DeepTalkForCausalLM(cfg).eval()
    return model


@pytest.fixture(scope="module")
def gen(tiny_model, tokenizer):
    return SpeechGenerator(tiny_model, tokenizer, codec=FrameTableCodec())


def run_stream(g, prompt, output, cfg):
    events = list(g.stream(prompt, output, cfg))
    assert events[-1].kind == "end"
    return events, events[-1].info


@pytest.mark.parametrize("cfg", [StreamConfig(max_speech_steps=16, first_chunk_frames=2, chunk_frames=5),
                                 StreamConfig(max_speech_steps=16, first_chunk_frames=1, chunk_frames=3,
                                              temperature=0.9, top_p=0.9, seed=7),
                                 StreamConfig(max_speech_steps=16, first_chunk_frames=2, chunk_frames=3,
                                              background_decode=False)])
def test_stream_equals_generate_speech(gen, cfg):
    p = gen.prompt(text="What is a baby lion called?", speak=True)
    res = gen.generate(p, "speech", cfg)
    events, info = run_stream(gen, p, "speech", cfg)
    assert info["text_ids"] == res.text_ids
    assert np.array_equal(info["codes"], res.codes)
    assert info["stop_reason"] == res.stop_reason
    assert "".join(e.text for e in events if e.kind == "text") == res.text
    chunks = [e.audio for e in events if e.kind == "audio"]
    assert res.codes.shape[1] > 0, "test setup: no frames generated"
    assert np.allclose(np.concatenate(chunks), res.audio, atol=1e-6)
    assert len(res.audio) == res.codes.shape[1] * gen.codec.samples_per_frame


def test_seeded_sampling_repeats_and_differs_by_seed(gen):
    p = gen.prompt(text="Name a colour.", speak=True)
    a = gen.generate(p, "speech", StreamConfig(max_speech_steps=12, temperature=1.0, seed=1))
    b = gen.generate(p, "speech", StreamConfig(max_speech_steps=12, temperature=1.0, seed=1))
    c = gen.generate(p, "speech", StreamConfig(max_speech_steps=12, temperature=1.0, seed=2))
    assert a.text_ids == b.text_ids and np.array_equal(a.codes, b.codes)
    assert a.text_ids != c.text_ids


def test_delay_pattern_and_marks(gen):
    cfg = StreamConfig(max_speech_steps=14, first_chunk_frames=2, chunk_frames=4)
    p = gen.prompt(text="Say something.", speak=True)
    grid = [col.numpy() for tok, col in gen.steps(p, "speech", cfg) if tok not in ("prefill", "stop")]
    c = gen.cfg
    for i in range(Q):  # codebook i is pad for its first i + 1 steps
        assert all(grid[s][i] == c.audio_pad_id for s in range(min(i + 1, len(grid))))
    eos0 = [s for s in range(len(grid)) if grid[s][0] == c.audio_eos_id]
    if eos0:  # once codebook 0 ended, codebook i ends exactly i steps later
        for i in range(Q):
            if eos0[0] + i < len(grid):
                assert grid[eos0[0] + i][i] == c.audio_eos_id
    events, info = run_stream(gen, p, "speech", cfg)
    names = [e.name for e in events if e.kind == "mark"]
    assert names[0] == "prefill_done" and "first_chunk_decoded" in names
    first_audio = next(i for i, e in enumerate(events) if e.kind == "audio")
    assert events.index(next(e for e in events if e.name == "first_chunk_decoded")) < first_audio
    ts = [e.t for e in events]
    assert ts == sorted(ts)


def test_text_only_stream_equals_generate(gen):
    p = gen.prompt(text="Hello there")
    cfg = StreamConfig(max_new_tokens=12)
    res = gen.generate(p, "text", cfg)
    events, info = run_stream(gen, p, "text", cfg)
    assert info["text_ids"] == res.text_ids and res.audio is None
    assert not any(e.kind == "audio" for e in events)
    assert info["stop_reason"] in ("eos", "max_new_tokens")


def test_offline_griffin_lim_codec_chunks_have_full_length(tiny_model, tokenizer):
    from deeptalk.speech.codec_offline import OfflineCodec

    rng = np.random.default_rng(0)
    codec = OfflineCodec(rng.normal(size=(Q, K, 80 * 4)).astype(np.float32) * 0.3, np.zeros(80), np.ones(80), stack=4,
                         gl_iters=4)
    g = SpeechGenerator(tiny_model, tokenizer, codec=codec)
    p = g.prompt(text="What is a baby lion called?", speak=True)
    cfg = StreamConfig(max_speech_steps=10)
    res = g.generate(p, "speech", cfg)
    events, info = run_stream(g, p, "speech", cfg)
    audio = np.concatenate([e.audio for e in events if e.kind == "audio"])
    assert len(audio) == len(res.audio) == res.codes.shape[1] * codec.samples_per_frame


def test_bad_requests(gen, tiny_model, tokenizer):
    with pytest.raises(ValueError, match="speak=True"):
        list(gen.stream(gen.prompt(text="x"), "speech"))
    with pytest.raises(ValueError, match="no speech encoder"):
        gen.prompt(audio=np.zeros(1600, np.float32), sample_rate=16000)
    with pytest.raises(ValueError, match="does not match"):
        SpeechGenerator(tiny_model, tokenizer, codec=FrameTableCodec(q=2))


def test_batch_parallel_text_follows_the_text_only_answer(gen):
    """Batch-parallel: the spoken answer's text channel is the text-only greedy answer."""
    p_speech = gen.prompt(text="What is a baby lion called?", speak=True)
    p_text = gen.prompt(text="What is a baby lion called?")
    cfg = StreamConfig(max_speech_steps=10, max_new_tokens=10, batch_parallel=True, cache="dynamic")
    res = gen.generate(p_speech, "speech", cfg)
    ref = gen.generate(p_text, "text", StreamConfig(max_new_tokens=10))
    n = len(res.text_ids)
    assert n > 0 and res.text_ids == ref.text_ids[:n]
    events, info = run_stream(gen, p_speech, "speech", cfg)
    assert info["text_ids"] == res.text_ids and np.array_equal(info["codes"], res.codes)


def test_static_cache_gives_the_same_tokens(gen):
    p = gen.prompt(text="What is a baby lion called?", speak=True)
    a = gen.generate(p, "speech", StreamConfig(max_speech_steps=8, cache="dynamic"))
    b = gen.generate(p, "speech", StreamConfig(max_speech_steps=8, cache="static"))
    assert a.text_ids == b.text_ids and np.array_equal(a.codes, b.codes)
    t1 = gen.generate(gen.prompt(text="Hi"), "text", StreamConfig(max_new_tokens=6, cache="dynamic"))
    t2 = gen.generate(gen.prompt(text="Hi"), "text", StreamConfig(max_new_tokens=6, cache="static"))
    assert t1.text_ids == t2.text_ids


PROMPTS = ["What is a baby lion called?", "Name a colour.", "Which planet is known as the red planet, and why?"]


def ending_generator(tiny_model, tokenizer, prompts, output, cfg, eos_bias=None):
    """A generator on the tiny model whose rows end at different steps: the 4th text token of
    the first prompt's answer becomes a stop token (and, with eos_bias, codebook 0 leans
    towards EOS, so spoken answers end too)."""
    g = SpeechGenerator(tiny_model, tokenizer, codec=FrameTableCodec())
    if eos_bias is not None:
        g._audio_bias = g._audio_bias.clone()
        g._audio_bias[0, tiny_model.config.audio_eos_id] = eos_bias
    first = g.generate(g.prompt(text=prompts[0], speak=output != "text"), output, cfg)
    g.stop_ids = g.stop_ids | {first.text_ids[3]}
    return g


@pytest.mark.parametrize("output,eos_bias,cache", [("text", None, "static"), ("speech", None, "static"),
                                                   ("speech", 50.0, "static"), ("speech", 50.0, "dynamic")])
def test_batched_answers_equal_one_by_one(tiny_model, tokenizer, output, eos_bias, cache):
    """Rows end at different steps and leave the batch, their cache rows with them; the rest
    answer as they would alone."""
    cfg = StreamConfig(max_new_tokens=12, max_speech_steps=24, first_chunk_frames=2, chunk_frames=5, cache=cache)
    g = ending_generator(tiny_model, tokenizer, PROMPTS, output, cfg, eos_bias)
    speak = output != "text"
    prompts = [g.prompt(text=t, speak=speak) for t in PROMPTS]
    assert len({p.input_ids.shape[1] for p in prompts}) == 3  # left padding is exercised
    batched = g.generate_batch(prompts, output, cfg)
    for p, b in zip(prompts, batched):
        events, info = run_stream(g, p, output, cfg)
        assert b.text_ids == info["text_ids"] and b.stop_reason == info["stop_reason"]
        assert b.text == "".join(e.text for e in events if e.kind == "text")
        if speak:
            assert np.array_equal(b.codes, info["codes"])
            assert np.allclose(b.audio, np.concatenate([e.audio for e in events if e.kind == "audio"]), atol=1e-6)
    stops = [b.stop_reason for b in batched]
    lengths = [len(b.text_ids) for b in batched]
    assert len(set(lengths)) > 1  # the text of the rows really ended at different steps
    if output == "text" or eos_bias is not None:
        assert "eos" in stops


MORE_PROMPTS = PROMPTS + ["Say hello.", "What do bees make, and where do they keep it in winter?", "Two plus two?",
                         "Tell me the name of a large river in Africa."]


@pytest.mark.parametrize("output,eos_bias,cache", [("text", None, "static"), ("speech", 50.0, "static"),
                                                   ("speech", 50.0, "dynamic")])
def test_continuous_batching_answers_equal_one_by_one(tiny_model, tokenizer, monkeypatch, output, eos_bias, cache):
    """Two rows for seven prompts: each answer that ends gives its row to the next prompt
    (prefilled into that cache row), the columns no row sees any more are dropped, and every
    answer is the one it is alone; no step decodes more than two rows."""
    import deeptalk.generate as generate

    monkeypatch.setattr(generate, "_SPARE_COLUMNS", 4)   # drop columns as soon as two are unseen
    drops = []
    real_drop = generate.drop_columns
    monkeypatch.setattr(generate, "drop_columns", lambda past, first, end: (drops.append(first),
                                                                            real_drop(past, first, end)))
    cfg = StreamConfig(max_new_tokens=12, max_speech_steps=24, first_chunk_frames=2, chunk_frames=5, cache=cache)
    g = ending_generator(tiny_model, tokenizer, MORE_PROMPTS, output, cfg, eos_bias)
    speak = output != "text"
    prompts = [g.prompt(text=t, speak=speak) for t in MORE_PROMPTS]
    widths = []
    forward = g.model.forward
    monkeypatch.setattr(g.model, "forward", lambda *a, **kw: (widths.append(kw["input_ids"].shape[0]),
                                                              forward(*a, **kw))[1])
    batched = g.generate_batch(prompts, output, cfg, rows=2)
    monkeypatch.setattr(g.model, "forward", forward)
    assert max(widths) == 2 and widths.count(2) > 10
    assert drops and all(d >= 2 for d in drops)
    for p, b in zip(prompts, batched):
        alone = g.generate(p, output, cfg)
        assert b.text_ids == alone.text_ids and b.stop_reason == alone.stop_reason
        if speak:
            assert np.array_equal(b.codes, alone.codes)
    assert [b.timings["rows"] for b in batched] == [2.0] * len(prompts)
    answered = [b.timings["answered"] for b in batched]
    assert all(0 < b.timings["prefill_done"] < a <= b.timings["total"] for a, b in zip(answered, batched))
    assert "eos" in {b.stop_reason for b in batched}


def test_rows_must_be_at_least_one(gen):
    prompts = [gen.prompt(text=t) for t in PROMPTS]
    with pytest.raises(ValueError, match="rows=0"):
        gen.generate_batch(prompts, "text", StreamConfig(max_new_tokens=4), rows=0)


def test_batch_of_sampled_answers_runs_one_by_one(gen):
    cfg = StreamConfig(max_new_tokens=8, temperature=0.9, seed=3)
    prompts = [gen.prompt(text=t) for t in PROMPTS[:2]]
    batched = gen.generate_batch(prompts, "text", cfg)
    assert [b.text_ids for b in batched] == [gen.generate(p, "text", cfg).text_ids for p in prompts]


@pytest.mark.parametrize("background", [True, False])
def test_audio_that_ends_before_the_text_is_played_at_once(tiny_model, tokenizer, background):
    """Codebook 0 ends the audio early while the text channel runs on: every audio sample
    is handed over before the next text step, not when the text ends."""
    g = SpeechGenerator(tiny_model, tokenizer, codec=FrameTableCodec())
    g._audio_bias = g._audio_bias.clone()
    g._audio_bias[0, tiny_model.config.audio_eos_id] = 50.0      # codebook 0 ends as soon as it may
    g._text_bias = g._text_bias.clone()
    for i in g.stop_ids:                                         # the text never ends
        g._text_bias[i] = float("-inf")
    cfg = StreamConfig(max_speech_steps=20, first_chunk_frames=1, chunk_frames=4, background_decode=background)
    p = g.prompt(text="Say something short.", speak=True)
    events, info = run_stream(g, p, "speech", cfg)
    assert info["stop_reason"] == "max_steps" and info["frames"] >= 1
    kinds = [e.kind for e in events]
    last_audio = max(i for i, k in enumerate(kinds) if k == "audio")
    assert kinds[last_audio + 1 :].count("text") >= 5             # the text went on after the audio
    audio = np.concatenate([e.audio for e in events if e.kind == "audio"])
    assert np.allclose(audio, g.generate(p, "speech", cfg).audio, atol=1e-6)


@pytest.mark.parametrize("answer_routing", ["speech", "both"])
def test_phone_units_stream_as_generate_plays_them(tokenizer, answer_routing):
    """A one-codebook model speaking phone units (Piper): the streamed chunks are the audio that
    `generate(..., as_streamed)` returns, the codes equal, under either spoken-answer routing."""
    pytest.importorskip("piper")
    from deeptalk.speech.codec_loader import load_codec

    codec = load_codec("phones")
    torch.manual_seed(0)
    cfg = DeepTalkConfig(vocab_size=len(tokenizer) + len(SPECIAL_TOKENS), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_routed_experts=4, num_shared_experts=1,
                         num_experts_per_tok=2, num_codebooks=1, codebook_size=codec.codebook_size,
                         base_vocab_size=len(tokenizer), special_tokens=list(SPECIAL_TOKENS),
                         eos_token_id=tokenizer.eos_token_id, speech_experts=[[0]], routing_mode="modality",
                         answer_routing=answer_routing)
    model = DeepTalkForCausalLM(cfg).eval()
    g = SpeechGenerator(model, tokenizer, codec=codec)
    sc = StreamConfig(max_speech_steps=60, first_chunk_frames=4, chunk_frames=6)
    p = g.prompt(text="Say something.", speak=True)
    res = g.generate(p, "speech", sc, as_streamed=True)
    events, info = run_stream(g, p, "speech", sc)
    assert np.array_equal(info["codes"], res.codes) and res.codes.shape[0] == 1
    chunks = [e.audio for e in events if e.kind == "audio"]
    played = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    assert len(res.audio) > 0 and np.array_equal(played, res.audio)
    assert res.sample_rate == codec.sample_rate

"""The "words" answer layout (config.answer_layout): each word's text just before its own phone
units, with the real SmolLM2 tokenizer and the real phone codec (Piper joe's espeak-ng).

- each word's codes are the codec's reading of that word; the words' tokens are the answer's
- the layout: a word's first code one step after its first token, the text held until the
  audio ends the word (its pad), the audio waiting while a word's text is longer
- the labels: the held step after a word teaches the next word's first token, other pads nothing
- the generator, fed the heads' picks the training layout teaches, writes exactly that layout,
  and the codes it hands the codec are the words' phonemes with a space between words
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from deeptalk.config import SPECIAL_TOKENS, DeepTalkConfig
from deeptalk.generate import SpeechGenerator, StreamConfig, _SpokenAnswer
from deeptalk.modeling import DeepTalkForCausalLM
from deeptalk.sequence import split_words, word_aligned_steps, word_segments, word_start_ids
from deeptalk.training.examples import spoken_answer_example

pytest.importorskip("piper")

ANSWER = "In 1975, the U.S. population was about 216 million - roughly."


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from deeptalk_common.base_llm import resolve_base

    return AutoTokenizer.from_pretrained(resolve_base("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def codec():
    from deeptalk.speech.codec_loader import load_codec

    return load_codec("phones")


def tiny_config(tokenizer, codec, **kw) -> DeepTalkConfig:
    return DeepTalkConfig(vocab_size=len(tokenizer) + len(SPECIAL_TOKENS), hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_routed_experts=4, num_shared_experts=1,
                          num_experts_per_tok=2, num_codebooks=1, codebook_size=codec.codebook_size,
                          base_vocab_size=len(tokenizer), special_tokens=list(SPECIAL_TOKENS),
                          eos_token_id=tokenizer.eos_token_id, speech_experts=[[0]], routing_mode="modality",
                          answer_routing="both", answer_layout="words", **kw)


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_words_are_the_answers_tokens_each_read_alone(tokenizer, codec):
    ids = ids_of(tokenizer, ANSWER)
    segs = word_segments(ids, tokenizer, codec)
    assert [t for w, _ in segs for t in w] == ids
    words = [tokenizer.decode(w).strip() for w, _ in segs]
    assert words == ANSWER.split()                       # the tokenizer's words are the text's words here
    starts = word_start_ids(tokenizer)
    assert all(w[0] in starts for w, _ in segs[1:]) and all(t not in starts for w, _ in segs for t in w[1:])
    for word, (_, codes) in zip(words, segs):
        alone = codec.encode_text(word)[0].tolist()
        while alone and alone[-1] == codec.word_end_code:
            alone.pop()
        assert codes[0].tolist() == alone
    assert segs[words.index("-")][1].shape[1] == 0     # a lone dash says nothing
    number = segs[words.index("216")][1][0].tolist()
    assert codec.word_end_code in number                # a number reads as several words, spaces inside
    assert split_words([], starts) == []


def test_layout_puts_each_word_beside_its_codes(tokenizer, codec):
    cfg = tiny_config(tokenizer, codec)
    segs = word_segments(ids_of(tokenizer, ANSWER), tokenizer, codec)
    text, grid, decide = word_aligned_steps(segs, cfg)
    pad, end = cfg.special_token_id("<|text_pad|>"), cfg.special_token_id("<|text_end|>")
    wait, eos = cfg.audio_pad_id, cfg.audio_eos_id
    audio = grid[0].tolist()
    assert len(text) == len(audio)
    pos = 0
    for k, (ids, codes) in enumerate(segs):
        first = next(s for s in range(pos, len(text)) if text[s] == ids[0] and text[s:s + len(ids)] == ids)
        assert all(t == pad for t in text[pos:first])                      # held between words
        assert audio[first] == wait       # written when the audio ends the previous word (its pad)
        m = codes.shape[1]
        assert audio[first + 1:first + 1 + m] == codes[0].tolist()           # its codes follow its first token
        pos = first + len(ids)
        if k < len(segs) - 1:
            nxt = segs[k + 1][0][0]
            assert decide.get(pos, nxt) == nxt and (pos in decide) == (text[pos] == pad)
    assert text[pos] == end and all(t == pad for t in text[pos + 1:])
    assert audio.count(eos) == 1 and all(a == wait for a in audio[audio.index(eos) + 1:])
    assert audio[0] == wait                                                  # the delay pattern's first step


def test_example_labels_teach_the_next_word_where_the_text_holds(tokenizer, codec):
    cfg = tiny_config(tokenizer, codec)
    prompt = ids_of(tokenizer, "Say this:") + [cfg.special_token_id("<|speech_start|>")]
    ex = spoken_answer_example(prompt, [0] * len(prompt), ANSWER, None, tokenizer, cfg, codec=codec)
    text = ex.ids[len(prompt):]
    labels = ex.labels[len(prompt):]
    _, _, decide = word_aligned_steps(word_segments(ids_of(tokenizer, ANSWER), tokenizer, codec), cfg)
    pad, end = cfg.special_token_id("<|text_pad|>"), cfg.special_token_id("<|text_end|>")
    for s, (t, lab) in enumerate(zip(text, labels)):
        if t == pad:
            assert lab == decide.get(s, -100)
        elif t == end:
            assert lab == tokenizer.eos_token_id
        else:
            assert lab == t
    assert decide and ex.audio.shape == (1, len(ex.ids))
    with pytest.raises(ValueError, match="pass the codec"):
        spoken_answer_example(prompt, [0] * len(prompt), ANSWER, None, tokenizer, cfg)


@pytest.mark.parametrize("answer_routing", ["both", "speech"])
def test_the_answers_first_word_is_learnt_where_the_speech_side_trains(tokenizer, codec, answer_routing):
    """<|speech_start|>'s logits pick the spoken answer's first token. Under answer_routing "both"
    it is the answer's first step: the speech experts (what stages 2.1 and 3 train) reach it and
    the first word can be learnt. Under "speech" it stays a text position: only the text side does."""
    from deeptalk.sequence import ANSWER_MODALITY, TEXT_MODALITY, build_prompt_ids

    torch.manual_seed(0)
    cfg = tiny_config(tokenizer, codec)
    cfg.answer_routing = answer_routing
    ids, mod, _ = build_prompt_ids(tokenizer, cfg, "Say this: the sun is a star.", None, speak=True)
    assert mod[-1] == (ANSWER_MODALITY if answer_routing == "both" else TEXT_MODALITY)
    assert set(mod[:-1]) == {TEXT_MODALITY}
    gen = SpeechGenerator(DeepTalkForCausalLM(cfg).eval(), tokenizer, codec=codec)
    assert gen.prompt("Say this: the sun is a star.", speak=True).token_modality[0].tolist() == mod
    assert gen.prompt("Say this:", speak=True, raw=True).token_modality[0, -1] == mod[-1]
    ex = spoken_answer_example(ids, mod, "The sun is a star.", None, tokenizer, cfg, codec=codec)
    model = DeepTalkForCausalLM(cfg)
    moe = [layer.mlp for layer in model.model.layers if hasattr(layer.mlp, "experts")]
    assert moe and cfg.speech_experts == [[0]] * len(moe)
    for mlp in moe:  # speech experts that add something (a zeroed copy would not)
        for p in mlp.experts[0].parameters():
            torch.nn.init.normal_(p, std=0.2)
    first = [-100] * len(ex.labels)
    first[len(ids)] = ex.labels[len(ids)]  # the answer's first token, predicted at <|speech_start|>
    n = len(ids) + 1  # the prompt and the answer's first step: nothing later reaches that prediction
    out = model(input_ids=torch.tensor([ex.ids[:n]]), token_modality=torch.tensor([ex.modality[:n]]),
                audio_codes=ex.audio[None, :, :n], labels=torch.tensor([first[:n]]))
    out.loss.backward()
    speech = [p.grad for mlp in moe for p in mlp.experts[0].parameters()]
    reached = any(g is not None and g.abs().sum() > 0 for g in speech)
    assert reached == (answer_routing == "both")


def test_generator_writes_the_layout_it_was_taught(tokenizer, codec):
    """Replay: the heads pick what training teaches at every step (at held steps, anything), and
    the protocol rules turn that into exactly the training layout; the codes the codec hears are
    the words' phonemes, one space between words."""
    cfg = tiny_config(tokenizer, codec)
    model = DeepTalkForCausalLM(cfg).eval()
    gen = SpeechGenerator(model, tokenizer, codec=codec)
    segs = word_segments(ids_of(tokenizer, ANSWER), tokenizer, codec)
    text, grid, decide = word_aligned_steps(segs, cfg)
    pad, end = cfg.special_token_id("<|text_pad|>"), cfg.special_token_id("<|text_end|>")
    answer = _SpokenAnswer(gen)
    some_start = ids_of(tokenizer, " the")[0]
    some_piece = ids_of(tokenizer, "ing")[0]
    logits = torch.zeros(1, cfg.audio_vocab_size)
    written, columns = [], []
    for s in range(len(text)):
        if text[s] == end:
            pick = tokenizer.eos_token_id
        elif text[s] == pad:   # held: the head may pick anything; a word start or a piece, in turn
            pick = decide.get(s, some_start if s % 2 else some_piece)
        else:
            pick = text[s]
        tok, column, finished = answer.step(s, None if answer.text_done else pick, grid[:, s].clone(), logits)
        written.append(tok)
        columns.append(column.numpy())
        if finished:
            break
    assert written == text[:len(written)] and finished
    assert np.array_equal(np.stack(columns, 1), grid[:, :len(columns)].numpy())
    heard = gen._codes_of(columns)[0].tolist()
    sep = codec.word_end_code
    spoken = [c[0].tolist() for _, c in segs if c.shape[1]]
    assert heard == [x for k, w in enumerate(spoken) for x in ([sep] if k else []) + w]
    assert all(c < codec.codebook_size for c in heard)


def test_once_the_text_has_ended_the_audio_does_not_wait(tokenizer, codec):
    """The words layout has no word end after the last word: a head that keeps picking pad after
    the text ended (here the text ends at once) gets its best code or EOS, so the answer ends."""
    cfg = tiny_config(tokenizer, codec)
    gen = SpeechGenerator(DeepTalkForCausalLM(cfg).eval(), tokenizer, codec=codec)
    answer = _SpokenAnswer(gen)
    logits = torch.full((cfg.num_codebooks, cfg.audio_vocab_size), -5.0)
    logits[:, cfg.audio_pad_id], logits[:, cfg.audio_eos_id], logits[:, 7] = 3.0, 2.0, 1.0
    pad_column = torch.full((cfg.num_codebooks,), cfg.audio_pad_id)
    picks = []
    for s in range(12):
        tok, column, finished = answer.step(s, None if answer.text_done else tokenizer.eos_token_id,
                                            pad_column.clone(), logits)
        picks.append(int(column[0]))
        if finished:
            break
    # step 0: the delay; step 1: a code (no EOS before step 2); step 2: EOS
    assert picks == [cfg.audio_pad_id, 7, cfg.audio_eos_id] and finished


def test_a_words_model_streams_what_generate_returns(tokenizer, codec):
    torch.manual_seed(0)
    model = DeepTalkForCausalLM(tiny_config(tokenizer, codec)).eval()
    g = SpeechGenerator(model, tokenizer, codec=codec)
    sc = StreamConfig(max_speech_steps=60, first_chunk_frames=4, chunk_frames=6)
    p = g.prompt(text="Say something.", speak=True)
    res = g.generate(p, "speech", sc, as_streamed=True)
    events = list(g.stream(p, "speech", sc))
    info = events[-1].info
    assert np.array_equal(info["codes"], res.codes)
    assert (res.codes < codec.codebook_size).all()           # the audio's pads never reach the codec
    chunks = [e.audio for e in events if e.kind == "audio"]
    assert np.array_equal(np.concatenate(chunks) if chunks else np.zeros(0, np.float32), res.audio)
    with pytest.raises(ValueError, match="holds the text"):
        g.generate(p, "speech", StreamConfig(max_speech_steps=8, batch_parallel=True, cache="dynamic"))


def test_answer_layout_is_checked(tokenizer, codec):
    cfg = tiny_config(tokenizer, codec)
    cfg.validate()
    cfg.answer_layout = "interleaved"
    with pytest.raises(ValueError, match="answer_layout"):
        cfg.validate()


def test_lead_text_speaks_what_the_text_path_writes(tokenizer, codec):
    """lead_text: the spoken answer's text channel is the text path's answer to the same prompt,
    token for token (the words layout still decides when each token is written), alone or in a
    batch; without it the answer's own head writes (here: something else)."""
    torch.manual_seed(0)
    cfg = tiny_config(tokenizer, codec)
    model = DeepTalkForCausalLM(cfg).eval()
    # an audio head that ends each word at once and the answer after the text (a random one
    # never picks the word end, so the text would be held to the cap)
    head = torch.nn.Linear(cfg.hidden_size, cfg.audio_vocab_size)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-5.0)
        head.bias[cfg.audio_pad_id], head.bias[cfg.audio_eos_id], head.bias[7] = 3.0, 2.0, 1.0
    model.audio_head = head
    g = SpeechGenerator(model, tokenizer, codec=codec)
    sc = StreamConfig(max_new_tokens=12, max_speech_steps=200, lead_text=True)
    prompts = [g.prompt(text=t, speak=True) for t in ("Say something.", "Name a colour.")]
    written = [g.generate(g.prompt(text=t), "text", sc).text for t in ("Say something.", "Name a colour.")]
    alone = [g.generate(p, "speech", sc) for p in prompts]
    assert [r.text for r in alone] == written and all(r.stop_reason == "eos" for r in alone)
    together = g.generate_batch(prompts, "speech", sc)
    assert [r.text for r in together] == written
    assert all(np.array_equal(a.codes, b.codes) for a, b in zip(alone, together))
    in_turn = g.generate_batch(prompts, "speech", sc, rows=1)   # one row: the second waits for the first
    assert [r.text for r in in_turn] == written
    assert all(np.array_equal(a.codes, b.codes) for a, b in zip(alone, in_turn))
    own = g.generate(prompts[0], "speech", StreamConfig(max_new_tokens=12, max_speech_steps=200))
    assert own.text != written[0]


@pytest.mark.parametrize("min_first,first_frames", [(1, 1), (12, 2)])
def test_the_first_chunk_is_the_first_that_sounds(tokenizer, codec, min_first, first_frames):
    """Phone units say nothing before a word ends: chunks decode in line until one sounds, and that
    one carries the first-chunk marks (its codes hold a word end or it is the flush); the chunk
    sizes the stream config names reach the codec, and the audio stays what generate(as_streamed) plays."""
    torch.manual_seed(1)
    model = DeepTalkForCausalLM(tiny_config(tokenizer, codec)).eval()
    g = SpeechGenerator(model, tokenizer, codec=codec)
    sc = StreamConfig(max_speech_steps=60, first_chunk_frames=first_frames, chunk_frames=5,
                      decoder_min_first=min_first, decoder_min_chunk=3)
    assert (g.stream_decoder(sc).min_first, g.stream_decoder(sc).min_chunk) == (min_first, 3)
    p = g.prompt(text="Say something.", speak=True)
    events = list(g.stream(p, "speech", sc))
    codes = events[-1].info["codes"][0]
    marks = {e.name: e for e in events if e.kind == "mark"}
    audio = [k for k, e in enumerate(events) if e.kind == "audio"]
    assert len(codes) and audio, "the random model should say something"
    ready = marks["first_chunk_ready"]
    assert events.index(marks["first_chunk_decoded"]) < audio[0]
    assert ready.t <= marks["first_chunk_decoded"].t <= events[audio[0]].t
    said = codes[:ready.info["frames"]].tolist()
    word_ends = [k + 1 for k, c in enumerate(said) if c in codec.breaks]
    assert ready.info["frames"] == len(codes) or (word_ends and word_ends[-1] >= min_first)
    res = g.generate(p, "speech", sc, as_streamed=True)
    assert np.array_equal(np.concatenate([events[k].audio for k in audio]), res.audio)


def test_a_frame_codec_refuses_word_chunk_sizes():
    from deeptalk.speech.codec import CodecError
    from deeptalk.speech.codec_loader import load_codec

    with pytest.raises(CodecError, match="min_first apply to a codec that speaks whole words"):
        load_codec("offline").stream_decoder(min_first=4)


def test_the_phone_codecs_default_chunks_are_part_of_what_it_is(codec, monkeypatch):
    """The harness scores the streamed audio: a new default chunk size is a new codec (its
    description, hence the answers' cache key, changes with it) and the decoder follows it."""
    import deeptalk.speech.codec_phones as cp

    before = codec.describe()
    assert before["stream_chunks"] == {"min_first": cp.MIN_FIRST, "min_chunk": cp.MIN_CHUNK}
    monkeypatch.setattr(cp, "MIN_FIRST", cp.MIN_FIRST + 3)
    assert codec.describe() != before and codec.stream_decoder().min_first == before["stream_chunks"]["min_first"] + 3
    with pytest.raises(ValueError, match="must be >= 1 phoneme"):
        codec.stream_decoder(min_first=0)

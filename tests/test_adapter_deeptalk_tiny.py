"""The `deeptalk` harness adapter on a tiny checkpoint in the trainer's layout.

The checkpoint is written by `deeptalk.checkpoint.save_checkpoint` from a tiny random DeepTalk
(real classes), the real Whisper tiny.en encoder with a random projector and a small random
offline codec: the adapter must load it, serve every modality pair, stream, and score text.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from deeptalk_eval.api import Audio, GenerationOptions, Request, UnsupportedRequest


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from transformers import AutoTokenizer

    from deeptalk.checkpoint import save_checkpoint
    from deeptalk.config import SPECIAL_TOKENS, DeepTalkConfig
    from deeptalk.modeling import DeepTalkForCausalLM
    from deeptalk.speech.codec_offline import OfflineCodec
    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig
    from deeptalk.upcycle import extend_tokenizer
    from deeptalk_common.base_llm import resolve_base

    out = tmp_path_factory.mktemp("ckpt")
    tok = AutoTokenizer.from_pretrained(resolve_base("smollm2-135m-instruct"))
    torch.manual_seed(0)
    cfg = DeepTalkConfig(vocab_size=len(tok) + len(SPECIAL_TOKENS), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_routed_experts=4, num_shared_experts=1,
                         num_experts_per_tok=2, num_codebooks=2, codebook_size=16, base_vocab_size=len(tok),
                         special_tokens=list(SPECIAL_TOKENS), eos_token_id=tok.eos_token_id,
                         speech_experts=[[0, 1]], max_position_embeddings=1024)
    model = DeepTalkForCausalLM(cfg)
    extend_tokenizer(tok, cfg)
    enc = SpeechEncoder.from_whisper(SpeechEncoderConfig(hidden_size=64, stride=4))
    rng = np.random.default_rng(0)
    codec = OfflineCodec(rng.normal(size=(2, 16, 80 * 4)).astype(np.float32) * 0.3, np.zeros(80), np.ones(80),
                         stack=4, gl_iters=4)
    codec.save(out / "src" / "codec.safetensors")
    save_checkpoint(out / "ckpt", model, tok, enc, {"path": "codec.safetensors", "src_dir": str(out / "src")},
                    {"stage": "test", "done": True})
    return out / "ckpt"


@pytest.fixture(scope="module")
def adapter(tiny_checkpoint):
    from deeptalk_eval.models.deeptalk import DeepTalkAdapter

    return DeepTalkAdapter(path=str(tiny_checkpoint), max_speech_steps=12, first_chunk_frames=2, chunk_frames=4)


@pytest.fixture(scope="module")
def question_audio():
    from deeptalk_common.tts import synthesize

    wav, sr = synthesize("What is a baby lion called?")
    return Audio(wav, sr)


def test_default_checkpoint_missing_is_a_clear_error(monkeypatch, tmp_path):
    import deeptalk_eval.models.deeptalk as mod
    from deeptalk_eval.errors import UsageError

    monkeypatch.setattr(mod, "DEFAULT_CHECKPOINT", tmp_path / "checkpoints" / "reference")
    # a user mistake (partial checkout, wrong path=): the CLI's one line and exit 2
    with pytest.raises(UsageError, match="checkpoints/reference does not exist.*deeptalk-train --recipe reference"):
        mod.DeepTalkAdapter()


def test_text_to_text(adapter):
    (r,) = adapter.generate([Request("t", text="Hello", options=GenerationOptions(max_new_tokens=5))])
    assert isinstance(r.text, str) and r.audio is None
    assert 1 <= r.tokens["text"] <= 5 and "prefill_done" in r.timings
    assert "<|im_start|>user\nHello" in r.prompt


def test_speech_to_speech_shape(adapter, question_audio):
    (r,) = adapter.generate([Request("s2s", audio=question_audio, output_modality="speech")])
    sr = adapter.bundle.codec.sample_rate
    assert r.audio is not None and r.audio.sample_rate == sr
    assert len(r.audio.samples) == r.tokens["audio_frames"] * adapter.bundle.codec.samples_per_frame > 0
    assert np.isfinite(r.audio.samples).all()
    for k in ("encoder_done", "prefill_done", "first_chunk_decoded", "first_audio"):
        assert k in r.timings
    assert r.timings["encoder_done"] <= r.timings["prefill_done"] <= r.timings["first_audio"]
    assert "<|audio_in|>x" in r.prompt and r.extra["audio_flags"]["speech_positions"] > 0


def test_speech_to_text_and_text_to_speech(adapter, question_audio):
    a, b = adapter.generate([Request("s2t", audio=question_audio, options=GenerationOptions(max_new_tokens=4)),
                             Request("t2s", text="Say hi.", output_modality="both")])
    assert a.audio is None and a.text is not None
    assert b.audio is not None and len(b.audio.samples) > 0


@pytest.mark.parametrize("output,rows", [("text", 16), ("speech", 16), ("text", 2), ("speech", 2)])
def test_a_batch_answers_as_one_by_one(adapter, question_audio, monkeypatch, output, rows):
    """All three together, or two rows at a time (the third request, a spoken one, takes the
    place of the first answer that ends): every answer is the one it is alone."""
    from deeptalk_common.tts import synthesize

    monkeypatch.setattr(adapter, "rows", rows)
    short, sr = synthesize("Name a colour.", engine="flite", voice="slt")
    reqs = [Request("q1", audio=question_audio, output_modality=output),
            Request("q2", audio=Audio(short, sr), output_modality=output),
            Request("q3", text="Say hi to the team.", output_modality=output)]
    batched = adapter.generate(reqs)
    for req, b in zip(reqs, batched):
        (one,) = adapter.generate([req])
        assert b.extra["batch"] == 3 and b.timings["rows"] == min(rows, 3) and b.prompt == one.prompt
        assert (b.text, b.tokens, b.extra["stop_reason"]) == (one.text, one.tokens, one.extra["stop_reason"])
        if output == "speech":
            assert b.audio.sample_rate == one.audio.sample_rate
            assert np.allclose(b.audio.samples, one.audio.samples, atol=1e-5)
        else:
            assert b.audio is None and one.audio is None


def test_rows_is_how_it_runs_not_which_model(tiny_checkpoint):
    from deeptalk_eval.errors import UsageError
    from deeptalk_eval.models.deeptalk import DeepTalkAdapter

    two = DeepTalkAdapter(path=str(tiny_checkpoint), max_speech_steps=12, rows=2)
    assert two.fingerprint() == DeepTalkAdapter(path=str(tiny_checkpoint), max_speech_steps=12).fingerprint()
    with pytest.raises(UsageError, match="rows must be a whole number >= 1, got 0"):
        DeepTalkAdapter(path=str(tiny_checkpoint), rows=0)


def test_stream_events_are_api_events(adapter, question_audio):
    from deeptalk_eval.api import StreamEvent

    evs = list(adapter.stream(Request("st", audio=question_audio, output_modality="speech")))
    assert all(isinstance(e, StreamEvent) for e in evs)
    assert evs[-1].kind == "end"
    assert {"encoder_done", "prefill_done", "first_chunk_decoded"} <= {e.name for e in evs if e.kind == "mark"}


def test_loglikelihood_text_path(adapter):
    res = adapter.loglikelihood([("The capital of France is", " Paris"), ("", "Hello world")])
    assert len(res) == 2 and all(lp < 0 and isinstance(g, bool) for lp, g in res)
    (roll,) = adapter.loglikelihood_rolling(["One two three four."])
    assert roll < 0


def test_bad_audio_is_unsupported_request(adapter):
    with pytest.raises(UnsupportedRequest, match="request e audio: empty audio"):
        adapter.generate([Request("e", audio=Audio(np.zeros(0, np.float32), 16000))])
    bad = np.zeros(1600, np.float32)
    bad[5] = np.nan
    with pytest.raises(UnsupportedRequest, match="NaN"):
        adapter.generate([Request("n", audio=Audio(bad, 16000))])


def test_describe_records_setup(adapter, monkeypatch):
    d = adapter.describe()
    for k in ("routing_mode", "dtype", "first_chunk_frames", "chunk_frames", "batch_parallel", "checkpoint_sha256"):
        assert k in d
    assert d["first_chunk_frames"] == 2 and d["batch_parallel"] is False and len(d["checkpoint_sha256"]) == 64
    assert adapter.checkpoint_sha256()[:16] in adapter.fingerprint()
    # the codec lives outside the checkpoint: a different decoder is a different fingerprint
    before, codec = adapter.fingerprint(), adapter.bundle.codec
    described = codec.describe()
    monkeypatch.setattr(codec, "describe", lambda: {**described, "file_sha256": "another codec file"})
    assert adapter.fingerprint() != before


def test_the_fingerprint_follows_how_a_piece_head_is_read(adapter, monkeypatch):
    """The lexicon decoder's weights and the written form change what is heard, defaults included
    (a new default in the code must not reuse answers cached under the old one)."""
    from types import SimpleNamespace

    from deeptalk.speech.lexicon_decode import LexiconConfig

    assert adapter.hearing_settings() is None and ":hearing=" not in adapter.fingerprint()
    projector = adapter.bundle.encoder.projector
    monkeypatch.setattr(projector, "lexicon", SimpleNamespace(config=LexiconConfig()), raising=False)
    first = adapter.fingerprint()
    assert ":hearing=" in first and adapter.describe()["hearing"]["written"] == "true_case"
    monkeypatch.setattr(projector, "lexicon", SimpleNamespace(config=LexiconConfig(lm_word_bonus=0.0)), raising=False)
    assert adapter.fingerprint() != first
    monkeypatch.setattr(projector, "lexicon", SimpleNamespace(config=LexiconConfig(written="plain")), raising=False)
    assert adapter.fingerprint() != first


def test_the_fingerprint_follows_what_inference_reads(tiny_checkpoint, tmp_path):
    import json
    import shutil

    from deeptalk_eval.models.deeptalk import DeepTalkAdapter

    def sha(path):
        return DeepTalkAdapter(path=str(path), max_speech_steps=12).checkpoint_sha256()

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    before = sha(ckpt)
    # the same files elsewhere are the same model: a moved checkpoint reuses its cached answers
    assert DeepTalkAdapter(path=str(ckpt), max_speech_steps=12).fingerprint() == \
        DeepTalkAdapter(path=str(tiny_checkpoint), max_speech_steps=12).fingerprint()
    (ckpt / "stage.json").write_text(json.dumps({"stage": "test", "done": True, "note": "a record"}))
    (ckpt / "loss.csv").write_text("step,loss\n1,2.0\n")
    assert sha(ckpt) == before   # training records are not the model
    enc = json.loads((ckpt / "speech_encoder.json").read_text())
    window = "pad30" if enc["window"] == "exact" else "exact"
    (ckpt / "speech_encoder.json").write_text(json.dumps({**enc, "window": window}))
    assert sha(ckpt) != before   # another window hears differently: cached answers must not be reused


def test_lm_eval_contexts_are_fed_untemplated(adapter):
    context = "Q: Is the sky blue?\nA: Yes\n\nQ: Is grass red?\nA:"
    opts = GenerationOptions(max_new_tokens=3)
    (raw,) = adapter.generate([Request("bbh", text=context, options=opts, raw_prompt=True)])
    (chat,) = adapter.generate([Request("chat", text=context, options=opts)])
    assert raw.prompt == context and chat.prompt != context and "<|im_start|>" in chat.prompt
    prompt = adapter.generator.prompt(text=context, raw=True)
    assert prompt.input_ids[0].tolist() == adapter.bundle.tokenizer(context)["input_ids"]
    with pytest.raises(UnsupportedRequest, match="raw prompt"):
        adapter.generate([Request("x", text=context, raw_prompt=True, system="Be brief.")])


def test_task_speech_step_bound_reaches_the_stream_config(adapter, question_audio):
    # generation: max_speech_steps (e.g. the latency task's) bounds the spoken answer; it can
    # only lower the model arg's cap (12 here), and text-only answers keep max_new_tokens
    assert adapter.stream_config.max_speech_steps == 12
    req = Request("b", audio=question_audio, output_modality="speech",
                  options=GenerationOptions(max_speech_steps=5))
    assert adapter._config(req).max_speech_steps == 5
    assert adapter._config(Request("u", text="hi", options=GenerationOptions(max_speech_steps=99))).max_speech_steps == 12
    assert adapter._config(Request("n", text="hi")).max_speech_steps == 12
    (r,) = adapter.generate([req])
    assert 0 < r.tokens["steps"] <= 5
    events = list(adapter.stream(req))  # the streaming path (the latency task's) is bounded too
    frames = sum(len(e.audio.samples) for e in events if e.kind == "audio") / adapter.bundle.codec.samples_per_frame
    assert frames <= 5


def test_hearing_lexicon_needs_a_piece_head(tiny_checkpoint):
    """hearing= is a model arg: a wrong value or a head that cannot spell words is the user's
    one line (UsageError), before any sample runs."""
    from deeptalk_eval.errors import UsageError
    from deeptalk_eval.models.deeptalk import DeepTalkAdapter

    with pytest.raises(UsageError, match="hearing must be 'greedy' or 'lexicon'"):
        DeepTalkAdapter(path=str(tiny_checkpoint), hearing="beam")
    with pytest.raises(UsageError, match="written must be one of plain, sentence, true_case"):
        DeepTalkAdapter(path=str(tiny_checkpoint), written="title")
    with pytest.raises(UsageError, match="needs a piece head; this checkpoint's projector is 'mlp'"):
        DeepTalkAdapter(path=str(tiny_checkpoint), hearing="lexicon")


def test_word_chunk_sizes_are_for_a_codec_that_speaks_words(tiny_checkpoint, adapter):
    """decoder_min_first / decoder_min_chunk size a phone codec's chunks: on this frame codec they
    are the user's one line before any sample runs; unset, they are not in the args (nor the
    fingerprint), so answers cached before they existed stay valid."""
    from deeptalk_eval.errors import UsageError
    from deeptalk_eval.models.deeptalk import DeepTalkAdapter

    with pytest.raises(UsageError, match="decoder_min_first / decoder_min_chunk: .*speaks whole words"):
        DeepTalkAdapter(path=str(tiny_checkpoint), decoder_min_first=4)
    assert not {"decoder_min_first", "decoder_min_chunk"} & set(adapter.args)
    assert adapter.stream_config.decoder_min_first is None


def test_a_piece_head_hears_in_words_with_hearing_lexicon(tiny_checkpoint, tmp_path, question_audio):
    """The same checkpoint with a (random) piece head: greedy hears letters, hearing=lexicon
    hears only words of the lexicon, and the checkpoint's own config is left as it was."""
    import json
    import shutil

    from safetensors.torch import save_file

    from deeptalk.hearing import hearing_pieces
    from deeptalk.speech.char_ctc import CharCTC, spelled
    from deeptalk.speech.encoder import SpeechEncoderConfig
    from deeptalk_eval.models.deeptalk import DeepTalkAdapter

    ckpt = tmp_path / "pieces"
    shutil.copytree(tiny_checkpoint, ckpt)
    torch.manual_seed(0)
    head = CharCTC(384, 64, 2, pieces=hearing_pieces(64))
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(ckpt / "speech_encoder.safetensors"))
    cfg = SpeechEncoderConfig(hidden_size=64, stride=2, projector="ctc_chars", pieces=64).to_dict()
    (ckpt / "speech_encoder.json").write_text(json.dumps(cfg))
    heard = {}
    for hearing in ("greedy", "lexicon"):
        a = DeepTalkAdapter(path=str(ckpt), hearing=hearing, max_speech_steps=4)
        out = a.generate([Request("s2t", audio=question_audio, options=GenerationOptions(max_new_tokens=2))])[0]
        heard[hearing] = spelled(out.extra["audio_flags"]["heard"]).split()  # the words, not their written form
        lexicon = a.bundle.encoder.projector.lexicon
        assert (lexicon is not None) == (hearing == "lexicon")
    assert set(heard["lexicon"]) <= set(lexicon.words)  # noise may hold no word at all
    assert heard["greedy"] and not set(heard["greedy"]) <= set(lexicon.words)  # a random head spells no words
    assert json.loads((ckpt / "speech_encoder.json").read_text())["decode"] == "greedy"


def test_generate_hears_each_input_once_and_stream_always_hears(adapter, question_audio, monkeypatch):
    """Batch evaluation hears a question once for all its tasks (same answers as hearing it
    again); stream(), which latency measures, hears every time."""
    from deeptalk_common.content_memo import ContentMemo
    from deeptalk_eval.api import collect_stream

    enc = adapter.bundle.encoder
    calls = []
    real = enc.encode_heard
    monkeypatch.setattr(enc, "encode_heard", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(adapter, "heard_memo", ContentMemo())
    opts = GenerationOptions(max_new_tokens=4)
    s2t = Request("s2t", audio=question_audio, options=opts)
    first = adapter.generate([s2t])[0]
    again = adapter.generate([s2t, Request("s2s", audio=question_audio, options=opts, output_modality="speech")])
    assert len(calls) == 1 and adapter.heard_memo.hits == 2
    assert (again[0].text, again[0].extra["audio_flags"]) == (first.text, first.extra["audio_flags"])
    streamed = [collect_stream(adapter.stream(s2t)) for _ in range(2)]
    assert len(calls) == 3 and all(s.text == first.text for s in streamed)
    louder = Request("louder", audio=Audio(question_audio.samples * 0.5, question_audio.sample_rate), options=opts)
    adapter.generate([louder])
    assert len(calls) == 4  # other samples: heard anew


def test_heard_memo_forgets_the_least_recently_used():
    from deeptalk_common.content_memo import ContentMemo

    x = np.zeros(8, np.float32)
    keys = {ContentMemo.key(x, 16000), ContentMemo.key(x, 22050), ContentMemo.key(x.astype(np.float64), 16000),
            ContentMemo.key(x[:4], 16000)}
    assert len(keys) == 4  # rate, dtype and length are part of what was heard
    memo = ContentMemo(max_items=2)
    memo.put("a", (1,))
    memo.put("b", (2,))
    assert memo.get("a") == (1,)
    memo.put("c", (3,))  # "b" was used least recently
    assert memo.get("b") is None and memo.get("a") == (1,) and memo.get("c") == (3,) and len(memo) == 2
    assert (memo.hits, memo.misses) == (3, 1)

"""Audio rows from symbols (deeptalk/audio_rows.py, the stage key `audio_init`): a phone code's
embedding and head row start as the LLM's text embedding of its phoneme, with the real SmolLM2
tokenizer and embeddings and the real phone codec (Piper joe's espeak-ng symbols)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from deeptalk.audio_rows import AudioRowsError, init_audio_rows_from_symbols
from deeptalk.config import SPECIAL_TOKENS, DeepTalkConfig
from deeptalk.modeling import DeepTalkForCausalLM
from deeptalk.training.build import check_audio_inits, start_audio_rows

pytest.importorskip("piper")


@pytest.fixture(scope="module")
def base():
    from deeptalk_common.base_llm import load_base_llm

    return load_base_llm()


@pytest.fixture(scope="module")
def codec():
    from deeptalk.speech.codec_loader import load_codec

    return load_codec("phones")


def model_on(base, codec) -> DeepTalkForCausalLM:
    """A 2-layer model of the real class whose text embeddings are SmolLM2's own."""
    dense, tok = base
    emb = dense.get_input_embeddings().weight
    cfg = DeepTalkConfig(vocab_size=len(tok) + len(SPECIAL_TOKENS), hidden_size=emb.shape[1], intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=9, num_key_value_heads=3, num_routed_experts=4,
                         num_shared_experts=1, num_experts_per_tok=2, num_codebooks=1,
                         codebook_size=codec.codebook_size, base_vocab_size=len(tok), special_tokens=list(SPECIAL_TOKENS),
                         eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = DeepTalkForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight[: emb.shape[0]] = emb
    return model


def code_of(codec, symbol: str) -> int:
    return codec.ids[symbol]


def test_each_code_starts_as_its_symbols_text_embedding(base, codec):
    dense, tok = base
    model = model_on(base, codec)
    before_embed = model.model.audio_embed.weight.clone()
    assert init_audio_rows_from_symbols(model, tok, codec.symbols) == len(codec.symbols)
    emb, embed, head = (p.detach() for p in (model.model.embed_tokens.weight, model.model.audio_embed.weight,
                                              model.audio_head.weight))
    for symbol in ("p", "ə", "ɹ", " "):
        ids = tok(symbol, add_special_tokens=False)["input_ids"]
        want = emb[ids].mean(0)
        assert torch.equal(embed[code_of(codec, symbol)], want) and torch.equal(head[code_of(codec, symbol)], want)
    # the specials (pad, bos, eos) stand for no symbol: their random rows stay
    for special in (model.config.audio_pad_id, model.config.audio_eos_id):
        assert torch.equal(embed[special], before_embed[special])

    def cos(a, b):
        return float(torch.cosine_similarity(embed[code_of(codec, a)], embed[code_of(codec, b)], dim=0))

    # what the LLM read lands in the rows: a voiced/voiceless pair sits closer than a consonant and a vowel
    assert cos("p", "b") > cos("p", "ɪ") + 0.2 and cos("t", "d") > cos("t", "ə") + 0.2


def test_the_stage_key(base, codec):
    _, tok = base
    model = model_on(base, codec)
    rows = model.model.audio_embed.weight.clone()
    start_audio_rows(model, tok, codec, "2.1", {}, fresh=True)                              # default: as upcycled
    start_audio_rows(model, tok, codec, "2.1", {"audio_init": "symbols"}, fresh=False)      # resumed: the state's
    assert torch.equal(model.model.audio_embed.weight, rows)
    start_audio_rows(model, tok, codec, "2.1", {"audio_init": "symbols"}, fresh=True)
    assert not torch.equal(model.model.audio_embed.weight, rows)
    with pytest.raises(ValueError, match="stage 2.1: audio_init must be one of"):
        start_audio_rows(model, tok, codec, "2.1", {"audio_init": "letters"}, fresh=True)
    # a recipe is checked before anything trains: a codec whose codes are not symbols cannot serve it
    recipe = {"codec": "offline", "stages": {"1": {}, "2.1": {"audio_init": "symbols"}}}
    check_audio_inits(recipe, codec)
    with pytest.raises(ValueError, match="stage 2.1: audio_init symbols needs a codec whose codes are symbols"):
        check_audio_inits(recipe, object())
    with pytest.raises(ValueError, match="stage 3: audio_init is read by stage 2.1 only"):
        check_audio_inits({"codec": "phones", "stages": {"3": {"audio_init": "symbols"}}}, codec)


def test_codes_that_are_not_symbols(base, codec):
    _, tok = base
    model = model_on(base, codec)
    with pytest.raises(AudioRowsError, match="not symbols"):
        init_audio_rows_from_symbols(model, tok, {})
    with pytest.raises(AudioRowsError, match="outside the model's codebook"):
        init_audio_rows_from_symbols(model, tok, {codec.codebook_size + 5: "p"})


def test_a_stage_starts_fresh_unless_resumed_from_its_state(tmp_path):
    """What `fresh` is in the pipeline: a stage re-run without --resume over an old state starts
    fresh (and so takes its audio rows from the symbols again)."""
    from deeptalk.training.stage_loop import resumes

    assert not resumes(tmp_path, True)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "progress.json").write_text('{"step": 50}')
    assert resumes(tmp_path, True) and not resumes(tmp_path, False)

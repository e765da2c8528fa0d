"""Phone units (deeptalk/speech/codec_phones.py): real espeak-ng phonemes, real Piper joe, real Whisper."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("piper")

from deeptalk.speech.codec import CodecError  # noqa: E402
from deeptalk.speech.codec_loader import load_codec  # noqa: E402

SENTENCE = "The river flows quietly past the old stone mill."


@pytest.fixture(scope="module")
def codec():
    return load_codec("phones")


def test_text_to_phonemes_and_back(codec):
    codes = codec.encode_text(SENTENCE)
    assert codes.dtype == np.int64 and codes.shape[0] == 1
    assert 30 < codes.shape[1] < 70
    assert int(codes.max()) < codec.codebook_size
    shown = codec.phonemes(codes)
    assert shown.endswith(".") and shown.count(" ") == len(SENTENCE.split()) - 1
    audio = codec.decode(codes)
    seconds = len(audio) / codec.sample_rate
    assert audio.dtype == np.float32 and 1.5 < seconds < 5
    # positions per second near the codec's nominal rate (durations come from the voice)
    assert 0.6 < codes.shape[1] / seconds / codec.frame_rate < 1.5


def test_decoding_is_deterministic_and_intelligible(codec):
    from whisper.normalizers import EnglishTextNormalizer

    from deeptalk.speech.encoder import prepare_audio
    from deeptalk.speech.speech_wer import WhisperASR, wer_counts

    codes = codec.encode_text(SENTENCE)
    a, b = codec.decode(codes), codec.decode(codes)
    assert np.array_equal(a, b)
    errors, words = wer_counts(SENTENCE, WhisperASR()(prepare_audio(a, codec.sample_rate).samples),
                               EnglishTextNormalizer())
    assert errors / words <= 0.2


def test_encode_from_audio_reads_the_words_back(codec):
    from deeptalk_common.tts import synthesize

    wav, sr = synthesize(SENTENCE, "piper", "joe", seed=0)
    heard = codec.encode(wav, sr)
    ref = codec.encode_text(SENTENCE)
    # Whisper's transcript phonemised: the same phonemes up to an ASR slip
    import jiwer

    assert jiwer.cer(codec.phonemes(ref), codec.phonemes(heard)) < 0.15


def test_silent_ids_and_empty_codes(codec):
    assert len(codec.decode(np.zeros((1, 0), np.int64))) == 0
    silent = np.asarray([sorted(codec.silent)], np.int64)
    assert len(codec.decode(silent)) == 0
    codes = codec.encode_text("Hello there.")
    mixed = np.insert(codes, 1, min(codec.silent), axis=1)   # a stray pad id changes nothing
    assert np.array_equal(codec.decode(mixed), codec.decode(codes))
    with pytest.raises(CodecError, match="outside"):
        codec.decode(np.asarray([[codec.codebook_size]]))


def test_streaming_speaks_whole_words_in_order(codec):
    codes = codec.encode_text("Water boils at one hundred degrees. It freezes at zero.")
    dec = codec.stream_decoder()
    chunks = [dec.push(codes[:, k:k + 2]) for k in range(0, codes.shape[1], 2)]
    chunks.append(dec.flush())
    spoken = [c for c in chunks if len(c)]
    assert len(spoken) >= 2                            # audio arrives before the end
    first = next(i for i, c in enumerate(chunks) if len(c))
    assert 2 * (first + 1) >= dec.min_first            # the first chunk waited for min_first phonemes
    assert 2 * first < codes.shape[1] // 2             # ... but not for the end
    total = sum(len(c) for c in spoken) / codec.sample_rate
    whole = len(codec.decode(codes)) / codec.sample_rate
    assert 0.8 < total / whole < 1.6                   # chunk edges add little silence
    assert dec.frames == codes.shape[1]


def test_checkpoint_codec_reference_and_describe(codec):
    d = codec.describe()
    assert d["name"] == "phones" and d["num_codebooks"] == 1 and d["voice"] == "joe"
    assert d["piper-tts"] and d["noise_scale"] == 0.0
    with pytest.raises(CodecError, match="piper voice"):
        load_codec("phones:/nonexistent/voice.onnx")


def test_spoken_answer_turns_from_phones(codec):
    """Stage 2.1's "repeat this sentence" turns and written-question turns take their codes from the text."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from deeptalk.config import DeepTalkConfig
    from deeptalk.delay import undo_delay_pattern
    from deeptalk.sequence import SPEECH_MODALITY
    from deeptalk.training.examples import REPEAT_TEMPLATES, repeat_examples, spoken_codes

    ref = Path(__file__).resolve().parents[1] / "checkpoints" / "reference"
    tok = AutoTokenizer.from_pretrained(ref)
    config = DeepTalkConfig.from_pretrained(ref)
    config.num_codebooks, config.codebook_size = 1, codec.codebook_size
    # the block layout routed to the speech side (the shipped reference writes words; its test is
    # tests/test_answer_layout_words.py)
    config.answer_layout, config.answer_routing = "block", "speech"
    texts = ["The bell rang twice.", "Snow fell on the quiet town."]
    codes = spoken_codes(codec, texts)
    assert [c.shape[1] for c in codes] == [codec.encode_text(t).shape[1] for t in texts]
    ex = repeat_examples(texts, codes, tok, config, seed=0)
    for e, t, c in zip(ex, texts, codes):
        prompt = tok.decode(e.ids[: e.labels.index(next(l for l in e.labels if l != -100))])
        assert any(tpl.format(text=t).split(":")[0] in prompt for tpl in REPEAT_TEMPLATES) and t in prompt
        start = next(i for i, l in enumerate(e.labels) if l != -100)
        assert set(e.modality[start:]) == {SPEECH_MODALITY}
        grid = e.audio[:, start:]
        assert torch.equal(undo_delay_pattern(grid, c.shape[1]), torch.as_tensor(c))
        # the text channel trains its words and its end (as the end of turn); the forced pads train nothing
        words = tok(t, add_special_tokens=False)["input_ids"]
        assert e.labels[start:start + len(words) + 1] == words + [tok.eos_token_id]
        assert e.ids[start + len(words)] == config.special_token_id("<|text_end|>")
        assert all(x == -100 for x in e.labels[start + len(words) + 1:])
        assert len(e.labels) - start > len(words) + 10     # the audio runs on past the text

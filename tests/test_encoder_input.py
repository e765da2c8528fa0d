"""Speech input: resampling, bad-input errors, the exact window, and the projector shapes.

Uses a tiny random Whisper built from openai-whisper's own classes (fast); the real
tiny.en check is in test_encoder_whisper_tiny (runs when the offline weights load).
"""
import math

import numpy as np
import pytest
import torch
from whisper.model import ModelDimensions, Whisper

from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig, prepare_audio


@pytest.fixture(scope="module")
def tiny_whisper_encoder():
    torch.manual_seed(0)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=2,
                           n_vocab=64, n_text_ctx=8, n_text_state=32, n_text_head=2, n_text_layer=1)
    return Whisper(dims).encoder


def tone(sr, seconds, freq=220.0, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100, 48000])
def test_resamples_any_rate_to_16k(sr):
    a = prepare_audio(tone(sr, 1.0), sr)
    assert abs(len(a.samples) - 16000) <= 1
    assert a.num_frames == math.ceil(len(a.samples) / 320)
    # the 220 Hz tone survives resampling: its spectral peak stays at 220 Hz
    spec = np.abs(np.fft.rfft(a.samples))
    assert abs(np.argmax(spec) * 16000 / len(a.samples) - 220) < 2


def test_stereo_is_downmixed():
    x = np.stack([tone(16000, 0.5), tone(16000, 0.5)])
    assert prepare_audio(x, 16000).samples.shape == (8000,)


def test_empty_audio_is_a_clear_error():
    with pytest.raises(ValueError, match="q17: empty audio"):
        prepare_audio(np.zeros(0, np.float32), 16000, name="q17")


def test_nan_audio_is_named():
    x = tone(16000, 0.5)
    x[100] = np.nan
    with pytest.raises(ValueError, match=r"q3: 1 non-finite samples \(NaN\) at index 100"):
        prepare_audio(x, 16000, name="q3")


def test_bad_sample_rate():
    with pytest.raises(ValueError, match="invalid sample rate"):
        prepare_audio(tone(16000, 0.1), 0)


def test_clipping_is_clamped_and_flagged_silence_flagged():
    a = prepare_audio(tone(16000, 0.5, amp=3.0), 16000)
    assert a.clipped and np.abs(a.samples).max() <= 1.0
    s = prepare_audio(np.zeros(16000, np.float32), 16000)
    assert s.silent and not s.clipped


def test_exact_window_mel_equals_pad30_prefix(tiny_whisper_encoder):
    enc = SpeechEncoder(tiny_whisper_encoder, SpeechEncoderConfig(hidden_size=24, stride=2))
    a = prepare_audio(tone(16000, 1.37), 16000)
    exact = enc.mel(a)
    enc.config.window = "pad30"
    full = enc.mel(a)
    assert exact.shape == (80, 2 * a.num_frames) and full.shape == (80, 3000)
    torch.testing.assert_close(exact, full[:, : exact.shape[1]], rtol=0, atol=1e-5)


@pytest.mark.parametrize("window", ["exact", "pad30"])
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_positions_and_hidden_size(tiny_whisper_encoder, window, stride):
    enc = SpeechEncoder(tiny_whisper_encoder, SpeechEncoderConfig(hidden_size=24, stride=stride, window=window))
    emb, a = enc.encode(tone(22050, 0.9), 22050, name="x")
    assert emb.shape == (math.ceil(a.num_frames / stride), 24)
    assert torch.isfinite(emb).all()


def test_silence_does_not_crash(tiny_whisper_encoder):
    enc = SpeechEncoder(tiny_whisper_encoder, SpeechEncoderConfig(hidden_size=24))
    emb, a = enc.encode(np.zeros(4000, np.float32), 16000)
    assert a.silent and torch.isfinite(emb).all()


def test_only_projector_trains(tiny_whisper_encoder):
    enc = SpeechEncoder(tiny_whisper_encoder, SpeechEncoderConfig(hidden_size=24))
    enc.train()
    assert not enc.whisper.training
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projector.") for n in trainable)
    feats = [enc.whisper_features(prepare_audio(tone(16000, 0.4), 16000)),
             enc.whisper_features(prepare_audio(tone(16000, 0.7), 16000))]
    out, lengths = enc(feats)
    assert lengths.tolist() == [10, 18] and out.shape == (2, 18, 24)
    out.sum().backward()
    assert enc.projector.fc1.weight.grad is not None

"""SNAC adapter: the 7-token layout and the wrapper's shapes.

Real SNAC weights cannot be fetched here, so the wrapper runs a tiny randomly initialised
`snac.SNAC` with the 24 kHz model's rates and strides (only the widths are shrunk).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deeptalk.speech.codec import CodecError
from deeptalk.speech.codec_snac import SNACCodec, flatten_snac_codes, unflatten_snac_codes


@pytest.fixture(scope="module")
def tiny_snac() -> SNACCodec:
    snac = pytest.importorskip("snac")
    torch.manual_seed(0)
    model = snac.SNAC(sampling_rate=24000, encoder_dim=4, encoder_rates=[2, 4, 8, 8], decoder_dim=32,
                      decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=64, codebook_dim=4,
                      vq_strides=[4, 2, 1], noise=True)
    return SNACCodec(model)


def test_flatten_layout_and_round_trip():
    t = 5
    c0 = torch.arange(t)[None]
    c1 = 100 + torch.arange(2 * t)[None]
    c2 = 200 + torch.arange(4 * t)[None]
    flat = flatten_snac_codes([c0, c1, c2])
    assert flat.shape == (7, t) and flat.dtype == np.int64
    # column t holds the step's 1 + 2 + 4 tokens, coarse to fine
    assert flat[:, 2].tolist() == [2, 104, 105, 208, 209, 210, 211]
    back = unflatten_snac_codes(flat)
    assert all(torch.equal(a, b) for a, b in zip(back, [c0, c1, c2]))
    with pytest.raises(CodecError, match="T, 2T, 4T"):
        flatten_snac_codes([c0, c1[:, :-1], c2])
    with pytest.raises(CodecError, match=r"\[7, T\]"):
        unflatten_snac_codes(np.zeros((6, 3), np.int64))


def test_wrapper_shapes(tiny_snac):
    c = tiny_snac
    assert (c.sample_rate, c.samples_per_frame, c.num_codebooks, c.codebook_size) == (24000, 2048, 7, 64)
    assert c.frame_rate == pytest.approx(11.71875) and c.frame_rate * c.num_codebooks == pytest.approx(82.03125)
    wav = (0.3 * np.sin(np.arange(16000) * 0.07)).astype(np.float32)      # 1 s at 16 kHz
    codes = c.encode(wav, 16000)
    assert codes.shape == (7, 12) and codes.dtype == np.int64               # ceil(24000 / 2048)
    assert codes.min() >= 0 and codes.max() < 64
    audio = c.decode(codes)
    assert audio.dtype == np.float32 and audio.shape == (12 * 2048,) and np.isfinite(audio).all()
    assert np.array_equal(audio, c.decode(codes))          # the decoder's noise is seeded: repeatable
    # the rows re-assemble into what SNAC itself produced
    ref = c.model.encode(torch.from_numpy(np.pad(
        __import__("librosa").resample(wav, orig_sr=16000, target_sr=24000), (0, 0)))[None, None])
    assert np.array_equal(flatten_snac_codes(ref), codes)
    with pytest.raises(CodecError, match="outside"):
        c.decode(np.full((7, 2), 64))


def test_missing_weights_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        (tmp_path / "config.json").write_text("{}")
        SNACCodec.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="not on disk and the hub is unreachable"):
        SNACCodec.load("someone/not-a-local-dir")

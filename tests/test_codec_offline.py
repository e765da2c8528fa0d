"""The shipped offline codec: round trip on real speech, chunked decoding, files, bad codes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deeptalk.speech.codec import CodecError, SpeechCodec
from deeptalk.speech.codec_loader import load_codec
from deeptalk.speech.codec_offline import DEFAULT_PATH, OfflineCodec, fit_residual_kmeans


@pytest.fixture(scope="session")
def codec() -> OfflineCodec:
    return load_codec("offline")


@pytest.fixture(scope="session")
def speech(tmp_path_factory):
    """A real Piper sentence (held-out style text), synthesised once into a private cache."""
    import os

    from deeptalk_common.tts import synthesize

    old = os.environ.get("DEEPTALK_CACHE")
    os.environ["DEEPTALK_CACHE"] = str(tmp_path_factory.mktemp("tts"))
    try:
        return synthesize("The capital of Kenya is Nairobi, and a young goose is a gosling.", "piper", "joe")
    finally:
        os.environ.pop("DEEPTALK_CACHE") if old is None else os.environ.__setitem__("DEEPTALK_CACHE", old)


def test_shipped_file_and_manifest(codec):
    assert DEFAULT_PATH.is_file() and DEFAULT_PATH.stat().st_size <= 8 * 2 ** 20
    manifest = json.loads(DEFAULT_PATH.with_suffix(".json").read_text())
    assert manifest["num_codebooks"] == codec.num_codebooks <= 8
    assert codec.frame_rate <= 25 and manifest["frame_rate"] == pytest.approx(codec.frame_rate)
    assert codec.codebook_size & (codec.codebook_size - 1) == 0           # a power of two
    assert {"training_data", "seed", "versions", "file_sha256"} <= set(manifest)
    assert isinstance(codec, SpeechCodec)


def test_round_trip_on_speech(codec, speech):
    wav, sr = speech
    codes = codec.encode(wav, sr)
    n_pos = -(-len(wav) // codec.samples_per_frame)
    assert codes.shape == (codec.num_codebooks, n_pos) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < codec.codebook_size
    audio = codec.decode(codes)
    assert audio.dtype == np.float32 and len(audio) == n_pos * codec.samples_per_frame
    assert np.abs(audio).max() <= 1.0 and np.sqrt(np.mean(audio ** 2)) > 0.01

    # quantised log-mel is close to the unquantised one, far closer than a mean-only guess
    feats = codec.features(wav, sr)
    exact = codec.vectors_to_log_mel(feats)
    quant = codec.vectors_to_log_mel(codec.dequantize(codes))
    mean_only = np.broadcast_to(codec.mel_mean, exact.shape)
    err, base = np.abs(quant - exact).mean(), np.abs(mean_only - exact).mean()
    assert err < 0.35 * base, (err, base)
    # the residual stages help: using only the first codebook is worse
    first = codec.codebooks[0][codes[0]].numpy()
    assert np.abs(codec.vectors_to_log_mel(first) - exact).mean() > 1.2 * err

    # decoded audio re-analysed is close to the input's log-mel (the vocoder works)
    again = codec.front.log_mel(audio)[:, : exact.shape[1]]
    assert np.abs(again - exact).mean() < 0.6 * base


def test_encode_resamples_other_rates(codec, speech):
    import librosa

    wav, sr = speech
    wav16 = librosa.resample(wav, orig_sr=sr, target_sr=16000)
    codes = codec.encode(wav16, 16000)
    back = librosa.resample(wav16, orig_sr=16000, target_sr=sr)     # what encode() resamples to
    assert codes.shape[1] == -(-len(back) // codec.samples_per_frame)
    native = codec.encode(wav, sr)
    n = min(codes.shape[1], native.shape[1])  # resampling rounding may add or drop one frame
    assert abs(codes.shape[1] - native.shape[1]) <= 1
    assert np.mean(codes[0, :n] == native[0, :n]) > 0.5


def test_chunked_decode_matches_full(codec, speech):
    wav, sr = speech
    codes = codec.encode(wav, sr)
    full = codec.decode(codes)
    dec = codec.stream_decoder(left_context=8, lookahead=1)
    parts = [dec.push(codes[:, :2])]                   # a small first chunk, then bigger ones
    parts += [dec.push(codes[:, s : s + 8]) for s in range(2, codes.shape[1], 8)]
    parts.append(dec.flush())
    streamed = np.concatenate(parts)
    assert len(parts[0]) > 0 and len(streamed) == len(full)
    gap = np.abs(codec.front.log_mel(streamed) - codec.front.log_mel(full)).mean()
    assert gap < 0.1, gap
    # left context matters: without it chunks decode worse
    dec0 = codec.stream_decoder(left_context=0, lookahead=0, crossfade=0)
    cold = np.concatenate([dec0.push(codes[:, s : s + 2]) for s in range(0, codes.shape[1], 2)] + [dec0.flush()])
    assert np.abs(codec.front.log_mel(cold) - codec.front.log_mel(full)).mean() > gap


def test_save_load_round_trip(codec, speech, tmp_path):
    wav, sr = speech
    path = codec.save(tmp_path / "c.safetensors", {"note": "test"})
    again = load_codec(path)
    assert np.array_equal(again.encode(wav, sr), codec.encode(wav, sr))
    assert json.loads(path.with_suffix(".json").read_text())["note"] == "test"


def test_bad_inputs(codec):
    q = codec.num_codebooks
    with pytest.raises(CodecError, match=r"outside \[0, "):
        codec.decode(np.full((q, 3), codec.codebook_size))
    with pytest.raises(CodecError, match="codebook 1, frame 2"):
        bad = np.zeros((q, 4), np.int64)
        bad[1, 2] = -1
        codec.decode(bad)
    with pytest.raises(CodecError, match=r"codes must be \["):
        codec.decode(np.zeros((q + 1, 3), np.int64))
    with pytest.raises(CodecError, match="NaN"):
        codec.encode(np.array([0.0, np.nan, 0.0], np.float32), 16000)
    with pytest.raises(CodecError, match="sample rate"):
        codec.encode(np.zeros(100, np.float32), 0)
    with pytest.raises(CodecError, match="unknown codec"):
        load_codec("encodec")
    assert codec.encode(np.zeros(0, np.float32), 22050).shape == (q, 0)
    assert codec.decode(np.zeros((q, 0), np.int64)).shape == (0,)


def test_residual_kmeans_each_stage_reduces_error():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3000, 16)) * np.linspace(2, 0.2, 16)).astype(np.float32)
    books = fit_residual_kmeans(x, num_codebooks=3, codebook_size=32, seed=0, progress=False)
    assert books.shape == (3, 32, 16)
    errs, r = [], x.copy()
    import torch

    from deeptalk.speech.codec_offline import nearest

    for cb in books:
        cb = torch.from_numpy(cb)
        r = r - cb[nearest(torch.from_numpy(r), cb)].numpy()
        errs.append(float((r ** 2).mean()))
    assert errs[0] < 0.6 * float((x ** 2).mean()) and errs[1] < errs[0] and errs[2] < errs[1]


def test_pca_projection_codec_round_trips_through_its_file(tmp_path):
    from deeptalk.speech.codec_offline import pca_projection

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(2000, 320)) * np.linspace(3, 0.1, 320)).astype(np.float32)
    proj = pca_projection(x, 24)
    assert proj.shape == (320, 24) and np.allclose(proj.T @ proj, np.eye(24), atol=1e-4)
    books = fit_residual_kmeans(x @ proj, 2, 16, seed=0, impl="torch", progress=False)
    codec = OfflineCodec(books, np.zeros(80), np.ones(80), stack=4, projection=proj)
    codes = codec.quantize(x[:50])
    assert codes.shape == (2, 50) and codec.dequantize(codes).shape == (50, 320)
    again = load_codec(codec.save(tmp_path / "p.safetensors"))
    assert np.array_equal(again.quantize(x[:50]), codes)
    with pytest.raises(CodecError, match="projection must be"):
        OfflineCodec(books, np.zeros(80), np.ones(80), stack=4, projection=proj[:100])

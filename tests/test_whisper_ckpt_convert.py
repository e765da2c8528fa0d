"""Whisper CT2 -> openai-whisper conversion, checked against CTranslate2 itself."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

from deeptalk_common.whisper_ckpt import (
    CT2FormatError,
    convert_ct2_dir,
    ct2_to_openai_whisper,
    load_converted,
    load_whisper,
    read_ct2_model,
    whisper_ct2_dir,
)

FRONT_LEFT = "/usr/share/sounds/alsa/Front_Left.wav"


def _mel16k(path, n_mels):
    import whisper
    from scipy.signal import resample_poly

    x, sr = sf.read(path, dtype="float32")
    assert sr == 48000
    x16 = resample_poly(x, 1, 3).astype(np.float32)
    return whisper.log_mel_spectrogram(whisper.pad_or_trim(x16), n_mels)


@pytest.fixture(scope="module")
def tiny_ct2():
    return whisper_ct2_dir("tiny.en")


@pytest.fixture(scope="module")
def tiny_vars(tiny_ct2):
    return read_ct2_model(tiny_ct2 / "model.bin")


@pytest.fixture(scope="module")
def tiny(tiny_ct2, tmp_path_factory):
    out = convert_ct2_dir(tiny_ct2, tmp_path_factory.mktemp("whisper_tiny"))
    return load_converted(out)


def test_reader_parses_shipped_tiny_en(tiny_vars):
    spec, v = tiny_vars
    assert spec == "WhisperSpec"
    assert v["decoder/embeddings/weight"].dtype == np.float16
    # The output projection is an alias of the token embedding, resolved to the same array.
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]
    assert int(v["encoder/num_heads"]) == 6


def test_strict_load_and_size(tiny, tiny_vars):
    import whisper.model

    fresh = whisper.model.Whisper(tiny.dims)
    assert set(fresh.state_dict()) == set(tiny.state_dict())  # load_state_dict(strict=True) passed too
    n = sum(p.numel() for p in tiny.parameters())
    assert round(n / 1e6, 1) == 37.2
    assert not tiny.is_multilingual and tiny.dims.n_vocab == 51864
    # q/k/v are the three row blocks of CT2's fused projection.
    fused = tiny_vars[1]["encoder/layer_2/self_attention/linear_0/weight"].astype(np.float32)
    k = tiny.encoder.blocks[2].attn.key.weight.detach().numpy()
    np.testing.assert_array_equal(k, fused[384:768])
    assert tiny.encoder.blocks[2].attn.key.bias is None


def test_encoder_matches_ctranslate2(tiny, tiny_ct2):
    import ctranslate2

    mel = _mel16k(FRONT_LEFT, tiny.dims.n_mels)
    with torch.no_grad():
        ours = tiny.encoder(mel[None]).numpy()
    ct2 = ctranslate2.models.Whisper(str(tiny_ct2), device="cpu", compute_type="float32")
    ref = np.array(ct2.encode(ctranslate2.StorageView.from_array(mel[None].numpy()), to_cpu=True))
    assert ref.shape == ours.shape == (1, 1500, 384)
    diff = np.abs(ref - ours)
    # Measured: max 3.6e-5 on features of magnitude up to ~13 (float32 summation order).
    assert diff.max() < 1e-4, diff.max()
    assert diff.mean() < 1e-5, diff.mean()


def test_transcribes_real_recording(tiny):
    import whisper

    mel = _mel16k(FRONT_LEFT, tiny.dims.n_mels)
    opts = whisper.DecodingOptions(language="en", temperature=0.0, without_timestamps=True, fp16=False)
    from whisper.normalizers import EnglishTextNormalizer

    result = whisper.decode(tiny, mel, opts)
    assert EnglishTextNormalizer()(result.text) == "front left", result.text


def test_load_whisper_caches_safetensors(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPTALK_CACHE", str(tmp_path))
    model = load_whisper("tiny.en")
    ckpt = tmp_path / "whisper" / "tiny.en"
    meta = json.loads((ckpt / "dims.json").read_text())
    assert meta["dims"]["n_text_layer"] == model.dims.n_text_layer == 4
    assert meta["source_sha256"] == model.source_sha256
    stamp = (ckpt / "model.safetensors").stat().st_mtime_ns
    again = load_whisper("tiny.en")  # second load reads the cache, does not convert again
    assert (ckpt / "model.safetensors").stat().st_mtime_ns == stamp
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_truncated_model_bin_is_named(tiny_ct2, tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes((tiny_ct2 / "model.bin").read_bytes()[:5000])
    with pytest.raises(CT2FormatError, match=r"model\.bin.*truncated"):
        read_ct2_model(bad)


def test_wrong_version_is_named(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(struct.pack("<I", 2) + b"\0" * 16)
    with pytest.raises(CT2FormatError, match="version 2"):
        read_ct2_model(bad)


def test_unknown_variable_is_refused(tiny_vars):
    v = dict(tiny_vars[1])
    v["encoder/layer_0/extra/weight"] = np.zeros(3, np.float16)
    with pytest.raises(CT2FormatError, match="extra"):
        ct2_to_openai_whisper(v)


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="no-such-whisper"):
        load_whisper("no-such-whisper")


@pytest.mark.slow
def test_base_converts_and_matches_ctranslate2(tmp_path, monkeypatch):
    import ctranslate2

    monkeypatch.setenv("DEEPTALK_CACHE", str(tmp_path))
    model = load_whisper("base")
    assert model.is_multilingual and model.dims.n_audio_state == 512
    mel = _mel16k(FRONT_LEFT, model.dims.n_mels)
    with torch.no_grad():
        ours = model.encoder(mel[None]).numpy()
    ct2 = ctranslate2.models.Whisper(str(whisper_ct2_dir("base")), device="cpu", compute_type="float32")
    ref = np.array(ct2.encode(ctranslate2.StorageView.from_array(mel[None].numpy()), to_cpu=True))
    diff = np.abs(ref - ours)
    # Measured: max 4.3e-4 on features up to ~24, mean 1.8e-6.
    assert diff.max() < 2e-3 and diff.mean() < 1e-5, (diff.max(), diff.mean())


def test_int8_ct2_weights_are_dequantised(tiny_vars, tiny):
    # CTranslate2's int8 layout: q = rint(w * scale) per output row, scale = 127 / max|row|,
    # stored next to the weight as `<layer>/weight_scale`.
    v = dict(tiny_vars[1])
    name = "encoder/layer_1/ffn/linear_0/weight"
    w = v[name].astype(np.float32)
    scale = 127.0 / np.abs(w).max(axis=1)
    v[name] = np.rint(w * scale[:, None]).astype(np.int8)
    v[name.replace("weight", "weight_scale")] = scale.astype(np.float32)
    _, sd = ct2_to_openai_whisper(v)
    got = sd["encoder.blocks.1.mlp.0.weight"]
    assert got.dtype == np.float32
    ref = tiny.encoder.blocks[1].mlp[0].weight.detach().numpy()
    # Error bounded by half a quantisation step per row.
    assert np.all(np.abs(got - ref) <= 0.5 / scale[:, None] + 1e-6)
    del v[name.replace("weight", "weight_scale")]
    with pytest.raises(CT2FormatError, match="weight_scale"):
        ct2_to_openai_whisper(v)

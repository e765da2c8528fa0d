"""The offline codec's mel refiner: how far it looks, training on real speech, the codec file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deeptalk.speech.codec import CodecError
from deeptalk.speech.codec_loader import load_codec
from deeptalk.speech.codec_offline import DEFAULT_PATH, OfflineCodec
from deeptalk.speech.mel_refiner import MelRefiner, RefinerConfig, train_refiner, training_pairs


@pytest.fixture(scope="module")
def codec() -> OfflineCodec:
    return load_codec("offline", refine=False)


@pytest.fixture(scope="module")
def pairs(codec, tmp_path_factory):
    """(exact, quantised) normalised vectors and utterance lengths of three real Piper sentences."""
    import os

    from deeptalk_common.tts import synthesize

    old = os.environ.get("DEEPTALK_CACHE")
    os.environ["DEEPTALK_CACHE"] = str(tmp_path_factory.mktemp("tts"))
    try:
        texts = ["The museum opens at nine on the fourth of May.",
                 "Please bring two tickets to the old bridge before seven.",
                 "Which planet is the largest in our solar system?"]
        feats = [codec.features(*synthesize(t, "piper", "joe")) for t in texts]
    finally:
        os.environ.pop("DEEPTALK_CACHE") if old is None else os.environ.__setitem__("DEEPTALK_CACHE", old)
    exact = np.concatenate(feats)
    return exact, codec.dequantize(codec.quantize(exact)), [len(f) for f in feats]


def test_receptive_field_matches_the_config():
    cfg = RefinerConfig(channels=16, blocks=3)
    model = MelRefiner(cfg)
    for p in model.parameters():           # non-zero everywhere, so every path carries signal
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, cfg.n_mels, 80)
    bumped = x.clone()
    bumped[..., 40] += 1.0
    changed = torch.nonzero((model(bumped) - model(x)).abs().sum(1)[0] > 0).flatten()
    # frame 40 reaches outputs from 40 - right_context to 40 + left_context, no further
    assert changed.min().item() == 40 - cfg.right_context
    assert changed.max().item() == 40 + cfg.left_context


def test_shipped_refiner_fits_the_streaming_lookahead():
    """The stream decoder holds back 1 position: the refiner must not look further ahead."""
    shipped = load_codec("offline")
    if shipped.refiner is None:
        pytest.skip("the shipped codec has no mel refiner")
    assert shipped.refiner.cfg.right_context <= shipped.stack
    assert shipped.refiner.cfg.left_context <= 8 * shipped.stack      # the decoder's left context
    assert shipped.manifest["refiner"]["val_heldout_quiz"]
    # a window with 5 positions of left context and 1 held back refines its inside like the full decode
    codes = np.random.default_rng(0).integers(0, shipped.codebook_size, (shipped.num_codebooks, 40))
    full, window = shipped.codes_to_log_mel(codes), shipped.codes_to_log_mel(codes[:, 10:30])
    s = shipped.stack
    assert np.allclose(window[:, 5 * s : 19 * s], full[:, 15 * s : 29 * s], atol=1e-4)
    assert not np.allclose(window[:, 19 * s :], full[:, 29 * s : 30 * s], atol=1e-4)   # its right edge does not


def test_starts_as_identity():
    model = MelRefiner(RefinerConfig(channels=8, blocks=1))
    mel = np.random.default_rng(0).normal(size=(80, 24)).astype(np.float32)
    assert np.array_equal(model.refine(mel), mel)


def test_crops_stay_inside_one_utterance():
    exact = np.zeros((10, 320), np.float32)
    _, _, starts = training_pairs(exact, exact, [3, 7], stack=4, n_mels=80, crop=12)
    # 3-position utterance: one crop at frame 0; 7 positions: crops at positions 3..7 - 3
    assert starts.tolist() == [0, 12, 16, 20, 24, 28]
    with pytest.raises(ValueError, match="sum to"):
        training_pairs(exact, exact, [3, 3], stack=4, n_mels=80, crop=12)
    with pytest.raises(ValueError, match="no utterance"):
        training_pairs(exact, exact, [10], stack=4, n_mels=80, crop=64)


def test_training_brings_quantised_mels_closer_on_real_speech(pairs):
    exact, quantised, lengths = pairs
    cfg = RefinerConfig(channels=32, blocks=2)
    model, record = train_refiner(exact, quantised, lengths, cfg, steps=200, batch=8, crop=32, lr=3e-3,
                                  seed=0, progress=False, val=(quantised, exact))
    assert record["steps"] == 200 and record["parameters"] == sum(p.numel() for p in model.parameters())
    assert record["val"]["l1_refined"] < 0.9 * record["val"]["l1_quantised"], record["val"]
    # seeded: the same call gives the same weights
    again, _ = train_refiner(exact, quantised, lengths, cfg, steps=200, batch=8, crop=32, lr=3e-3, seed=0,
                             progress=False)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_codec_file_carries_the_refiner(codec, pairs, tmp_path):
    exact, quantised, lengths = pairs
    model, _ = train_refiner(exact, quantised, lengths, RefinerConfig(channels=16, blocks=1), steps=20,
                             batch=4, crop=32, seed=1, progress=False)
    with_refiner = OfflineCodec(codec.codebooks.numpy(), codec.mel_mean, codec.mel_std, stack=codec.stack,
                                refiner=model)
    path = with_refiner.save(tmp_path / "r.safetensors")
    loaded, raw = load_codec(path), load_codec(path, refine=False)
    codes = codec.quantize(exact)
    assert loaded.refiner is not None and loaded.describe()["refiner"]["channels"] == 16
    assert raw.describe()["refiner"] is None
    assert np.array_equal(raw.codes_to_log_mel(codes), codec.codes_to_log_mel(codes))
    refined = loaded.codes_to_log_mel(codes)
    assert np.abs(refined - with_refiner.codes_to_log_mel(codes)).max() < 1e-2     # fp16 weights in the file
    assert not np.allclose(refined, raw.codes_to_log_mel(codes))
    audio = loaded.decode(codes)
    assert len(audio) == codes.shape[1] * loaded.samples_per_frame and np.isfinite(audio).all()
    with pytest.raises(CodecError, match="refiner is for"):
        OfflineCodec(np.zeros((1, 2, 160), np.float32), codec.mel_mean, codec.mel_std, stack=2, refiner=model)
    with pytest.raises(TypeError, match="unknown offline codec option"):
        load_codec(DEFAULT_PATH, refiner=False)


def test_refine_cli_writes_a_codec_with_its_record(tmp_path, monkeypatch):
    """`deeptalk-codec refine` end to end on a tiny draw of the real refiner speech."""
    import json

    from deeptalk.speech.codec_cli import main
    from deeptalk_common import tts

    if not all(tts.engine_available(e) for e in ("piper", "flite", "festival")):
        pytest.skip("piper, flite and festival are needed (scripts/bootstrap.sh installs them as root)")
    monkeypatch.setenv("DEEPTALK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "codec.safetensors"
    assert main(["refine", "--per-voice", "2", "--steps", "4", "--batch", "2", "--crop", "16", "--channels", "8",
                 "--blocks", "1", "--val-n", "2", "--out", str(out)]) == 0
    codec = load_codec(out)
    record = json.loads(out.with_suffix(".json").read_text())["refiner"]
    assert codec.refiner is not None and codec.refiner.cfg.channels == 8 and record["steps"] == 4
    assert record["training_data"]["utterances"] == 2 * 7 + 2 * 3 + 2 * 4
    assert "festival/lj-fi" in record["training_data"]["voices"]
    assert set(record["val_heldout_quiz"]) == {"flite/slt", "piper/joe"}
    # the codes are the shipped codec's: only decoding changed
    shipped = load_codec("offline", refine=False)
    assert np.array_equal(codec.codebooks.numpy(), shipped.codebooks.numpy())

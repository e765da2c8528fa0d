"""The unit decoder (deeptalk/speech/unit_decoder.py), its training pairs and its trainer, on
real speech: Piper joe through the real Whisper tiny.en encoder and a small fitted units codec."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from test_codec_units import fitted

from deeptalk.speech import unit_pairs
from deeptalk.speech.codec_units import UNIT_MEL, UnitCodec
from deeptalk.speech.unit_decoder import UnitDecoder, UnitDecoderConfig
from deeptalk.speech.unit_decoder_train import add_parser

TEXTS = ["The museum opens at nine on the fourth of May.",
         "Please bring two tickets to the old bridge before seven.",
         "Which planet is the largest in our solar system?",
         "A cold wind blew across the harbour all night long.",
         "Seven swans swam slowly past the mill."]
SMALL = ["--channels", "32", "--unit-blocks", "3", "--frame-channels", "16", "--frame-blocks", "2", "--lookahead", "2"]


@pytest.fixture(scope="module")
def speech():
    from deeptalk_common.tts import synthesize

    return [synthesize(t, "piper", "joe", sample_rate=UNIT_MEL.sample_rate)[0] for t in TEXTS]


@pytest.fixture(scope="module")
def codec(speech):
    return fitted(speech[:4])


def rows(codec, speech, voice="piper:joe"):
    """What a hearing shard holds per utterance: Whisper features (50 Hz) and 16 kHz audio."""
    from deeptalk.speech.encoder import prepare_audio

    return [{"id": f"u{i}", "text": t, "voice": voice, "wav": w,
             "feats": codec.encoder.whisper_features(prepare_audio(w, UNIT_MEL.sample_rate)).float()}
            for i, (t, w) in enumerate(zip(TEXTS, speech))]


@pytest.fixture(scope="module")
def pairs_dir(codec, speech, tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    r = rows(codec, speech)
    unit_pairs.write_pairs(r[:4] + [dict(r[4], voice="flite:slt")], codec, {"piper:joe"}, out / "pairs-000.npz")
    unit_pairs.write_pairs(r[4:], codec, {"piper:joe"}, out / "dev.npz")
    codec.save(out / "units.safetensors")
    return out


def test_pairs_hold_the_codecs_units_and_log_mel(codec, speech, pairs_dir):
    p = unit_pairs.load_pairs(pairs_dir / "pairs-000.npz")
    assert p["ids"] == ["u0", "u1", "u2", "u3"]          # the other voice's utterance is not kept
    assert p["stack"] == codec.stack
    step = 2 * unit_pairs.MEL_RANGE / 255
    for w, u, m in zip(speech, p["units"], p["mel"]):
        codes = codec.encode(w, UNIT_MEL.sample_rate)[0]
        exact = codec.features(w, UNIT_MEL.sample_rate).reshape(-1, 80)
        n = len(u)
        assert n >= len(codes) - 1 and np.array_equal(u, codes[:n])
        assert m.shape == (n * codec.stack, 80)
        inside = np.abs(exact[: len(m)]) < unit_pairs.MEL_RANGE
        assert np.abs(m - exact[: len(m)])[inside].max() <= step / 2 + 1e-5


def test_the_decoder_streams_exactly_with_its_left_context_and_lookahead():
    torch.manual_seed(0)
    cfg = UnitDecoderConfig(codebook_size=16, channels=24, unit_blocks=4, frame_channels=12, frame_blocks=2,
                            lookahead=3, dropout=0.0)
    model = UnitDecoder(cfg).eval()
    units = np.random.default_rng(0).integers(0, 16, 80)
    full = model.decode(units)
    assert full.shape == (80, 80 * cfg.stack)
    start, end, left = 40, 60, cfg.left_context
    chunk = model.decode(units[start - left:end], right=units[end:end + cfg.lookahead])
    assert np.allclose(chunk[:, left * cfg.stack:], full[:, start * cfg.stack:end * cfg.stack], atol=1e-5)
    # without the lookahead units the chunk's last units are decoded as an utterance's end
    cut = model.decode(units[start - left:end])
    assert not np.allclose(cut[:, -cfg.stack:], full[:, (end - 1) * cfg.stack:end * cfg.stack], atol=1e-3)


def train(pairs_dir, out, *extra):
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers())
    args = ap.parse_args(["train-decoder", "--units-from", str(pairs_dir / "units.safetensors"),
                          "--pairs", str(pairs_dir), "--batch", "4", "--lr", "3e-3", "--eval-every", "10",
                          "--out", str(out), *SMALL, *extra])
    return args.func(args)


def test_training_lowers_held_out_l1_and_writes_a_codec_that_decodes(pairs_dir, codec, speech, tmp_path):
    rec = train(pairs_dir, tmp_path / "dec.safetensors", "--steps", "40")
    curve = [r["dev_l1"] for r in rec["curve"]]
    assert len(curve) == 4 and min(curve) < curve[0]
    assert rec["best_dev_l1"] == pytest.approx(min(curve), abs=1e-5)
    loaded = UnitCodec.load(tmp_path / "dec.safetensors")
    assert loaded.decoder is not None and loaded.decoder.cfg.lookahead == 2
    assert np.array_equal(loaded.centroids.numpy(), codec.centroids.numpy())     # the units are the codec's
    codes = loaded.encode(speech[4], UNIT_MEL.sample_rate)
    wav = loaded.decode(codes)
    assert len(wav) == codes.shape[1] * loaded.samples_per_frame and np.isfinite(wav).all()
    assert loaded.stream_context == (loaded.decoder.cfg.left_context, 2)
    stream = loaded.stream_decoder(left_context=1, lookahead=1)        # widened to what the decoder needs
    assert (stream.left_context, stream.lookahead) == loaded.stream_context
    # refine=False decodes the unit table look-up, without the decoder
    plain = UnitCodec.load(tmp_path / "dec.safetensors", refine=False)
    assert plain.decoder is None and plain.stream_context is None
    assert json.loads((tmp_path / "dec.json").read_text())["steps"] == 40


def test_resume_continues_exactly(pairs_dir, tmp_path):
    whole = train(pairs_dir, tmp_path / "whole.safetensors", "--steps", "20")
    train(pairs_dir, tmp_path / "split.safetensors", "--steps", "20", "--max-seconds", "1e-9")   # stops after step 1
    resumed = train(pairs_dir, tmp_path / "split.safetensors", "--steps", "20", "--resume")
    assert [r["dev_l1"] for r in resumed["curve"]][-2:] == [r["dev_l1"] for r in whole["curve"]][-2:]
    a = torch.load(tmp_path / "whole.state.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "split.state.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_units_command_line_offers_the_three_steps(capsys):
    from deeptalk.training.units_cli import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("fit-vq", "pairs", "train-decoder"))

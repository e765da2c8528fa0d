"""Piper's VITS noise drawn per utterance: the graph rewrite and the session that feeds it (real joe voice)."""
from __future__ import annotations

import numpy as np
import pytest

from deeptalk_common import piper_noise, tts

pytestmark = pytest.mark.skipif(not tts.engine_available("piper"), reason="piper not installed")

NOISY = dict(noise_scale=0.667, noise_w_scale=0.8)


def _speak(voice, text, **cfg):
    from piper import SynthesisConfig

    return np.concatenate([c.audio_float_array for c in voice.synthesize(text, syn_config=SynthesisConfig(**cfg))])


@pytest.fixture
def fresh_voice():
    tts.load_piper_voice.cache_clear()
    yield lambda: tts.load_piper_voice("joe")
    tts.load_piper_voice.cache_clear()


def test_the_rewrite_leaves_no_generator_and_changes_nothing_with_noise_off(fresh_voice):
    import onnx
    from piper import PiperVoice

    onnx_path, config = tts.piper_voice_files("joe")
    model = onnx.load(str(onnx_path))
    banks = piper_noise.seeded_noise_graph(model)
    assert len(banks) == 2 and not [n for n in model.graph.node if n.op_type == "RandomNormalLike"]
    assert [i.name for i in model.graph.input][-2:] == [b[0] for b in banks]
    original = PiperVoice.load(onnx_path, config_path=config)
    text = "The capital of Angola is Luanda."
    quiet = dict(noise_scale=0.0, noise_w_scale=0.0)
    assert np.array_equal(_speak(original, text, **quiet), _speak(fresh_voice(), text, **quiet))


def test_an_utterance_sounds_the_same_whatever_was_spoken_before(fresh_voice):
    voice = fresh_voice()
    text = "What is the capital of Angola?"
    with piper_noise.noise_seed(0):
        first = _speak(voice, text, **NOISY)
        _speak(voice, "Something else entirely, said in between.", **NOISY)
        again = _speak(voice, text, **NOISY)
        tts.load_piper_voice.cache_clear()
        new_session = _speak(fresh_voice(), text, **NOISY)
    assert np.array_equal(first, again) and np.array_equal(first, new_session)
    with piper_noise.noise_seed(1):
        other = _speak(voice, text, **NOISY)
    assert not (other.shape == first.shape and np.array_equal(other, first))
    # the noise is really drawn: noise on differs from noise off
    quiet = _speak(voice, text, noise_scale=0.0, noise_w_scale=0.0)
    assert not (quiet.shape == first.shape and np.array_equal(quiet, first))


def test_a_bank_shorter_than_the_utterance_is_tiled(fresh_voice, monkeypatch):
    monkeypatch.setattr(piper_noise, "BANK_LENGTH", 8)
    monkeypatch.setattr(piper_noise, "BANK_CHANNELS", 1)
    voice = fresh_voice()
    assert sorted(b[1:] for b in voice.session.banks) == [(1, 8), (192, 8)]
    wav = _speak(voice, "A sentence long enough to need many more than eight frames of noise.", **NOISY)
    assert wav.size > 22050 and np.isfinite(wav).all() and np.abs(wav).max() > 0.05


def test_the_seed_depends_on_phonemes_speaker_and_base_not_on_the_scales():
    ids = np.array([[1, 20, 30, 2]], np.int64)
    base = piper_noise.utterance_seed(0, {"input": ids, "scales": np.array([0.667, 1.0, 0.8], np.float32)})
    assert base == piper_noise.utterance_seed(0, {"input": ids, "scales": np.array([0.3, 1.2, 0.1], np.float32)})
    assert base != piper_noise.utterance_seed(1, {"input": ids})
    assert base != piper_noise.utterance_seed(0, {"input": ids[:, :3]})
    assert base != piper_noise.utterance_seed(0, {"input": ids, "sid": np.array([1], np.int64)})

"""ASR backends used to score speech output: real Whisper tiny.en, both backends."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import glob

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from deeptalk_eval.api import Audio
from deeptalk_eval.scoring.asr import ASR_SAMPLE_RATE, make_transcriber, resolve_config, to_asr_input
from deeptalk_eval.scoring.normalise import whisper_normalise

ALSA = sorted(glob.glob("/usr/share/sounds/alsa/*.wav"))
FRONT_LEFT = "/usr/share/sounds/alsa/Front_Left.wav"


def _read(path) -> Audio:
    x, sr = sf.read(path, dtype="float32")
    return Audio(x, sr)


@pytest.fixture(scope="module")
def openai_asr(tmp_path_factory):
    t = make_transcriber({"backend": "openai-whisper", "model": "tiny.en",
                          "cache": str(tmp_path_factory.mktemp("asr") / "t.sqlite")})
    yield t
    t.close()


@pytest.fixture(scope="module")
def faster_asr():
    return make_transcriber({"backend": "faster-whisper", "model": "tiny.en", "cache": False})


def test_real_recording(openai_asr):
    assert whisper_normalise(openai_asr(_read(FRONT_LEFT))) == "front left"


@pytest.mark.parametrize("rate", [22050, 8000])
def test_any_sample_rate_is_resampled(openai_asr, rate):
    a = _read(FRONT_LEFT)
    g = np.gcd(rate, a.sample_rate)
    moved = Audio(resample_poly(a.samples, rate // g, a.sample_rate // g), rate)
    x = to_asr_input(moved)
    assert abs(len(x) - moved.duration * ASR_SAMPLE_RATE) <= 1
    assert whisper_normalise(openai_asr(moved)) == "front left"


def test_cache_hit_does_not_run_the_model(tmp_path, openai_asr):
    cfg = {"backend": "openai-whisper", "model": "tiny.en", "cache": str(tmp_path / "c.sqlite")}
    a = _read("/usr/share/sounds/alsa/Side_Left.wav")
    first = make_transcriber(cfg)
    first._model = openai_asr.model  # the same weights, loaded once per module
    text = first(a)
    assert first.model_calls == 1 and text
    assert first(a) == text and first.model_calls == 1
    # A new transcriber on the same cache file answers without even loading Whisper.
    second = make_transcriber(cfg)
    assert second(a) == text and second.model_calls == 0 and second._model is None
    # Another decoding config is another key: it must run the model.
    other = make_transcriber({**cfg, "silence_peak": 1e-3})
    assert other.config_key != first.config_key
    other._model = openai_asr.model  # the call must still run the model
    assert other(a) == text and other.model_calls == 1


def test_nothing_to_hear_is_empty(openai_asr):
    calls = openai_asr.model_calls
    assert openai_asr(None) == ""
    assert openai_asr(Audio(np.zeros(0, np.float32), 16000)) == ""
    assert openai_asr(Audio(np.zeros(24000, np.float32), 24000)) == ""
    assert openai_asr.model_calls == calls  # nothing was sent to Whisper


def test_nan_audio_raises_naming_the_sample(openai_asr):
    x = _read(FRONT_LEFT).samples.copy()
    x[100] = np.nan
    with pytest.raises(ValueError, match=r"sample 'q7'.*NaN"):
        openai_asr(Audio(x, 48000), id="q7")
    with pytest.raises(ValueError, match="sample rate"):
        openai_asr(Audio(np.ones(10, np.float32) * 0.5, 0))


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="beam"):
        resolve_config({"backend": "openai-whisper", "beam": 5})
    with pytest.raises(ValueError, match="unknown backend 'kaldi'"):
        resolve_config({"backend": "kaldi"})
    with pytest.raises(ValueError, match="compute_type"):
        resolve_config({"backend": "openai-whisper", "compute_type": "int8"})


def test_info_records_what_produced_the_transcripts(openai_asr, faster_asr):
    for t, backend in ((openai_asr, "openai-whisper"), (faster_asr, "faster-whisper")):
        info = t.info
        assert info["backend"] == backend and info["model"] == "tiny.en"
        assert len(info["weights"]["sha256"]) == 64
        assert info["decoding"]["temperature"] == 0.0 and info["decoding"]["language"] == "en"
        assert info["normaliser"].startswith("none")
        assert all(v != "not installed" for v in info["versions"].values())
    assert faster_asr.info["backend_options"]["compute_type"] == "int8"
    # Same shipped weights behind both backends.
    assert openai_asr.info["weights"]["sha256"] == faster_asr.info["weights"]["sha256"]


def test_backends_agree_on_real_recordings(openai_asr, faster_asr):
    audios = [_read(p) for p in ALSA]
    ours = openai_asr.transcribe_many(audios, progress=False)
    ct2 = faster_asr.transcribe_many(audios, progress=False)
    norm = lambda ts: [whisper_normalise(t) for t in ts]  # noqa: E731
    assert norm(ours) == norm(ct2), list(zip(ours, ct2))
    # Most of the eight spoken channel names are recognised exactly (Noise.wav has no speech).
    names = [os.path.basename(p)[:-4].replace("_", " ").lower() for p in ALSA]
    right = sum(n == t for n, t in zip(names, norm(ours)) if n != "noise")
    assert right >= 6, list(zip(names, ours))

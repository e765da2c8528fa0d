"""TTS utility: real Piper and flite synthesis, the disk cache, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from deeptalk_common import tts
from deeptalk_common.tts import TTSError, synthesize, voices


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPTALK_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("engine,voice,rate", [("piper", "joe", 22050), ("flite", "slt", 16000)])
def test_synthesize_real_engines(tmp_cache, engine, voice, rate):
    if not tts.engine_available(engine):
        pytest.skip(f"{engine} not installed")
    wav, sr = synthesize("The capital of France is Paris.", engine, voice)
    assert sr == rate and wav.dtype == np.float32 and wav.ndim == 1
    assert 0.8 < len(wav) / sr < 6.0                       # a short sentence, not silence or noise
    assert np.abs(wav).max() <= 1.0 and np.sqrt(np.mean(wav ** 2)) > 0.01


def test_cache_hit_skips_the_engine(tmp_cache, monkeypatch):
    wav, sr = synthesize("Cache me if you can.", "flite", "kal")
    files = list((tmp_cache / "tts").rglob("*.wav"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("engine called despite a cached file")

    monkeypatch.setitem(tts._ENGINE_FN, "flite", boom)
    wav2, sr2 = synthesize("Cache me if you can.", "flite", "kal")
    assert sr2 == sr and np.array_equal(wav, wav2)
    # a different voice or setting is a different key
    monkeypatch.setitem(tts._ENGINE_FN, "flite", tts._flite)
    synthesize("Cache me if you can.", "flite", "kal", rate=1.3)
    assert len(list((tmp_cache / "tts").rglob("*.wav"))) == 2


def test_a_new_engine_version_or_voice_file_is_a_new_cache_key(tmp_cache, monkeypatch):
    synthesize("Cache me if you can.", "flite", "kal")
    assert "flite-" in tts.engine_identity("flite", "kal")   # the binary's own version line
    piper = tts.engine_identity("piper", "joe")
    assert "piper-tts " in piper and "onnxruntime " in piper and len(piper.split("voice ")[1]) == 64
    monkeypatch.setattr(tts, "engine_identity", lambda engine, voice: "flite-9.9 (an upgrade)")
    synthesize("Cache me if you can.", "flite", "kal")
    assert len(list((tmp_cache / "tts").rglob("*.wav"))) == 2   # synthesised again, not read back


def test_resample_and_speed_setting(tmp_cache):
    slow, sr = synthesize("One two three four five.", "flite", "slt", sample_rate=22050)
    fast, _ = synthesize("One two three four five.", "flite", "slt-fast", sample_rate=22050)
    assert sr == 22050 and len(fast) < 0.95 * len(slow)


def test_missing_voice_and_engine_errors(tmp_cache):
    with pytest.raises(TTSError, match="unknown flite voice 'nobody'"):
        synthesize("hello", "flite", "nobody")
    with pytest.raises(TTSError, match="unknown TTS engine 'mbrola'"):
        synthesize("hello", "mbrola", "us1")
    with pytest.raises(TTSError, match="unknown festival voice 'kal'"):
        synthesize("hello", "festival", "kal")
    with pytest.raises(TTSError, match="piper voice file not found: /nope/x.onnx"):
        synthesize("hello", "piper", "/nope/x.onnx")
    with pytest.raises(TTSError, match="empty text"):
        synthesize("   ", "flite", "kal")
    with pytest.raises(TTSError, match="unknown piper setting"):
        synthesize("hello", "piper", "joe", speed=2)


@pytest.mark.parametrize("voice", ["ona-ca", "dita-cs", "lj-fi", "lp-it"])
def test_festival_female_voices(tmp_cache, voice):
    """The female voices that fit the codec's refiner: real speech, higher pitched than joe."""
    import librosa

    if not tts.engine_available("festival"):
        pytest.skip("festival not installed (scripts/bootstrap.sh installs it as root)")
    wav, sr = synthesize("The train leaves at seven from the old station.", "festival", voice)
    assert wav.dtype == np.float32 and 1.0 < len(wav) / sr < 8.0 and np.sqrt(np.mean(wav ** 2)) > 0.01
    f0 = librosa.yin(wav, fmin=60, fmax=400, sr=sr)
    assert np.median(f0) > 150           # joe and the flite male voices sit near 90-110 Hz


def test_voices_listing():
    names = {(v.engine, v.name) for v in voices(available_only=False)}
    assert {("piper", "joe"), ("flite", "slt"), ("flite", "kal")} <= names
    assert all(tts.engine_available(v.engine) for v in voices())


SPEAK_IN_ORDER = """
import sys
import numpy as np
from deeptalk_common.tts import synthesize
texts = sys.argv[2:]
np.savez(sys.argv[1], **{t: synthesize(t, "piper", "joe-lively", use_cache=False)[0] for t in texts})
"""


def test_piper_audio_does_not_depend_on_the_process_or_the_order_of_calls(tmp_path):
    # noise on (joe-lively: noise_scale 0.9): each utterance draws its own, seeded by its phonemes
    import subprocess
    import sys

    if not tts.engine_available("piper"):
        pytest.skip("piper not installed")
    texts = ["The train was late.", "Snow fell all night.", "A third one, said first."]
    orders = [texts[:2], texts[::-1]]
    outs = [tmp_path / f"{k}.npz" for k in range(2)]
    for out, order in zip(outs, orders):
        subprocess.run([sys.executable, "-c", SPEAK_IN_ORDER, str(out), *order], check=True, timeout=300)
    a, b = (np.load(o) for o in outs)
    for t in texts[:2]:
        assert a[t].shape == b[t].shape and np.array_equal(a[t], b[t])
    here = synthesize(texts[0], "piper", "joe-lively", use_cache=False)[0]
    assert np.array_equal(here, a[texts[0]])
    other_seed = synthesize(texts[0], "piper", "joe-lively", use_cache=False, seed=1)[0]
    assert not (other_seed.shape == here.shape and np.array_equal(other_seed, here))

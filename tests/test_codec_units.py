"""The semantic-unit codec (deeptalk/speech/codec_units.py) on real speech: Piper joe through
the real Whisper tiny.en encoder, a small k-means and a briefly trained decoder."""
from __future__ import annotations

import numpy as np
import pytest

from deeptalk.speech.codec import CodecError
from deeptalk.speech.codec_loader import load_codec
from deeptalk.speech.codec_units import UNIT_MEL, UnitCodec, unit_mel_table

TEXTS = ["The museum opens at nine on the fourth of May.",
         "Please bring two tickets to the old bridge before seven.",
         "Which planet is the largest in our solar system?",
         "A cold wind blew across the harbour all night long."]


@pytest.fixture(scope="module")
def speech():
    from deeptalk_common.tts import synthesize

    return [synthesize(t, "piper", "joe", sample_rate=UNIT_MEL.sample_rate)[0] for t in TEXTS]


def fitted(speech, pool: int = 2, k: int = 24) -> UnitCodec:
    """What `deeptalk-codec fit-units` does, on four sentences."""
    from deeptalk.speech.codec_offline import fit_residual_kmeans
    from deeptalk.speech.mel_refiner import RefinerConfig, train_refiner

    sr = UNIT_MEL.sample_rate
    probe = UnitCodec(np.zeros((k, 1), np.float32), np.zeros((k, 2 * pool * 80), np.float32), np.zeros(80),
                      np.ones(80), pool=pool)
    feats = [probe.pooled_features(w, sr) for w in speech]
    centroids = fit_residual_kmeans(np.concatenate(feats), 1, k, seed=0, progress=False)[0]
    codec = UnitCodec(centroids, np.zeros((k, 2 * pool * 80), np.float32), np.zeros(80), np.ones(80), pool=pool)
    mels = np.concatenate([codec.front.log_mel(w) for w in speech], axis=1)
    codec.mel_mean, codec.mel_std = mels.mean(1, keepdims=True), mels.std(1, keepdims=True) + 1e-5
    codes = [codec.quantize(f)[0] for f in feats]
    exact = [codec.features(w, sr)[: len(c)] for w, c in zip(speech, codes)]
    codec.unit_mel = unit_mel_table(codes, exact, k)
    cfg = RefinerConfig(n_mels=80, stack=codec.stack, channels=16, blocks=2)
    codec.refiner, _ = train_refiner(np.concatenate(exact), np.concatenate([codec.unit_mel[c] for c in codes]),
                                     [len(c) for c in codes], cfg, steps=40, batch=4, crop=32, progress=False)
    codec.refine = True
    return codec


@pytest.fixture(scope="module")
def codec(speech):
    return fitted(speech)


@pytest.mark.parametrize("pool, rate", [(2, 25.0), (4, 12.5)])
def test_one_stream_at_the_pooled_rate(speech, pool, rate):
    codec = UnitCodec(np.zeros((4, 384), np.float32), np.zeros((4, 2 * pool * 80), np.float32), np.zeros(80),
                      np.ones(80), pool=pool)
    assert codec.frame_rate == rate and codec.num_codebooks == 1 and codec.stack == 2 * pool
    codes = codec.encode(speech[0], UNIT_MEL.sample_rate)
    frames = -(-len(speech[0]) // 320)              # Whisper's 50 Hz frames
    assert codes.shape == (1, -(-frames // pool)) and codes.dtype == np.int64
    assert len(codec.decode(codes)) == codes.shape[1] * codec.samples_per_frame


def test_units_follow_the_speech_and_decode_to_the_right_length(codec, speech):
    sr = UNIT_MEL.sample_rate
    codes = [codec.encode(w, sr) for w in speech]
    assert all(c.min() >= 0 and c.max() < codec.codebook_size for c in codes)
    assert len(np.unique(np.concatenate(codes, axis=1))) > codec.codebook_size // 2   # the units are used
    assert not np.array_equal(codes[0][:, :20], codes[1][:, :20])                  # different words, different units
    wav = codec.decode(codes[0])
    assert len(wav) == codes[0].shape[1] * codec.samples_per_frame and np.isfinite(wav).all()
    assert 0.01 < np.abs(wav).max() <= 1.0
    # decoding refines the table look-up; refine=False decodes the look-up itself
    from deeptalk.speech.codec_offline import unstack_frames

    looked_up = unstack_frames(codec.dequantize(codes[0]), codec.stack, 80)
    expected = codec.refiner.refine(looked_up) * codec.mel_std + codec.mel_mean
    assert np.allclose(codec.codes_to_log_mel(codes[0]), expected)
    codec.refine = False
    try:
        assert np.allclose(codec.codes_to_log_mel(codes[0]), looked_up * codec.mel_std + codec.mel_mean)
    finally:
        codec.refine = True


def test_the_file_round_trips_and_load_codec_finds_it(codec, speech, tmp_path):
    path = codec.save(tmp_path / "units.safetensors", {"note": "test"})
    again = load_codec(path)
    assert isinstance(again, UnitCodec) and again.manifest["note"] == "test"
    sr = UNIT_MEL.sample_rate
    codes = codec.encode(speech[1], sr)
    assert np.array_equal(again.encode(speech[1], sr), codes)
    wav, again_wav = codec.decode(codes), again.decode(codes)
    # the file stores the refiner in fp16: the same audio up to rounding, the difference 40 dB
    # below the signal (measured as RMS: how far one sample moves depends on the CPU's kernels;
    # 0.2 % of the RMS on one machine, a lone sample 0.3 % of the peak)
    rms = lambda x: float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))  # noqa: E731
    assert len(again_wav) == len(wav) and rms(again_wav - wav) < 1e-2 * rms(wav)
    assert again.describe()["pool"] == 2 and again.describe()["refiner"]["blocks"] == 2
    with pytest.raises(TypeError, match="unknown units codec option"):
        load_codec(path, stack=3)


def test_streamed_chunks_add_up_to_the_full_decode(codec, speech):
    codes = codec.encode(speech[2], UNIT_MEL.sample_rate)
    dec = codec.stream_decoder()
    chunks = [dec.push(codes[:, i:i + 5]) for i in range(0, codes.shape[1], 5)] + [dec.flush()]
    assert sum(len(c) for c in chunks) == len(codec.decode(codes))


def test_codes_outside_the_codebook_are_refused(codec):
    with pytest.raises(CodecError, match="outside"):
        codec.decode(np.array([[0, codec.codebook_size]]))
    with pytest.raises(CodecError, match=r"\[1, T\]"):
        codec.decode(np.zeros((2, 3), np.int64))


def test_unit_mel_table_is_each_units_mean():
    codes = [np.array([0, 0, 2]), np.array([2])]
    mels = [np.array([[1.0, 1], [3, 3], [10, 0]]), np.array([[20.0, 2]])]
    table = unit_mel_table(codes, mels, k=3)
    assert np.allclose(table[0], [2, 2]) and np.allclose(table[2], [15, 1])
    assert np.allclose(table[1], np.mean([[1, 1], [3, 3], [10, 0], [20, 2]], axis=0))   # never seen: the mean

"""Sample-log audio files: lossless, and the same samples give the same file."""
import os
import time

import numpy as np

from deeptalk_eval.api import Audio
from deeptalk_eval.audio_files import read_wav_checked, write_wav


def test_the_same_samples_written_twice_give_the_same_bytes_and_read_back_exactly(tmp_path):
    audio = Audio(np.random.default_rng(0).standard_normal(4000).astype(np.float32) * 0.1, 22050)
    first = write_wav(tmp_path / "a.wav", audio)
    time.sleep(1.1)  # a writer that stamps the time (libsndfile's PEAK chunk) differs after a second
    second = write_wav(tmp_path / "b.wav", audio)
    assert first == second
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    back = read_wav_checked(tmp_path / "a.wav", first)
    assert back.sample_rate == 22050
    np.testing.assert_array_equal(back.samples, audio.samples)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]   # no temporary file left

"""`deeptalk-codec eval` end to end at n=1 (real flite speech, real Whisper tiny.en), and its WER maths."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deeptalk.speech import codec_data
from deeptalk.speech.codec_cli import main
from deeptalk.speech.speech_wer import paired_gap, wer_counts, wer_summary


def test_wer_maths():
    from whisper.normalizers import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    assert wer_counts("The capital of Peru is Lima.", "the capital of peru lima", norm) == (1, 6)
    assert wer_counts("Element number 5 is Boron.", "Element number five is boron!", norm) == (0, 5)
    assert wer_counts("red green blue", "", norm) == (3, 3)                 # empty hypothesis: all deleted
    with pytest.raises(ValueError, match="reference normalises to nothing"):
        wer_counts(" ?! ", "x", norm)
    errors, words = np.array([0.0, 2.0, 1.0]), np.array([4.0, 4.0, 2.0])
    s = wer_summary(errors, words, n_boot=200)
    assert s["corpus_wer"] == pytest.approx(0.3) and s["mean_utt_wer"] == pytest.approx((0 + 0.5 + 0.5) / 3)
    assert s["corpus_wer_ci95"][0] <= 0.3 <= s["corpus_wer_ci95"][1]
    g = paired_gap(np.array([1.0, 2.0, 1.0]), errors, words, n_boot=200)
    assert g["gap"] == pytest.approx(1 / 10)


def test_fit_and_eval_sets_do_not_overlap():
    fit = codec_data.fit_utterances(per_voice=50, seed=0)
    refine = codec_data.refiner_utterances(per_voice=50, seed=0)
    ev = codec_data.eval_utterances(50, seed=0)
    assert fit == refine[: len(fit)] and {u.engine for u in refine[len(fit):]} == {"festival"}
    for train in (fit, refine):
        assert not {u.text for u in train} & {u.text for u in ev}
        assert not {u.voice for u in train} & {v for _, v in codec_data.HELDOUT_VOICES}
    assert len(ev) == 50 * len(codec_data.HELDOUT_VOICES) and len({u.id for u in ev}) == len(ev)


def test_eval_cli_small(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEEPTALK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "codec_eval.json"
    assert main(["eval", "--n", "1", "--no-seen-voice", "--out", str(out), "--per-utterance"]) == 0
    rep = json.loads(out.read_text())
    assert rep["failed"] == 0 and rep["n_utterances"] == 1
    wer = rep["wer"]["all"]
    for k in ("original", "unquantized", "roundtrip"):
        assert 0.0 <= wer[k]["corpus_wer"] <= 1.5 and wer[k]["n"] == 1
    row = rep["per_utterance"][0]
    assert row["voice"] == "flite/slt" and row["original_hyp"]              # Whisper heard something
    assert rep["speed"]["decode_x_realtime"] > 0 and rep["speed"]["encode_s_per_audio_s"] > 0   # speed itself: benchmarks
    assert rep["streaming"]["lengths_equal"] is True
    assert rep["asr"]["asr"].startswith("whisper tiny.en") and rep["codec"]["name"] == "offline"
    assert "corpus WER" in capsys.readouterr().out

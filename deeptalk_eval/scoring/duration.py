"""`speech_duration`: how long a spoken answer takes against a reference voice reading the same words.

A model that speaks at a natural pace says a sentence in about the time a TTS voice does;
one that drawls, rushes or pads with silence does not. The scorer gives

    duration_ratio      seconds of speech in the answer / seconds of the reference voice
                        reading the same text (Piper joe by default)
    duration_within_30  1.0 when that ratio lies in [0.7, 1.3], else 0.0 (no audio: 0.0)

Both sides are measured as speech, not as files: leading and trailing stretches quieter than
40 dB below the clip's peak (20 ms frames) are cut first, so a model's silent lead-in or a
voice's end padding does not count. The text read is the doc's `reference_field` (the
sentence a TTS task asks for) or, without one, the answer's own text channel (what the model
said it was saying). The reference voice's audio comes from the shared TTS cache
(`deeptalk_common.tts`): the same text is synthesised once for every model and run.

The reference reads with its sampling noise off (Piper: noise_scale = noise_w = 0): the
voice's expected phoneme durations, not one draw of its sampled timing.
"""
from __future__ import annotations

import numpy as np

from deeptalk_eval.scoring.base import SampleView, ScoringContext, register_scorer

WITHIN = 0.3      # the goal's band: ±30 %
FLOOR_DB = 40.0   # quieter than this below the peak is silence
FRAME_S = 0.02
# the engines whose reading draws noise, and the settings that turn it off
NOISE_OFF = {"piper": {"noise_scale": 0.0, "noise_w": 0.0}}


def speech_seconds(samples: np.ndarray, sample_rate: int) -> float:
    """Seconds from the first to the last frame louder than FLOOR_DB below the clip's peak."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak <= 0.0:
        return 0.0
    hop = max(1, int(sample_rate * FRAME_S))
    n = len(x) // hop
    if n == 0:
        return len(x) / sample_rate
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1))
    loud = np.nonzero(rms > peak * 10 ** (-FLOOR_DB / 20))[0]
    if loud.size == 0:
        return 0.0
    return float((loud[-1] - loud[0] + 1) * hop / sample_rate)


def _parse_voice(voice: str) -> tuple[str, str]:
    engine, _, name = voice.partition(":")
    if not name:
        raise ValueError(f"speech_duration: voice must be ENGINE:VOICE (e.g. piper:joe), got {voice!r}")
    return engine, name


@register_scorer("speech_duration")
def speech_duration(sample: SampleView, ctx: ScoringContext, reference_field: str | None = None,
                    voice: str = "piper:joe") -> dict[str, float | None]:
    """Duration of the spoken answer against `voice` reading the same text (module docstring).
    No audio: ratio None, within 0.0. No text to read, or audio the log no longer holds: both
    None (nothing to compare)."""
    from deeptalk_common.tts import synthesize
    from deeptalk_eval.scoring.scorers import _field

    engine, name = _parse_voice(voice)
    quiet = NOISE_OFF.get(engine, {})
    ctx.info.setdefault("speech_duration", {"voice": voice, "within": WITHIN, "silence_floor_db": FLOOR_DB,
                                            "text": reference_field or "the answer's text channel",
                                            "voice_settings": quiet})
    text = str(_field(sample, ctx, reference_field)) if reference_field else \
        (sample.response.text if sample.response is not None else None)
    if not text or not text.strip():
        return {"duration_ratio": None, "duration_within_30": None}
    if sample.audio_gone:
        return {"duration_ratio": None, "duration_within_30": None}
    audio = sample.response.audio if sample.response is not None else None
    said = speech_seconds(audio.samples, audio.sample_rate) if audio is not None else 0.0
    if said <= 0.0:
        return {"duration_ratio": None, "duration_within_30": 0.0}
    wav, sr = synthesize(text.strip(), engine, name, **quiet)
    read = speech_seconds(wav, sr)
    if read <= 0.0:
        return {"duration_ratio": None, "duration_within_30": None}
    ratio = said / read
    return {"duration_ratio": ratio, "duration_within_30": float(abs(ratio - 1.0) <= WITHIN)}

"""The shared cache: work that does not depend on the model under test, done once.

It lives under `deeptalk_common.paths.cache_dir()` ($DEEPTALK_CACHE, default ~/.cache/deeptalk),
never in an output folder, so every model, run and output folder reuses it:

- `tts/`: synthesised speech (`deeptalk_common.tts`), keyed by engine, voice, settings,
  seed, text and the TTS cache version. Spoken task inputs and the noise floor's spoken
  gold answers come from here.
- `asr/transcripts.sqlite`: raw Whisper transcripts (`deeptalk_eval.scoring.asr`), keyed by
  `deeptalk_eval.cache.audio_sha256` (samples + rate) and the ASR identity (backend, model,
  weights sha256, decoding options, library versions). Normalisers and matchers run on the
  raw transcript at every scoring, so they key nothing.

`--no-shared-cache` or DEEPTALK_NO_SHARED_CACHE=1 turns the transcript cache off (every
transcript computed, none stored). TTS audio is still read from `tts/`: Piper is not
seedable, so the cached clip is the task's input; for a cold run of everything, point
DEEPTALK_CACHE at an empty folder. Each task records its counts (`cache_counts`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ENV_OFF = "DEEPTALK_NO_SHARED_CACHE"


def enabled(no_shared_cache: bool = False) -> bool:
    """False when the option or the environment variable turns the shared cache off."""
    return not no_shared_cache and os.environ.get(ENV_OFF, "").strip().lower() not in ("1", "true", "yes", "on")


def transcript_cache_path() -> Path:
    from deeptalk_common.paths import cache_dir

    return cache_dir() / "asr" / "transcripts.sqlite"


def counts(transcriber: Any | None) -> dict[str, int]:
    """Running totals of what was read from the shared cache and what was computed."""
    from deeptalk_common import tts

    out = {"tts_cached": tts.cache_stats["hits"], "tts_synthesised": tts.cache_stats["synthesised"],
           "transcripts_cached": 0, "transcripts_computed": 0}
    if transcriber is not None:
        out["transcripts_cached"] = transcriber.cache_hits
        out["transcripts_computed"] = transcriber.model_calls
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}

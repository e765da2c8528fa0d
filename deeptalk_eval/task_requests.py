"""One model request per doc: the prompt rendered, spoken input read or synthesised and
checked. An unusable sample raises `SampleInputError` naming it; it is recorded failed.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from deeptalk_eval.api import Audio, Request
from deeptalk_eval.audio_files import read_wav
from deeptalk_eval.task_config import TaskConfig
from deeptalk_eval.task_docs import sample_id


class SampleInputError(ValueError):
    """One sample's input is unusable (missing field, bad audio). The sample is recorded failed."""


def render_prompt(cfg: TaskConfig, doc: dict[str, Any]) -> str | None:
    if cfg.prompt is None:
        return None
    try:
        return cfg.prompt.format(**doc)
    except (KeyError, IndexError) as e:
        raise SampleInputError(f"prompt refers to field {e} that sample {sample_id(cfg, doc)!r} lacks") from None


def check_audio(audio: Audio, where: str) -> Audio:
    if audio.samples.size == 0:
        raise SampleInputError(f"{where}: audio is empty")
    if not np.isfinite(audio.samples).all():
        raise SampleInputError(f"{where}: audio contains NaN or inf")
    if audio.sample_rate <= 0:
        raise SampleInputError(f"{where}: audio has sample rate {audio.sample_rate}")
    return audio


def _synthesise(text: str, tts: dict[str, Any]) -> Audio:
    """Speak a doc's text with `deeptalk_common.tts` (which caches what it synthesises)."""
    from deeptalk_common.tts import synthesize

    out = synthesize(text, **tts)
    samples, sr = (out.samples, out.sample_rate) if hasattr(out, "samples") else out
    return Audio(samples, sr)


def build_request(cfg: TaskConfig, doc: dict[str, Any]) -> Request:
    """One Request for one doc. Raises `SampleInputError` naming the sample when unusable."""
    sid = sample_id(cfg, doc)
    where = f"task {cfg.name}, sample {sid!r}"
    text = render_prompt(cfg, doc)
    audio = None
    if cfg.input_modality == "speech":
        if cfg.audio_field and doc.get(cfg.audio_field) not in (None, ""):
            value = doc[cfg.audio_field]
            if isinstance(value, dict) and "array" in value:  # hub datasets' Audio feature
                audio = Audio(value["array"], value["sampling_rate"])
            else:
                base = cfg.data_path.parent if cfg.data_path else cfg.path.parent
                path = (base / str(value)).resolve()
                try:
                    audio = read_wav(path)
                except Exception as e:  # soundfile raises several types for unreadable files
                    raise SampleInputError(f"{path}: cannot read audio: {e}") from None
        elif cfg.tts and cfg.text_field:
            if doc.get(cfg.text_field) in (None, ""):
                raise SampleInputError(f"{where}: field {cfg.text_field!r} (text to speak) is missing")
            try:
                audio = _synthesise(str(doc[cfg.text_field]), cfg.tts)
            except Exception as e:  # a TTS failure fails this sample, named, not the task
                raise SampleInputError(f"{where}: TTS {cfg.tts} failed: {type(e).__name__}: {e}") from e
        else:
            raise SampleInputError(f"{where}: no audio (field {cfg.audio_field!r} is missing)")
        check_audio(audio, where)
        # With speech input the spoken text is not handed over; the prompt template, when
        # given, is an instruction that goes with the audio.
        text = text if cfg.prompt is not None and cfg.prompt != "{" + str(cfg.text_field) + "}" else None
    return Request(id=sid, text=text, audio=audio, system=cfg.system,
                   output_modality=cfg.output, options=cfg.generation)


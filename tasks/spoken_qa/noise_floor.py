"""The ASR noise floor of spoken QA: the ceiling of S2S accuracy.

The gold answer, said in a carrier sentence ("The answer is Berlin."), is spoken by the
task's TTS voice, transcribed by the harness's ASR and scored by the same alias match as
S2S. The carrier matters: Whisper tiny.en hears a lone "Berlin" from Piper as "for a win",
and models answer in sentences anyway. No model output is read: whatever the model,
an S2S figure above this one would mean the ASR + matcher pipeline under-counts nothing
it could catch; the gap between this and 1.0 is what ASR and the matcher lose on perfect
answers. Importing this module (through the task's process_docs hook) registers the
`gold_answer_asr` scorer.
"""
from __future__ import annotations

from deeptalk_eval.api import Audio
from deeptalk_eval.scoring.base import SampleView, ScoringContext, register_scorer
from deeptalk_eval.scoring.match import answer_match, answer_match_whisper


def docs(docs: list[dict]) -> list[dict]:
    """process_docs hook: the docs unchanged (importing this module registers the scorer)."""
    return docs


@register_scorer("gold_answer_asr")
def gold_answer_asr(sample: SampleView, ctx: ScoringContext, answer_field: str = "answer",
                    answers_field: str = "answers", engine: str = "piper", voice: str = "joe",
                    template: str = "The answer is {answer}.") -> dict[str, float | None]:
    from deeptalk_common.tts import synthesize

    sid = sample.doc.get("id")
    gold, aliases = sample.doc.get(answer_field), sample.doc.get(answers_field)
    if not gold or not aliases:
        raise ValueError(f"sample {sid!r}: needs fields {answer_field!r} and {answers_field!r}")
    samples, sr = synthesize(template.format(answer=gold), engine=engine, voice=voice)
    if ctx.transcribe is None:
        raise ValueError("gold_answer_asr needs the harness's ASR (ScoringContext.transcribe)")
    ctx.info.setdefault("noise_floor_tts", {"engine": engine, "voice": voice, "template": template})
    text = ctx.transcribe(Audio(samples, sr), id=sid)
    return {"acc": float(answer_match(text, aliases).correct),
            "acc_whisper_norm": float(answer_match_whisper(text, aliases).correct),
            "no_answer": float(not (text or "").strip())}

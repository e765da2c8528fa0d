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


def _gold_speech(doc: dict, answer_field: str, answers_field: str, engine: str, voice: str,
                 template: str) -> Audio:
    from deeptalk_common.tts import synthesize

    gold, aliases = doc.get(answer_field), doc.get(answers_field)
    if not gold or not aliases:
        raise ValueError(f"sample {doc.get('id')!r}: needs fields {answer_field!r} and {answers_field!r}")
    return Audio(*synthesize(template.format(answer=gold), engine=engine, voice=voice))


@register_scorer("gold_answer_asr")
def gold_answer_asr(sample: SampleView, ctx: ScoringContext, answer_field: str = "answer",
                    answers_field: str = "answers", engine: str = "piper", voice: str = "joe",
                    template: str = "The answer is {answer}.") -> dict[str, float | None]:
    sid = sample.doc.get("id")
    aliases = sample.doc.get(answers_field)
    text = ctx.prepared.get("gold_answer_asr", {}).get(sid)
    if text is None:  # not prepared (a failing clip, a scorer called alone): this sample on its own
        speech = _gold_speech(sample.doc, answer_field, answers_field, engine, voice, template)
        if ctx.transcribe is None:
            raise ValueError("gold_answer_asr needs the harness's ASR (ScoringContext.transcribe)")
        text = ctx.transcribe(speech, id=sid)
    ctx.info.setdefault("noise_floor_tts", {"engine": engine, "voice": voice, "template": template})
    return {"acc": float(answer_match(text, aliases).correct),
            "acc_whisper_norm": float(answer_match_whisper(text, aliases).correct),
            "no_answer": float(not (text or "").strip())}


def _prepare(docs: list[dict], ctx: ScoringContext, answer_field: str = "answer", answers_field: str = "answers",
             engine: str = "piper", voice: str = "joe", template: str = "The answer is {answer}.") -> None:
    """Every gold answer spoken, then transcribed together (`--asr-batch-size` at a time): the
    same transcripts as one by one (docs/harness.md "Batched scoring"); only the text decoder
    gains from the batch, the 30 s-window encoder still runs clip by clip."""
    if ctx.transcribe_many is None:
        return
    ids, speech = [], []
    for doc in docs:
        if doc.get("id") is None:
            continue
        try:
            speech.append(_gold_speech(doc, answer_field, answers_field, engine, voice, template))
        except Exception:
            continue  # its own call raises it again, for this sample alone
        ids.append(doc.get("id"))
    texts = ctx.transcribe_many(speech, ids=ids)
    ctx.prepared["gold_answer_asr"] = {sid: t for sid, t in zip(ids, texts) if t is not None}


gold_answer_asr.prepare = _prepare

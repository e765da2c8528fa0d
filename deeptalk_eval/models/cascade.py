"""A modular spoken-dialogue cascade: Whisper ASR -> text LLM -> TTS.

The classic alternative to a native spoken LLM, built from the parts that run offline here:
Whisper tiny.en (`deeptalk_eval.scoring.asr`), SmolLM2-135M-Instruct (`BaseLLM`) and Piper
(`deeptalk_common.tts`). Each leg is a model arg: `asr=tiny.en,llm=smollm2-135m-instruct,
tts=piper:joe`.

It streams the way a real cascade would: the ASR runs on the whole utterance, the LLM
decodes in a background thread while its text deltas are passed on, and the TTS speaks each
sentence as soon as the LLM has finished it (one audio chunk per sentence), so the first
audio does not wait for the whole answer. ASR and TTS caches are off: every request pays
for its own recognition and synthesis, as the latency figures assume.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from deeptalk_common.content_memo import ContentMemo
from deeptalk_eval.api import (
    Audio,
    Capabilities,
    Request,
    Response,
    SpokenModel,
    StreamEvent,
    Turn,
    UnsupportedRequest,
    collect_stream,
)
from deeptalk_eval.cache import audio_sha256
from deeptalk_eval.errors import UsageError
from deeptalk_eval.models.text_llm import BaseLLM, TextPathScoring

# A sentence ends at . ! ? (plus closing quotes/brackets) followed by whitespace, or at a newline.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_SPEAKABLE = re.compile(r"\w")


class SentenceBuffer:
    """Collects streamed text and hands out complete sentences."""

    def __init__(self):
        self.buf = ""

    def push(self, text: str) -> list[str]:
        self.buf += text
        out = []
        while (m := _SENTENCE_END.search(self.buf)) is not None:
            sentence, self.buf = self.buf[:m.end()].strip(), self.buf[m.end():]
            if sentence:
                out.append(sentence)
        return out

    def flush(self) -> str | None:
        rest, self.buf = self.buf.strip(), ""
        return rest or None


def _speakable(sentence: str, extra: dict[str, Any]) -> bool:
    """Whether a sentence has anything to say; the ones that do not are counted in `extra`."""
    if _SPEAKABLE.search(sentence):
        return True
    extra["unspeakable_segments"] = extra.get("unspeakable_segments", 0) + 1
    return False


def parse_tts_spec(spec: str) -> tuple[str, str]:
    """"piper:joe" -> ("piper", "joe"); the engine alone takes its default voice."""
    defaults = {"piper": "joe", "flite": "slt", "espeak": "en-us"}
    engine, _, voice = str(spec).partition(":")
    if engine not in defaults:
        raise UsageError(f"model arg tts={spec!r}: engine must be one of {sorted(defaults)} (e.g. tts=piper:joe)")
    return engine, voice or defaults[engine]


class Cascade(TextPathScoring, SpokenModel):
    """ASR -> LLM -> TTS. Speech or text in; text, speech or both out.

    model_args: asr (Whisper model, default tiny.en), asr_backend (openai-whisper |
    faster-whisper), llm (BaseLLM path, default smollm2-135m-instruct), llm_dtype (float32),
    tts (engine:voice, default piper:joe), device (cpu), warmup (true: load every leg and
    synthesise once at start, so the first request is not a cold start), rows (greedy
    answers the LLM decodes together; default the LLM's, 16).
    `llm=` also accepts a BaseLLM instance (Python callers, tests).
    """

    name = "cascade"
    capabilities = Capabilities(
        text_in=True, audio_in=True, text_out=True, audio_out=True, streaming=True, loglikelihood=True
    )
    # Greedy requests the runner hands over at once: heard in one batched ASR pass, answered
    # by the LLM's batched greedy path, each answer what stream() gives (`_generate_batch`).
    greedy_batch_size = 64

    def __init__(
        self,
        asr: str = "tiny.en",
        asr_backend: str = "openai-whisper",
        llm: str | BaseLLM = "smollm2-135m-instruct",
        llm_dtype: str = "float32",
        tts: str = "piper:joe",
        device: str = "cpu",
        warmup: bool = True,
        rows: int | None = None,
    ):
        super().__init__(asr=asr, asr_backend=asr_backend, llm=llm if isinstance(llm, str) else llm.path,
                         llm_dtype=llm_dtype, tts=tts, device=device, rows=rows)
        from deeptalk_common import tts as tts_lib
        from deeptalk_eval.scoring.asr import make_transcriber

        self._tts = tts_lib
        self.tts_engine, self.tts_voice = parse_tts_spec(tts)
        tts_lib.resolve_voice(self.tts_engine, self.tts_voice)  # unknown voices fail here, not mid-run
        if not tts_lib.engine_available(self.tts_engine):
            raise UsageError(f"model arg tts={tts!r}: the {self.tts_engine} engine is not installed here")
        # No transcript cache: a cached transcript would hide the ASR time from the latency figures.
        self.transcriber = make_transcriber({"backend": asr_backend, "model": str(asr), "device": device, "cache": False})
        if isinstance(llm, BaseLLM):
            self.llm = llm
            if rows is not None:
                BaseLLM.check_rows(rows)
                self.llm.rows = rows
        else:
            self.llm = BaseLLM(path=str(llm), dtype=llm_dtype, device=device,
                               **({} if rows is None else {"rows": rows}))
        # generate() computes each distinct leg input once per run (S2S asks the transcripts and
        # answers S2T asked, T2S the answers of T2T); stream(), which the latency task times, never
        self.heard_memo, self.answer_memo, self.spoken_memo = ContentMemo(), ContentMemo(), ContentMemo()
        if warmup:
            _ = self.transcriber.model  # loads Whisper
            self.speak("Ready.")  # loads the voice

    # -- legs ---------------------------------------------------------------------------------
    def speak(self, sentence: str) -> Audio:
        wav, sr = self._tts.synthesize(sentence, engine=self.tts_engine, voice=self.tts_voice, use_cache=False)
        return Audio(wav, sr)

    def _hear(self, audio: Audio, sample_id: str, where: str) -> str:
        return self.transcriber(audio, id=sample_id).strip()

    # -- identity -----------------------------------------------------------------------------
    def _tts_identity(self) -> str:
        """The engine's version (and the piper voice file's sha256): a new one speaks differently."""
        voice = self._tts.resolve_voice(self.tts_engine, self.tts_voice)
        return self._tts.engine_identity(voice.engine, voice.engine_voice)

    def fingerprint(self) -> str:
        ident = {
            "asr": self.transcriber.config_key,
            "llm": self.llm.fingerprint(),
            "tts": [self.tts_engine, self.tts_voice, self._tts.CACHE_VERSION, self._tts_identity()],
        }
        return "cascade:" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {
            "asr": self.transcriber.info,
            "llm": self.llm.describe(),
            "tts": {"engine": self.tts_engine, "voice": self.tts_voice, "cache": False,
                    "identity": self._tts_identity()},
            "streaming": "LLM deltas as decoded; TTS per completed sentence",
            "batches": "greedy requests: one batched ASR pass, the LLM's rows decoded together "
                       "(left-padded), TTS per sentence; each answer the streamed one; each distinct "
                       "audio, LLM request and sentence computed once per run (a memo stream() never uses)",
        }

    # -- the LLM's request ------------------------------------------------------------------------
    def _history(self, request: Request) -> list[Turn]:
        """The earlier turns as text: spoken ones transcribed."""
        history = []
        for i, turn in enumerate(request.history):
            if turn.text is None and turn.audio is not None:
                turn = Turn(turn.role, text=self._hear(turn.audio, request.id, f"request {request.id} history[{i}]"))
            history.append(turn)
        return history

    def _llm_request(self, request: Request, history: list[Turn], heard: str | None) -> Request:
        """What the LLM leg is asked: the transcript (after the request's text prompt, an
        instruction, when both come) or the written text."""
        if request.audio is not None:
            user_text = f"{request.text.strip()}\n\n{heard}" if request.text and request.text.strip() else heard
        elif request.text and request.text.strip():
            user_text = request.text
        else:
            raise UnsupportedRequest(f"request {request.id}: neither text nor audio")
        # an lm-eval context (raw prompt) reaches the LLM untemplated, as base_llm gets it
        return Request(id=request.id, text=user_text, history=history, system=request.system,
                       output_modality="text", options=request.options,
                       raw_prompt=request.raw_prompt and request.audio is None)

    # -- streaming ----------------------------------------------------------------------------
    def stream(self, request: Request) -> Iterator[StreamEvent]:
        """Marks asr_done (speech in), llm_prefill_start, llm_first_token, first_sentence,
        llm_last_token; text deltas; one audio chunk per sentence. The end's info: the LLM's
        prompt and token counts, the transcript, the LLM's whole text, the spoken sentences."""
        extra: dict[str, Any] = {}  # the end's info beyond prompt and tokens
        want_text = request.output_modality in ("text", "both")
        want_audio = request.output_modality in ("speech", "both")

        history = self._history(request)
        heard = None
        if request.audio is not None:
            heard = self._hear(request.audio, request.id, f"request {request.id}")
            extra["asr_transcript"] = heard
            yield StreamEvent("mark", time.monotonic(), name="asr_done")
            if not heard:
                # The ASR heard nothing (silence, noise): a cascade has nothing to answer.
                # An empty reply is scored as no answer; it is not a failure of the pipeline.
                extra.update(llm_text="", spoken_sentences=[])
                yield StreamEvent("end", time.monotonic(), info={
                    "prompt": None, "tokens": {"prompt": None, "completion": None}, **extra})
                return
        llm_request = self._llm_request(request, history, heard)
        llm_info: dict[str, Any] = {}
        sentences = SentenceBuffer()
        spoken: list[str] = []
        text_parts: list[str] = []

        def say(sentence: str) -> Iterator[StreamEvent]:
            if not _speakable(sentence, extra):
                return
            if not spoken:
                yield StreamEvent("mark", time.monotonic(), name="first_sentence")
            spoken.append(sentence)
            audio = self.speak(sentence)
            yield StreamEvent("audio", time.monotonic(), audio=audio)

        for ev in self.llm.stream(llm_request):
            if ev.kind == "end":
                llm_info = ev.info
            elif ev.kind == "mark":
                # llm_prefill_start, llm_first_token, llm_last_token (stamped when the LLM made them)
                yield StreamEvent("mark", ev.t, name=f"llm_{ev.name}")
            elif ev.kind == "text":
                text_parts.append(ev.text)
                if want_text:
                    yield ev
                if want_audio:
                    for sentence in sentences.push(ev.text):
                        yield from say(sentence)
        if want_audio and (rest := sentences.flush()):
            yield from say(rest)
        extra.update(llm_text="".join(text_parts), spoken_sentences=spoken)
        llm_tokens = llm_info.get("tokens", {})
        yield StreamEvent("end", time.monotonic(), info={
            "prompt": llm_info.get("prompt"),
            "tokens": {"prompt": llm_tokens.get("prompt"), "completion": llm_tokens.get("completion")},
            "stop_reason": llm_info.get("stop_reason"), **extra})

    # -- batches ------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[Response]:
        if len(requests) > 1 and all(r.options.temperature == 0 for r in requests):
            return self._generate_batch(requests)
        out = []
        for r in requests:
            resp = collect_stream(self.stream(r))
            if r.output_modality in ("text", "both"):
                resp.text = resp.text or ""
            out.append(resp)
        return out

    def _generate_batch(self, requests: Sequence[Request]) -> list[Response]:
        """Greedy requests leg by leg: every question heard in one batched ASR pass, every
        answer decoded by the LLM's batched greedy path, then each answer spoken sentence by
        sentence. Each response holds what `stream()` gives: the same transcript, text,
        sentences and info; its timings are the batch's (asr_done, llm_done, total). A leg
        whose input this run has seen before (the same audio, LLM request or sentence) is
        taken from the memo; `extra.reused` names those legs."""
        t0 = time.monotonic()
        spoken_in = [i for i, r in enumerate(requests) if r.audio is not None]
        heard = self._heard_batch(requests, spoken_in)
        t_asr = time.monotonic() - t0
        asked = {i: self._llm_request(r, self._history(r), heard[i][0] if i in heard else None)
                 for i, r in enumerate(requests) if r.audio is None or heard[i][0]}
        answers = self._answers_batch(asked)
        t_llm = time.monotonic() - t0
        out = []
        for i, r in enumerate(requests):
            answer, answer_reused = answers.get(i, (None, False))
            reused = (["asr"] if i in heard and heard[i][1] else []) + (["llm"] if answer_reused else [])
            extra: dict[str, Any] = {"asr_transcript": heard[i][0]} if i in heard else {}
            timings = {"asr_done": t_asr} if i in heard else {}
            if answer is None:  # heard nothing: no answer, as stream() ends
                extra.update(llm_text="", spoken_sentences=[])
                out.append(Response(text="" if r.output_modality in ("text", "both") else None,
                                    tokens={"prompt": None, "completion": None},
                                    timings={**timings, "total": time.monotonic() - t0},
                                    extra={**extra, "batch": len(requests), "reused": reused}))
                continue
            text = answer.text or ""
            audio = None
            spoken: list[str] = []
            if r.output_modality in ("speech", "both"):
                buffer = SentenceBuffer()
                sentences = buffer.push(text)
                if (rest := buffer.flush()):
                    sentences.append(rest)
                chunks = []
                for sentence in sentences:
                    if _speakable(sentence, extra):
                        spoken.append(sentence)
                        chunk, hit = self._spoken(sentence)
                        chunks.append(chunk)
                        if hit and "tts" not in reused:
                            reused.append("tts")
                if chunks:
                    audio = Audio(np.concatenate([c.samples for c in chunks]), chunks[0].sample_rate)
            extra.update(llm_text=text, spoken_sentences=spoken)
            out.append(Response(
                text=text if r.output_modality in ("text", "both") else None, audio=audio,
                timings={**timings, "llm_done": t_llm, "total": time.monotonic() - t0},
                prompt=answer.prompt,
                tokens={"prompt": answer.tokens.get("prompt"), "completion": answer.tokens.get("completion")},
                extra={"stop_reason": answer.extra.get("stop_reason"), **extra, "batch": len(requests),
                       "reused": reused}))
        return out

    def _heard_batch(self, requests: Sequence[Request], spoken_in: list[int]) -> dict[int, tuple[str, bool]]:
        """Each spoken request's transcript and whether the memo had it; the rest in one ASR pass."""
        keys = {i: audio_sha256(requests[i].audio) for i in spoken_in}
        heard = {i: (got, True) for i in spoken_in if (got := self.heard_memo.get(keys[i])) is not None}
        todo = [i for i in spoken_in if i not in heard]
        if todo:
            transcripts = self.transcriber.transcribe_many([requests[i].audio for i in todo],
                                                           ids=[requests[i].id for i in todo], progress=False)
            for i, t in zip(todo, transcripts):
                heard[i] = ((t or "").strip(), False)
                self.heard_memo.put(keys[i], heard[i][0])
        return heard

    def _answers_batch(self, asked: dict[int, Request]) -> dict[int, tuple[Response, bool]]:
        """Each LLM request's answer and whether the memo had it; the rest in one batched call."""
        keys = {i: self._answer_key(req) for i, req in asked.items()}
        answers = {i: (got, True) for i in asked if (got := self.answer_memo.get(keys[i])) is not None}
        todo = [i for i in asked if i not in answers]
        if todo:
            for i, answer in zip(todo, self.llm.generate([asked[i] for i in todo])):
                answers[i] = (answer, False)
                self.answer_memo.put(keys[i], answer)
        return answers

    @staticmethod
    def _answer_key(req: Request) -> str:
        """Everything the LLM leg reads of a request (not its id)."""
        return ContentMemo.json_key({"text": req.text, "system": req.system, "raw": req.raw_prompt,
                                     "history": [(t.role, t.text) for t in req.history],
                                     "output": req.output_modality, "options": req.options.to_dict()})

    def _spoken(self, sentence: str) -> tuple[Audio, bool]:
        """A sentence's audio and whether the memo had it (the voice speaks a sentence the same
        way every time: Piper's noise is drawn from the sentence's phonemes)."""
        got = self.spoken_memo.get(sentence)
        if got is not None:
            return got, True
        audio = self.speak(sentence)
        self.spoken_memo.put(sentence, audio)
        return audio, False

    def reset_memos(self) -> None:
        for memo in (self.heard_memo, self.answer_memo, self.spoken_memo):
            memo.clear()

    # A cascade's text path is its LLM: text retention scores the LLM leg as it is configured.
    @property
    def text_scorer(self) -> BaseLLM:
        return self.llm

    def close(self) -> None:
        self.transcriber.close()

"""A deterministic scripted model for tests only.

It answers every request with its own prompt text (so a task decides right and wrong
answers through its data), speaks a tone whose pitch depends on the answer, streams word by
word, scores text with a fixed formula, and can be told to fail on chosen sample ids, to
sleep per sample and to log every model call to a counter file. Use it from the CLI with
`--model-path tests/scripted_adapter.py:ScriptedModel --model-args fail_ids=a|b,delay=0.2`.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence

import numpy as np

from deeptalk_eval.api import Audio, Capabilities, Request, Response, SpokenModel, StreamEvent

SAMPLE_RATE = 16000


def _tone(text: str, seconds: float = 0.25) -> Audio:
    freq = 200 + int(hashlib.sha256(text.encode()).hexdigest()[:4], 16) % 600
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return Audio(0.3 * np.sin(2 * np.pi * freq * t), SAMPLE_RATE)


def _prompt(req: Request) -> str:
    return f"USER: {req.text or '<audio>'}\nASSISTANT:"


class ScriptedModel(SpokenModel):
    name = "scripted"
    capabilities = Capabilities(text_in=True, audio_in=True, text_out=True, audio_out=True,
                                streaming=True, loglikelihood=True)

    def __init__(self, fail_ids: str = "", delay: float = 0.0, counter: str | None = None,
                 no_audio: bool = False, version: int = 1):
        super().__init__(fail_ids=fail_ids, delay=delay, counter=counter, no_audio=no_audio, version=version)
        self.fail_ids = {s for s in str(fail_ids).split("|") if s}
        self.delay = float(delay)
        self.counter = counter
        self.no_audio = bool(no_audio)
        self.version = version

    def fingerprint(self) -> str:
        # delay and counter do not change outputs, so they do not key the cache
        return f"scripted-v{self.version}:fail={sorted(self.fail_ids)}:no_audio={self.no_audio}"

    def describe(self) -> dict:
        return {"scripted": True, "version": self.version}

    def _log_call(self, req: Request) -> None:
        if self.counter:
            with open(self.counter, "a") as f:
                f.write(req.id + "\n")
                f.flush()
                os.fsync(f.fileno())

    def _answer(self, req: Request) -> str:
        if req.id in self.fail_ids:
            raise RuntimeError(f"scripted failure on {req.id}")
        if req.text is not None:
            return req.text
        return f"audio of {req.audio.samples.size} samples at {req.audio.sample_rate} Hz"

    def _respond(self, req: Request) -> Response:
        if self.delay:
            time.sleep(self.delay)
        text = self._answer(req)
        self._log_call(req)
        audio = None if (self.no_audio or req.output_modality == "text") else _tone(text)
        return Response(text=text if req.output_modality != "speech" else None, audio=audio,
                        timings={"total": self.delay}, tokens={"text": len(text.split())}, prompt=_prompt(req))

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        # One failing id fails the whole batch, as a real batched model would.
        bad = [r.id for r in requests if r.id in self.fail_ids]
        if bad and len(requests) > 1:
            raise RuntimeError(f"scripted batch failure (contains {bad[0]})")
        return [self._respond(r) for r in requests]

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        start = time.monotonic()
        text = self._answer(request)
        words = text.split() or [text]
        step = self.delay / max(len(words), 1)
        yield StreamEvent("mark", time.monotonic(), name="encoder_done")
        for i, w in enumerate(words):
            time.sleep(step)
            yield StreamEvent("text", time.monotonic(), text=w if i == 0 else " " + w)
            if request.output_modality != "text" and not self.no_audio:
                yield StreamEvent("audio", time.monotonic(), audio=_tone(w, 0.1))
        self._log_call(request)
        yield StreamEvent("end", max(time.monotonic(), start), info={
            "prompt": _prompt(request), "tokens": {"text": len(text.split())}, "stop_reason": "end_of_text"})

    def loglikelihood(self, pairs):
        out = []
        for context, continuation in pairs:
            h = int(hashlib.sha256((context + "|" + continuation).encode()).hexdigest()[:6], 16)
            out.append((-(h % 1000) / 100.0 - len(continuation) * 0.01, h % 3 == 0))
        return out

    def loglikelihood_rolling(self, texts):
        return [-len(t) * 0.05 for t in texts]


# A torch-free scorer for the subprocess tests (kill/resume start several interpreters;
# the real `exact_match` loads Whisper's normaliser, which imports torch).
from deeptalk_eval.scoring.base import register_scorer, scorer_names  # noqa: E402

if "echo_match" not in scorer_names():
    @register_scorer("echo_match")
    def echo_match(sample, ctx, answers_field: str = "answers"):
        gold = [str(a).strip().lower() for a in sample.doc[answers_field]]
        if not (sample.channel_text or "").strip():
            return {"acc": 0.0}
        return {"acc": float(sample.channel_text.strip().lower() in gold)}

"""The model interface: what the harness sends a model and what it gets back.

Every model — the reference DeepTalk, the baselines, a user's own — is reached only
through a `SpokenModel` subclass. The harness never looks inside a model; it hands over
`Request`s and reads `Response`s (or, for streaming models, timed `StreamEvent`s).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

Modality = Literal["text", "speech", "both"]


@dataclass
class Audio:
    """Mono float32 waveform in [-1, 1] with its sample rate."""

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self):
        self.samples = np.asarray(self.samples, dtype=np.float32).reshape(-1)
        self.sample_rate = int(self.sample_rate)

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate if self.sample_rate else 0.0


@dataclass
class GenerationOptions:
    """Decoding options. Greedy (temperature 0) unless asked; `seed` makes sampling repeatable."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Spoken answers: at most this many decoding steps (adapters whose speech length is
    # counted in steps bound it by this, e.g. deeptalk's StreamConfig.max_speech_steps);
    # None: the model's own cap. max_new_tokens bounds text-only answers.
    max_speech_steps: int | None = None

    @property
    def is_deterministic(self) -> bool:
        return self.temperature == 0.0 or self.seed is not None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stop"] = list(self.stop)
        if d["max_speech_steps"] is None:  # unset: request keys (the response cache) stay as they were
            del d["max_speech_steps"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> GenerationOptions:
        d = dict(d or {})
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown generation option(s): {sorted(unknown)}")
        if "stop" in d:
            d["stop"] = tuple(d["stop"] or ())
        steps = d.get("max_speech_steps")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"max_speech_steps must be a positive integer, got {steps!r}")
        return cls(**d)


@dataclass
class Turn:
    """One earlier turn of a conversation."""

    role: Literal["system", "user", "assistant"]
    text: str | None = None
    audio: Audio | None = None


@dataclass
class Request:
    """One input for a model: text or audio (or both), history, and the wanted output."""

    id: str
    text: str | None = None
    audio: Audio | None = None
    history: list[Turn] = field(default_factory=list)
    system: str | None = None
    output_modality: Modality = "text"
    options: GenerationOptions = field(default_factory=GenerationOptions)
    # True: `text` is a complete prompt (lm-eval few-shot context) to be fed as is, without
    # the model's chat template — so retention tasks match lm-eval's own numbers.
    raw_prompt: bool = False

    @property
    def input_modality(self) -> Literal["text", "speech"]:
        return "speech" if self.audio is not None else "text"


# stop reasons meaning "ran to the step / token budget" (Response.extra["stop_reason"])
CAP_STOP_REASONS = frozenset({"max_new_tokens", "max_steps"})


@dataclass
class Response:
    """What a model produced for one request.

    `timings` holds named durations in seconds (e.g. "encoder", "prefill", "total");
    `prompt` is the exact text/template the model saw, for audit and prompt snapshots.
    `extra["stop_reason"]`, where the model knows it, says why the answer ended: "eos" (the
    model ended it), "stop_string", or one of CAP_STOP_REASONS (it ran to its budget); the
    `stop` scorer turns that into the share of answers that hit the cap.
    """

    text: str | None = None
    audio: Audio | None = None
    timings: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StreamEvent:
    """A timed piece of streamed output.

    `t` is `time.monotonic()` when the piece became available. Kinds: "text" (a text
    delta), "audio" (a chunk of playable samples), "mark" (a named internal point such as
    "encoder_done" or "prefill_done", used for latency breakdowns), "end".

    The "end" event's `info` is what the model knows once it is done: "prompt" (what it was
    given, for `Response.prompt`), "tokens" (counts by name, for `Response.tokens`) and
    whatever else it records (stop reason, ...), which goes to `Response.extra`.
    """

    kind: Literal["text", "audio", "mark", "end"]
    t: float
    text: str | None = None
    audio: Audio | None = None
    name: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Capabilities:
    text_in: bool = True
    audio_in: bool = False
    text_out: bool = True
    audio_out: bool = False
    streaming: bool = False
    loglikelihood: bool = False

    def supports(self, input_modality: str, output_modality: str) -> bool:
        ok_in = self.audio_in if input_modality == "speech" else self.text_in
        if output_modality == "both":
            ok_out = self.text_out and self.audio_out
        elif output_modality == "speech":
            ok_out = self.audio_out
        else:
            ok_out = self.text_out
        return ok_in and ok_out

    def to_dict(self) -> dict[str, bool]:
        return dataclasses.asdict(self)


class UnsupportedRequest(ValueError):
    """Raised by a model for a request it cannot serve (wrong modality, bad audio...)."""


class SpokenModel:
    """Base class of every model adapter.

    Subclasses set `capabilities`, implement `generate` (and `stream` when streaming),
    and, when they can score text, `loglikelihood` / `loglikelihood_rolling` so that
    lm-eval tasks run on their text path through `deeptalk_eval.lm_bridge`.

    `fingerprint()` must change whenever outputs may change (weights, config, options):
    it keys the response cache.
    """

    name: ClassVar[str] = "model"
    capabilities: ClassVar[Capabilities] = Capabilities()
    # requests the runner hands over together when every one is greedy and --batch-size is
    # not given; set it above 1 only where batched greedy answers equal one-by-one ones
    greedy_batch_size: ClassVar[int] = 1

    def __init__(self, **kwargs: Any):
        self.args = dict(kwargs)

    # -- identity -----------------------------------------------------------------
    def fingerprint(self) -> str:
        return f"{type(self).__module__}.{type(self).__qualname__}:{sorted(self.args.items())}"

    def describe(self) -> dict[str, Any]:
        """Extra facts recorded in results (checkpoint, routing mode, dtype, ...)."""
        return {}

    def check_setup(self) -> None:
        """Called once after construction, before any request. Raise
        `deeptalk_eval.errors.UsageError` for a set-up mistake every request would hit (a model
        server that does not answer, a missing part): the run stops with that one line, exit 2,
        instead of failing sample after sample. Raised from `generate` / `stream`, it does the same."""

    def reset_memos(self) -> None:
        """Forget what earlier requests computed (results kept by input content). Called before
        each part of a `--processes` run that one worker answers after another, so that a part's
        answers are those of a process of its own: batched decoding may depend on which rows a
        batch holds, and a memo decides which rows are left to decode."""

    # -- generation ---------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[Response]:
        if self.capabilities.streaming:
            return [collect_stream(self.stream(r)) for r in requests]
        raise NotImplementedError(f"{type(self).__name__} implements neither generate nor stream")

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        raise NotImplementedError(f"{type(self).__name__} does not stream")

    # -- text scoring (lm-eval bridge) --------------------------------------------
    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """For each (context, continuation): log P(continuation | context), is_greedy."""
        raise NotImplementedError(f"{type(self).__name__} cannot score text")

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        raise NotImplementedError(f"{type(self).__name__} cannot score text")

    def close(self) -> None:
        """Release resources (servers, files)."""


def collect_stream(events: Iterator[StreamEvent], start: float | None = None) -> Response:
    """Fold a stream into a Response: first-text / first-audio / mark times as timings, and
    the end event's info as prompt, tokens and extra (see `StreamEvent`)."""
    start = time.monotonic() if start is None else start
    texts: list[str] = []
    chunks: list[np.ndarray] = []
    sr = None
    timings: dict[str, float] = {}
    info: dict[str, Any] = {}
    for ev in events:
        if ev.kind == "text" and ev.text:
            timings.setdefault("first_text", ev.t - start)
            texts.append(ev.text)
        elif ev.kind == "audio" and ev.audio is not None:
            timings.setdefault("first_audio", ev.t - start)
            if sr is not None and ev.audio.sample_rate != sr:
                raise ValueError("audio chunks of one stream changed sample rate")
            sr = ev.audio.sample_rate
            chunks.append(ev.audio.samples)
        elif ev.kind == "mark" and ev.name:
            timings.setdefault(ev.name, ev.t - start)
        elif ev.kind == "end":
            info = dict(ev.info)
        timings["total"] = ev.t - start
    audio = Audio(np.concatenate(chunks), sr) if chunks else None
    return Response(text="".join(texts) if texts else None, audio=audio, timings=timings,
                    prompt=info.pop("prompt", None), tokens=info.pop("tokens", {}), extra=info)

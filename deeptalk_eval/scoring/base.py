"""The scorer interface and registry.

A scorer turns one sample (the task's doc, the model's response) into per-sample metric
values. Scorers are plain functions registered by name; task YAMLs name them.

    @register_scorer("qa_match")
    def qa_match(sample: SampleView, ctx: ScoringContext, answers_field: str = "answers"):
        return {"acc": 1.0 if ... else 0.0}

`SampleView.channel_text` is the text being scored: the model's text channel for
`channel: text`, or the ASR transcript of its speech for `channel: speech` (the runner
fills it through `ctx.transcribe`, cached). A scorer returns a dict of metric name ->
float (or None when the value does not exist for this sample, e.g. no audio produced;
the metric's `on_failure` rule then decides).

A scorer may carry a `preflight(args, judge)` attribute: the runner calls it with the
scorer's args and the run's --judge before any model loads, and a `UsageError` it raises
stops the run (scoring.judge uses it to refuse to run without a judge).

A scorer may carry a `prepare(docs, ctx, **args)` attribute: the runner calls it once per task
with the docs of the samples to score (those that did not fail), before the per-sample calls,
for work that runs faster together; it leaves what it made in `ctx.prepared[<scorer name>]`.
The per-sample call must still work without it (a prepare that raises is recorded in
`ctx.info["prepare_failed"]` and the samples are scored one by one, each failing on its own).
The noise floor's scorer synthesises every gold answer and transcribes them in batches there.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from deeptalk_eval.api import Audio, Response

ScorerFn = Callable[..., dict[str, float | None]]
_SCORERS: dict[str, ScorerFn] = {}


def register_scorer(name: str) -> Callable[[ScorerFn], ScorerFn]:
    def deco(fn: ScorerFn) -> ScorerFn:
        if name in _SCORERS and _SCORERS[name] is not fn:
            raise ValueError(f"scorer {name!r} is registered twice")
        _SCORERS[name] = fn
        return fn

    return deco


def get_scorer(name: str) -> ScorerFn:
    _load_builtin_scorers()
    try:
        return _SCORERS[name]
    except KeyError:
        import difflib

        near = difflib.get_close_matches(name, list(_SCORERS), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise KeyError(f"unknown scorer {name!r}{hint}; known: {sorted(_SCORERS)}") from None


def scorer_names() -> list[str]:
    _load_builtin_scorers()
    return sorted(_SCORERS)


def _load_builtin_scorers() -> None:
    # Importing the modules registers their scorers.
    import importlib

    for mod in ("deeptalk_eval.scoring.scorers", "deeptalk_eval.scoring.latency", "deeptalk_eval.scoring.choice",
                "deeptalk_eval.scoring.refusal", "deeptalk_eval.scoring.ifeval", "deeptalk_eval.scoring.judge",
                "deeptalk_eval.scoring.duration"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


class TranscribeFn(Protocol):
    """What scorers call to hear speech: audio in, transcript out (scoring/asr.py's Transcriber)."""

    def __call__(self, audio: Audio) -> str: ...


class TranscribeManyFn(Protocol):
    """Many clips at once, in order, the misses decoded in batches; None where a clip is invalid."""

    def __call__(self, audios: list[Audio], ids: list[str] | None = None) -> list[str | None]: ...


@dataclass
class SampleView:
    """What a scorer sees of one sample."""

    doc: dict[str, Any]
    response: Response | None  # None when the adapter failed on this sample
    channel: str  # "text" | "speech"
    channel_text: str | None  # the text being scored (None: nothing produced)
    error: str | None = None
    # the answer had audio whose samples are not here (a rescore from a log without its wav
    # files): scorers that read samples say "not measured", never "no audio"
    audio_gone: bool = False


@dataclass
class ScoringContext:
    """Shared services for scorers: ASR (cached), normaliser choice, task config."""

    transcribe: TranscribeFn | None = None
    transcribe_many: TranscribeManyFn | None = None
    normaliser: str = "answer_match+whisper_en"
    task_config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # ASR model/options etc., recorded in results
    judge: str | None = None  # the run's --judge spec (scoring.judge); wins over a scorer's `judge:` arg
    prepared: dict[str, Any] = field(default_factory=dict)  # what scorers' `prepare` made, by scorer name

"""Streaming latency: recording a stream from outside the model, and scoring it.

The harness measures, the model only yields timed events. `record_stream` iterates an
adapter's `stream(request)`, stamps every event with the harness's own monotonic clock on
receipt (relative to the moment the full input was handed over), folds the stream into a
`Response` as `collect_stream` does for `generate` (so the end event's prompt, token counts
and facts are kept as well) and keeps a compact event log in `Response.extra["events"]`:

    {"kind": "text",  "t_rel": 0.21, "n_chars": 5}
    {"kind": "audio", "t_rel": 0.34, "n_samples": 4800, "sr": 24000, "rms": 0.061}
    {"kind": "mark",  "t_rel": 0.05, "name": "encoder_done"}      # t_rel from the model's stamp
    {"kind": "end",   "t_rel": 1.90}

The `latency` scorer turns one log into per-sample figures (docs/design.md §3):

    ttft            first text delta
    ttfa            first audio chunk ready to play
    ttfa_nonsilent  first chunk whose RMS exceeds `silence_rms` (default 0.01, about -40 dBFS)
    gen_time        hand-over to the end event (or the last event)
    audio_duration  seconds of audio produced
    rtf             gen_time / audio_duration
    stalls          chunks that arrive after their playback deadline; playback starts when
                    the first chunk arrives and pauses (re-buffers) on a late chunk, so one
                    slow chunk counts once, not for every chunk behind it
    stall_time      total seconds of such pauses
    encoder / prefill / decode_first / codec_first
                    the breakdown from marks: hand-over -> "encoder_done" -> "prefill_done"
                    -> "first_codes_done" (the codec tokens of the first chunk exist) -> first
                    audio chunk (codec decode). A part whose marks are missing is None.
                    Adapters' own names for these points are accepted (MARK_ALIASES).

Cold start: the first request after the model is loaded is reported separately. A sample is
cold when `response.extra["request_index"] == 0` (the runner's send order) or, when the
runner does not record it, when its doc has `cold: true` (tasks/latency marks its first
doc). A cold sample yields only the `cold_*` figures; warm samples yield the rest, so
percentiles aggregate over warm requests only.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from deeptalk_eval.api import Response, StreamEvent, collect_stream
from deeptalk_eval.scoring.base import SampleView, ScoringContext, register_scorer

SILENCE_RMS = 0.01  # chunk RMS at or below this counts as silence (~ -40 dBFS for float audio)
LATE_TOLERANCE = 0.005  # seconds: clock jitter below this is not a stall

# The breakdown's marks and the names adapters already use for the same points (first
# name found wins): the reference model's generator, the cascade (ASR is its speech
# encoder, its first LLM token ends prefill, its first sentence is what TTS turns into the
# first chunk) and the base LLM.
MARK_ALIASES = {
    "encoder_done": ("encoder_done", "asr_done"),
    "prefill_done": ("prefill_done", "llm_first_token", "first_token"),
    "first_codes_done": ("first_codes_done", "first_chunk_ready", "first_sentence"),
}
WARM_METRICS = ("ttft", "ttfa", "ttfa_nonsilent", "gen_time", "audio_duration", "rtf", "stalls",
                "stall_time", "encoder", "prefill", "decode_first", "codec_first")
COLD_METRICS = ("cold_ttft", "cold_ttfa", "cold_ttfa_nonsilent", "cold_rtf")


def rms(samples: np.ndarray) -> float:
    x = np.asarray(samples, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def record_stream(events: Iterator[StreamEvent], start: float, clock=time.monotonic) -> Response:
    """Consume a stream; stamp each event with `clock()` on receipt, relative to `start`.

    `start` is the harness's `clock()` reading when the request was handed over. Marks are
    internal points only the model can see; they keep the model's own stamp `ev.t`
    (the same monotonic clock when the adapter runs in this process).
    """
    log: list[dict[str, Any]] = []

    def logged() -> Iterator[StreamEvent]:
        sr = None
        for ev in events:
            now = clock() - start
            if ev.kind == "text":
                if ev.text:
                    log.append({"kind": "text", "t_rel": now, "n_chars": len(ev.text)})
            elif ev.kind == "audio":
                if ev.audio is None or ev.audio.samples.size == 0:
                    continue
                if sr is not None and ev.audio.sample_rate != sr:
                    raise ValueError(f"audio chunks of one stream changed sample rate ({sr} -> {ev.audio.sample_rate})")
                sr = ev.audio.sample_rate
                log.append({"kind": "audio", "t_rel": now, "n_samples": int(ev.audio.samples.size),
                            "sr": sr, "rms": rms(ev.audio.samples)})
            elif ev.kind == "mark":
                log.append({"kind": "mark", "t_rel": float(ev.t - start), "name": ev.name, "t_recv": now})
            elif ev.kind == "end":
                log.append({"kind": "end", "t_rel": now})
            else:
                raise ValueError(f"unknown stream event kind {ev.kind!r}")
            yield ev

    resp = collect_stream(logged(), start)
    if not log or log[-1]["kind"] != "end":
        log.append({"kind": "end", "t_rel": clock() - start})  # the stream was exhausted
    # the harness's clock, not the model's stamps
    resp.timings = {k: v for k, v in latency_metrics(log).items()
                    if k in ("ttft", "ttfa", "gen_time") and v is not None}
    resp.extra["events"] = log
    return resp


def latency_metrics(events: list[dict[str, Any]], silence_rms: float = SILENCE_RMS,
                    late_tolerance: float = LATE_TOLERANCE) -> dict[str, float | None]:
    """Per-request latency figures from an event log (see the module docstring)."""
    for i, e in enumerate(events):
        if "kind" not in e or "t_rel" not in e:
            raise ValueError(f"event #{i} lacks 'kind' or 't_rel': {e}")
        if e["kind"] == "audio" and not (e.get("sr") and e.get("n_samples") is not None):
            raise ValueError(f"audio event #{i} lacks 'sr' or 'n_samples': {e}")
    text = [e for e in events if e["kind"] == "text"]
    audio = sorted((e for e in events if e["kind"] == "audio"), key=lambda e: e["t_rel"])
    named = {}
    for e in events:
        if e["kind"] == "mark":
            named.setdefault(e.get("name"), e["t_rel"])
    marks = {canon: next(named[n] for n in names if n in named)
             for canon, names in MARK_ALIASES.items() if any(n in named for n in names)}
    ends = [e["t_rel"] for e in events if e["kind"] == "end"]
    out: dict[str, float | None] = dict.fromkeys(WARM_METRICS)

    out["ttft"] = min(e["t_rel"] for e in text) if text else None
    out["gen_time"] = ends[-1] if ends else max((e["t_rel"] for e in events), default=None)
    if audio:
        out["ttfa"] = audio[0]["t_rel"]
        voiced = [e for e in audio if e.get("rms", 1.0) > silence_rms]
        out["ttfa_nonsilent"] = voiced[0]["t_rel"] if voiced else None
        durations = [e["n_samples"] / e["sr"] for e in audio]
        out["audio_duration"] = float(sum(durations))
        if out["audio_duration"] > 0 and out["gen_time"] is not None:
            out["rtf"] = out["gen_time"] / out["audio_duration"]
        stalls, stall_time, deadline = 0, 0.0, audio[0]["t_rel"]
        for e, dur in zip(audio, durations):
            late = e["t_rel"] - deadline
            if late > late_tolerance:
                stalls += 1
                stall_time += late
                deadline = e["t_rel"]  # playback re-buffers and resumes on arrival
            deadline += dur
        out["stalls"], out["stall_time"] = float(stalls), stall_time

    def span(a: str | None, b: str | None) -> float | None:
        ta = 0.0 if a is None else marks.get(a)
        tb = out["ttfa"] if b is None else marks.get(b)
        return None if ta is None or tb is None else tb - ta

    out["encoder"] = span(None, "encoder_done") if "encoder_done" in marks else None
    out["prefill"] = span("encoder_done" if "encoder_done" in marks else None, "prefill_done") \
        if "prefill_done" in marks else None
    out["decode_first"] = span("prefill_done", "first_codes_done")
    out["codec_first"] = span("first_codes_done", None)
    return out


def is_cold(sample: SampleView) -> bool:
    extra = sample.response.extra if sample.response is not None else {}
    if "request_index" in extra:
        return extra["request_index"] == 0
    return bool(sample.doc.get("cold", False))


@register_scorer("latency")
def latency(sample: SampleView, ctx: ScoringContext, silence_rms: float = SILENCE_RMS,
            late_tolerance: float = LATE_TOLERANCE) -> dict[str, float | None]:
    """Latency figures of one streamed request; warm figures, or `cold_*` for the first."""
    ctx.info.setdefault("latency", {"silence_rms": silence_rms, "late_tolerance_s": late_tolerance,
                                    "clock": "harness time.monotonic on receipt",
                                    "stall_rule": "late vs playback deadline, re-buffering"})
    none = dict.fromkeys(WARM_METRICS + COLD_METRICS + ("load_average",))
    if sample.response is None:
        return none
    events = sample.response.extra.get("events")
    if not events:
        raise ValueError(f"sample {sample.doc.get('id')!r}: response has no extra['events']: "
                         "latency tasks must run with kind: stream")
    m = latency_metrics(events, silence_rms, late_tolerance)
    # the machine's 1-minute load average when the request was timed (the runner's record)
    load = {"load_average": sample.response.extra.get("load_average")}
    if is_cold(sample):
        return {**none, **load, "cold_ttft": m["ttft"], "cold_ttfa": m["ttfa"],
                "cold_ttfa_nonsilent": m["ttfa_nonsilent"], "cold_rtf": m["rtf"]}
    return {**none, **load, **m}

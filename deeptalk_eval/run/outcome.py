"""How a task ended (`TaskOutcome`) and what a run, rescore or merge returns (`RunResult`);
the exit status they add up to, and what the terminal is told of a task's failures."""
from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TaskOutcome:
    name: str
    status: str  # "ok" | "skipped: ..." | "error: ..."
    metrics: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    model_calls: int = 0
    cache_hits: int = 0
    first_traceback: str | None = None  # of the first sample the adapter failed on
    shared_cache: dict[str, int] = field(default_factory=dict)  # what came from it, what was computed


@dataclass
class RunResult:
    results: dict[str, Any]
    path: Path
    exit_code: int
    outcomes: list[TaskOutcome]


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def exit_code(outcomes: list[TaskOutcome]) -> int:
    """1 when some task failed entirely (an error, or every sample failed)."""
    for out in outcomes:
        if out.status.startswith("error"):
            return 1
        if out.status == "ok" and out.metrics.get("samples") and out.metrics["failed"] == out.metrics["samples"]:
            return 1
    return 0


def print_outcome(out: TaskOutcome) -> None:
    if out.status != "ok":
        print(f"[{out.name}] {out.status}", file=sys.stderr)
    elif out.metrics.get("failed"):
        m = out.metrics
        print(f"[{out.name}] {m['failed']}/{m['samples']} samples failed "
              f"(failure rate {m['failure_rate']:.1%}); errors are in the per-sample log", file=sys.stderr)
        for rec in out.records:
            if rec.get("error"):
                print(f"  {rec['id']}: {rec['error']}", file=sys.stderr)
                break
        if out.first_traceback:
            print(textwrap.indent(out.first_traceback.rstrip(), "  "), file=sys.stderr)


def shared_cache_record(outcomes: list[TaskOutcome], enabled: bool | None) -> dict[str, Any]:
    """Per task, how many TTS clips and transcripts came from the shared cache and how many
    were computed: a figure built on cached work says so."""
    from deeptalk_common.paths import cache_dir

    return {"dir": str(cache_dir()), "enabled": enabled,
            "tasks": {o.name: o.shared_cache for o in outcomes if any(o.shared_cache.values())}}

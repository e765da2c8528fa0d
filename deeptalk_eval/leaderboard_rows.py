"""Results files read as leaderboard rows: one flat `task/metric` -> value mapping per run.

Columns are `task/metric` for every task metric, plus `group/metric`: the mean of that
metric over the group's tasks within one run (e.g. `spoken_qa/s2s_acc`), leaving out the
members of `<group>_controls` (a silent-audio control's accuracy is not a QA score). Those
group columns are what published rows line up with. `all/failure_rate` is the share of failed
samples over every task of the run. `text_retention/drop_rel` of a measured row is
(avg_base - avg_model) / avg_base over the text_retention tasks it shares with the latest
`base_llm` run of the same limit and seed (and task versions; see `add_retention`).
The leaderboard renders these rows; regression gates compare two runs' flat metrics.

Rows read from files with `"reported": true` (results/reported/*.json, figures from
papers) are marked "reported" and carry their "source" string. They are shown next to
measured rows but never enter any measured figure: group means are taken inside one
results file only, and no figure mixes rows.

A reported figure sits in a measured column only when it is the same metric on the same
data with the same scoring. Otherwise — nearly always: a paper's spoken-QA average is over
other questions than ours, its TTS WER over other sentences with another ASR — its column
is named for its benchmark, `reported:<benchmark>/<metric>` (`reported:seed_tts_eval_en/wer`,
`reported:llama_q+webq+triviaqa/s2s_acc`, `reported:voicebench/overall`), a prefix no task or
group may take. A reported file that puts a figure in any other column must declare it,
`"same_benchmark": {"task/metric": "why it is the same measurement"}`; an undeclared one
is refused (`check_reported_columns`).
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deeptalk_eval.errors import UsageError

# Published figures: their benchmarks' own columns (never a measured one; see the module doc).
REPORTED_PREFIX = "reported:"
# Measured names of the same figures where a task names them differently: the latency
# task aggregates its per-sample "ttfa" as a p50 under the name "ttfa".
LINEUP_ALIASES = {"latency/ttfa_p50": ("latency/ttfa",), "latency/ttft_p50": ("latency/ttft",),
                  # the TTS task scores the spoken channel as speech_wer (text_wer is the text channel)
                  "tts/wer": ("tts/speech_wer",)}
# Per-task keys that describe a metric rather than being one.
_SUFFIXES = ("_stderr", "_ci", "_n")
_NOT_METRICS = ("samples", "failed", "failure_rate")
# Every task is also in the group "all"; a mean over unrelated tasks means nothing.
_SKIP_GROUPS = ("all",)


class LeaderboardError(UsageError):
    """A results file that cannot be read; the message names the file and the problem."""


@dataclass
class Row:
    model: str
    kind: str  # "measured" | "reported"
    source: str  # the file for measured rows, the citation for reported ones
    stage: str | None = None
    date: str | None = None
    path: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    run_config: dict[str, Any] = field(default_factory=dict)  # limit / seed, checked for retention
    same_benchmark: dict[str, str] = field(default_factory=dict)  # reported rows: measured columns declared same


def _is_metric(key: str, value: Any) -> bool:
    if key in _NOT_METRICS or key.endswith(_SUFFIXES):
        return False
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def flatten_metrics(data: dict[str, Any], path: str = "?") -> dict[str, float]:
    """`task/metric` -> value for one results file, plus `group/metric` means over tasks."""
    results = data.get("results")
    if not isinstance(results, dict):
        raise LeaderboardError(f"{path}: 'results' must be a mapping of task -> metrics")
    flat: dict[str, float] = {}
    for task, metrics in results.items():
        if not isinstance(metrics, dict):
            raise LeaderboardError(f"{path}: results[{task!r}] must be a mapping of metric -> value")
        for key, value in metrics.items():
            if _is_metric(key, value):
                flat[f"{task}/{key}"] = math.nan if value is None else float(value)
    samples = sum(m.get("samples") or 0 for m in results.values() if isinstance(m, dict))
    if samples:
        failed = sum(m.get("failed") or 0 for m in results.values() if isinstance(m, dict))
        flat["all/failure_rate"] = failed / samples
    groups = data.get("groups") or {}
    if not isinstance(groups, dict):
        raise LeaderboardError(f"{path}: 'groups' must be a mapping of group -> [tasks]")
    for group, tasks in groups.items():
        if group in _SKIP_GROUPS:
            continue
        if not isinstance(tasks, list):
            raise LeaderboardError(f"{path}: groups[{group!r}] must be a list of task names")
        controls = set(groups.get(f"{group}_controls") or [])
        by_metric: dict[str, list[float]] = {}
        for task in (t for t in tasks if t not in controls):
            for key, value in (results.get(task) or {}).items():
                if _is_metric(key, value) and value is not None:
                    by_metric.setdefault(key, []).append(float(value))
        for key, values in by_metric.items():
            # A task named like its group reports the group figure itself; keep that.
            flat.setdefault(f"{group}/{key}", sum(values) / len(values))
    for column, aliases in LINEUP_ALIASES.items():
        for alias in aliases:
            if column not in flat and alias in flat:
                flat[column] = flat[alias]
    return flat


# How a run executes, not which model it is: left out of row labels ("batch_size" is how
# results files written before `loglikelihood_batch_size` name that batch).
EXECUTION_ARGS = ("threads", "decode_threads", "device", "loglikelihood_batch_size", "batch_size", "rows")


def _model_label(config: dict[str, Any]) -> str:
    model = str(config.get("model") or "?")
    args = config.get("model_args")
    if isinstance(args, dict) and args:
        args = ",".join(f"{k}={v}" for k, v in sorted(args.items()) if k not in EXECUTION_ARGS)
    return f"{model} ({args})" if args else model


def read_row(path: Path) -> Row | None:
    """One results file as a Row; None (with the reason on stderr) for JSON that is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LeaderboardError(f"{path}: not readable JSON: {e}") from None
    if not isinstance(data, dict) or "results" not in data:
        print(f"leaderboard: skipped {path}: not a results file (no 'results' key)", file=sys.stderr)
        return None
    if isinstance(data.get("config"), dict) and data["config"].get("part_of"):
        return None  # one child of a `--processes` run, merged into the file it names
    if isinstance(data.get("config"), dict) and data["config"].get("shard"):
        print(f"leaderboard: skipped {path}: one shard of a run (combine shards with `deeptalk-eval merge`)",
              file=sys.stderr)
        return None
    reported = data.get("reported") is True
    if "reported" in path.parent.parts[-1:] and not reported:
        raise LeaderboardError(f"{path}: files in a 'reported' folder must say \"reported\": true")
    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise LeaderboardError(f"{path}: 'config' must be a mapping")
    if reported and not str(data.get("source") or "").strip():
        raise LeaderboardError(f"{path}: a reported row needs a non-empty 'source' string")
    same = data.get("same_benchmark") or {}
    if not isinstance(same, dict) or not all(isinstance(v, str) and v.strip() for v in same.values()):
        raise LeaderboardError(f"{path}: 'same_benchmark' maps task/metric -> the reason it is the same measurement")
    metrics = flatten_metrics(data, str(path))
    if reported:
        misplaced = sorted(k for k in metrics if not k.startswith(REPORTED_PREFIX) and k not in same)
        if misplaced:
            raise LeaderboardError(f"{path}: reported figure(s) {misplaced} in measured columns; name each column "
                                   f"for its benchmark ('{REPORTED_PREFIX}<benchmark>/<metric>') or declare it in "
                                   f"\"same_benchmark\" with the reason it is the same metric, data and scoring")
    elif any(k.startswith(REPORTED_PREFIX) for k in metrics):
        raise LeaderboardError(f"{path}: a measured run with '{REPORTED_PREFIX}' columns, which hold published figures")
    stage = data.get("stage")
    return Row(
        model=_model_label(config),
        kind="reported" if reported else "measured",
        source=str(data["source"]) if reported else str(path),
        stage=None if stage is None else str(stage),
        date=None if data.get("date") is None else str(data["date"]),
        path=str(path),
        metrics=metrics,
        groups={g: list(t) for g, t in (data.get("groups") or {}).items()},
        run_config={"limit": config.get("limit"), "seed": config.get("seed"), "versions": data.get("versions") or {}},
        same_benchmark=dict(same) if reported else {},
    )


def check_reported_columns(rows: Sequence[Row]) -> None:
    """No reported figure in a column a measured row fills, unless its file declares it the
    same benchmark ("same_benchmark"); LeaderboardError naming the row and the column."""
    measured = {k for r in rows if r.kind == "measured" for k, v in r.metrics.items() if not math.isnan(v)}
    for r in rows:
        if r.kind != "reported":
            continue
        clash = sorted(k for k in r.metrics if k in measured and k not in r.same_benchmark)
        if clash:
            raise LeaderboardError(f"{r.path}: reported figure(s) {clash} of {r.model!r} share a column with "
                                   f"measured runs without being declared the same benchmark")


def all_rows(results_dir: str | Path) -> list[Row]:
    """Every results file under the folder (hidden folders left out), as rows."""
    root = Path(results_dir)
    if not root.is_dir():
        raise LeaderboardError(f"{root}: no such results folder")
    files = sorted(p for p in root.rglob("*.json")
                   if not any(part.startswith(".") for part in p.relative_to(root).parts))
    rows = []
    for path in files:
        row = read_row(path)
        if row is not None:
            if row.kind == "measured":
                row.source = str(path.relative_to(root))  # short, and the same wherever results/ lives
            rows.append(row)
    return rows


def collect_rows(results_dir: str | Path, per_stage: bool = False) -> list[Row]:
    """Latest measured run per model (or per model and stage) plus every reported row."""
    latest: dict[tuple, Row] = {}
    reported: list[Row] = []
    for row in all_rows(results_dir):
        if row.kind == "reported":
            reported.append(row)
            continue
        key = (row.model, row.stage) if per_stage else (row.model,)
        old = latest.get(key)
        if old is None or (row.date or "", row.path) > (old.date or "", old.path):
            latest[key] = row
    measured = sorted(latest.values(), key=lambda r: (r.model, r.stage or ""))
    return measured + sorted(reported, key=lambda r: r.model)


def add_retention(rows: Sequence[Row], baseline_model: str = "base_llm", group: str = "text_retention",
                  metric: str = "acc", baselines: Sequence[Row] | None = None) -> list[str]:
    """Fill `text_retention/drop_rel` of measured rows from a run of the baseline model.

    The baseline is a run labelled exactly `baseline_model` (model name, no model args),
    so `base_llm (checkpoint=runs/x)` is compared with plain `base_llm`: the latest one with
    the row's limit and seed, out of `baselines` (every run of it, e.g. `all_rows`) or else
    the rows given. drop = (avg_base - avg_model) / avg_base over the group's tasks both
    runs have, as in docs/design.md §2. Task versions must match too; a row that already
    carries the figure keeps it. Returns notes on rows left out and why.
    """
    column = f"{group}/drop_rel"
    pool = baselines if baselines is not None else rows
    bases = sorted((r for r in pool if r.kind == "measured" and r.model == baseline_model),
                   key=lambda r: (r.date or "", r.path), reverse=True)
    if not bases:
        return []
    notes = []
    for r in rows:
        if r.kind != "measured" or r.model == baseline_model or column in r.metrics:
            continue
        same_run = [b for b in bases if all(b.run_config.get(k) == r.run_config.get(k) for k in ("limit", "seed"))]
        base = same_run[0] if same_run else bases[0]
        base_tasks = {t for t in base.groups.get(group, [])
                      if not math.isnan(base.metrics.get(f"{t}/{metric}", math.nan))}
        tasks = sorted(t for t in r.groups.get(group, []) if t in base_tasks
                       and not math.isnan(r.metrics.get(f"{t}/{metric}", math.nan)))
        if not tasks:
            continue
        differ = [k for k in ("limit", "seed") if r.run_config.get(k) != base.run_config.get(k)]
        differ += [f"version of {t}" for t in tasks
                   if r.run_config["versions"].get(t) != base.run_config["versions"].get(t)]
        if differ:
            notes.append(f"{r.model}: no {column} vs {baseline_model}: {', '.join(differ)} differ")
            continue
        avg_base = sum(base.metrics[f"{t}/{metric}"] for t in tasks) / len(tasks)
        avg_model = sum(r.metrics[f"{t}/{metric}"] for t in tasks) / len(tasks)
        if avg_base == 0:
            notes.append(f"{r.model}: no {column}: {baseline_model} scores 0 on {group}")
            continue
        r.metrics[column] = (avg_base - avg_model) / avg_base
        r.metrics[f"{group}/drop_rel_tasks"] = float(len(tasks))
        r.metrics[f"{group}/base_avg"] = avg_base
    return notes

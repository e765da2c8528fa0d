"""The leaderboard: every results file under a folder as one table (markdown, csv, html).

    deeptalk-eval leaderboard [results/] --format md|html|csv [--per-stage] [--out FILE]

One row per model (its latest run by "date"), or per (model, stage) with --per-stage.
Columns are `task/metric` for every task metric, plus `group/metric`: the mean of that
metric over the group's tasks within one run (e.g. `spoken_qa/s2s_acc`), leaving out the
members of `<group>_controls` (a silent-audio control's accuracy is not a QA score). Those
group columns are what published rows line up with. `all/failure_rate` is the share of failed
samples over every task of the run. `text_retention/drop_rel` of a measured row is
(avg_base - avg_model) / avg_base over the text_retention tasks it shares with the latest
`base_llm` run of the same limit and seed (and task versions; see `add_retention`).

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

The HTML page is self-contained: inline CSS, plots as base64 PNG, no scripts, no network.
"""
from __future__ import annotations

import argparse
import base64
import fnmatch
import html
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from deeptalk_eval.errors import UsageError

# Columns that published rows share with measured ones, shown first (DESIGN.md §2).
KEY_COLUMNS = (
    "text_retention/drop_rel",
    "spoken_qa/s2s_acc",
    "latency/ttfa_p50",
    "latency/e2e_p50",
    "tts/wer",
    "asr/wer",
)
# Published figures: their benchmarks' own columns (never a measured one; see the module doc).
REPORTED_PREFIX = "reported:"
# The published counterparts of the key figures, each on its own benchmark.
REPORTED_KEY_COLUMNS = (
    "reported:ceval+cmmlu+mmlu+bbh+more/drop_rel",
    "reported:llama_q+webq+triviaqa/s2s_acc",
    "reported:voicebench/overall",
    "reported:first_audio_claimed/seconds",
    "reported:seed_tts_eval_en/wer",
    "reported:librispeech_test_other/wer",
)
# `--columns headline`: one readable table (the key figures, the four spoken-QA channels,
# the retention parts, the failure rate, then the published key figures on their own
# benchmarks); every other column stays one glob away.
HEADLINE_COLUMNS = KEY_COLUMNS + (
    "text_retention/acc", "text_retention/exact_match_first_line", "text_retention/bits_per_byte",
    "spoken_qa/s2t_acc", "spoken_qa/t2t_acc", "spoken_qa/t2s_acc", "spoken_qa_asr_noise_floor/floor_acc",
    "latency/ttft_p50", "latency/rtf", "all/failure_rate",
) + REPORTED_KEY_COLUMNS
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


# How a run executes, not which model it is: left out of row labels.
EXECUTION_ARGS = ("threads", "decode_threads", "device", "batch_size")


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
    runs have, as in DESIGN.md §2. Task versions must match too; a row that already
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


def build_table(rows: Sequence[Row], columns: Sequence[str] | None = None,
                per_stage: bool = False) -> pd.DataFrame:
    """Rows x (model, kind, [stage], date, metric columns..., source).

    `columns`: glob patterns (fnmatch) selecting metric columns, or ["headline"]; default all.
    """
    check_reported_columns(rows)
    metric_names = sorted({k for r in rows for k in r.metrics})
    if columns and list(columns) == ["headline"]:
        metric_names = [c for c in HEADLINE_COLUMNS if c in metric_names]
        columns = metric_names
    if columns:
        metric_names = [m for m in metric_names if any(fnmatch.fnmatch(m, pat) for pat in columns)]
        # A row with none of the chosen metrics says nothing in this table.
        rows = [r for r in rows if any(not math.isnan(r.metrics.get(m, math.nan)) for m in metric_names)]
    first = HEADLINE_COLUMNS if columns else KEY_COLUMNS
    rest = [c for c in metric_names if c not in first]
    # measured columns first, then the published ones (reported:*), each block in name order
    ordered = ([c for c in first if c in metric_names] + [c for c in rest if not c.startswith(REPORTED_PREFIX)]
               + [c for c in rest if c.startswith(REPORTED_PREFIX)])
    records = []
    for r in rows:
        rec: dict[str, Any] = {"model": r.model, "kind": r.kind}
        if per_stage:
            rec["stage"] = r.stage
        rec["date"] = r.date
        rec.update({c: r.metrics.get(c, math.nan) for c in ordered})
        rec["source"] = r.source
        records.append(rec)
    head = ["model", "kind"] + (["stage"] if per_stage else []) + ["date"]
    return pd.DataFrame.from_records(records, columns=head + ordered + ["source"])


# -- renderers -------------------------------------------------------------------------

def _with_footnotes(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Replace reported rows' long source strings by [n] markers; return the notes."""
    notes: list[str] = []
    out = df.copy()
    for i, (kind, source) in enumerate(zip(df["kind"], df["source"])):
        if kind == "reported":
            if source not in notes:
                notes.append(source)
            out.iloc[i, out.columns.get_loc("source")] = f"[{notes.index(source) + 1}]"
    return out, notes


def render_markdown(df: pd.DataFrame) -> str:
    from tabulate import tabulate

    table, notes = _with_footnotes(df)
    table = table.astype(object).where(table.notna(), None)  # tabulate shows None as missingval
    text = tabulate(table, headers="keys", tablefmt="github", showindex=False, floatfmt=".4g", missingval="—")
    if notes:
        text += "\n\nSources of reported rows (published figures, not our measurements):\n\n"
        text += "\n".join(f"[{i}] {n}" for i, n in enumerate(notes, 1))
    return text + "\n"


def render_csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False)


def _png_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _marker(kind: str) -> dict[str, Any]:
    return {"marker": "^", "color": "tab:gray"} if kind == "reported" else {"marker": "o", "color": "tab:blue"}


def plot_retention_vs_qa(rows: Sequence[Row]) -> str | None:
    """Scatter of text-retention drop vs spoken-QA S2S accuracy; base64 PNG or None (no data).
    Measured columns only: published figures on other benchmarks are not placed on these axes."""
    x_key, y_key = "text_retention/drop_rel", "spoken_qa/s2s_acc"
    pts = [(r, r.metrics[x_key], r.metrics[y_key]) for r in rows
           if not math.isnan(r.metrics.get(x_key, math.nan)) and not math.isnan(r.metrics.get(y_key, math.nan))]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in ("measured", "reported"):
        sel = [(r, x, y) for r, x, y in pts if r.kind == kind]
        if sel:
            ax.scatter([100 * x for _, x, _ in sel], [100 * y for _, _, y in sel], label=kind, **_marker(kind))
    for r, x, y in pts:
        ax.annotate(r.model, (100 * x, 100 * y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("text-capability drop vs own backbone (%, lower is better)")
    ax.set_ylabel("spoken QA speech-to-speech accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    out = _png_base64(fig)
    plt.close(fig)
    return out


def plot_latency(rows: Sequence[Row]) -> str | None:
    """Bars of time to first audio and end-to-end latency (p50, s) as measured here; base64
    PNG or None. Published latency claims (other hardware, their own set-up) stay out."""
    keys = [("latency/ttfa_p50", "first audio (p50)"), ("latency/e2e_p50", "end to end (p50)")]
    sel = [r for r in rows if any(not math.isnan(r.metrics.get(k, math.nan)) for k, _ in keys)]
    if not sel:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 0.6 * len(sel) + 1.5))
    y = np.arange(len(sel))
    h = 0.8 / len(keys)
    for i, (k, label) in enumerate(keys):
        vals = [r.metrics.get(k, math.nan) for r in sel]
        ax.barh(y + i * h, [0 if math.isnan(v) else v for v in vals], height=h, label=label)
    ax.set_yticks(y + h / 2, [f"{r.model} [{r.kind}]" for r in sel], fontsize=8)
    ax.set_xlabel("seconds")
    ax.legend()
    ax.grid(axis="x", alpha=0.3)
    out = _png_base64(fig)
    plt.close(fig)
    return out


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0;text-align:center}
td:first-child,td:nth-child(2){text-align:left;white-space:nowrap}
tr.reported td{color:#666;font-style:italic}
figure{display:inline-block;margin:1em 2em 1em 0}
.note{color:#666;font-size:12px}
"""


def render_html(df: pd.DataFrame, rows: Sequence[Row], title: str = "deeptalk-eval leaderboard") -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "—" if math.isnan(v) else f"{v:.4g}"
        return "—" if v is None else html.escape(str(v))

    table, notes = _with_footnotes(df)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = []
    for rec in table.to_dict(orient="records"):
        cells = "".join(f"<td>{fmt(rec[c])}</td>" for c in table.columns)
        body.append(f'<tr class="{html.escape(str(rec["kind"]))}">{cells}</tr>')
    sources = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    sources = f'<p class="note">Sources of reported rows:</p><ol class="note">{sources}</ol>\n' if notes else ""
    plots = []
    for pid, caption, png in (
        ("plot-retention-vs-qa", "Text-capability drop vs spoken-QA S2S accuracy (measured runs)",
         plot_retention_vs_qa(rows)),
        ("plot-latency", "Latency measured here: first audio and end to end", plot_latency(rows)),
    ):
        if png is None:
            plots.append(f'<p class="note" id="{pid}">{html.escape(caption)}: no row has these metrics.</p>')
        else:
            plots.append(f'<figure><img id="{pid}" alt="{html.escape(caption)}" '
                         f'src="data:image/png;base64,{png}"><figcaption>{html.escape(caption)}</figcaption></figure>')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        '<p class="note">Rows marked <i>reported</i> are published figures (see their source), '
        "not our measurements; they never enter measured figures, and each sits in a column named for "
        "its own benchmark (reported:&lt;benchmark&gt;/&lt;metric&gt;) unless it is the same measurement. "
        "group/metric columns are means over a group's tasks within one run.</p>\n"
        f'<table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body) +
        "\n</tbody></table>\n" + sources + "\n".join(plots) + "\n</body></html>\n"
    )


def render(fmt: str, df: pd.DataFrame, rows: Sequence[Row]) -> str:
    if fmt == "md":
        return render_markdown(df)
    if fmt == "csv":
        return render_csv(df)
    if fmt == "html":
        return render_html(df, rows)
    raise ValueError(f"unknown format {fmt!r}; choose md, html or csv")


# -- command line ----------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", nargs="?", default="results",
                        help="folder searched recursively for results JSON (default: results)")
    parser.add_argument("--format", choices=("md", "html", "csv"), default="md")
    parser.add_argument("--per-stage", action="store_true", help="one row per (model, training stage)")
    parser.add_argument("--columns", nargs="+", metavar="GLOB",
                        help="metric columns to keep, as glob patterns (e.g. 'spoken_qa/*' 'latency/*'), "
                             "or 'headline' for the key figures only")
    parser.add_argument("--no-reported", action="store_true", help="leave out published (reported) rows")
    parser.add_argument("--retention-baseline", default="base_llm", metavar="MODEL",
                        help="row label (model, no args) whose latest run is the backbone for "
                             "text_retention/drop_rel (default base_llm; 'none' to skip)")
    parser.add_argument("--out", help="write to this file instead of stdout")


def run(args: argparse.Namespace) -> int:
    """Raises LeaderboardError for unusable input (the CLI reports it, exit 2)."""
    rows = collect_rows(args.results_dir, per_stage=args.per_stage)
    if args.retention_baseline != "none":
        for note in add_retention(rows, args.retention_baseline, baselines=all_rows(args.results_dir)):
            print(f"leaderboard: {note}", file=sys.stderr)
    if args.no_reported:
        rows = [r for r in rows if r.kind != "reported"]
    if not rows:
        raise LeaderboardError(f"{args.results_dir}: no results files")
    df = build_table(rows, columns=args.columns, per_stage=args.per_stage)
    text = render(args.format, df, rows)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        n_rep = sum(r.kind == "reported" for r in rows)
        print(f"leaderboard: {len(rows) - n_rep} measured + {n_rep} reported rows -> {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from deeptalk_eval.cli import main as cli_main  # where user errors become one line and exit 2

    return cli_main(["leaderboard", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

"""The leaderboard: every results file under a folder as one table (markdown, csv, html).

    deeptalk-eval leaderboard [results/] --format md|html|csv [--per-stage] [--out FILE]

One row per model (its latest run by "date"), or per (model, stage) with --per-stage, read
by `deeptalk_eval.leaderboard_rows` (which says what each column means and how published,
"reported", rows are kept apart from measured ones).

The HTML page is self-contained: inline CSS, plots as base64 PNG, no scripts, no network.
"""
from __future__ import annotations

import argparse
import base64
import fnmatch
import html
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from deeptalk_eval.leaderboard_rows import (
    REPORTED_PREFIX,
    LeaderboardError,
    Row,
    add_retention,
    all_rows,
    check_reported_columns,
    collect_rows,
)

# Columns that published rows share with measured ones, shown first (docs/design.md §2).
KEY_COLUMNS = (
    "text_retention/drop_rel",
    "spoken_qa/s2s_acc",
    "latency/ttfa_p50",
    "latency/e2e_p50",
    "tts/wer",
    "asr/wer",
)
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

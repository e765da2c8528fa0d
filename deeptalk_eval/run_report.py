"""What a finished run tells its user, after the summary table: the run's headline figures
beside the base LLM and the published (reported) rows, and the command that gates the next
training stage against this run.

The figures are the leaderboard's (`deeptalk-eval leaderboard DIR --columns headline`),
computed by `deeptalk_eval.leaderboard` over the run's output folder and narrowed to this
run, the latest `base_llm` run and the reported rows there. A published row stands beside
this run only on a figure it shares with it — the same benchmark, declared so in its file;
the others are on their own benchmarks (`reported:*` columns) and are pointed to in one line.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

from deeptalk_eval.leaderboard import build_table
from deeptalk_eval.leaderboard_rows import LeaderboardError, Row, add_retention, all_rows, collect_rows, read_row
from deeptalk_eval.regress import DEFAULT_GATES

# the run text retention is measured against (the leaderboard's default retention baseline)
BASE_MODEL = "base_llm"
HEADER_WIDTH = 14  # characters per line of a column title


def shown_path(path: str | Path) -> str:
    """Relative to the working folder when inside it: short, and ready to paste."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def comparison_rows(results_path: Path, results_dir: Path) -> tuple[list[Row], list[str]]:
    """[this run, latest base_llm run, reported rows...] with text_retention/drop_rel filled
    as the leaderboard fills it, and the leaderboard's notes on why a figure is missing."""
    this = read_row(results_path)
    if this is None:
        return [], []
    others = collect_rows(results_dir)
    this_path = results_path.resolve()
    base = [r for r in others if r.kind == "measured" and r.model == BASE_MODEL
            and Path(r.path).resolve() != this_path]
    reported = [r for r in others if r.kind == "reported"]
    rows = [this] + base + reported
    notes = add_retention(rows, BASE_MODEL, baselines=all_rows(results_dir))
    return rows, notes


def column_header(model: str, what: str | None) -> str:
    """A model's column title wrapped to a few short lines, so that ten rows fit a terminal."""
    return "\n".join(textwrap.wrap(model, HEADER_WIDTH) + ([f"({what})"] if what else []))


def headline_table(rows: list[Row]) -> str | None:
    """One line per headline figure this run has; one column per row (terminal-narrow)."""
    from tabulate import tabulate

    df = build_table(rows, columns=["headline"])
    if df.empty or df.iloc[0]["source"] != rows[0].source:
        return None  # this run has none of the headline figures
    metrics = [c for c in df.columns if c not in ("model", "kind", "date", "source")
               and not math.isnan(df.iloc[0][c])]
    if not metrics:
        return None
    # a row beside this run only when it has one of these figures
    shown = [i for i in range(len(df)) if i == 0 or any(not math.isnan(df.iloc[i][m]) for m in metrics)]
    headers = ["metric"] + [column_header(df.iloc[i]["model"], "this run" if i == 0 else
                                          "reported" if df.iloc[i]["kind"] == "reported" else None)
                            for i in shown]
    body = [[m] + [None if math.isnan(df.iloc[i][m]) else df.iloc[i][m] for i in shown] for m in metrics]
    return tabulate(body, headers=headers, floatfmt=".4g", missingval="—")


def reported_elsewhere(rows: list[Row]) -> str | None:
    """A line on the published rows that share no figure with this run (rows[0]): their
    figures are on other benchmarks, in `reported:*` columns; it says where to find them."""
    this = {k for k, v in rows[0].metrics.items() if not math.isnan(v)}
    hidden = sorted({r.model for r in rows[1:] if r.kind == "reported"
                     and not any(k in this and not math.isnan(v) for k, v in r.metrics.items())})
    if not hidden:
        return None
    return (f"Published figures of {len(hidden)} other systems are on other benchmarks than this run's tasks "
            f"(reported:* columns): `deeptalk-eval leaderboard DIR --columns 'reported:*'` lists them.")


def regress_command(results_path: Path) -> str:
    """The gate for the next stage: this run as baseline, the newest run in its model folder
    (where the next stage's evaluation will land) as candidate."""
    gates = shown_path(DEFAULT_GATES) if DEFAULT_GATES.is_file() else "none"
    return (f"deeptalk-eval regress --baseline {shown_path(results_path)} "
            f"--candidate {shown_path(results_path.parent)} --gates {gates}")


def after_run(results: dict, results_path: Path, results_dir: Path) -> str:
    """The text printed after a run's summary table."""
    part_of = (results.get("config") or {}).get("part_of")
    if part_of:
        return f"\nOne part of a --processes run, merged into {results_path.parent / part_of}."
    shard = (results.get("config") or {}).get("shard")
    if shard:
        return (f"\nThis is shard {shard[0]}/{shard[1]}: merge the shards (`deeptalk-eval merge`) for headline "
                f"figures and gating.")
    where = shown_path(results_dir)
    try:
        rows, notes = comparison_rows(results_path, results_dir)
        table = headline_table(rows) if rows else None
    except LeaderboardError as e:  # another file in the folder is broken: the run itself is fine
        lines = ["", f"Headline figures: not shown: {e}"]
    else:
        if table:
            lines = ["", f"Headline figures (as `deeptalk-eval leaderboard {where} --columns headline`; "
                         "reported = published, not measured here):", table]
        else:
            lines = ["", f"Headline figures: none in this run (`deeptalk-eval leaderboard {where}` "
                         "shows every column)."]
        elsewhere = reported_elsewhere(rows) if rows else None
        if elsewhere:
            lines += ["", elsewhere.replace("DIR", where)]
        lines += [f"note: {n}" for n in notes]
    lines += ["", "Gate the next training stage against this run: evaluate it with the same --tasks and --limit, then",
              f"  {regress_command(results_path)}"]
    return "\n".join(lines)

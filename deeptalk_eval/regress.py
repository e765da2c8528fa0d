"""Regression gates between two results files: a CI check after each training stage.

    deeptalk-eval regress --baseline A.json --candidate B.json [--gates gates.yaml]
                          [--allow-asr-mismatch] [--json REPORT.json]

For every metric both runs have (`task/metric`, and `group/metric` means as in the
leaderboard) it prints baseline, candidate, delta, and a test of the difference. When both
runs logged per-sample records (their "samples_files"), the test is paired over the
sample ids both share (exact McNemar for 0/1 metrics, sign-flip permutation otherwise)
with a bootstrap CI of the difference; without them it is unpaired and says so.

Gates file (YAML, read with safe_load), one entry per metric; key `task/metric` or
`task.metric`:

    text_retention.drop_rel: {max_increase: 0.02}   # absolute, in the metric's unit
    spoken_qa/s2s_acc:       {max_drop: 0.02}       # absolute: baseline - candidate <= 0.02
    spoken_qa_factoid.acc:   {max_rel_drop: 0.05}   # relative: (baseline - candidate) / baseline
    latency.ttfa_p50:        {max_rel_increase: 0.10, optional: true}
    tts/wer:                 {max: 0.10}            # bound on the candidate alone (also: min)

Extra keys: `significant: true` breaks the gate only when the paired test also rejects
"no difference" at `alpha` (default 0.05) — for small, noisy task sets (without per-sample
logs there is no test and the plain limit applies); `optional: true`
skips (with a note) a gate whose metric neither run has, instead of failing.

Exit status: 0 every gate holds; 1 a gate breaks; 2 unusable input (missing or broken
file, a gate naming a metric the runs lack, runs scored with different ASR or
normalisers without --allow-asr-mismatch, or a task judged by different LLM judges —
model, prompt hash or judge version, `scoring_info[task].judge` — which no flag allows).
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deeptalk_eval.errors import UsageError
from deeptalk_eval.leaderboard_rows import LeaderboardError, flatten_metrics

GATE_LIMITS = ("max_drop", "max_rel_drop", "max_increase", "max_rel_increase", "min", "max")
GATE_FLAGS = ("significant", "alpha", "optional")
# Per-sample names of a task metric: "ttfa_p50" aggregates the per-sample "ttfa".
_AGG_SUFFIXES = ("_p50", "_p90", "_p95", "_median", "_mean")
_ID_KEYS = ("id", "doc_id", "sample_id")
DEFAULT_GATES = Path(__file__).resolve().parent.parent / "results" / "gates" / "default.yaml"


class RegressError(UsageError):
    """Input that cannot be compared; the message names the file / gate / metric."""


@dataclass
class Gate:
    metric: str  # task/metric
    limits: dict[str, float]
    significant: bool = False
    alpha: float = 0.05
    optional: bool = False


@dataclass
class Comparison:
    metric: str
    baseline: float | None
    candidate: float | None
    delta: float | None  # candidate - baseline
    rel_delta: float | None  # delta / |baseline|
    p_value: float | None = None
    test: str = "none"
    n_paired: int = 0
    diff_ci: tuple[float, float] | None = None  # bootstrap CI of delta (paired runs)
    rel_delta_ci: tuple[float, float] | None = None  # bootstrap CI of rel_delta (paired runs)
    gate: str = ""
    status: str = ""  # "", "ok", "BROKEN", "skipped"
    note: str = ""


# -- reading ---------------------------------------------------------------------------

def read_run(path: str | Path) -> dict[str, Any]:
    """A results file; a model folder (results/<model>/) means its latest run."""
    path = Path(path)
    if path.is_dir():
        from deeptalk_eval.results import latest_results

        try:
            path = latest_results(path)
        except ValueError as e:
            raise RegressError(str(e)) from None
    if not path.is_file():
        raise RegressError(f"{path}: no such results file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegressError(f"{path}: not readable JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise RegressError(f"{path}: not a results file (no 'results' mapping)")
    if data.get("reported") is True:
        raise RegressError(f"{path}: a reported (published) row has no samples to gate on; compare measured runs")
    data["_path"] = str(path)
    return data


def _metric_key(key: str) -> str:
    if "/" in key:
        return key
    if "." in key:
        task, metric = key.split(".", 1)
        return f"{task}/{metric}"
    raise RegressError(f"gate key {key!r} must be 'task/metric' or 'task.metric'")


def read_gates(path: str | Path) -> list[Gate]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RegressError(f"{path}: no such gates file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RegressError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise RegressError(f"{path}: a gates file is a mapping of metric -> {{limit: value}}")
    gates = []
    for key, spec in data.items():
        where = f"{path}: gate {key!r}"
        if not isinstance(spec, dict):
            raise RegressError(f"{where}: must be a mapping like {{max_drop: 0.02}}")
        unknown = set(spec) - set(GATE_LIMITS) - set(GATE_FLAGS)
        if unknown:
            raise RegressError(f"{where}: unknown key(s) {sorted(unknown)}; limits: {GATE_LIMITS}, flags: {GATE_FLAGS}")
        limits = {}
        for k in GATE_LIMITS:
            if k in spec:
                v = spec[k]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise RegressError(f"{where}: {k} must be a number, got {v!r}")
                if k.startswith("max_") and v < 0:
                    raise RegressError(f"{where}: {k} must be >= 0, got {v}")
                limits[k] = float(v)
        if not limits:
            raise RegressError(f"{where}: names no limit (one of {GATE_LIMITS})")
        alpha = spec.get("alpha", 0.05)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise RegressError(f"{where}: alpha must be in (0, 1), got {alpha!r}")
        for flag in ("significant", "optional"):
            if not isinstance(spec.get(flag, False), bool):
                raise RegressError(f"{where}: {flag} must be true or false")
        gates.append(Gate(_metric_key(str(key)), limits, bool(spec.get("significant", False)),
                          float(alpha), bool(spec.get("optional", False))))
    return gates


def _samples_path(run: dict[str, Any], task: str) -> Path | None:
    files = run.get("samples_files") or {}
    if not isinstance(files, dict) or task not in files:
        return None
    p = Path(files[task])
    if not p.is_absolute():
        p = Path(run["_path"]).parent / p
    if not p.is_file():
        raise RegressError(f"{run['_path']}: samples_files[{task!r}] = {files[task]!r} does not exist ({p})")
    return p


def _per_sample(run: dict[str, Any], task: str, metric: str, cache: dict) -> dict[str, float] | None:
    """sample id -> per-sample value of a task metric, or None without a samples log."""
    key = (run["_path"], task)
    if key not in cache:
        path = _samples_path(run, task)
        if path is None:
            cache[key] = None
        else:
            from deeptalk_eval.results import read_samples

            cache[key] = (path, read_samples(path))
    if cache[key] is None:
        return None
    path, records = cache[key]
    names = [metric] + [metric[: -len(s)] for s in _AGG_SUFFIXES if metric.endswith(s)]
    out: dict[str, float] = {}
    for n, rec in enumerate(records, 1):
        sid = next((rec[k] for k in _ID_KEYS if k in rec), None)
        if sid is None:
            raise RegressError(f"{path}:{n}: sample record has no id (one of {_ID_KEYS})")
        if str(sid) in out:
            raise RegressError(f"{path}:{n}: duplicate sample id {sid!r}")
        values = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else rec
        for name in names:
            v = values.get(name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[str(sid)] = float(v)
                break
    return out


# -- comparing -------------------------------------------------------------------------

def check_comparable(base: dict[str, Any], cand: dict[str, Any]) -> list[str]:
    """Differences in ASR model / normaliser that make speech figures incomparable.

    Checked where both runs record them: a run without speech tasks records no ASR.
    """

    def asr_identity(run):
        asr = run.get("asr")
        if not isinstance(asr, dict) or not asr:
            return None
        weights = asr.get("weights") if isinstance(asr.get("weights"), dict) else {}
        return {"backend": asr.get("backend"), "model": asr.get("model"),
                "weights_sha256": weights.get("sha256"), "decoding": asr.get("decoding"),
                "normaliser": asr.get("normaliser")}

    def normalisers(run):
        # The runner keeps each task's scorer info (normalisers included) under scoring_info.
        out = {}
        for task, info in (run.get("scoring_info") or {}).items():
            if isinstance(info, dict) and isinstance(info.get("normalisers"), dict):
                out[task] = info["normalisers"]
        if isinstance(run.get("normalisers"), dict):
            out["*"] = run["normalisers"]
        return out

    problems = []
    a, b = asr_identity(base), asr_identity(cand)
    if a is not None and b is not None:
        problems += [f"asr.{k}: baseline {a[k]!r} vs candidate {b[k]!r}" for k in a if a[k] != b[k]]
    na, nb = normalisers(base), normalisers(cand)
    for task in sorted(set(na) & set(nb)):
        for scorer in sorted(set(na[task]) & set(nb[task])):
            if na[task][scorer] != nb[task][scorer]:
                problems.append(f"normaliser {task}/{scorer}: baseline {na[task][scorer]!r} "
                                f"vs candidate {nb[task][scorer]!r}")
    return problems


JUDGE_IDENTITY = ("model", "prompt_sha256", "version")


def judge_mismatch(base: dict[str, Any], cand: dict[str, Any]) -> list[str]:
    """Tasks both runs scored whose LLM judge (model, prompt hash, judge version) differs,
    or that only one of the runs scored with a judge. Judged figures of two judges are two
    measurements; no flag allows comparing them."""

    def judges(run):
        out = {}
        for task, info in (run.get("scoring_info") or {}).items():
            if isinstance(info, dict) and isinstance(info.get("judge"), dict):
                out[task] = {k: info["judge"].get(k) for k in JUDGE_IDENTITY}
        return out

    ja, jb = judges(base), judges(cand)
    shared = set(base.get("results") or {}) & set(cand.get("results") or {})
    problems = []
    for task in sorted(shared & (set(ja) | set(jb))):
        a, b = ja.get(task), jb.get(task)
        if a is None or b is None:
            problems.append(f"{task}: judged in {'the candidate' if a is None else 'the baseline'} only")
        else:
            problems += [f"{task}: judge {k} {a[k]!r} vs {b[k]!r}" for k in JUDGE_IDENTITY if a[k] != b[k]]
    return problems


def compare_metric(metric: str, base: dict[str, Any], cand: dict[str, Any], flat_b: dict, flat_c: dict,
                   cache: dict, n_resamples: int = 1000, seed: int = 0) -> Comparison:
    from deeptalk_eval.scoring import stats

    vb, vc = flat_b.get(metric), flat_c.get(metric)
    vb = None if vb is None or math.isnan(vb) else vb
    vc = None if vc is None or math.isnan(vc) else vc
    delta = None if vb is None or vc is None else vc - vb
    rel = None if delta is None or vb == 0 else delta / abs(vb)
    cmp = Comparison(metric, vb, vc, delta, rel)
    if delta is None:
        cmp.note = "missing in " + ("both runs" if vb is None and vc is None else "baseline" if vb is None else "candidate")
        return cmp
    task, name = metric.split("/", 1)
    if task not in base["results"] or task not in cand["results"]:
        cmp.note = "group mean: no per-sample test"
        return cmp
    sb, sc = _per_sample(base, task, name, cache), _per_sample(cand, task, name, cache)
    if sb is None or sc is None:
        cmp.note = "no per-sample log in " + ("both runs" if sb is None and sc is None else
                                              "baseline" if sb is None else "candidate") + ": untested"
        return cmp
    shared = sorted(set(sb) & set(sc))
    if len(shared) >= 2:
        pc = stats.paired_bootstrap([sb[i] for i in shared], [sc[i] for i in shared],
                                    n_resamples=n_resamples, seed=seed)
        cmp.p_value, cmp.test, cmp.n_paired, cmp.diff_ci = pc.p_value, pc.test, pc.n, pc.diff_ci
        if pc.rel_drop_ci is not None and pc.mean_a > 0:
            cmp.rel_delta_ci = (-pc.rel_drop_ci[1], -pc.rel_drop_ci[0])  # change = -drop
        if len(shared) < max(len(sb), len(sc)):
            cmp.note = f"paired on {len(shared)} shared of {len(sb)}/{len(sc)} samples"
    elif len(sb) >= 2 and len(sc) >= 2:
        cmp.p_value, cmp.test = stats.welch_test(list(sb.values()), list(sc.values())), "welch_unpaired"
        cmp.note = "no shared sample ids: unpaired test"
    else:
        cmp.note = "too few per-sample values for a test"
    return cmp


def apply_gate(cmp: Comparison, gate: Gate) -> None:
    parts = [f"{k}={v:g}" for k, v in gate.limits.items()] + (["significant"] if gate.significant else [])
    cmp.gate = ", ".join(parts)
    b, c, d = cmp.baseline, cmp.candidate, cmp.delta
    broken = []
    for k, limit in gate.limits.items():
        if k == "min" and c < limit:
            broken.append(f"candidate {c:.4g} < min {limit:g}")
        elif k == "max" and c > limit:
            broken.append(f"candidate {c:.4g} > max {limit:g}")
        elif k == "max_drop" and -d > limit:
            broken.append(f"drop {-d:.4g} > {limit:g}")
        elif k == "max_increase" and d > limit:
            broken.append(f"increase {d:.4g} > {limit:g}")
        elif k in ("max_rel_drop", "max_rel_increase"):
            if b == 0:
                broken.append(f"{k}: baseline is 0, relative change undefined")
                continue
            rel = d / abs(b)
            if k == "max_rel_drop" and -rel > limit:
                broken.append(f"relative drop {-rel:.2%} > {limit:.2%}")
            if k == "max_rel_increase" and rel > limit:
                broken.append(f"relative increase {rel:.2%} > {limit:.2%}")
    if broken and gate.significant:
        if cmp.p_value is None:
            # No per-sample test possible: hold the plain limit rather than wave it through.
            broken.append("significance untestable without per-sample logs")
        elif cmp.p_value >= gate.alpha:
            cmp.status = "ok"
            cmp.note = "; ".join(filter(None, [cmp.note, f"exceeds limit but not significant "
                                                           f"(p={cmp.p_value:.3g} >= alpha={gate.alpha:g})"]))
            return
    cmp.status = "BROKEN" if broken else "ok"
    if broken:
        cmp.note = "; ".join(filter(None, [cmp.note] + broken))


def _has(flat: dict[str, float], metric: str) -> bool:
    return metric in flat and not math.isnan(flat[metric])


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def compare_runs(base: dict[str, Any], cand: dict[str, Any], gates: Sequence[Gate],
                 n_resamples: int = 1000, seed: int = 0) -> list[Comparison]:
    try:
        flat_b = flatten_metrics(base, base["_path"])
        flat_c = flatten_metrics(cand, cand["_path"])
    except LeaderboardError as e:
        raise RegressError(str(e)) from None
    gated = {g.metric: g for g in gates}
    for g in gates:
        have_b, have_c = _has(flat_b, g.metric), _has(flat_c, g.metric)
        if not (have_b and have_c) and not (g.optional and not have_b and not have_c):
            missing = [p for p, have in ((base["_path"], have_b), (cand["_path"], have_c)) if not have]
            raise RegressError(f"gate {g.metric!r}: metric missing (or without a value) in {', '.join(missing)}")
    metrics = sorted(set(flat_b) | set(flat_c) | set(gated))
    cache: dict = {}
    out = []
    for m in metrics:
        cmp = compare_metric(m, base, cand, flat_b, flat_c, cache, n_resamples, seed)
        if m in gated:
            g = gated[m]
            if cmp.delta is None:
                cmp.gate, cmp.status = "optional", "skipped"
                cmp.note = "optional gate: metric in neither run"
            else:
                apply_gate(cmp, g)
        out.append(cmp)
    # Gated metrics first, so the verdict is at the top.
    return sorted(out, key=lambda c: (c.status == "", c.metric))


def render_table(comparisons: Sequence[Comparison]) -> str:
    from tabulate import tabulate

    def f(v, fmt=".4g"):
        return "—" if v is None else format(v, fmt)

    rows = [[c.metric, f(c.baseline), f(c.candidate), f(c.delta, "+.4g"),
             "—" if c.rel_delta is None else f"{c.rel_delta:+.1%}",
             "—" if c.p_value is None else f"{c.p_value:.3g}",
             c.test if c.n_paired == 0 else f"{c.test} (n={c.n_paired})",
             c.gate or "", c.status, c.note] for c in comparisons]
    return tabulate(rows, headers=["metric", "baseline", "candidate", "delta", "rel", "p", "test",
                                   "gate", "status", "note"], tablefmt="github")


# -- command line ----------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", required=True,
                        help="results JSON of the reference run (or a model folder: its latest run)")
    parser.add_argument("--candidate", required=True,
                        help="results JSON of the run under test (or a model folder: its latest run)")
    parser.add_argument("--gates", default=str(DEFAULT_GATES),
                        help=f"gates YAML (default: {DEFAULT_GATES}); 'none' to only report deltas")
    parser.add_argument("--allow-asr-mismatch", action="store_true",
                        help="compare runs scored with different ASR models or normalisers")
    parser.add_argument("--only-gated", action="store_true", help="print only gated metrics")
    parser.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap / permutation seed (default 0)")
    parser.add_argument("--json", dest="json_out", help="also write the comparison as JSON here")


def run(args: argparse.Namespace) -> int:
    """Raises RegressError for input that cannot be compared (the CLI reports it, exit 2)."""
    base, cand = read_run(args.baseline), read_run(args.candidate)
    gates = [] if str(args.gates).lower() == "none" else read_gates(args.gates)
    judged = judge_mismatch(base, cand)
    if judged:
        raise RegressError("runs were judged by different LLM judges, whose figures do not compare: "
                           + "; ".join(judged))
    problems = check_comparable(base, cand)
    if problems and not args.allow_asr_mismatch:
        raise RegressError("runs were scored differently (use --allow-asr-mismatch to compare anyway): "
                           + "; ".join(problems))
    comparisons = compare_runs(base, cand, gates, n_resamples=args.n_resamples, seed=args.seed)
    shown = [c for c in comparisons if c.status] if args.only_gated else comparisons
    print(render_table(shown))
    if problems:
        print("\nwarning: scored differently (allowed): " + "; ".join(problems))
    broken = [c for c in comparisons if c.status == "BROKEN"]
    n_gates = sum(c.status in ("ok", "BROKEN") for c in comparisons)
    verdict = (f"FAIL: {len(broken)} of {n_gates} gates broken: " + ", ".join(c.metric for c in broken)
               if broken else f"PASS: {n_gates} gates hold")
    print(f"\n{verdict} (baseline {base['_path']}, candidate {cand['_path']}, gates {args.gates})")
    if args.json_out:
        report = {"baseline": base["_path"], "candidate": cand["_path"], "gates": str(args.gates),
                  "seed": args.seed, "n_resamples": args.n_resamples, "asr_mismatch": problems,
                  "passed": not broken, "comparisons": [_json_safe(asdict(c)) for c in comparisons]}
        Path(args.json_out).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return 1 if broken else 0

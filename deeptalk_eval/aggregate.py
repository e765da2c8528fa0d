"""Per-sample metric values -> task metrics (docs/task-format.md, "metrics").

Aggregations: mean, median, p50, p90, p95, sum, ratio (sum of numerator / sum of
denominator, e.g. corpus WER). A missing value (the sample failed, or the scorer returned
None) becomes 0, 1 or is left out, as the metric's `on_failure` says. Every mean gets a
standard error and a bootstrap 95 % CI with a fixed seed, so the same samples always give
byte-identical figures.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from deeptalk_eval.task_config import MetricSpec

PERCENTILES = {"median": 50.0, "p50": 50.0, "p90": 90.0, "p95": 95.0}
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 1000


def _fill(value: Any, on_failure: str) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"zero": 0.0, "one": 1.0, "exclude": None}[on_failure]
    return float(value)


def bootstrap_ci(values: np.ndarray) -> tuple[float, float]:
    """95 % percentile-bootstrap CI of the mean (scoring/stats.py owns the method)."""
    from deeptalk_eval.scoring.stats import bootstrap_ci as ci

    lo, hi = ci(values, n_resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)
    return float(lo), float(hi)


def aggregate_metric(spec: MetricSpec, records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One metric over sample records (each with a "metrics" dict). Keys: name, name_stderr, name_ci."""
    records = list(records)
    out: dict[str, Any] = {}
    if spec.aggregation == "ratio":
        num, den = [], []
        for r in records:
            m = r.get("metrics") or {}
            d = m.get(spec.denominator)
            if d is None:
                continue  # no reference length: nothing to weigh this sample by
            n = m.get(spec.numerator)
            if n is None:
                if spec.on_failure == "exclude":
                    continue
                n = 0.0 if spec.on_failure == "zero" else float(d)  # "one": every word wrong
            num.append(float(n))
            den.append(float(d))
        total = float(np.sum(den)) if den else 0.0
        out[spec.name] = float(np.sum(num)) / total if total > 0 else None
        out[f"{spec.name}_n"] = len(den)
        return out

    values = [_fill((r.get("metrics") or {}).get(spec.name), spec.on_failure) for r in records]
    arr = np.array([v for v in values if v is not None], dtype=np.float64)
    out[spec.name] = None
    if arr.size == 0:
        out[f"{spec.name}_n"] = 0
        return out
    if spec.aggregation == "mean":
        out[spec.name] = float(arr.mean())
        out[f"{spec.name}_stderr"] = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else None
        out[f"{spec.name}_ci"] = list(bootstrap_ci(arr)) if arr.size > 1 else [float(arr[0])] * 2
    elif spec.aggregation == "sum":
        out[spec.name] = float(arr.sum())
    else:
        out[spec.name] = float(np.percentile(arr, PERCENTILES[spec.aggregation]))
    out[f"{spec.name}_n"] = int(arr.size)
    return out


def aggregate_task(metrics: list[MetricSpec], records: list[dict[str, Any]]) -> dict[str, Any]:
    """All metrics of a task plus samples / failed / failure_rate. Records must be in sample order."""
    failed = sum(1 for r in records if r.get("error"))
    out: dict[str, Any] = {}
    for spec in metrics:
        out.update(aggregate_metric(spec, records))
    out["samples"] = len(records)
    out["failed"] = failed
    out["failure_rate"] = failed / len(records) if records else 0.0
    return out

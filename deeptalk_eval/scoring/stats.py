"""Uncertainty for per-sample metrics: standard error, bootstrap CIs, paired comparisons.

Everything is numpy-vectorised and deterministic given `seed` (numpy's PCG64 through
`np.random.default_rng`). Resampling is over items (samples), percentile intervals.

Paired comparisons take two arrays aligned by item (same question asked to model A and
model B). `rel_drop` follows docs/design.md §2: (mean_a - mean_b) / mean_a, positive when B
scores lower than A (A = baseline / backbone, B = candidate / model).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

# Rows of resample indices drawn at once; bounds memory at ~64 MB of int64.
_CHUNK_ELEMENTS = 8_000_000


def _as_array(values: Sequence[float], name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr))[:5].tolist()
        raise ValueError(f"{name} holds non-finite values at positions {bad}")
    return arr


def stderr(values: Sequence[float]) -> float:
    """Standard error of the mean (sample std, ddof=1). NaN for a single value."""
    arr = _as_array(values)
    if arr.size < 2:
        return float("nan")
    return float(arr.std(ddof=1) / np.sqrt(arr.size))


def _resample_means(columns: Sequence[np.ndarray], n_resamples: int, seed: int) -> list[np.ndarray]:
    """Means of each column over the same bootstrap resamples of item indices."""
    n = columns[0].size
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // n)
    out: list[list[np.ndarray]] = [[] for _ in columns]
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        for k, col in enumerate(columns):
            out[k].append(col[idx].mean(axis=1))
    return [np.concatenate(o) for o in out]


def _percentile_ci(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _check(n_resamples: int, alpha: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def bootstrap_ci(values: Sequence[float], n_resamples: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) CI of the mean over items."""
    _check(n_resamples, alpha)
    arr = _as_array(values)
    (means,) = _resample_means([arr], n_resamples, seed)
    return _percentile_ci(means, alpha)


@dataclass(frozen=True)
class PairedComparison:
    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean_b - mean_a
    diff_ci: tuple[float, float]
    rel_drop: float | None  # (mean_a - mean_b) / mean_a; None when mean_a == 0
    rel_drop_ci: tuple[float, float] | None
    p_value: float  # two-sided, H0: no difference
    test: str  # which test produced p_value
    n_resamples: int
    seed: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["diff_ci"] = list(self.diff_ci)
        d["rel_drop_ci"] = None if self.rel_drop_ci is None else list(self.rel_drop_ci)
        return d


def _is_binary(arr: np.ndarray) -> bool:
    return bool(np.all((arr == 0) | (arr == 1)))


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> float:
    """Exact McNemar test for paired 0/1 outcomes: two-sided binomial test on discordant pairs."""
    from scipy.stats import binomtest

    a_arr, b_arr = _as_array(a, "a"), _as_array(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a has {a_arr.size} items but b has {b_arr.size}")
    if not (_is_binary(a_arr) and _is_binary(b_arr)):
        raise ValueError("McNemar needs 0/1 values")
    only_a = int(np.sum((a_arr == 1) & (b_arr == 0)))
    only_b = int(np.sum((a_arr == 0) & (b_arr == 1)))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def sign_flip_test(a: Sequence[float], b: Sequence[float], n_resamples: int = 10000,
                   seed: int = 0) -> float:
    """Paired permutation test of mean(b - a) = 0 by random sign flips of the differences.

    Exact (all 2^m flips of the m non-zero differences) when m <= 16, else Monte Carlo
    with the +1 correction so p is never 0.
    """
    a_arr, b_arr = _as_array(a, "a"), _as_array(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a has {a_arr.size} items but b has {b_arr.size}")
    d = b_arr - a_arr
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    observed = abs(d.sum())
    tol = 1e-12 * max(1.0, observed)
    if d.size <= 16:
        signs = np.array(list(itertools.product((-1.0, 1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d) >= observed - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // d.size)
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        signs = rng.choice((-1.0, 1.0), size=(rows, d.size))
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
    return (hits + 1) / (n_resamples + 1)


def paired_test(a: Sequence[float], b: Sequence[float], n_resamples: int = 10000,
                seed: int = 0) -> tuple[float, str]:
    """Two-sided p-value for paired items: exact McNemar for 0/1 values, else sign flips."""
    a_arr, b_arr = _as_array(a, "a"), _as_array(b, "b")
    if _is_binary(a_arr) and _is_binary(b_arr):
        return mcnemar_exact(a_arr, b_arr), "mcnemar_exact"
    return sign_flip_test(a_arr, b_arr, n_resamples, seed), "sign_flip_permutation"


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = 1000,
                     seed: int = 0, alpha: float = 0.05) -> PairedComparison:
    """Compare B with A on the same items: difference and relative drop with bootstrap CIs
    (the same item resamples for both), plus a paired test p-value."""
    _check(n_resamples, alpha)
    a_arr, b_arr = _as_array(a, "a"), _as_array(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired comparison needs the same items: a has {a_arr.size}, b has {b_arr.size}")
    mean_a, mean_b = float(a_arr.mean()), float(b_arr.mean())
    boot_a, boot_b = _resample_means([a_arr, b_arr], n_resamples, seed)
    rel_drop = rel_ci = None
    if mean_a != 0:
        rel_drop = (mean_a - mean_b) / mean_a
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = (boot_a - boot_b) / boot_a
        rel = rel[np.isfinite(rel)]  # resamples whose baseline mean is 0 have no ratio
        rel_ci = _percentile_ci(rel, alpha) if rel.size else None
    p, test = paired_test(a_arr, b_arr, n_resamples=max(n_resamples, 1000), seed=seed)
    return PairedComparison(
        n=a_arr.size, mean_a=mean_a, mean_b=mean_b, diff=mean_b - mean_a,
        diff_ci=_percentile_ci(boot_b - boot_a, alpha), rel_drop=rel_drop, rel_drop_ci=rel_ci,
        p_value=p, test=test, n_resamples=n_resamples, seed=seed,
    )


def welch_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Unpaired two-sided Welch t-test p-value, for runs without shared per-sample logs."""
    from scipy.stats import ttest_ind

    a_arr, b_arr = _as_array(a, "a"), _as_array(b, "b")
    if a_arr.size < 2 or b_arr.size < 2:
        return float("nan")
    if np.all(a_arr == a_arr[0]) and np.all(b_arr == b_arr[0]):
        return 1.0 if a_arr[0] == b_arr[0] else 0.0
    return float(ttest_ind(a_arr, b_arr, equal_var=False).pvalue)


"""Bootstrap CIs, standard error and paired tests."""
import numpy as np
import pytest

from deeptalk_eval.scoring.stats import (
    bootstrap_ci,
    mcnemar_exact,
    paired_bootstrap,
    paired_test,
    sign_flip_test,
    stderr,
    welch_test,
)


def _binary(n, p, seed):
    return (np.random.default_rng(seed).random(n) < p).astype(float)


def test_bootstrap_is_deterministic_and_seed_dependent():
    x = np.random.default_rng(1).random(300)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)


def test_bootstrap_covers_the_mean_and_matches_normal_theory():
    x = _binary(400, 0.3, 2)
    lo, hi = bootstrap_ci(x, n_resamples=2000)
    assert lo < x.mean() < hi
    # Percentile CI of a mean ~ mean +- 1.96 SE for n = 400.
    assert (hi - lo) == pytest.approx(2 * 1.96 * stderr(x), rel=0.15)


def test_bootstrap_width_shrinks_with_n():
    widths = [np.subtract(*bootstrap_ci(_binary(n, 0.5, n))[::-1]) for n in (50, 200, 800)]
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4.0, rel=0.3)  # ~ sqrt(800/50)


def test_bootstrap_and_stderr_input_checks():
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0, 2.0], alpha=1.5)
    assert np.isnan(stderr([1.0]))
    assert stderr([1.0, 3.0]) == pytest.approx(1.0)
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)


def test_bootstrap_large_input_is_chunked_and_consistent():
    x = np.random.default_rng(0).random(20000)
    lo, hi = bootstrap_ci(x, n_resamples=500)
    assert lo < x.mean() < hi and hi - lo < 0.02


def test_paired_bootstrap_on_a_planted_drop():
    a = _binary(500, 0.6, 5)
    b = a.copy()
    b[np.flatnonzero(a == 1)[:40]] = 0  # candidate loses 40 items it had right
    pc = paired_bootstrap(a, b, seed=0)
    assert pc.n == 500
    assert pc.diff == pytest.approx(-40 / 500)
    assert pc.diff_ci[0] < pc.diff < pc.diff_ci[1] < 0
    assert pc.rel_drop == pytest.approx((a.mean() - b.mean()) / a.mean())
    assert 0 < pc.rel_drop_ci[0] < pc.rel_drop < pc.rel_drop_ci[1]
    assert pc.test == "mcnemar_exact" and pc.p_value < 1e-6
    assert paired_bootstrap(a, b, seed=0) == pc


def test_paired_bootstrap_identical_runs():
    a = _binary(100, 0.5, 6)
    pc = paired_bootstrap(a, a)
    assert pc.diff == 0 and pc.diff_ci == (0.0, 0.0) and pc.p_value == 1.0


def test_paired_bootstrap_input_checks():
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1, 0, 1], [1, 0])
    assert paired_bootstrap([0, 0], [1, 1]).rel_drop is None  # baseline mean 0: undefined


def test_mcnemar_exact_values():
    # 10 discordant pairs all one way: two-sided binomial p = 2 * 0.5**10.
    a = [1] * 10 + [0] * 5
    b = [0] * 10 + [0] * 5
    assert mcnemar_exact(a, b) == pytest.approx(2 * 0.5 ** 10)
    assert mcnemar_exact([1, 0], [1, 0]) == 1.0
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5], [1])


def test_sign_flip_test_exact_and_monte_carlo():
    # 3 equal positive differences: of 8 sign patterns, 2 reach |sum| = 3 -> p = 0.25.
    assert sign_flip_test([1, 2, 3], [2, 3, 4]) == pytest.approx(0.25)
    rng = np.random.default_rng(7)
    a = rng.normal(size=200)
    assert sign_flip_test(a, a + 0.5, n_resamples=2000) < 0.01
    p_null = sign_flip_test(a, a + rng.normal(scale=0.01, size=200), n_resamples=2000)
    assert p_null > 0.01
    assert sign_flip_test(a, a) == 1.0


def test_paired_test_picks_the_test():
    assert paired_test([1, 0, 1], [1, 1, 1])[1] == "mcnemar_exact"
    assert paired_test([0.2, 0.5, 0.1], [0.3, 0.5, 0.2])[1] == "sign_flip_permutation"
    assert welch_test([1, 1, 1], [1, 1, 1]) == 1.0
    assert welch_test(np.arange(50.0), np.arange(50.0) + 30) < 1e-6

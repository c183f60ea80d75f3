"""Intervals and baselines behave as documented, on data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from emocircuits.readout import centroid_separability
from emocircuits.stats import bootstrap_ci, correlation_ci


def test_bootstrap_ci_covers_the_mean_and_is_reproducible():
    x = np.random.default_rng(0).normal(3.0, 1.0, 200)
    est, lo, hi = bootstrap_ci(x, seed=1)
    assert lo < est < hi and lo < 3.0 < hi and hi - lo < 0.5
    assert bootstrap_ci(x, seed=1) == (est, lo, hi)


def test_bootstrap_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 items"):
        bootstrap_ci([1.0])
    with pytest.raises(ValueError, match="level=1.5"):
        bootstrap_ci([1.0, 2.0], level=1.5)


def test_centroid_separability_separates_signal_from_noise():
    rng = np.random.default_rng(0)
    n, d = 16, 20
    groups = np.r_[np.arange(n), np.arange(n)]
    y = np.r_[np.ones(n), np.zeros(n)]
    noise = rng.normal(size=(2 * n, d))
    signal = noise + np.outer(y, np.r_[3.0, np.zeros(d - 1)])
    s = centroid_separability(signal, y, groups, n_perm=30)
    z = centroid_separability(noise, y, groups, n_perm=30)
    assert s.accuracy > 0.9 and s.ci_low > s.shuffled_p95 and s.p_value < 0.05
    assert z.accuracy < 0.8 and z.ci_low < 0.5 + 1e-9 < z.ci_high + 0.2
    assert abs(s.shuffled_mean - 0.5) < 0.15


def test_centroid_separability_checks_lengths():
    with pytest.raises(ValueError, match="same length"):
        centroid_separability(np.zeros((4, 2)), [0, 1, 0], [0, 1, 2, 3])


def test_correlation_ci_is_the_correlation_with_a_bootstrap_interval_over_pairs():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    for method, corr in (("spearman", spearmanr), ("pearson", pearsonr)):
        r, lo, hi = correlation_ci(x, y, method, seed=1)
        assert r == pytest.approx(corr(x, y)[0]) and lo < r < hi
        assert correlation_ci(x, y, method, seed=1) == (r, lo, hi)  # seeded
    wide = correlation_ci(x[:10], y[:10], seed=1)
    assert wide[2] - wide[1] > hi - lo  # fewer pairs, a wider interval
    with pytest.raises(ValueError, match="method='kendall'"):
        correlation_ci(x, y, "kendall")
    with pytest.raises(ValueError, match="paired"):
        correlation_ci(x, y[:-1])

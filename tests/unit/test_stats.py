"""Tests of the afw-like clipped statistics."""

from __future__ import annotations

import numpy as np
import pytest

from shared.stats import IQ_TO_STDEV, clipped_mean, clipped_stats, clipped_stdev, nanquantile_sorted


def test_gaussian_with_huge_outliers() -> None:
    rng = np.random.default_rng(42)
    n, mu, sigma = 20_000, 100.0, 10.0
    values = rng.normal(mu, sigma, n)
    bad = rng.choice(n, size=n // 20, replace=False)
    values[bad] = rng.uniform(1e4, 1e6, bad.size)
    stats = clipped_stats(values)
    n_core = n - bad.size
    assert abs(stats.mean - mu) < 3 * sigma / np.sqrt(n_core)
    # A 3sigma clip of a Gaussian truncates its tails: the clipped stdev is ~1.5% low, well within 5%.
    assert abs(stats.stdev - sigma) / sigma < 0.05
    assert stats.n_used + stats.n_clipped == n
    assert stats.n_clipped >= bad.size
    assert clipped_mean(values) == stats.mean
    assert clipped_stdev(values) == stats.stdev


def test_first_pass_about_median_with_iqr_on_skewed_sample() -> None:
    rng = np.random.default_rng(7)
    core = rng.normal(0.0, 1.0, 8_000)
    tail = rng.uniform(6.0, 8.0, 2_000)  # 20 % one-sided contamination
    values = np.concatenate([core, tail])

    # One pass: exactly the median ± 3·0.7413·IQR window.
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    window = np.abs(values - median) <= 3 * IQ_TO_STDEV * (q75 - q25)
    one = clipped_stats(values, n_iter=1)
    assert one.n_used == window.sum()
    assert one.mean == pytest.approx(values[window].mean(), rel=1e-12)
    assert one.stdev == pytest.approx(values[window].std(ddof=1), rel=1e-12)
    assert values[window].max() < 6.0  # the IQR window already excludes the whole tail

    stats = clipped_stats(values)
    assert abs(stats.mean) < 0.05
    assert abs(stats.stdev - 1.0) < 0.05

    # A mean ± 3sigma first pass cannot recover from the contamination: the window holds the tail.
    naive = values[np.abs(values - values.mean()) <= 3 * values.std(ddof=1)]
    assert naive.max() > 6.0
    assert naive.mean() > 1.0


def test_mask_nonfinite_and_sample_variance() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, np.nan, np.inf, 1000.0])
    mask = np.zeros(values.size, dtype=bool)
    mask[-1] = True
    stats = clipped_stats(values, n_sigma=10.0, mask=mask)
    assert stats.n_used == 5
    assert stats.n_clipped == 0
    assert stats.mean == pytest.approx(3.0)
    assert stats.stdev == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1))
    assert stats.variance == pytest.approx(2.5)
    assert stats.median == pytest.approx(3.0)


def test_degenerate_inputs() -> None:
    empty = clipped_stats(np.array([np.nan, np.nan]))
    assert np.isnan(empty.mean) and empty.n_used == 0
    single = clipped_stats(np.array([4.0]))
    assert single.mean == 4.0 and np.isnan(single.stdev) and single.n_used == 1
    constant = clipped_stats(np.full(10, 3.5))
    assert constant.mean == 3.5 and constant.stdev == 0.0 and constant.n_used == 10
    with pytest.raises(ValueError):
        clipped_stats(np.ones(3), n_iter=0)


def test_nanquantile_sorted_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(9, 5, 6))
    values[rng.random(values.shape) < 0.3] = np.nan
    values[:, 0, 0] = np.nan
    n_good = np.isfinite(values).sum(axis=0)
    ordered = np.sort(values, axis=0)
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        ours = nanquantile_sorted(ordered, n_good, q, axis=0)
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
            theirs = np.nanquantile(values, q, axis=0)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12, equal_nan=True)

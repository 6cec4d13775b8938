"""Clipped statistics with the semantics of the LSST afw ``MEANCLIP``/``STDEVCLIP`` statistics.

afw clips in ``n_iter`` passes. The first pass keeps the values within
``median ± n_sigma · IQ_TO_STDEV · IQR``; every later pass keeps the values within
``mean ± n_sigma · stdev`` of the values kept by the previous pass. As in afw, each pass tests
*all* good values against the current limits (a value rejected early can come back if the limits
widen), and the statistics returned are those of the values kept by the last pass.

The standard deviation is the sample standard deviation (``ddof=1``, divisor ``N - 1``), as in
afw. Percentiles use numpy's default linear interpolation.

`nanquantile_sorted` is the vectorised per-pixel/per-row quantile used by the overscan fit and
the per-pixel combine: it avoids ``np.nanpercentile`` along an axis, which falls back to a
Python loop over the other axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "IQ_TO_STDEV",
    "ClippedStats",
    "clipped_mean",
    "clipped_stats",
    "clipped_stdev",
    "nanquantile_sorted",
]

IQ_TO_STDEV = 0.741301109252802
"""Interquartile range → standard deviation of a Gaussian (afw's ``IQ_TO_STDEV``)."""


@dataclass(frozen=True)
class ClippedStats:
    """Result of `clipped_stats`.

    Attributes
    ----------
    mean, stdev, variance, median : `float`
        Statistics of the values kept by the last clipping pass (``stdev`` with ``ddof=1``;
        NaN when fewer than two values are kept). ``median`` is the median of the kept values.
    n_used : `int`
        Number of values kept by the last pass.
    n_clipped : `int`
        Number of good (finite, unmasked) values rejected by the last pass.
    """

    mean: float
    stdev: float
    variance: float
    median: float
    n_used: int
    n_clipped: int


def nanquantile_sorted(sorted_values: np.ndarray, n_good: np.ndarray, q: float, axis: int = 0) -> np.ndarray:
    """Quantile ``q`` of values sorted along ``axis`` with NaNs (rejected values) at the end.

    Parameters
    ----------
    sorted_values : `numpy.ndarray`
        Output of ``np.sort(values, axis=axis)``, where rejected values are NaN (sorted last).
    n_good : `numpy.ndarray`
        Number of finite values along ``axis`` (the array shape without ``axis``).
    q : `float`
        Quantile in [0, 1]; linear interpolation as ``np.quantile``'s default method.
    axis : `int`
        Axis along which the values were sorted.

    Returns
    -------
    quantile : `numpy.ndarray`
        Float64 array of the shape of ``n_good``; NaN where ``n_good == 0``.
    """
    n = np.asarray(n_good)
    position = q * (n - 1).astype(np.float64)
    lower = np.clip(np.floor(position).astype(np.intp), 0, None)
    upper = np.minimum(lower + 1, np.maximum(n - 1, 0))
    frac = position - lower
    lo = np.take_along_axis(sorted_values, np.expand_dims(lower, axis), axis=axis).squeeze(axis)
    hi = np.take_along_axis(sorted_values, np.expand_dims(upper, axis), axis=axis).squeeze(axis)
    lo = lo.astype(np.float64)
    hi = hi.astype(np.float64)
    result = lo + frac * (hi - lo)
    return np.where(n > 0, result, np.nan)


def clipped_stats(
    values: np.ndarray,
    n_sigma: float = 3.0,
    n_iter: int = 3,
    mask: np.ndarray | None = None,
) -> ClippedStats:
    """Clipped mean and standard deviation with afw semantics.

    Parameters
    ----------
    values : `numpy.ndarray`
        Values of any shape; non-finite values are ignored.
    n_sigma : `float`
        Clipping half-width in units of the (IQR-estimated, then sample) standard deviation.
    n_iter : `int`
        Number of clipping passes (the first about the median, the others about the mean).
    mask : `numpy.ndarray`, optional
        Boolean array of the shape of ``values``; True marks values to ignore.

    Returns
    -------
    stats : `ClippedStats`
        The statistics of the values kept by the last pass. If no value is good, every statistic
        is NaN and the counts are zero.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be at least 1, got {n_iter}")
    data = np.asarray(values, dtype=np.float64).ravel()
    good = np.isfinite(data)
    if mask is not None:
        good &= ~np.asarray(mask, dtype=bool).ravel()
    data = data[good]
    n_good = data.size
    if n_good == 0:
        return ClippedStats(np.nan, np.nan, np.nan, np.nan, 0, 0)

    q25, median, q75 = np.percentile(data, [25.0, 50.0, 75.0])
    center = float(median)
    half_width = n_sigma * IQ_TO_STDEV * float(q75 - q25)
    kept = data
    mean, variance = _mean_variance(data)
    for _ in range(n_iter):
        candidate = data[np.abs(data - center) <= half_width]
        if candidate.size == 0:
            # Limits collapsed onto no value (e.g. IQR = 0 and rounding): keep the previous pass.
            break
        kept = candidate
        mean, variance = _mean_variance(kept)
        center = mean
        # With a single kept value the spread is undefined; clip to that value only.
        half_width = n_sigma * (np.sqrt(variance) if np.isfinite(variance) else 0.0)
    return ClippedStats(
        mean=mean,
        stdev=float(np.sqrt(variance)),
        variance=variance,
        median=float(np.median(kept)),
        n_used=int(kept.size),
        n_clipped=int(n_good - kept.size),
    )


def _mean_variance(values: np.ndarray) -> tuple[float, float]:
    mean = float(values.mean())
    if values.size < 2:
        return mean, np.nan
    return mean, float(np.sum((values - mean) ** 2) / (values.size - 1))


def clipped_mean(
    values: np.ndarray, n_sigma: float = 3.0, n_iter: int = 3, mask: np.ndarray | None = None
) -> float:
    """afw ``MEANCLIP`` of ``values`` (see `clipped_stats`)."""
    return clipped_stats(values, n_sigma=n_sigma, n_iter=n_iter, mask=mask).mean


def clipped_stdev(
    values: np.ndarray, n_sigma: float = 3.0, n_iter: int = 3, mask: np.ndarray | None = None
) -> float:
    """afw ``STDEVCLIP`` of ``values`` (see `clipped_stats`)."""
    return clipped_stats(values, n_sigma=n_sigma, n_iter=n_iter, mask=mask).stdev

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

# numba's njit via shared.clipkernel, which first points numba's cache to a writable directory.
from shared.clipkernel import njit

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
    flat = np.asarray(values)
    if flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float64)
    flat = flat.ravel()
    good = np.isfinite(flat)
    if mask is not None:
        good &= ~np.asarray(mask, dtype=bool).ravel()
    # The good values in their own dtype (float32 -> float64 is exact, so working on float32
    # gives the statistics of the float64 values); reordered in place by the partitions below.
    data = flat[good]
    n_good = data.size
    if n_good == 0:
        return ClippedStats(np.nan, np.nan, np.nan, np.nan, 0, 0)

    q25, median, q75 = _quartiles(data)
    center = median
    half_width = n_sigma * IQ_TO_STDEV * float(q75 - q25)
    # State of the last pass that kept something: count, mean, variance, values below the window.
    n_kept, mean, variance, n_below = n_good, np.nan, np.nan, 0
    for iteration in range(n_iter):
        count, s1, s2, below = _window_sums(data, center, half_width)
        if count == 0:
            # Limits collapsed onto no value (e.g. IQR = 0 and rounding): keep the previous pass
            # (all good values if this is the first).
            if iteration == 0:
                _count, s1, s2, _below = _window_sums(data, center, np.inf)
                mean, variance = _mean_variance_from_sums(center, n_good, s1, s2)
            break
        n_kept, n_below = count, below
        mean, variance = _mean_variance_from_sums(center, count, s1, s2)
        center = mean
        # With a single kept value the spread is undefined; clip to that value only.
        half_width = n_sigma * (np.sqrt(variance) if np.isfinite(variance) else 0.0)
    return ClippedStats(
        mean=mean,
        stdev=float(np.sqrt(variance)),
        variance=variance,
        median=_kept_median(data, n_below, n_kept),
        n_used=int(n_kept),
        n_clipped=int(n_good - n_kept),
    )


def _order_statistics(data: np.ndarray, ranks: list[int]) -> list[float]:
    """The values of ranks ``ranks`` (0-based, ascending order) of ``data``, partitioned in place."""
    kth = sorted(set(ranks))
    data.partition(kth)
    return [float(data[k]) for k in ranks]


def _quartiles(data: np.ndarray) -> tuple[float, float, float]:
    """``np.percentile(data, [25, 50, 75])`` (linear interpolation), computed in float64."""
    n = data.size
    positions = [q * (n - 1) for q in (0.25, 0.5, 0.75)]
    lower = [int(np.floor(p)) for p in positions]
    upper = [min(k + 1, n - 1) for k in lower]
    values = _order_statistics(data, lower + upper)
    result = []
    for i, position in enumerate(positions):
        a, b = values[i], values[i + 3]
        t = position - lower[i]
        diff = b - a
        # numpy's _lerp: a + diff·t, or b - diff·(1 - t) from t = 0.5 on.
        result.append(b - diff * (1 - t) if t >= 0.5 else a + diff * t)
    return result[0], result[1], result[2]


def _kept_median(data: np.ndarray, n_below: int, n_kept: int) -> float:
    """Median of the kept values: ranks ``n_below ..`` of the good values (the window is an interval)."""
    middle = n_below + (n_kept - 1) // 2
    if n_kept % 2:
        return _order_statistics(data, [middle])[0]
    a, b = _order_statistics(data, [middle, middle + 1])
    return (a + b) / 2.0


def _mean_variance_from_sums(center: float, count: int, s1: float, s2: float) -> tuple[float, float]:
    """Mean and sample variance from the sums of ``d = value - center`` and ``d²``."""
    mean = float(center + s1 / count)
    if count < 2:
        return mean, np.nan
    return mean, float(max(s2 - s1 * (s1 / count), 0.0) / (count - 1))


@njit(cache=True)
def _window_sums(data: np.ndarray, center: float, half_width: float) -> tuple[int, float, float, int]:
    """Count, Σd and Σd² of ``d = value - center`` over ``|d| <= half_width``; count of ``d < -half_width``.

    Blocks of 4096 values are summed separately and then added, which keeps the float64 rounding
    error at the level of numpy's pairwise sums.
    """
    count = 0
    below = 0
    s1 = 0.0
    s2 = 0.0
    block = 4096
    for start in range(0, data.size, block):
        b1 = 0.0
        b2 = 0.0
        for k in range(start, min(start + block, data.size)):
            d = np.float64(data[k]) - center
            if np.abs(d) <= half_width:
                count += 1
                b1 += d
                b2 += d * d
            elif d < 0:
                below += 1
        s1 += b1
        s2 += b2
    return count, s1, s2, below


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

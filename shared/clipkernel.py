"""Compiled per-pixel sigma clipping of an image stack (numba).

`clip_stack` reduces a stack of shape ``(N, rows, cols)`` along axis 0 in one fused pass per row:
for each tile of `TILE` columns it copies the N values of every pixel into a small buffer, sorts
the buffer with a branch-free sorting network that runs across the pixels of the tile (so the
compiler vectorises it), derives the clipping limits per pixel, and accumulates the statistics of
the kept values. Nothing of the size of the stack is allocated; rows are spread over threads.

Two clipping definitions are available (``method``):

``"afw"`` (`AFW`)
    LSST afw ``MEANCLIP``, as `shared.stats.clipped_stats` and the previous numpy combine: pass 1
    keeps the values within ``median ± n_sigma · IQ_TO_STDEV · IQR`` (quantiles by linear
    interpolation, as `shared.stats.nanquantile_sorted`), every later pass keeps the values within
    ``mean ± n_sigma · stdev`` (sample stdev, ``ddof=1``) of the previous pass. Each pass tests
    *all* good values; a pass that keeps nothing leaves the previous result. The tests are done in
    float32 (value − float32(centre) against float32(half-width)), as the numpy implementation did,
    so the kept sets are identical.
``"astropy"`` (`ASTROPY`)
    ``astropy.stats.sigma_clip(data, sigma=n_sigma, maxiters=n_iter, cenfunc="median",
    stdfunc="std", axis=0)`` as its compiled path computes it: each iteration takes the median of
    the values still kept as centre and their population stdev (``ddof=0``, about their mean),
    keeps the values inside the inclusive bounds, and stops after ``n_iter`` iterations, when
    nothing changes or when nothing would be left; the final bounds are then applied to all good
    values.

Bad inputs are NaN (or any non-finite value). Accumulations are in float64.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import numpy as np

__all__ = [
    "AFW",
    "ASTROPY",
    "TILE",
    "ClipResult",
    "clip_stack",
    "sorting_network",
    "warm_up",
]

AFW = 0
ASTROPY = 1
TILE = 64
"""Columns processed together (one SIMD-friendly tile of the per-pixel buffers)."""

_IQ_TO_STDEV = 0.741301109252802
_METHODS = {"afw": AFW, "astropy": ASTROPY}


def _ensure_cache_dir() -> None:
    """Point numba's cache to a writable directory if the package directory is read-only."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = os.path.dirname(os.path.abspath(__file__))
    pycache = os.path.join(here, "__pycache__")
    if os.access(here, os.W_OK) and (not os.path.exists(pycache) or os.access(pycache, os.W_OK)):
        return
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), "cpflow-numba-cache")


_ensure_cache_dir()

from numba import njit, prange  # noqa: E402  (after the cache directory is chosen)


def sorting_network(n: int) -> np.ndarray:
    """Comparators ``(i, j)``, ``i < j``, of Batcher's odd-even merge sort for ``n`` values.

    The network is built for the next power of two and the comparators that touch a position
    ``>= n`` are dropped: the padding would hold +inf, which such comparators never move.
    """
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


_NETWORKS: dict[int, np.ndarray] = {}


@njit(cache=True, fastmath=False, inline="always")
def _quantile(srt: np.ndarray, j: int, n: int, q: float) -> float:
    position = q * np.float64(n - 1)
    lower = int(np.floor(position))
    if lower < 0:
        lower = 0
    upper = min(lower + 1, max(n - 1, 0))
    frac = position - lower
    lo = np.float64(srt[lower, j])
    hi = np.float64(srt[upper, j])
    return lo + frac * (hi - lo)


@njit(cache=True, fastmath=False)
def _sort_tile(srt: np.ndarray, pairs: np.ndarray) -> None:
    """Sort each column of ``srt`` (one pixel per column) with the comparator network ``pairs``."""
    for p in range(pairs.shape[0]):
        a = pairs[p, 0]
        b = pairs[p, 1]
        for j in range(TILE):
            x = srt[a, j]
            y = srt[b, j]
            srt[a, j] = x if x < y else y
            srt[b, j] = y if x < y else x


@njit(cache=True, fastmath=False)
def _afw_passes(
    orig: np.ndarray,
    centre: np.ndarray,
    half: np.ndarray,
    n_sigma: float,
    n_iter: int,
    count: np.ndarray,
    last: np.ndarray,
    total: np.ndarray,
    squares: np.ndarray,
    new_mean: np.ndarray,
    mean32: np.ndarray,
    st_mean: np.ndarray,
    st_var: np.ndarray,
    st_n: np.ndarray,
    st_index: np.ndarray,
) -> None:
    """afw passes over the tile ``orig`` from the first-pass limits ``centre ± half`` (float32)."""
    n_in = orig.shape[0]
    for _ in range(n_iter):
        count[:] = 0
        total[:] = 0.0
        last[:] = -1
        for i in range(n_in):
            for j in range(TILE):
                x = orig[i, j]
                keep = np.abs(x - centre[j]) <= half[j]
                count[j] += keep
                total[j] += np.float64(x) if keep else 0.0
                last[j] = i if keep else last[j]
        for j in range(TILE):
            new_mean[j] = total[j] / count[j] if count[j] > 0 else np.nan
            mean32[j] = np.float32(new_mean[j])
        squares[:] = 0.0
        for i in range(n_in):
            for j in range(TILE):
                x = orig[i, j]
                keep = np.abs(x - centre[j]) <= half[j]
                d = x - mean32[j]
                squares[j] += np.float64(d * d) if keep else 0.0
        for j in range(TILE):
            if count[j] > 0:
                st_mean[j] = new_mean[j]
                st_var[j] = squares[j] / (count[j] - 1) if count[j] >= 2 else np.nan
                st_n[j] = count[j]
                st_index[j] = last[j]
            spread = st_var[j] if np.isfinite(st_var[j]) else 0.0
            centre[j] = np.float32(st_mean[j])
            half[j] = np.float32(n_sigma * np.sqrt(spread))


@njit(parallel=True, cache=True, fastmath=False)
def _clip_kernel(
    stack: np.ndarray,
    scales: np.ndarray,
    unit_scales: bool,
    pairs: np.ndarray,
    method: int,
    n_sigma: float,
    n_iter: int,
    mean_out: np.ndarray,
    var_out: np.ndarray,
    n_out: np.ndarray,
    index_out: np.ndarray,
) -> None:
    n_in, n_rows, n_cols = stack.shape
    afw_scale = n_sigma * _IQ_TO_STDEV
    for r in prange(n_rows):
        orig = np.empty((n_in, TILE), dtype=np.float32)
        srt = np.empty((n_in, TILE), dtype=np.float32)
        n_good = np.empty(TILE, dtype=np.int64)
        centre = np.empty(TILE, dtype=np.float32)
        half = np.empty(TILE, dtype=np.float32)
        lo_bound = np.empty(TILE, dtype=np.float64)
        hi_bound = np.empty(TILE, dtype=np.float64)
        count = np.empty(TILE, dtype=np.int64)
        last = np.empty(TILE, dtype=np.int64)
        total = np.empty(TILE, dtype=np.float64)
        squares = np.empty(TILE, dtype=np.float64)
        new_mean = np.empty(TILE, dtype=np.float64)
        mean32 = np.empty(TILE, dtype=np.float32)
        st_mean = np.empty(TILE, dtype=np.float64)
        st_var = np.empty(TILE, dtype=np.float64)
        st_n = np.empty(TILE, dtype=np.int64)
        st_index = np.empty(TILE, dtype=np.int64)
        for c0 in range(0, n_cols, TILE):
            width = min(TILE, n_cols - c0)
            # Load: scaled float32 values (as numpy's float32 / float64 -> float32), NaN if bad.
            n_good[:] = 0
            for i in range(n_in):
                for j in range(TILE):
                    if j < width:
                        if unit_scales:
                            v = stack[i, r, c0 + j]
                        else:
                            v = np.float32(np.float64(stack[i, r, c0 + j]) / scales[i])
                    else:
                        v = np.float32(np.nan)
                    good = np.isfinite(v)
                    orig[i, j] = v if good else np.float32(np.nan)
                    srt[i, j] = v if good else np.float32(np.inf)
                    n_good[j] += good
            # Sort every pixel's values (bad ones, +inf, go last).
            _sort_tile(srt, pairs)
            st_mean[:] = np.nan
            st_var[:] = np.nan
            st_n[:] = 0
            st_index[:] = -1
            if method == AFW:
                for j in range(TILE):
                    n = n_good[j]
                    if n == 0:
                        centre[j] = np.nan
                        half[j] = np.nan
                    else:
                        q25 = _quantile(srt, j, n, 0.25)
                        median = _quantile(srt, j, n, 0.5)
                        q75 = _quantile(srt, j, n, 0.75)
                        centre[j] = np.float32(median)
                        half[j] = np.float32(afw_scale * (q75 - q25))
                _afw_passes(
                    orig,
                    centre,
                    half,
                    n_sigma,
                    n_iter,
                    count,
                    last,
                    total,
                    squares,
                    new_mean,
                    mean32,
                    st_mean,
                    st_var,
                    st_n,
                    st_index,
                )
            else:
                for j in range(TILE):
                    lo, hi = _astropy_bounds(srt, j, n_good[j], n_sigma, n_iter)
                    lo_bound[j] = lo
                    hi_bound[j] = hi
                count[:] = 0
                total[:] = 0.0
                last[:] = -1
                for i in range(n_in):
                    for j in range(TILE):
                        x = np.float64(orig[i, j])
                        keep = (x >= lo_bound[j]) & (x <= hi_bound[j])
                        count[j] += keep
                        total[j] += x if keep else 0.0
                        last[j] = i if keep else last[j]
                for j in range(TILE):
                    new_mean[j] = total[j] / count[j] if count[j] > 0 else np.nan
                squares[:] = 0.0
                for i in range(n_in):
                    for j in range(TILE):
                        x = np.float64(orig[i, j])
                        keep = (x >= lo_bound[j]) & (x <= hi_bound[j])
                        d = x - new_mean[j]
                        squares[j] += d * d if keep else 0.0
                for j in range(TILE):
                    if count[j] > 0:
                        st_mean[j] = new_mean[j]
                        st_var[j] = squares[j] / (count[j] - 1) if count[j] >= 2 else np.nan
                        st_n[j] = count[j]
                        st_index[j] = last[j]
            for j in range(width):
                mean_out[r, c0 + j] = st_mean[j]
                var_out[r, c0 + j] = st_var[j]
                n_out[r, c0 + j] = st_n[j]
                index_out[r, c0 + j] = st_index[j]


@njit(cache=True, fastmath=False)
def _astropy_bounds(srt: np.ndarray, j: int, n: int, n_sigma: float, n_iter: int) -> tuple[float, float]:
    """Bounds of astropy's compiled sigma clip (median centre, ddof=0 std) of ``srt[:n, j]``."""
    if n == 0:
        return np.nan, np.nan
    a = 0
    b = n
    iteration = 0
    lo = np.nan
    hi = np.nan
    while True:
        m = b - a
        if m % 2 == 0:
            median = 0.5 * (np.float64(srt[a + m // 2, j]) + np.float64(srt[a + m // 2 - 1, j]))
        else:
            median = np.float64(srt[a + (m - 1) // 2, j])
        total = 0.0
        for i in range(a, b):
            total += np.float64(srt[i, j])
        mean = total / m
        squares = 0.0
        for i in range(a, b):
            d = np.float64(srt[i, j]) - mean
            squares += d * d
        std = np.sqrt(squares / m)
        lo = median - n_sigma * std
        hi = median + n_sigma * std
        new_a = a
        while new_a < b and not (np.float64(srt[new_a, j]) >= lo):
            new_a += 1
        new_b = b
        while new_b > new_a and not (np.float64(srt[new_b - 1, j]) <= hi):
            new_b -= 1
        kept = new_b - new_a
        if kept == m or kept == 0:
            break
        a = new_a
        b = new_b
        iteration += 1
        if n_iter >= 0 and iteration >= n_iter:
            break
    return lo, hi


class ClipResult:
    """Per-pixel output of `clip_stack`.

    Attributes
    ----------
    mean : `numpy.ndarray`
        float64 mean of the kept values (NaN where none is kept).
    variance : `numpy.ndarray`
        float64 sample variance (``ddof=1``) of the kept values (NaN where fewer than two).
    n_kept : `numpy.ndarray`
        int32 number of kept values.
    kept_index : `numpy.ndarray`
        int32 index (along axis 0) of the last kept input, -1 if none: the input used when exactly
        one is kept.
    """

    __slots__ = ("kept_index", "mean", "n_kept", "variance")

    def __init__(self, mean: np.ndarray, variance: np.ndarray, n_kept: np.ndarray, kept_index: np.ndarray):
        self.mean = mean
        self.variance = variance
        self.n_kept = n_kept
        self.kept_index = kept_index


def _network(n: int) -> np.ndarray:
    pairs = _NETWORKS.get(n)
    if pairs is None:
        pairs = _NETWORKS[n] = sorting_network(n)
    return pairs


def clip_stack(
    stack: np.ndarray,
    *,
    method: str = "afw",
    n_sigma: float = 3.0,
    n_iter: int = 3,
    scales: np.ndarray | None = None,
    out: ClipResult | None = None,
) -> ClipResult:
    """Per-pixel sigma-clipped mean of ``stack`` along axis 0.

    Parameters
    ----------
    stack : `numpy.ndarray`
        float32 array ``(N, rows, cols)`` (any strides, e.g. a row slice of a larger stack; it
        is not copied). Non-finite values are bad inputs.
    method : `str`
        ``"afw"`` or ``"astropy"`` (see the module docstring).
    n_sigma, n_iter : `float`, `int`
        Clipping half-width and number of passes (astropy: maximum iterations; -1 = until
        convergence).
    scales : `numpy.ndarray`, optional
        Each input is divided by its scale on the fly (``float32(float64(value) / scale)``).
    out : `ClipResult`, optional
        Output arrays of shape ``(rows, cols)`` to fill (e.g. views of full-image arrays).
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
    if stack.ndim != 3:
        raise ValueError(f"stack must be 3-D (N, rows, cols), got shape {stack.shape}")
    if stack.dtype != np.float32:
        raise TypeError(f"stack must be float32, got {stack.dtype}")
    if n_iter < 1 and not (method == "astropy" and n_iter == -1):
        raise ValueError(f"n_iter must be at least 1, got {n_iter}")
    n_in, rows, cols = stack.shape
    if n_in == 0:
        raise ValueError("empty stack")
    if scales is None:
        scale_values = np.ones(n_in)
        unit = True
    else:
        scale_values = np.ascontiguousarray(scales, dtype=np.float64)
        if scale_values.shape != (n_in,):
            raise ValueError(f"{scale_values.size} scales for {n_in} inputs")
        unit = bool(np.all(scale_values == 1.0))
    if out is None:
        out = ClipResult(
            np.empty((rows, cols)),
            np.empty((rows, cols)),
            np.empty((rows, cols), dtype=np.int32),
            np.empty((rows, cols), dtype=np.int32),
        )
    _clip_kernel(
        stack,
        scale_values,
        unit,
        _network(n_in),
        _METHODS[method],
        float(n_sigma),
        int(n_iter),
        out.mean,
        out.variance,
        out.n_kept,
        out.kept_index,
    )
    return out


def warm_up(**kwargs: Any) -> None:
    """Compile (or load from the cache) the kernel for both methods on a tiny stack."""
    tiny = np.ones((3, 2, 3), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in _METHODS:
            clip_stack(tiny, method=method, **kwargs)
            clip_stack(tiny[:, :1], method=method, **kwargs)
            clip_stack(tiny, method=method, scales=np.array([1.0, 2.0, 3.0]), **kwargs)

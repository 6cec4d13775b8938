"""Compiled per-pixel sigma clipping of an image stack (numba).

`clip_stack` reduces a stack of shape ``(N, rows, cols)`` along axis 0 in one fused pass per row:
`CHUNK` columns of every input are copied at once into per-tile buffers of `TILE` pixels (the
stack is read through a 1-D contiguous view of its memory at explicit strides, so a strip of rows
of a larger stack is read with vector loads, in place), each tile is sorted with a branch-free
sorting network that runs across the pixels of the tile (so the compiler vectorises it; for afw on
complete tiles only the comparators the quartiles depend on), the clipping limits are derived per
pixel and the statistics of the kept values accumulated. Nothing of the size of the stack is
allocated; blocks of `ROW_BLOCK` rows are spread over threads.

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
TILE = 128
"""Columns processed together (one SIMD-friendly tile of the per-pixel buffers)."""
CHUNK = 8 * TILE
"""Columns of a row copied from every input at once before the tiles are processed."""
ROW_BLOCK = 16
"""Rows per parallel work item (the per-thread buffers are allocated once per block)."""
"""Rows per parallel work item (the per-thread buffers are allocated once per block)."""

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
_QUARTILE_NETWORKS: dict[int, np.ndarray] = {}


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
def _load_chunk(
    flat: np.ndarray,
    strides: np.ndarray,
    r: int,
    c0: int,
    chunk: int,
    scales: np.ndarray,
    unit_scales: bool,
    orig: np.ndarray,
    srt: np.ndarray,
    n_good: np.ndarray,
) -> None:
    """Copy ``stack[:, r, c0:c0 + chunk]`` into tiles: ``orig`` NaN where bad, ``srt`` +inf where bad.

    The stack is read through ``flat``, a 1-D contiguous view of its memory, at the element
    ``strides`` (plane, row, column): unlike a strided 3-D view (e.g. a strip of rows), the loads
    of a unit-stride row then vectorise. ``orig`` and ``srt`` are ``(CHUNK // TILE, N, TILE)``:
    each tile is one contiguous block (no cache-set aliasing between its N rows), filled straight
    from the input rows, read ``chunk`` columns at a time per input (long contiguous reads keep the
    hardware prefetchers streaming; N interleaved short reads do not). ``n_good[t]`` counts the
    good values of every lane of tile ``t``; lanes past ``chunk`` are bad. The loops over the
    lanes have no branches (selects only), so they vectorise.
    """
    n_in = orig.shape[1]
    n_tiles = (chunk + TILE - 1) // TILE
    nan32 = np.float32(np.nan)
    inf32 = np.float32(np.inf)
    col_stride = strides[2]
    n_good[:n_tiles] = 0
    for i in range(n_in):
        start = i * strides[0] + r * strides[1] + c0 * col_stride
        s = scales[i]
        for t in range(n_tiles):
            base = t * TILE
            o = orig[t, i]
            q = srt[t, i]
            g = n_good[t]
            if base + TILE <= chunk and col_stride == 1:
                row = flat[start + base : start + base + TILE]
                if unit_scales:
                    for j in range(TILE):
                        v = row[j]
                        good = np.abs(v) < inf32
                        o[j] = v if good else nan32
                        q[j] = v if good else inf32
                        g[j] += np.int32(good)
                else:
                    for j in range(TILE):
                        v = np.float32(np.float64(row[j]) / s)
                        good = np.abs(v) < inf32
                        o[j] = v if good else nan32
                        q[j] = v if good else inf32
                        g[j] += np.int32(good)
            else:
                # Tail tile or non-unit column stride (dividing by a unit scale is exact).
                width = min(TILE, chunk - base)
                for j in range(width):
                    v = np.float32(np.float64(flat[start + (base + j) * col_stride]) / s)
                    good = np.abs(v) < inf32
                    o[j] = v if good else nan32
                    q[j] = v if good else inf32
                    g[j] += np.int32(good)
                for j in range(width, TILE):
                    o[j] = nan32
                    q[j] = inf32


@njit(cache=True, fastmath=False)
def _sort_tile(srt: np.ndarray, pairs: np.ndarray) -> None:
    """Sort each column of ``srt`` (one pixel per column) with the comparator network ``pairs``."""
    for p in range(pairs.shape[0]):
        a = srt[pairs[p, 0]]
        b = srt[pairs[p, 1]]
        for j in range(TILE):
            x = a[j]
            y = b[j]
            a[j] = x if x < y else y
            b[j] = y if x < y else x


@njit(cache=True, fastmath=False)
def _afw_first_limits(
    srt: np.ndarray, n_good: np.ndarray, afw_scale: float, centre: np.ndarray, half: np.ndarray
) -> None:
    """First-pass limits ``median ± afw_scale · IQR`` (float32) of every lane of the sorted tile."""
    n_min = n_good.min()
    if n_min == n_good.max() and n_min > 0:
        # Common case (no bad input in the tile): the same order statistics in every lane.
        position = np.empty(3)
        position[0] = 0.25 * np.float64(n_min - 1)
        position[1] = 0.5 * np.float64(n_min - 1)
        position[2] = 0.75 * np.float64(n_min - 1)
        lower = np.empty(3, dtype=np.int64)
        upper = np.empty(3, dtype=np.int64)
        for k in range(3):
            lower[k] = int(np.floor(position[k]))
            upper[k] = min(lower[k] + 1, n_min - 1)
        f25 = position[0] - lower[0]
        f50 = position[1] - lower[1]
        f75 = position[2] - lower[2]
        a25 = srt[lower[0]]
        b25 = srt[upper[0]]
        a50 = srt[lower[1]]
        b50 = srt[upper[1]]
        a75 = srt[lower[2]]
        b75 = srt[upper[2]]
        for j in range(TILE):
            lo = np.float64(a25[j])
            q25 = lo + f25 * (np.float64(b25[j]) - lo)
            lo = np.float64(a50[j])
            median = lo + f50 * (np.float64(b50[j]) - lo)
            lo = np.float64(a75[j])
            q75 = lo + f75 * (np.float64(b75[j]) - lo)
            centre[j] = np.float32(median)
            half[j] = np.float32(afw_scale * (q75 - q25))
        return
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
    st_mean: np.ndarray,
    st_var: np.ndarray,
    st_n: np.ndarray,
    st_index: np.ndarray,
) -> None:
    """afw passes over the tile ``orig`` from the first-pass limits ``centre ± half`` (float32).

    One sweep per pass: a value is kept where ``|value - centre| <= half`` (float32, as numpy
    did); the kept deviations ``d = value - centre`` are summed in float64 (``d`` and ``d²`` are
    exact there), giving mean = centre + Σd/n and the sample variance (Σd² - (Σd)²/n)/(n - 1).
    """
    n_in = orig.shape[0]
    for _ in range(n_iter):
        count[:] = 0
        total[:] = 0.0
        squares[:] = 0.0
        last[:] = -1
        for i in range(n_in):
            x = orig[i]
            for j in range(TILE):
                d = x[j] - centre[j]
                keep = np.abs(d) <= half[j]
                dd = np.float64(d) if keep else 0.0
                count[j] += np.int32(keep)
                total[j] += dd
                squares[j] += dd * dd
                last[j] = np.int32(i) if keep else last[j]
        for j in range(TILE):
            n = count[j]
            if n > 0:
                st_mean[j] = np.float64(centre[j]) + total[j] / n
                spread = max(squares[j] - total[j] * (total[j] / n), 0.0)
                st_var[j] = spread / (n - 1) if n >= 2 else np.nan
                st_n[j] = n
                st_index[j] = last[j]
            spread = st_var[j] if np.isfinite(st_var[j]) else 0.0
            centre[j] = np.float32(st_mean[j])
            half[j] = np.float32(n_sigma * np.sqrt(spread))


@njit(cache=True, fastmath=False)
def _bounded_pass(
    orig: np.ndarray,
    lo_bound: np.ndarray,
    hi_bound: np.ndarray,
    count: np.ndarray,
    last: np.ndarray,
    total: np.ndarray,
    squares: np.ndarray,
    st_mean: np.ndarray,
    st_var: np.ndarray,
    st_n: np.ndarray,
    st_index: np.ndarray,
) -> None:
    """Statistics of the values within the inclusive float64 bounds (astropy's final mask)."""
    n_in = orig.shape[0]
    count[:] = 0
    total[:] = 0.0
    squares[:] = 0.0
    last[:] = -1
    for i in range(n_in):
        row = orig[i]
        for j in range(TILE):
            x = np.float64(row[j])
            centre = 0.5 * (lo_bound[j] + hi_bound[j])
            keep = (x >= lo_bound[j]) & (x <= hi_bound[j])
            d = x - centre if keep else 0.0
            count[j] += np.int32(keep)
            total[j] += d
            squares[j] += d * d
            last[j] = np.int32(i) if keep else last[j]
    for j in range(TILE):
        n = count[j]
        if n > 0:
            st_mean[j] = 0.5 * (lo_bound[j] + hi_bound[j]) + total[j] / n
            spread = max(squares[j] - total[j] * (total[j] / n), 0.0)
            st_var[j] = spread / (n - 1) if n >= 2 else np.nan
            st_n[j] = n
            st_index[j] = last[j]


@njit(parallel=True, cache=True, fastmath=False)
def _clip_kernel(
    flat: np.ndarray,
    shape: np.ndarray,
    strides: np.ndarray,
    scales: np.ndarray,
    unit_scales: bool,
    pairs: np.ndarray,
    quartile_pairs: np.ndarray,
    method: int,
    n_sigma: float,
    n_iter: int,
    mean_out: np.ndarray,
    var_out: np.ndarray,
    n_out: np.ndarray,
    index_out: np.ndarray,
) -> None:
    n_in = shape[0]
    n_rows = shape[1]
    n_cols = shape[2]
    afw_scale = n_sigma * _IQ_TO_STDEV
    n_tiles = CHUNK // TILE
    n_blocks = (n_rows + ROW_BLOCK - 1) // ROW_BLOCK
    for block in prange(n_blocks):
        # The buffers are allocated once per block of rows, not per row.
        orig_chunk = np.empty((n_tiles, n_in, TILE), dtype=np.float32)
        srt_chunk = np.empty((n_tiles, n_in, TILE), dtype=np.float32)
        n_good_chunk = np.empty((n_tiles, TILE), dtype=np.int32)
        centre = np.empty(TILE, dtype=np.float32)
        half = np.empty(TILE, dtype=np.float32)
        lo_bound = np.empty(TILE, dtype=np.float64)
        hi_bound = np.empty(TILE, dtype=np.float64)
        count = np.empty(TILE, dtype=np.int32)
        last = np.empty(TILE, dtype=np.int32)
        total = np.empty(TILE, dtype=np.float64)
        squares = np.empty(TILE, dtype=np.float64)
        st_mean = np.empty(TILE, dtype=np.float64)
        st_var = np.empty(TILE, dtype=np.float64)
        st_n = np.empty(TILE, dtype=np.int32)
        st_index = np.empty(TILE, dtype=np.int32)
        for r in range(block * ROW_BLOCK, min(n_rows, (block + 1) * ROW_BLOCK)):
            for c0 in range(0, n_cols, CHUNK):
                chunk = min(CHUNK, n_cols - c0)
                _load_chunk(
                    flat, strides, r, c0, chunk, scales, unit_scales, orig_chunk, srt_chunk, n_good_chunk
                )
                for t in range((chunk + TILE - 1) // TILE):
                    width = min(TILE, chunk - t * TILE)
                    orig = orig_chunk[t]
                    srt = srt_chunk[t]
                    n_good = n_good_chunk[t]
                    # Sort every pixel's values (bad ones, +inf, go last); when every lane is complete
                    # (the common case) afw needs only the three quartiles: the pruned network.
                    if method == AFW and n_good.min() == n_in:
                        _sort_tile(srt, quartile_pairs)
                    else:
                        _sort_tile(srt, pairs)
                    st_mean[:] = np.nan
                    st_var[:] = np.nan
                    st_n[:] = 0
                    st_index[:] = -1
                    if method == AFW:
                        _afw_first_limits(srt, n_good, afw_scale, centre, half)
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
                        _bounded_pass(
                            orig,
                            lo_bound,
                            hi_bound,
                            count,
                            last,
                            total,
                            squares,
                            st_mean,
                            st_var,
                            st_n,
                            st_index,
                        )
                    cols = c0 + t * TILE
                    for j in range(width):
                        mean_out[r, cols + j] = st_mean[j]
                        var_out[r, cols + j] = st_var[j]
                        n_out[r, cols + j] = st_n[j]
                        index_out[r, cols + j] = st_index[j]


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


def _quartile_network(n: int) -> np.ndarray:
    """The comparators of `sorting_network` that the afw first pass needs when all ``n`` are good.

    Walking the network backwards from the order statistics the quartiles interpolate (as
    `_afw_first_limits` picks them), a comparator is kept if it writes a position still needed,
    which then needs both its inputs. The kept positions end up exactly as after the full sort.
    """
    pairs = _QUARTILE_NETWORKS.get(n)
    if pairs is None:
        needed: set[int] = set()
        for q in (0.25, 0.5, 0.75):
            lower = int(np.floor(q * (n - 1)))
            needed.update((lower, min(lower + 1, n - 1)))
        kept: list[tuple[int, int]] = []
        for i, j in _network(n)[::-1].tolist():
            if i in needed or j in needed:
                kept.append((i, j))
                needed.update((i, j))
        pairs = _QUARTILE_NETWORKS[n] = np.array(kept[::-1], dtype=np.int64).reshape(-1, 2)
    return pairs


def _flat_view(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 1-D contiguous read-only view of the memory of ``stack`` and its element strides.

    No copy unless a stride is negative or not a multiple of the item size (then the stack is
    copied to a contiguous array first).
    """
    item = stack.itemsize
    if stack.size == 0:
        return np.zeros(1, dtype=stack.dtype), np.zeros(3, dtype=np.int64)
    if not all(
        size == 1 or (stride >= 0 and stride % item == 0)
        for size, stride in zip(stack.shape, stack.strides, strict=True)
    ):
        stack = np.ascontiguousarray(stack)
    strides = np.array(
        [0 if size == 1 else stride // item for size, stride in zip(stack.shape, stack.strides, strict=True)],
        dtype=np.int64,
    )
    span = 1 + int(sum((size - 1) * step for size, step in zip(stack.shape, strides.tolist(), strict=True)))
    flat = np.lib.stride_tricks.as_strided(stack, shape=(span,), strides=(item,), writeable=False)
    return flat, strides


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
        float32 array ``(N, rows, cols)`` (any non-negative strides, e.g. a row slice of a
        larger stack: it is read in place, not copied; a negative stride costs a contiguous
        copy). Non-finite values are bad inputs.
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
    flat, strides = _flat_view(stack)
    _clip_kernel(
        flat,
        np.array(stack.shape, dtype=np.int64),
        strides,
        scale_values,
        unit,
        _network(n_in),
        _quartile_network(n_in),
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

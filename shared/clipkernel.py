"""Compiled per-pixel sigma clipping of an image stack (numba).

`clip_stack` reduces a stack of shape ``(N, rows, cols)`` along axis 0 in one fused pass per row:
a chunk of columns of every input is copied at once into per-tile buffers of `TILE` pixels (the
stack is read through a 1-D contiguous view of its memory at explicit strides, so a strip of rows
of a larger stack is read with vector loads, in place), each tile is sorted with a branch-free
sorting network that runs across the pixels of the tile (so the compiler vectorises it), the
clipping limits are derived per pixel and the statistics of the kept values accumulated.
Nothing of the size of the stack is allocated; blocks of `ROW_BLOCK` rows are spread over threads.

For afw, a pass keeps the values inside an interval, which in sorted order is one run of
positions. So a tile is sorted only as far as the quartiles and the `TAIL` smallest and largest
values need (`quartile_network`), the float64 sums of the middle positions are taken once, and
each pass tests only the tails; a pixel whose pass would drop a middle value, or keeps a single
value, is recomputed by the scalar `afw_pixel`. Tiles without a bad value (the common case) run
their three passes with every value in registers (`_afw_register_passes`), and on large frames
are sorted by a network written out for N (`shared.clipnetworks`).

Two clipping definitions are available (``method``):

``"afw"`` (`AFW`)
    LSST afw ``MEANCLIP``, as `shared.stats.clipped_stats` and the previous numpy combine: pass 1
    keeps the values within ``median ± n_sigma · IQ_TO_STDEV · IQR`` (quantiles by linear
    interpolation, as `shared.stats.nanquantile_sorted`), every later pass keeps the values within
    ``mean ± n_sigma · stdev`` (sample stdev, ``ddof=1``) of the previous pass. Each pass tests
    *all* good values; a pass that keeps nothing leaves the previous result. The tests are done in
    float32 (value − float32(centre) against float32(half-width)), as the numpy implementation did.
    The sums are of the float64 deviations from the first-pass centre (exact), where numpy summed
    the float32 deviations from each pass's centre: the means differ by about 1e-12 relative, and
    the kept sets only where a value lies within that of a limit.
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
    "afw_pixel",
    "clip_stack",
    "quartile_network",
    "sorting_network",
    "sorting_network_for",
    "warm_up",
]

AFW = 0
ASTROPY = 1
CHUNK_BYTES = 1 << 18
"""Size of the per-thread sort buffer: the columns of a row copied from every input at once."""
ROW_BLOCK = 16
"""Rows per parallel work item (the per-thread buffers are allocated once per block)."""
REGISTER_NETWORK_MIN_PIXELS = 1 << 18
"""Pixels per call from which afw sorts with `shared.clipnetworks` (written-out networks)."""

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

from llvmlite import ir  # noqa: E402
from numba import njit, prange, types  # noqa: E402  (after the cache directory is chosen)
from numba.extending import intrinsic  # noqa: E402

from shared.clipnetworks import (  # noqa: E402
    TAIL,
    TILE,
    comparators,
    network_address,
    quartile_network,
    sorting_network,
)


@intrinsic
def _call_tile_function(typingctx: Any, address: Any, tile: Any) -> Any:
    """Call the C function at ``address`` (``void f(float *)``) on the data of the array ``tile``.

    The per-depth sorting networks (`shared.clipnetworks`) are compiled separately; the kernel
    gets their addresses as integers, so it is compiled (and cached) once for every depth.
    """
    signature = types.void(address, tile)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> None:
        array = context.make_array(sig.args[1])(context, builder, args[1])
        f32p = ir.FloatType().as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [f32p])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, [builder.bitcast(array.data, f32p)])

    return signature, codegen


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


@njit(cache=True, fastmath=False, error_model="numpy")
def afw_pixel(values: np.ndarray, n_sigma: float, afw_scale: float, n_iter: int, result: np.ndarray) -> None:
    """afw clipped statistics of one pixel's float32 ``values`` (non-finite = bad), scalar code.

    ``result`` receives mean, sample variance, number kept and the index of the last kept
    value (-1 unless exactly one is kept), as the tile kernel computes them.
    """
    n_in = values.shape[0]
    good = np.empty(n_in, dtype=np.float32)
    n = 0
    for i in range(n_in):
        if np.abs(values[i]) < np.float32(np.inf):
            good[n] = values[i]
            n += 1
    st_mean = np.nan
    st_var = np.nan
    st_n = 0
    st_index = -1
    if n > 0:
        srt = np.sort(good[:n])
        q25 = _quantile_1d(srt, n, 0.25)
        q50 = _quantile_1d(srt, n, 0.5)
        q75 = _quantile_1d(srt, n, 0.75)
        centre = np.float32(q50)
        half = np.float32(afw_scale * (q75 - q25))
        for _ in range(n_iter):
            count = 0
            total = 0.0
            squares = 0.0
            last = -1
            for i in range(n_in):
                d = values[i] - centre
                if np.abs(d) <= half:
                    dd = np.float64(d)
                    count += 1
                    total += dd
                    squares += dd * dd
                    last = i
            if count > 0:
                st_mean = np.float64(centre) + total / count
                spread = max(squares - total * (total / count), 0.0)
                st_var = spread / (count - 1) if count >= 2 else np.nan
                st_n = count
                st_index = last
            spread = st_var if np.isfinite(st_var) else 0.0
            centre = np.float32(st_mean)
            half = np.float32(n_sigma * np.sqrt(spread))
    result[0] = st_mean
    result[1] = st_var
    result[2] = st_n
    result[3] = st_index if st_n == 1 else -1


@njit(cache=True, fastmath=False, inline="always")
def _quantile_1d(srt: np.ndarray, n: int, q: float) -> float:
    position = q * np.float64(n - 1)
    lower = int(np.floor(position))
    upper = min(lower + 1, n - 1)
    lo = np.float64(srt[lower])
    return lo + (position - lower) * (np.float64(srt[upper]) - lo)


@njit(cache=True, fastmath=False)
def _load_chunk(
    flat: np.ndarray,
    strides: np.ndarray,
    r: int,
    c0: int,
    chunk: int,
    scales: np.ndarray,
    unit_scales: bool,
    with_orig: bool,
    orig: np.ndarray,
    srt: np.ndarray,
    n_bad: np.ndarray,
) -> None:
    """Copy ``stack[:, r, c0:c0 + chunk]`` into tiles: ``srt`` +inf where bad, ``orig`` NaN where bad.

    ``orig`` (the values in input order) is filled only ``with_orig`` (the astropy definition
    needs it; afw works on the sorted values alone).

    The stack is read through ``flat``, a 1-D contiguous view of its memory, at the element
    ``strides`` (plane, row, column): unlike a strided 3-D view (e.g. a strip of rows), the loads
    of a unit-stride row then vectorise. ``orig`` and ``srt`` are ``(tiles, N, TILE)``:
    each tile is one contiguous block (no cache-set aliasing between its N rows), filled straight
    from the input rows, read ``chunk`` columns at a time per input (long contiguous reads keep the
    hardware prefetchers streaming; N interleaved short reads do not). ``n_bad[t]`` counts the
    bad values of tile ``t`` (lanes past ``chunk`` are bad); `_count_good` gives the count per
    lane when a tile has any. The loops over the lanes have no branches (selects only, and a
    reduction held in a register), so they vectorise.
    """
    n_in = srt.shape[1]
    n_tiles = (chunk + TILE - 1) // TILE
    nan32 = np.float32(np.nan)
    inf32 = np.float32(np.inf)
    col_stride = strides[2]
    n_bad[:n_tiles] = 0
    for i in range(n_in):
        start = i * strides[0] + r * strides[1] + c0 * col_stride
        s = scales[i]
        for t in range(n_tiles):
            base = t * TILE
            o = orig[t, i] if with_orig else orig[0, 0]
            q = srt[t, i]
            bad = 0
            if base + TILE <= chunk and col_stride == 1:
                row = flat[start + base : start + base + TILE]
                if unit_scales and with_orig:
                    for j in range(TILE):
                        v = row[j]
                        good = np.abs(v) < inf32
                        o[j] = v if good else nan32
                        q[j] = v if good else inf32
                        bad += 0 if good else 1
                elif unit_scales:
                    for j in range(TILE):
                        v = row[j]
                        good = np.abs(v) < inf32
                        q[j] = v if good else inf32
                        bad += 0 if good else 1
                else:
                    for j in range(TILE):
                        v = np.float32(np.float64(row[j]) / s)
                        good = np.abs(v) < inf32
                        if with_orig:
                            o[j] = v if good else nan32
                        q[j] = v if good else inf32
                        bad += 0 if good else 1
            else:
                # Tail tile or non-unit column stride (dividing by a unit scale is exact).
                width = min(TILE, chunk - base)
                for j in range(width):
                    v = np.float32(np.float64(flat[start + (base + j) * col_stride]) / s)
                    good = np.abs(v) < inf32
                    if with_orig:
                        o[j] = v if good else nan32
                    q[j] = v if good else inf32
                    bad += 0 if good else 1
                for j in range(width, TILE):
                    if with_orig:
                        o[j] = nan32
                    q[j] = inf32
                bad += TILE - width
            n_bad[t] += bad


@njit(cache=True, fastmath=False)
def _count_good(srt: np.ndarray, n_good: np.ndarray) -> None:
    """Number of finite values in every lane of a tile (bad values are +inf)."""
    n_good[:] = 0
    for i in range(srt.shape[0]):
        row = srt[i]
        for j in range(TILE):
            n_good[j] += np.int32(row[j] < np.inf)


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
def _middle_sums(
    srt: np.ndarray,
    lo_end: int,
    hi_start: int,
    centre: np.ndarray,
    ref: np.ndarray,
    m1: np.ndarray,
    m2: np.ndarray,
) -> None:
    """Σe and Σe² of ``e = value - ref`` (float64, exact) over the sorted positions ``[lo_end, hi_start)``.

    ``ref`` is set to the first-pass centre of every lane.
    """
    for j in range(TILE):
        ref[j] = np.float64(centre[j])
        m1[j] = 0.0
        m2[j] = 0.0
    # Four (then two) positions per sweep: fewer loads and stores of the float64 sums.
    i = lo_end
    while i + 3 < hi_start:
        row_a = srt[i]
        row_b = srt[i + 1]
        row_c = srt[i + 2]
        row_d = srt[i + 3]
        for j in range(TILE):
            base = ref[j]
            ea = np.float64(row_a[j]) - base
            eb = np.float64(row_b[j]) - base
            ec = np.float64(row_c[j]) - base
            ed = np.float64(row_d[j]) - base
            m1[j] += (ea + eb) + (ec + ed)
            m2[j] += (ea * ea + eb * eb) + (ec * ec + ed * ed)
        i += 4
    while i + 1 < hi_start:
        row_a = srt[i]
        row_b = srt[i + 1]
        for j in range(TILE):
            ea = np.float64(row_a[j]) - ref[j]
            eb = np.float64(row_b[j]) - ref[j]
            m1[j] += ea + eb
            m2[j] += ea * ea + eb * eb
        i += 2
    if i < hi_start:
        row = srt[i]
        for j in range(TILE):
            e = np.float64(row[j]) - ref[j]
            m1[j] += e
            m2[j] += e * e


@njit(cache=True, fastmath=False, error_model="numpy")
def _afw_tail_passes(
    srt: np.ndarray,
    lo_end: int,
    hi_start: int,
    centre: np.ndarray,
    half: np.ndarray,
    n_sigma: float,
    n_iter: int,
    ref: np.ndarray,
    m1: np.ndarray,
    m2: np.ndarray,
    count: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    st_mean: np.ndarray,
    st_var: np.ndarray,
    st_n: np.ndarray,
    suspect: np.ndarray,
) -> None:
    """afw passes over a sorted tile, testing only the sorted positions outside ``[lo_end, hi_start)``.

    A pass keeps the values with ``|value - centre| <= half`` (float32, as numpy did), which in
    sorted order is one run of positions. The middle positions ``[lo_end, hi_start)`` (good in
    every lane) are assumed kept, their sums `_middle_sums` already holds; only the tails are
    tested value by value. A lane where a pass would drop the first or last middle value is
    marked ``suspect`` (its result is wrong and must be recomputed). Mean = ref + Σe/n, sample
    variance (Σe² - (Σe)²/n)/(n - 1), with ``e = value - ref`` in float64.
    """
    n_in = srt.shape[0]
    n_mid = hi_start - lo_end
    suspect[:] = False
    for _ in range(n_iter):
        for j in range(TILE):
            count[j] = n_mid
            s1[j] = m1[j]
            s2[j] = m2[j]
        if n_mid > 0:
            first = srt[lo_end]
            last = srt[hi_start - 1]
            for j in range(TILE):
                inside = (np.abs(first[j] - centre[j]) <= half[j]) & (np.abs(last[j] - centre[j]) <= half[j])
                suspect[j] |= not inside
        for i in range(n_in):
            if lo_end <= i < hi_start:
                continue
            row = srt[i]
            for j in range(TILE):
                x = row[j]
                keep = np.abs(x - centre[j]) <= half[j]
                e = np.float64(x) - ref[j] if keep else 0.0
                count[j] += np.int32(keep)
                s1[j] += e
                s2[j] += e * e
        # The statistics of `_afw_register_passes`, lane by lane (branch-free: it vectorises).
        for j in range(TILE):
            kept = np.float64(count[j])
            before = np.float64(st_n[j])
            c, w, m, v, n = _pass_stats(kept, s1[j], s2[j], ref[j], n_sigma, st_mean[j], st_var[j], before)
            centre[j] = c
            half[j] = w
            st_mean[j] = m
            st_var[j] = v
            st_n[j] = np.int32(n)


@njit(cache=True, fastmath=False, inline="always")
def _ends_kept(
    first: np.float32, last: np.float32, centre: np.float32, half: np.float32
) -> tuple[bool, bool]:
    """Whether a pass keeps the first and the last middle value."""
    return np.abs(first - centre) <= half, np.abs(last - centre) <= half


@njit(cache=True, fastmath=False, inline="always")
def _tail_sums(
    t0: np.float32,
    t1: np.float32,
    t2: np.float32,
    t3: np.float32,
    t4: np.float32,
    t5: np.float32,
    t6: np.float32,
    t7: np.float32,
    e0: float,
    e1: float,
    e2: float,
    e3: float,
    e4: float,
    e5: float,
    e6: float,
    e7: float,
    centre: np.float32,
    half: np.float32,
) -> tuple[float, float, float]:
    """Count, Σe and Σe² of the eight tail values (``e = t - ref``) a pass keeps."""
    k0 = np.abs(t0 - centre) <= half
    k1 = np.abs(t1 - centre) <= half
    k2 = np.abs(t2 - centre) <= half
    k3 = np.abs(t3 - centre) <= half
    k4 = np.abs(t4 - centre) <= half
    k5 = np.abs(t5 - centre) <= half
    k6 = np.abs(t6 - centre) <= half
    k7 = np.abs(t7 - centre) <= half
    # Two chains (low tail, high tail) of "add if kept" (merge-masked adds); the count in float64.
    n_lo = 1.0 if k0 else 0.0
    n_lo = n_lo + 1.0 if k1 else n_lo
    n_lo = n_lo + 1.0 if k2 else n_lo
    n_lo = n_lo + 1.0 if k3 else n_lo
    n_hi = 1.0 if k4 else 0.0
    n_hi = n_hi + 1.0 if k5 else n_hi
    n_hi = n_hi + 1.0 if k6 else n_hi
    n_hi = n_hi + 1.0 if k7 else n_hi
    a_lo = e0 if k0 else 0.0
    a_lo = a_lo + e1 if k1 else a_lo
    a_lo = a_lo + e2 if k2 else a_lo
    a_lo = a_lo + e3 if k3 else a_lo
    a_hi = e4 if k4 else 0.0
    a_hi = a_hi + e5 if k5 else a_hi
    a_hi = a_hi + e6 if k6 else a_hi
    a_hi = a_hi + e7 if k7 else a_hi
    b_lo = e0 * e0 if k0 else 0.0
    b_lo = b_lo + e1 * e1 if k1 else b_lo
    b_lo = b_lo + e2 * e2 if k2 else b_lo
    b_lo = b_lo + e3 * e3 if k3 else b_lo
    b_hi = e4 * e4 if k4 else 0.0
    b_hi = b_hi + e5 * e5 if k5 else b_hi
    b_hi = b_hi + e6 * e6 if k6 else b_hi
    b_hi = b_hi + e7 * e7 if k7 else b_hi
    n = n_lo + n_hi
    s1 = a_lo + a_hi
    s2 = b_lo + b_hi
    return n, s1, s2


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _pass_stats(
    fn: float, s1: float, s2: float, ref: float, n_sigma: float, st_mean: float, st_var: float, st_n: float
) -> tuple[np.float32, np.float32, float, float, float]:
    """Mean and sample variance from the pass sums (``fn`` values kept); the previous if none."""
    # One division for both: 1/n = (n - 1)·inv and 1/(n - 1) = n·inv (an ulp from s/n, s/(n-1);
    # the lanes with one value kept are recomputed by `afw_pixel`).
    has = fn > 0.0
    inv = 1.0 / (fn * (fn - 1.0))
    ratio = s1 * ((fn - 1.0) * inv)
    spread = s2 - s1 * ratio
    spread = spread if spread > 0.0 else 0.0
    var = spread * (fn * inv) if fn >= 2.0 else np.nan
    mean = ref + ratio if has else st_mean
    var = var if has else st_var
    fn = fn if has else st_n
    spread = var if var >= 0.0 else 0.0
    return np.float32(mean), np.float32(n_sigma * np.sqrt(spread)), mean, var, fn


@njit(cache=True, fastmath=False, error_model="numpy")
def _afw_register_passes(
    srt: np.ndarray,
    centre: np.ndarray,
    half: np.ndarray,
    ref: np.ndarray,
    m1: np.ndarray,
    m2: np.ndarray,
    n_sigma: float,
    st_mean: np.ndarray,
    st_var: np.ndarray,
    st_n: np.ndarray,
    suspect: np.ndarray,
) -> None:
    """Three afw passes of a complete sorted tile (no bad value, N > 2·`TAIL`), in registers.

    The results equal `_afw_tail_passes` with ``n_iter = 3``, ``lo_end = TAIL``,
    ``hi_start = N - TAIL``; only the order of the float64 sums differs. Written out for
    `TAIL` = 4 so that every value and sum of a lane stays in a register.
    """
    n_in = srt.shape[0]
    h = n_in - 4
    n_mid = np.float64(n_in - 8)
    r0 = srt[0]
    r1 = srt[1]
    r2 = srt[2]
    r3 = srt[3]
    r4 = srt[h]
    r5 = srt[h + 1]
    r6 = srt[h + 2]
    r7 = srt[h + 3]
    rf = srt[4]
    rl = srt[h - 1]
    for j in range(TILE):
        t0 = r0[j]
        t1 = r1[j]
        t2 = r2[j]
        t3 = r3[j]
        t4 = r4[j]
        t5 = r5[j]
        t6 = r6[j]
        t7 = r7[j]
        base = ref[j]
        e0 = np.float64(t0) - base
        e1 = np.float64(t1) - base
        e2 = np.float64(t2) - base
        e3 = np.float64(t3) - base
        e4 = np.float64(t4) - base
        e5 = np.float64(t5) - base
        e6 = np.float64(t6) - base
        e7 = np.float64(t7) - base
        first = rf[j]
        last = rl[j]
        c = centre[j]
        w = half[j]
        mean = np.nan
        var = np.nan
        n = 0.0
        a1 = m1[j]
        a2 = m2[j]
        # Three passes, written out (a loop here would stop the lanes from being vectorised).
        k1, k2 = _ends_kept(first, last, c, w)
        k, s1, s2 = _tail_sums(t0, t1, t2, t3, t4, t5, t6, t7, e0, e1, e2, e3, e4, e5, e6, e7, c, w)
        c, w, mean, var, n = _pass_stats(n_mid + k, a1 + s1, a2 + s2, base, n_sigma, mean, var, n)
        bad = not (k1 & k2)
        k1, k2 = _ends_kept(first, last, c, w)
        k, s1, s2 = _tail_sums(t0, t1, t2, t3, t4, t5, t6, t7, e0, e1, e2, e3, e4, e5, e6, e7, c, w)
        c, w, mean, var, n = _pass_stats(n_mid + k, a1 + s1, a2 + s2, base, n_sigma, mean, var, n)
        bad = bad | (not (k1 & k2))
        k1, k2 = _ends_kept(first, last, c, w)
        k, s1, s2 = _tail_sums(t0, t1, t2, t3, t4, t5, t6, t7, e0, e1, e2, e3, e4, e5, e6, e7, c, w)
        c, w, mean, var, n = _pass_stats(n_mid + k, a1 + s1, a2 + s2, base, n_sigma, mean, var, n)
        bad = bad | (not (k1 & k2))
        st_mean[j] = mean
        st_var[j] = var
        st_n[j] = np.int32(n)
        suspect[j] = bad


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


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _clip_kernel(
    flat: np.ndarray,
    shape: np.ndarray,
    strides: np.ndarray,
    scales: np.ndarray,
    unit_scales: bool,
    pairs: np.ndarray,
    quartile_pairs: np.ndarray,
    network: int,
    method: int,
    n_sigma: float,
    n_iter: int,
    var_of_mean: bool,
    mean_out: np.ndarray,
    var_out: np.ndarray,
    n_out: np.ndarray,
    index_out: np.ndarray,
    counts: np.ndarray,
) -> None:
    n_in = shape[0]
    n_rows = shape[1]
    n_cols = shape[2]
    afw_scale = n_sigma * _IQ_TO_STDEV
    # Columns copied per input at once: as many tiles as keep the chunk's buffer near
    # `CHUNK_BYTES` (it stays in the L2 cache), at least 2 and at most 32.
    n_tiles = max(2, min(32, CHUNK_BYTES // (4 * TILE * max(n_in, 1))))
    chunk_cols = n_tiles * TILE
    n_blocks = (n_rows + ROW_BLOCK - 1) // ROW_BLOCK
    tail = min(TAIL, n_in // 2)
    with_orig = method != AFW
    for block in prange(n_blocks):
        # The buffers are allocated once per block of rows, not per row.
        orig_chunk = np.empty((n_tiles if with_orig else 1, n_in, TILE), dtype=np.float32)
        srt_chunk = np.empty((n_tiles, n_in, TILE), dtype=np.float32)
        n_bad_chunk = np.empty(n_tiles, dtype=np.int32)
        n_good = np.empty(TILE, dtype=np.int32)
        centre = np.empty(TILE, dtype=np.float32)
        half = np.empty(TILE, dtype=np.float32)
        lo_bound = np.empty(TILE, dtype=np.float64)
        hi_bound = np.empty(TILE, dtype=np.float64)
        count = np.empty(TILE, dtype=np.int32)
        last = np.empty(TILE, dtype=np.int32)
        total = np.empty(TILE, dtype=np.float64)
        squares = np.empty(TILE, dtype=np.float64)
        ref = np.empty(TILE, dtype=np.float64)
        m1 = np.empty(TILE, dtype=np.float64)
        m2 = np.empty(TILE, dtype=np.float64)
        st_mean = np.empty(TILE, dtype=np.float64)
        st_var = np.empty(TILE, dtype=np.float64)
        st_n = np.empty(TILE, dtype=np.int32)
        st_index = np.empty(TILE, dtype=np.int32)
        suspect = np.zeros(TILE, dtype=np.bool_)
        values = np.empty(n_in, dtype=np.float32)
        pixel = np.empty(4)
        n_empty = 0
        n_single = 0
        for r in range(block * ROW_BLOCK, min(n_rows, (block + 1) * ROW_BLOCK)):
            for c0 in range(0, n_cols, chunk_cols):
                chunk = min(chunk_cols, n_cols - c0)
                _load_chunk(
                    flat,
                    strides,
                    r,
                    c0,
                    chunk,
                    scales,
                    unit_scales,
                    with_orig,
                    orig_chunk,
                    srt_chunk,
                    n_bad_chunk,
                )
                for t in range((chunk + TILE - 1) // TILE):
                    cols = c0 + t * TILE
                    width = min(TILE, chunk - t * TILE)
                    srt = srt_chunk[t]
                    # Sort every pixel's values (bad ones, +inf, go last); when every lane is complete
                    # (the common case) afw needs only the quartiles and the tails: the pruned network.
                    if n_bad_chunk[t] == 0:
                        n_min = n_in
                        n_good[:] = n_in
                        if method != AFW:
                            _sort_tile(srt, pairs)
                        elif network != 0:
                            _call_tile_function(network, srt)  # type: ignore[call-arg]
                        else:
                            _sort_tile(srt, quartile_pairs)
                    else:
                        _sort_tile(srt, pairs)
                        _count_good(srt, n_good)
                        n_min = n_good.min()
                    st_mean[:] = np.nan
                    st_var[:] = np.nan
                    st_n[:] = 0
                    st_index[:] = -1
                    if method == AFW:
                        _afw_first_limits(srt, n_good, afw_scale, centre, half)
                        # Sorted positions below lo_end or from hi_start on are tested one by one;
                        # those between are good in every lane and assumed kept (checked).
                        lo_end = tail
                        hi_start = max(tail, n_min - tail)
                        _middle_sums(srt, lo_end, hi_start, centre, ref, m1, m2)
                        if n_min == n_in and n_in > 2 * TAIL and n_iter == 3 and TAIL == 4:
                            _afw_register_passes(
                                srt, centre, half, ref, m1, m2, n_sigma, st_mean, st_var, st_n, suspect
                            )
                        else:
                            _afw_tail_passes(
                                srt,
                                lo_end,
                                hi_start,
                                centre,
                                half,
                                n_sigma,
                                n_iter,
                                ref,
                                m1,
                                m2,
                                count,
                                total,
                                squares,
                                st_mean,
                                st_var,
                                st_n,
                                suspect,
                            )
                        # A lane whose middle was not all kept, or with one value kept (its input
                        # index is wanted), is recomputed by the scalar code.
                        for j in range(width):
                            if suspect[j] or st_n[j] == 1:
                                start = r * strides[1] + (cols + j) * strides[2]
                                for i in range(n_in):
                                    value = np.float64(flat[start + i * strides[0]])
                                    values[i] = np.float32(value / scales[i])
                                afw_pixel(values, n_sigma, afw_scale, n_iter, pixel)
                                st_mean[j] = pixel[0]
                                st_var[j] = pixel[1]
                                st_n[j] = np.int32(pixel[2])
                                st_index[j] = np.int32(pixel[3])
                    else:
                        orig = orig_chunk[t]
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
                    mo = mean_out[r, cols : cols + width]
                    vo = var_out[r, cols : cols + width]
                    no = n_out[r, cols : cols + width]
                    io = index_out[r, cols : cols + width]
                    for j in range(width):
                        mo[j] = st_mean[j]
                        no[j] = st_n[j]
                        io[j] = st_index[j] if st_n[j] == 1 else -1
                    if var_of_mean:
                        for j in range(width):
                            vo[j] = st_var[j] / np.float64(st_n[j])
                    else:
                        for j in range(width):
                            vo[j] = st_var[j]
                    for j in range(width):
                        n_empty += st_n[j] == 0
                        n_single += st_n[j] == 1
        counts[block, 0] = n_empty
        counts[block, 1] = n_single


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
        Mean of the kept values (NaN where none is kept); float64 unless ``out`` gave float32.
    variance : `numpy.ndarray`
        Sample variance (``ddof=1``) of the kept values, or that divided by the number kept
        (``variance_of_mean``); NaN where fewer than two are kept.
    n_kept : `numpy.ndarray`
        Number of values kept (int32, or the integer type ``out`` gave).
    kept_index : `numpy.ndarray`
        int32: where exactly one value is kept, the index of its input along axis 0 (whose own
        variance then stands for the result's); -1 elsewhere.
    n_empty, n_single : `int`
        Number of pixels with no value kept and with exactly one (so that callers can skip
        whole-image searches for them when there are none).
    """

    __slots__ = ("kept_index", "mean", "n_empty", "n_kept", "n_single", "variance")

    def __init__(self, mean: np.ndarray, variance: np.ndarray, n_kept: np.ndarray, kept_index: np.ndarray):
        self.mean = mean
        self.variance = variance
        self.n_kept = n_kept
        self.kept_index = kept_index
        self.n_empty = 0
        self.n_single = 0


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


def sorting_network_for(n_in: int, pixels: int) -> int:
    """Address of the written-out network an afw call over ``pixels`` pixels of depth ``n_in`` uses.

    Only calls of `REGISTER_NETWORK_MIN_PIXELS` or more pay for compiling one (once per depth and
    machine, in the background: `shared.clipnetworks.network_address`); 0 means the table sort.
    """
    return network_address(n_in) if pixels >= REGISTER_NETWORK_MIN_PIXELS else 0


def clip_stack(
    stack: np.ndarray,
    *,
    method: str = "afw",
    n_sigma: float = 3.0,
    n_iter: int = 3,
    scales: np.ndarray | None = None,
    out: ClipResult | None = None,
    variance_of_mean: bool = False,
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
        Output arrays of shape ``(rows, cols)`` to fill (e.g. views of full-image arrays; mean
        and variance may be float32, the count any integer type).
    variance_of_mean : `bool`
        Return the variance divided by the number of values kept (the variance of the mean).
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
    network = sorting_network_for(n_in, rows * cols) if method == "afw" else 0
    flat, strides = _flat_view(stack)
    counts = np.zeros(((rows + ROW_BLOCK - 1) // ROW_BLOCK, 2), dtype=np.int64)
    _clip_kernel(
        flat,
        np.array(stack.shape, dtype=np.int64),
        strides,
        scale_values,
        unit,
        comparators(n_in),
        quartile_network(n_in),
        network,
        _METHODS[method],
        float(n_sigma),
        int(n_iter),
        bool(variance_of_mean),
        out.mean,
        out.variance,
        out.n_kept,
        out.kept_index,
        counts,
    )
    out.n_empty, out.n_single = (int(v) for v in counts.sum(axis=0))
    return out


def warm_up(**kwargs: Any) -> None:
    """Compile (or load from the cache) the kernel for both methods on a tiny stack.

    Both output flavours are compiled: float64 (the default) and the combine's float32 image and
    variance with int16 counts.
    """
    tiny = np.ones((3, 2, 3), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in _METHODS:
            clip_stack(tiny, method=method, **kwargs)
            clip_stack(tiny[:, :1], method=method, **kwargs)
            clip_stack(tiny, method=method, scales=np.array([1.0, 2.0, 3.0]), **kwargs)
            out = ClipResult(
                np.empty((2, 3), dtype=np.float32),
                np.empty((2, 3), dtype=np.float32),
                np.empty((2, 3), dtype=np.int16),
                np.empty((2, 3), dtype=np.int16),
            )
            clip_stack(tiny, method=method, out=out, variance_of_mean=True, **kwargs)

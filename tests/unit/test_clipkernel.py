"""Tests of the compiled per-pixel sigma-clipping kernel."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.stats import sigma_clip

from shared.clipkernel import REGISTER_NETWORK_MIN_PIXELS, TAIL, ClipResult, clip_stack, sorting_network
from shared.clipnetworks import network_address
from shared.stats import IQ_TO_STDEV, nanquantile_sorted


def _stack(n: int, shape: tuple[int, int] = (9, 70), seed: int = 0, nan_fraction: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stack = rng.normal(1000.0, 10.0, (n, *shape)).astype(np.float32)
    hits = rng.random(stack.shape) < 0.03
    stack[hits] += rng.uniform(500.0, 5000.0, hits.sum()).astype(np.float32)
    stack[rng.random(stack.shape) < nan_fraction] = np.nan
    stack[:, 2, 3] = np.nan  # a pixel with no good input
    return stack


def _afw_reference(stack: np.ndarray, n_sigma: float, n_iter: int) -> tuple[np.ndarray, ...]:
    """The previous numpy implementation of the combine (afw MEANCLIP per pixel, NaN = bad)."""
    good = np.isfinite(stack)
    n_good = good.sum(axis=0)
    ordered = np.sort(stack, axis=0)
    center = nanquantile_sorted(ordered, n_good, 0.5)
    iqr = nanquantile_sorted(ordered, n_good, 0.75) - nanquantile_sorted(ordered, n_good, 0.25)
    half_width = n_sigma * IQ_TO_STDEV * iqr
    values = np.where(good, stack, np.float32(0.0))
    mean = np.full(n_good.shape, np.nan)
    variance = np.full(n_good.shape, np.nan)
    n_kept = np.zeros(n_good.shape, dtype=np.intp)
    for _ in range(n_iter):
        with np.errstate(invalid="ignore", divide="ignore"):
            keep = (np.abs(values - center.astype(np.float32)) <= half_width.astype(np.float32)) & good
            n = keep.sum(axis=0)
            new_mean = (values * keep).sum(axis=0, dtype=np.float64) / n
            dev = (values - new_mean.astype(np.float32)) * keep
            new_variance = np.square(dev).sum(axis=0, dtype=np.float64) / (n - 1)
        new_variance = np.where(n >= 2, new_variance, np.nan)
        update = n > 0
        mean = np.where(update, new_mean, mean)
        variance = np.where(update, new_variance, variance)
        n_kept = np.where(update, n, n_kept)
        center = mean
        half_width = n_sigma * np.sqrt(np.where(np.isfinite(variance), variance, 0.0))
    return mean, variance, n_kept


def _astropy_reference(
    stack: np.ndarray, n_sigma: float, n_iter: int | None
) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clipped = sigma_clip(
            stack, sigma=n_sigma, maxiters=n_iter, cenfunc="median", stdfunc="std", axis=0, masked=False
        )
        mean = np.nanmean(clipped.astype(np.float64), axis=0)
    return mean, np.isfinite(clipped).sum(axis=0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 17, 33, 64, 70])
def test_sorting_network_sorts(n: int) -> None:
    values = np.random.default_rng(n).random((50, n))
    for a, b in sorting_network(n):
        low = np.minimum(values[:, a], values[:, b])
        values[:, b] = np.maximum(values[:, a], values[:, b])
        values[:, a] = low
    assert np.all(np.diff(values, axis=1) >= 0)


@pytest.mark.parametrize("n", [5, 20, 41])
def test_astropy_definition_matches_astropy(n: int) -> None:
    stack = _stack(n, seed=n)
    result = clip_stack(stack, method="astropy")
    mean, n_kept = _astropy_reference(stack, 3.0, 3)
    np.testing.assert_array_equal(result.n_kept, n_kept)
    kept = n_kept > 0
    assert np.array_equal(np.isfinite(result.mean), kept)
    np.testing.assert_allclose(result.mean[kept], mean[kept], rtol=1e-5)
    assert result.n_kept[2, 3] == 0 and result.kept_index[2, 3] == -1


def test_astropy_definition_other_sigma_and_iterations() -> None:
    stack = _stack(12, seed=7, nan_fraction=0.0)
    for n_sigma, n_iter in [(2.0, 1), (2.5, 5), (1.5, -1)]:
        result = clip_stack(stack, method="astropy", n_sigma=n_sigma, n_iter=n_iter)
        mean, n_kept = _astropy_reference(stack, n_sigma, None if n_iter == -1 else n_iter)
        np.testing.assert_array_equal(result.n_kept, n_kept)
        kept = n_kept > 0
        np.testing.assert_allclose(result.mean[kept], mean[kept], rtol=1e-5)


@pytest.mark.parametrize("n", [3, 20, 50])
def test_afw_definition_matches_numpy_reference(n: int) -> None:
    stack = _stack(n, seed=100 + n)
    result = clip_stack(stack, method="afw")
    mean, variance, n_kept = _afw_reference(stack, 3.0, 3)
    np.testing.assert_array_equal(result.n_kept, n_kept)
    np.testing.assert_allclose(result.mean, mean, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(result.variance, variance, rtol=1e-6, equal_nan=True)
    assert result.n_kept[2, 3] == 0 and np.isnan(result.mean[2, 3])


def test_scales_are_applied_like_numpy_divide() -> None:
    stack = _stack(8, seed=3)
    scales = np.linspace(0.7, 1.9, 8)
    scaled = np.empty_like(stack)
    for i, s in enumerate(scales):
        np.divide(stack[i], s, out=scaled[i], casting="unsafe")
    direct = clip_stack(stack, scales=scales)
    reference = clip_stack(scaled)
    np.testing.assert_array_equal(direct.mean, reference.mean)
    np.testing.assert_array_equal(direct.n_kept, reference.n_kept)


def test_strided_view_is_accepted() -> None:
    stack = _stack(6, shape=(12, 150), seed=4)
    view = stack[:, 3:8]
    np.testing.assert_array_equal(clip_stack(view).mean, clip_stack(np.ascontiguousarray(view)).mean)


def test_all_bad_pixels_and_small_stacks() -> None:
    stack = np.full((4, 2, 3), np.nan, dtype=np.float32)
    stack[:, 1, 2] = [1.0, 2.0, np.nan, 3.0]
    for method in ("afw", "astropy"):
        result = clip_stack(stack, method=method)
        assert np.all(result.n_kept[0] == 0) and np.all(np.isnan(result.mean[0]))
        assert result.n_kept[1, 2] == 3 and result.mean[1, 2] == pytest.approx(2.0)
        assert result.variance[1, 2] == pytest.approx(1.0)

    one = np.array([[[5.0, np.nan]]], dtype=np.float32)
    for method in ("afw", "astropy"):
        result = clip_stack(one, method=method)
        assert result.n_kept.tolist() == [[1, 0]]
        assert result.mean[0, 0] == 5.0 and np.isnan(result.variance[0, 0])
        assert result.kept_index[0, 0] == 0

    two = np.array([[[5.0, 1.0]], [[7.0, np.nan]]], dtype=np.float32)
    for method in ("afw", "astropy"):
        result = clip_stack(two, method=method)
        assert result.n_kept.tolist() == [[2, 1]]
        assert result.mean[0, 0] == 6.0 and result.variance[0, 0] == pytest.approx(2.0)
        assert result.mean[0, 1] == 1.0 and result.kept_index[0, 1] == 0


def test_rejects_bad_arguments() -> None:
    stack = np.zeros((2, 2, 2), dtype=np.float32)
    with pytest.raises(ValueError):
        clip_stack(stack, method="median")
    with pytest.raises(TypeError):
        clip_stack(stack.astype(np.float64))
    with pytest.raises(ValueError):
        clip_stack(stack[0])
    with pytest.raises(ValueError):
        clip_stack(stack, scales=np.ones(3))


@pytest.mark.parametrize("nan_fraction", [0.0, 0.02])
def test_wide_rows_full_tiles_chunks_and_tail(nan_fraction: float) -> None:
    # Wider than one row chunk (32 tiles at N = 7): full tiles, complete tiles (no NaN) and a tail.
    stack = _stack(7, shape=(3, 32 * 128 + 130), seed=11, nan_fraction=nan_fraction)
    scales = np.linspace(0.8, 1.3, 7)
    scaled = np.empty_like(stack)
    for i, s in enumerate(scales):
        np.divide(stack[i], s, out=scaled[i], casting="unsafe")
    result = clip_stack(stack, scales=scales)
    mean, variance, n_kept = _afw_reference(scaled, 3.0, 3)
    np.testing.assert_array_equal(result.n_kept, n_kept)
    np.testing.assert_allclose(result.mean, mean, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(result.variance, variance, rtol=1e-6, equal_nan=True)
    view = clip_stack(stack[:, 1:], method="astropy")
    ref_mean, ref_n = _astropy_reference(stack[:, 1:], 3.0, 3)
    np.testing.assert_array_equal(view.n_kept, ref_n)
    kept = ref_n > 0
    np.testing.assert_allclose(view.mean[kept], ref_mean[kept], rtol=1e-5)


def test_any_strides_read_in_place_or_copied() -> None:
    # Row strips (as the generator passes), reversed rows, a column step, transposed planes and
    # reversed planes: the same result as the contiguous copy.
    stack = _stack(5, shape=(6, 300), seed=12)
    for view in (stack[:, 1:4], stack[:, ::-1], stack[:, :, ::3], stack.transpose(0, 2, 1), stack[::-1]):
        for method in ("afw", "astropy"):
            got = clip_stack(view, method=method)
            want = clip_stack(np.ascontiguousarray(view), method=method)
            np.testing.assert_array_equal(got.mean, want.mean)
            np.testing.assert_array_equal(got.kept_index, want.kept_index)
    assert clip_stack(stack[:, :0]).mean.shape == (0, 300)


@pytest.mark.parametrize("n", [9, 20, 50])
def test_afw_complete_tiles_match_reference_including_long_tails(n: int) -> None:
    # No bad input: the passes run on the sorted tails in registers. Some pixels get more
    # outliers on one side than the tails hold (TAIL + 2 hot values), some all but two values
    # hot, some a constant value: those are recomputed by the scalar code.
    stack = _stack(n, shape=(6, 300), seed=200 + n, nan_fraction=0.0)
    stack[: TAIL + 2, 1, :40] += np.float32(3000.0)
    stack[2:, 4, 10:20] = np.float32(50000.0)
    stack[:, 5, 50:60] = np.float32(7.0)
    result = clip_stack(stack, method="afw")
    mean, variance, n_kept = _afw_reference(stack, 3.0, 3)
    np.testing.assert_array_equal(result.n_kept, n_kept)
    np.testing.assert_allclose(result.mean, mean, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(result.variance, variance, rtol=1e-6, atol=1e-9, equal_nan=True)
    if n == 50:  # 12 % hot: the quartiles stay clean and more than TAIL values go on one side
        assert np.all(result.n_kept[1, :40] <= n - TAIL - 2)
    assert np.all(result.mean[5, 50:60] == 7.0) and np.all(result.variance[5, 50:60] == 0.0)


def test_register_network_for_large_frames_matches_reference() -> None:
    # A frame of REGISTER_NETWORK_MIN_PIXELS pixels sorts with the network written out for N.
    n = 12
    assert network_address(n, wait=True) != 0
    assert network_address(8, wait=True) == 0
    rows = REGISTER_NETWORK_MIN_PIXELS // 1024
    stack = _stack(n, shape=(rows, 1024), seed=31, nan_fraction=0.0)
    stack[:, 7, 100] = np.nan
    result = clip_stack(stack, method="afw")
    mean, variance, n_kept = _afw_reference(stack, 3.0, 3)
    np.testing.assert_array_equal(result.n_kept, n_kept)
    np.testing.assert_allclose(result.mean, mean, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(result.variance, variance, rtol=1e-6, equal_nan=True)


def test_register_network_compiles_in_the_background() -> None:
    # The first request starts the compiler and answers "none yet": the kernel sorts from the table.
    assert network_address(10) == 0
    assert network_address(10, wait=True) != 0
    assert network_address(10) == network_address(10, wait=True)


def test_register_networks_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPFLOW_REGISTER_NETWORKS", "0")
    assert network_address(13, wait=True) == 0


def test_float32_outputs_variance_of_mean_and_counts() -> None:
    stack = _stack(8, shape=(5, 200), seed=41, nan_fraction=0.0)  # pixel (2, 3) has no value
    stack[1:, 0, 0] = np.nan  # one value kept
    reference = clip_stack(stack)
    shape = stack.shape[1:]
    out = ClipResult(
        np.empty(shape, dtype=np.float32),
        np.empty(shape, dtype=np.float32),
        np.empty(shape, dtype=np.int16),
        np.empty(shape, dtype=np.int16),
    )
    result = clip_stack(stack, out=out, variance_of_mean=True)
    np.testing.assert_array_equal(result.mean, reference.mean.astype(np.float32))
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = (reference.variance / reference.n_kept).astype(np.float32)
    np.testing.assert_array_equal(result.variance, expected)
    np.testing.assert_array_equal(result.n_kept, reference.n_kept)
    assert result.n_empty == int((reference.n_kept == 0).sum()) == 1
    assert result.n_single == int((reference.n_kept == 1).sum()) >= 1
    assert result.kept_index[0, 0] == 0
    assert np.all(result.kept_index[reference.n_kept != 1] == -1)

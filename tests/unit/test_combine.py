"""Tests of the per-pixel clipped-mean combine."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from services.generator.combine import (
    combine_clipped_mean,
    prepare_combine,
    provenance_header,
    qa_percentiles,
)
from shared.images import CalibImage, MaskPlane
from shared.stats import clipped_stats

SHAPE = (30, 40)
N_FRAMES = 20
NOISE = 5.0


def _truth() -> np.ndarray:
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return (1000.0 + 3.0 * x + 0.5 * y).astype(np.float32)


def _stack(
    seed: int = 0, scales: np.ndarray | None = None
) -> tuple[list[CalibImage], list[tuple[int, int, int]]]:
    rng = np.random.default_rng(seed)
    truth = _truth()
    frames = []
    for i in range(N_FRAMES):
        scale = 1.0 if scales is None else scales[i]
        image = (truth + rng.normal(0.0, NOISE, SHAPE)).astype(np.float32) * np.float32(scale)
        frames.append(
            CalibImage(
                image=image,
                mask=np.zeros(SHAPE, dtype=np.int32),
                variance=np.full(SHAPE, NOISE**2 * scale**2, dtype=np.float32),
            )
        )
    cosmic_rays = [
        (i, int(rng.integers(SHAPE[0])), int(rng.integers(SHAPE[1]))) for i in range(0, N_FRAMES, 3)
    ]
    for i, y, x in cosmic_rays:
        frames[i].image[y, x] += 5_000.0 * (1.0 if scales is None else scales[i])
    return frames, cosmic_rays


def test_combined_within_expected_error_and_outliers_removed() -> None:
    frames, cosmic_rays = _stack()
    result = combine_clipped_mean(frames)
    truth = _truth()
    error = NOISE / np.sqrt(N_FRAMES)
    diff = result.image.image - truth
    assert np.abs(diff).max() < 5 * error
    assert abs(diff.mean()) < 3 * error / np.sqrt(diff.size)
    assert diff.std() == pytest.approx(error, rel=0.15)
    for _, y, x in cosmic_rays:
        assert abs(diff[y, x]) < 5 * error
        assert result.n_good[y, x] <= N_FRAMES - 1
    assert result.n_inputs == N_FRAMES
    assert result.n_good.dtype == np.int16
    assert np.median(result.n_good) >= N_FRAMES - 1
    # Output variance = clipped variance / n_kept ≈ sigma²/N.
    assert np.median(result.image.variance) == pytest.approx(error**2, rel=0.15)
    assert not result.image.mask.any()


def test_scales_divide_inputs() -> None:
    scales = np.linspace(0.5, 3.0, N_FRAMES)
    frames, _ = _stack(seed=1, scales=scales)
    result = combine_clipped_mean(frames, scales=list(scales))
    assert np.abs(result.image.image - _truth()).max() < 5 * NOISE / np.sqrt(N_FRAMES)
    with pytest.raises(ValueError):
        combine_clipped_mean(frames, scales=[1.0])


def test_masked_pixels_rejected_and_all_masked_is_bad() -> None:
    frames, _ = _stack(seed=2)
    for frame in frames:
        frame.mask[3, 4] = MaskPlane.SAT
    for frame in frames[:5]:
        frame.image[10, 10] = 1e6
        frame.mask[10, 10] = MaskPlane.DETECTED
        frame.image[11, 11] = np.nan  # non-finite inputs are dropped too
    frames[0].mask[12, 12] = MaskPlane.CR  # not in the default reject mask
    result = combine_clipped_mean(frames)
    image, mask = result.image.image, result.image.mask
    assert result.n_good[3, 4] == 0
    assert mask[3, 4] == MaskPlane.BAD
    good = np.ones(SHAPE, dtype=bool)
    good[3, 4] = False
    assert image[3, 4] == pytest.approx(np.median(image[good]))
    assert np.count_nonzero(mask) == 1
    assert result.n_good[10, 10] <= N_FRAMES - 5
    assert abs(image[10, 10] - _truth()[10, 10]) < 5 * NOISE / np.sqrt(N_FRAMES - 5)
    assert result.n_good[11, 11] <= N_FRAMES - 5 and np.isfinite(image[11, 11])
    frames[0].mask[12, 12] = 0
    assert combine_clipped_mean(frames).n_good[12, 12] == result.n_good[12, 12]
    frames[0].mask[12, 12] = MaskPlane.CR
    with_cr = combine_clipped_mean(frames, reject_mask=MaskPlane.CR)
    assert with_cr.n_good[12, 12] <= N_FRAMES - 1


def test_strip_size_does_not_change_result() -> None:
    frames, _ = _stack(seed=3)
    small = combine_clipped_mean(frames, rows_per_strip=7)
    large = combine_clipped_mean(frames, rows_per_strip=200)
    np.testing.assert_array_equal(small.image.image, large.image.image)
    np.testing.assert_array_equal(small.image.variance, large.image.variance)
    np.testing.assert_array_equal(small.n_good, large.n_good)


def test_strip_readers_match_calib_images() -> None:
    frames, _ = _stack(seed=4)

    def reader(frame: CalibImage):
        return lambda rows: (frame.image[rows], frame.mask[rows])

    direct = combine_clipped_mean(frames)
    lazy = combine_clipped_mean([reader(f) for f in frames], shape=SHAPE, rows_per_strip=9)
    np.testing.assert_array_equal(direct.image.image, lazy.image.image)
    with pytest.raises(ValueError):
        combine_clipped_mean([reader(f) for f in frames])  # shape unknown


def test_matches_reference_implementation() -> None:
    rng = np.random.default_rng(5)
    scales = rng.uniform(0.8, 1.2, N_FRAMES)
    frames, _ = _stack(seed=5, scales=scales)
    reject = MaskPlane.SAT | MaskPlane.DETECTED | MaskPlane.INTRP
    for frame in frames:
        bad = rng.random(SHAPE) < 0.1
        frame.mask[bad] = rng.choice([int(MaskPlane.SAT), int(MaskPlane.CR), int(MaskPlane.INTRP)], bad.sum())
        heavy = rng.random(SHAPE) < 0.05
        frame.image[heavy] += rng.normal(0.0, 200.0, heavy.sum()).astype(np.float32)
    result = combine_clipped_mean(frames, scales=list(scales), rows_per_strip=11)

    pixels = [
        (int(y), int(x))
        for y, x in zip(rng.integers(0, SHAPE[0], 40), rng.integers(0, SHAPE[1], 40), strict=True)
    ]
    for y, x in pixels:
        values = np.array([f.image[y, x] / s for f, s in zip(frames, scales, strict=True)], dtype=np.float32)
        masked = np.array([(f.mask[y, x] & reject) != 0 for f in frames])
        ref = clipped_stats(values, n_sigma=3.0, n_iter=3, mask=masked)
        assert result.image.image[y, x] == pytest.approx(ref.mean, rel=1e-5)
        assert result.n_good[y, x] == ref.n_used
        assert result.image.variance[y, x] == pytest.approx(ref.variance / ref.n_used, rel=1e-4)


def test_single_kept_input_uses_its_variance() -> None:
    frames, _ = _stack(seed=6)
    for i, frame in enumerate(frames):
        frame.variance[7, 7] = 100.0 + i
        if i != 4:
            frame.mask[7, 7] = MaskPlane.INTRP
    result = combine_clipped_mean(frames, scales=[2.0] * N_FRAMES)
    assert result.n_good[7, 7] == 1
    assert result.image.image[7, 7] == pytest.approx(frames[4].image[7, 7] / 2.0)
    assert result.image.variance[7, 7] == pytest.approx(104.0 / 4.0)
    assert result.image.mask[7, 7] == 0


def test_provenance_and_qa() -> None:
    inputs = [
        {"exposure": 2024010100010 + i, "date": f"2024-01-01T00:0{i}:00", "exposure_time": 0.0, "scale": 1.0}
        for i in range(3)
    ]
    header = provenance_header(inputs, "bias", 3)
    assert header["OBSTYPE"] == "BIAS"
    assert header["NCOMBINE"] == 3
    assert header["CPP_INPUT_2"] == 2024010100012
    assert header["CPP_INPUT_DATE_1"] == "2024-01-01T00:01:00"
    assert header["CPP_INPUT_EXPT_0"] == 0.0
    assert header["CPP_INPUT_SCALE_0"] == 1.0
    assert header["CALIB_CREATION_DATETIME"].endswith("+00:00")
    fits.PrimaryHDU(header=header).header.tostring()  # valid FITS

    image = CalibImage.empty((4, 6))
    image.image[:] = np.arange(24, dtype=np.float32).reshape(4, 6)
    image.mask[0, 0] = MaskPlane.BAD
    boxes = {"C10": (slice(0, 4), slice(0, 3)), "C11": (slice(0, 4), slice(3, 6))}
    qa = qa_percentiles(image, boxes, "bias")
    assert qa["LSST CALIB BIAS C10 BADPIX-NUM"] == 1
    assert qa["LSST CALIB BIAS C11 BADPIX-NUM"] == 0
    assert qa["LSST CALIB BIAS C10 DISTRIBUTION 0-PCT"] == 1.0
    assert qa["LSST CALIB BIAS C11 DISTRIBUTION 100-PCT"] == 23.0
    assert qa["LSST CALIB BIAS C11 DISTRIBUTION 50-PCT"] == pytest.approx(np.median(image.image[:, 3:]))
    assert len(qa) == 2 * 8
    for key, value in qa.items():
        header[f"HIERARCH {key}"] = value


def test_inputs_past_the_memory_budget_are_spilled_and_combine_the_same() -> None:
    from services.generator.generation import ScratchInputs, unflag_persistent_cosmic_rays

    rng = np.random.default_rng(5)
    images = []
    for _ in range(6):
        image = CalibImage(
            image=rng.normal(100.0, 5.0, (64, 48)).astype(np.float32),
            mask=np.zeros((64, 48), dtype=np.int32),
            variance=np.full((64, 48), 25.0, dtype=np.float32),
        )
        image.mask[10, 10] |= int(MaskPlane.CR)  # "persistent": a hot pixel, not a cosmic ray
        images.append(image)
    images[0].mask[20, 5] |= int(MaskPlane.CR)  # a real cosmic ray, on one input only
    in_ram = combine_clipped_mean(images).image
    one_input_mb = (64 * 48 * 12) / 2**20
    with ScratchInputs(budget_mb=2.5 * one_input_mb) as scratch:
        kept = [scratch.keep(image) for image in images]
        assert scratch.n_spilled == 4
        assert isinstance(kept[-1].image, np.memmap) and kept[0] is images[0]
        unflag_persistent_cosmic_rays(kept)
        assert not any(k.mask[10, 10] & MaskPlane.CR for k in kept)
        assert kept[0].mask[20, 5] & MaskPlane.CR
        spilled = combine_clipped_mean(kept).image
    np.testing.assert_array_equal(spilled.image, in_ram.image)
    np.testing.assert_array_equal(spilled.variance, in_ram.variance)


def test_prepare_combine_starts_the_network_only_for_large_strips() -> None:
    from shared import clipnetworks

    prepare_combine(14, (200, 300))  # strips of 128 x 300 pixels sort from the table
    assert 14 not in clipnetworks._WORKERS
    prepare_combine(15, (4000, 4072))  # strips of 128 x 4072 pixels use the network for N = 15
    assert 15 in clipnetworks._WORKERS
    assert clipnetworks.network_address(15, wait=True) != 0

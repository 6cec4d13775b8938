"""Tests of the ISR for calibration inputs, on synthetic raw amplifiers built from the geometry."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from services.acquirer.camera import ExposureRequest
from services.acquirer.simulated_camera import SimulatedCamera
from shared.images import CalibImage, MaskPlane, RawDetectorImage
from shared.instruments import AmplifierGeometry, Detector, get_instrument
from shared.isr import (
    SMOOTH,
    IsrConfig,
    assemble,
    fit_overscan_levels,
    parallel_overscan_per_column,
    run_isr,
    serial_overscan_per_row,
)
from shared.rawformat import read_raw

ROWS, COLS = 20, 16
BIAS_LEVEL = 1000.0
NOISE_ADU = 1.0


@pytest.fixture(scope="module")
def detector() -> Detector:
    return get_instrument("LATISS").detector(0).with_data_shape(ROWS, COLS)


def _header(dark_time: float = 1.0) -> fits.Header:
    header = fits.Header()
    header["IMGTYPE"] = "BIAS"
    header["EXPTIME"] = 0.0
    header["DARKTIME"] = dark_time
    header["EXPID"] = 2024010100001
    return header


def _raw_amp(
    amp: AmplifierGeometry,
    rng: np.random.Generator,
    *,
    row_offset: np.ndarray | None = None,
    column_signal: np.ndarray | None = None,
    column_bias: np.ndarray | None = None,
    noise: float = NOISE_ADU,
) -> np.ndarray:
    """Raw amplifier in ADU: bias + per-row offset everywhere, signal in the data section."""
    raw = BIAS_LEVEL + rng.normal(0.0, noise, (amp.raw_rows, amp.raw_cols))
    if row_offset is not None:
        raw += row_offset[:, None]
    data_cols = amp.data_slice[1]
    if column_signal is not None:
        raw[amp.data_slice] += column_signal[None, :]
    if column_bias is not None:
        # A bias column pattern is in the data rows and in the parallel overscan rows.
        raw[:, data_cols] += column_bias[None, :]
    return raw


def _oriented(values: np.ndarray, amp: AmplifierGeometry) -> np.ndarray:
    if amp.flip_y:
        values = values[::-1, :]
    if amp.flip_x:
        values = values[:, ::-1]
    return values


def test_row_offsets_removed_column_pattern_kept(detector: Detector) -> None:
    rng = np.random.default_rng(1)
    patterns: dict[str, np.ndarray] = {}
    amps: dict[str, np.ndarray] = {}
    for amp in detector.amplifiers:
        a = amp
        row_offset = 50.0 * np.sin(np.arange(a.raw_rows) / 3.0) + rng.uniform(-20, 20, a.raw_rows)
        patterns[amp.name] = rng.uniform(100.0, 500.0, a.data_cols)
        amps[amp.name] = _raw_amp(a, rng, row_offset=row_offset, column_signal=patterns[amp.name])
    raw = RawDetectorImage(header=_header(), amplifiers=amps)
    result = run_isr(raw, detector)

    image = result.image.image
    assert image.shape == detector.shape == (2 * ROWS, 8 * COLS)
    residuals = []
    for amp in detector.amplifiers:
        expected = np.broadcast_to(patterns[amp.name] * amp.gain, (ROWS, COLS))
        box = result.amp_boxes[amp.name]
        assert box == amp.detector_slice
        residuals.append(image[box] - _oriented(expected, amp))
    residual = np.concatenate([r.ravel() for r in residuals])
    noise_e = NOISE_ADU * 1.1
    # Per pixel: the data noise plus small errors of the row and column medians.
    assert np.abs(residual).max() < 6 * noise_e
    assert abs(residual.mean()) < 0.1
    assert residual.std() == pytest.approx(noise_e, rel=0.2)
    for amp in detector.amplifiers:
        assert result.overscan_noise_adu[amp.name] == pytest.approx(NOISE_ADU, rel=0.1)
        key = f"LSST ISR OVERSCAN RESIDUAL SERIAL STDEV {amp.name}"
        assert result.image.header[key] == pytest.approx(result.overscan_noise_adu[amp.name])
    assert result.image.header["EXPID"] == 2024010100001
    assert not result.image.mask.any()
    # Variance in e⁻: Poisson of the signal plus the read noise squared.
    amp = detector.amplifiers[0]
    expected_var = np.maximum(image[amp.detector_slice], 0) + amp.read_noise**2
    np.testing.assert_allclose(result.image.variance[amp.detector_slice], expected_var, rtol=1e-5)


def test_serial_overscan_fit_rejects_outliers_and_fills_rows(detector: Detector) -> None:
    rng = np.random.default_rng(2)
    amp = detector.amplifiers[0]
    row_offset = rng.uniform(-30, 30, amp.raw_rows)
    raw = _raw_amp(amp, rng, row_offset=row_offset, noise=0.5)
    over_cols = amp.serial_overscan_slice[1]
    raw[5, over_cols.start + 10 : over_cols.start + 14] = 60_000.0  # hot pixels in one row
    raw[8, over_cols] = np.nan  # an unusable row
    fit = serial_overscan_per_row(raw, amp)
    assert fit.shape == (ROWS,)
    truth = BIAS_LEVEL + row_offset[:ROWS]
    good = np.arange(ROWS) != 8
    np.testing.assert_allclose(fit[good], truth[good], atol=0.5)
    neighbours = truth[3:14][np.arange(3, 14) != 8]
    assert fit[8] == pytest.approx(np.median(neighbours), abs=0.5)
    all_rows = serial_overscan_per_row(raw, amp, include_parallel_rows=True)
    assert all_rows.shape == (amp.raw_rows,)
    np.testing.assert_array_equal(all_rows[:ROWS], fit)
    with pytest.raises(ValueError):
        serial_overscan_per_row(raw, amp, leading_to_skip=40, trailing_to_skip=30)


def test_parallel_overscan_removes_bias_column_pattern(detector: Detector) -> None:
    rng = np.random.default_rng(3)
    column_bias = {a.name: rng.uniform(-15.0, 15.0, COLS) for a in detector.amplifiers}
    amps = {a.name: _raw_amp(a, rng, column_bias=column_bias[a.name], noise=0.5) for a in detector.amplifiers}
    raw = RawDetectorImage(header=_header(), amplifiers=amps)

    corrected = run_isr(raw, detector).image.image
    assert np.abs(corrected).max() < 6 * 0.5 * 1.1

    uncorrected = run_isr(raw, detector, config=IsrConfig(do_parallel_overscan=False)).image.image
    for amp in detector.amplifiers:
        expected = np.broadcast_to(column_bias[amp.name] * amp.gain, (ROWS, COLS))
        got = uncorrected[amp.detector_slice] - _oriented(expected, amp)
        # The serial fit absorbs the mean of the column pattern.
        assert np.abs(got - got.mean()).max() < 6 * 0.5 * 1.1

    amp = detector.amplifiers[0]
    serial = serial_overscan_per_row(amps[amp.name], amp, include_parallel_rows=True)
    columns = parallel_overscan_per_column(amps[amp.name] - serial[:, None], amp)
    assert columns.shape == (COLS,)
    np.testing.assert_allclose(
        columns - columns.mean(), column_bias[amp.name] - column_bias[amp.name].mean(), atol=0.5
    )


def test_flips_place_marked_pixel(detector: Detector) -> None:
    arrays = {a.name: np.zeros((a.raw_rows, a.raw_cols)) for a in detector.amplifiers}
    r, c = 2, 3
    for amp in detector.amplifiers:
        arrays[amp.name][r, amp.prescan_cols + c] = amp.index + 1
    assembled = assemble(arrays, detector)
    assert assembled.shape == detector.shape
    assert np.count_nonzero(assembled) == len(detector.amplifiers)
    # DM's camera geometry (ITL): C1x in the top row, flipped in x and y; C0x in the bottom row,
    # flipped in x only; Cxy at column y.
    c10 = detector.amplifier("C10")
    assert c10.flip_x and c10.flip_y and (c10.x0, c10.y0) == (0, ROWS)
    assert assembled[c10.y0 + ROWS - 1 - r, c10.x0 + COLS - 1 - c] == c10.index + 1
    c01 = detector.amplifier("C01")
    assert c01.flip_x and not c01.flip_y and (c01.x0, c01.y0) == (COLS, 0)
    assert assembled[r, c01.x0 + COLS - 1 - c] == c01.index + 1
    # C17 is top right and read from the top-right corner: its first pixel lands at the detector's corner.
    c17 = detector.amplifier("C17")
    arrays[c17.name][0, c17.prescan_cols] = 99.0
    assert assemble(arrays, detector)[-1, -1] == 99.0

    # Through run_isr: a bright pixel in C01's readout coordinates.
    rng = np.random.default_rng(4)
    amps = {a.name: _raw_amp(a, rng, noise=0.1) for a in detector.amplifiers}
    amps["C01"][r, c01.prescan_cols + c] += 1000.0
    image = run_isr(RawDetectorImage(header=_header(), amplifiers=amps), detector).image.image
    peak = np.unravel_index(np.argmax(image), image.shape)
    assert peak == (r, c01.x0 + COLS - 1 - c)
    assert image[peak] == pytest.approx(1000.0 * c01.gain, rel=1e-3)


def test_saturation_masked(detector: Detector) -> None:
    rng = np.random.default_rng(5)
    amps = {a.name: _raw_amp(a, rng) for a in detector.amplifiers}
    c10 = detector.amplifier("C10")
    amps["C10"][4, c10.prescan_cols + 7] = c10.saturation
    c03 = detector.amplifier("C03")
    amps["C03"][0, c03.prescan_cols + 0] = c03.saturation + 5.0
    result = run_isr(RawDetectorImage(header=_header(), amplifiers=amps), detector)
    sat = (result.image.mask & MaskPlane.SAT) != 0
    assert sat.sum() == 2
    assert sat[c10.y0 + ROWS - 1 - 4, c10.x0 + COLS - 1 - 7]
    assert sat[c03.y0, c03.x0 + COLS - 1]
    off = run_isr(
        RawDetectorImage(header=_header(), amplifiers=amps), detector, config=IsrConfig(do_saturation=False)
    )
    assert not off.image.mask.any()


def test_calibrations_and_gains_applied(detector: Detector) -> None:
    rng = np.random.default_rng(6)
    signal = 400.0
    amps = {
        a.name: _raw_amp(a, rng, column_signal=np.full(COLS, signal), noise=0.0) for a in detector.amplifiers
    }
    raw = RawDetectorImage(header=_header(dark_time=10.0), amplifiers=amps)
    shape = detector.shape
    bias = CalibImage.empty(shape)
    bias.image[:] = 3.0
    bias.mask[0, 0] = MaskPlane.BAD
    dark = CalibImage.empty(shape, header={"DARKTIME": 1.0})
    dark.image[:] = 0.5  # e⁻/s, scaled by 10 s of dark time
    flat = CalibImage.empty(shape)
    flat.image[:] = 2.0
    flat.image[1, COLS + 1] = 0.0
    gains = {"C10": 2.0}
    result = run_isr(raw, detector, bias=bias, dark=dark, flat=flat, gains=gains)
    image, mask = result.image.image, result.image.mask
    c10 = detector.amplifier("C10")
    c11 = detector.amplifier("C11")
    box10 = image[c10.detector_slice].copy()
    box10[0, 0] = box10[0, 1]  # skip the BAD-masked corner
    np.testing.assert_allclose(box10, (signal * 2.0 - 3.0 - 5.0) / 2.0, rtol=1e-5)
    np.testing.assert_allclose(image[c11.detector_slice][2:, 2:], (signal * c11.gain - 8.0) / 2.0, rtol=1e-5)
    assert mask[0, 0] & MaskPlane.BAD
    assert np.isnan(image[1, COLS + 1]) and mask[1, COLS + 1] & MaskPlane.NO_DATA
    var = result.image.variance[c10.detector_slice][5, 5]
    assert var == pytest.approx((signal * 2.0 - 8.0 + c10.read_noise**2) / 4.0, rel=1e-5)

    adu = run_isr(raw, detector, config=IsrConfig(apply_gains=False))
    np.testing.assert_allclose(adu.image.image[c11.detector_slice], signal, rtol=1e-5)
    assert adu.image.header["BUNIT"] == "adu"

    with pytest.raises(ValueError):
        run_isr(raw, detector, bias=CalibImage.empty((3, 3)))
    with pytest.raises(KeyError):
        run_isr(RawDetectorImage(header=_header(), amplifiers={"C10": amps["C10"]}), detector)


def test_full_size_latiss_assembles_to_the_detector_shape() -> None:
    """Full-size frames go through (their speed is measured in bench/generation.py)."""
    detector = get_instrument("LATISS").detector(0)
    rng = np.random.default_rng(8)
    amps = {
        a.name: rng.normal(15_000.0, 6.0, (a.raw_rows, a.raw_cols)).astype(np.int32)
        for a in detector.amplifiers
    }
    result = run_isr(RawDetectorImage(header=_header(), amplifiers=amps), detector)
    assert result.image.image.shape == (4000, 4072)
    assert np.isfinite(result.image.image).all()


# --------------------------------------------------------------------------------------------------
# Overscan fits (issue 13): as little noise as the data allow, real structure kept

COMCAM_AMP = get_instrument("LSSTComCam").detector(1).with_data_shape(400, 100).amplifiers[0]
SIGMA_ADU = 4.0


def _serial_truth_and_raw(
    rng: np.random.Generator, *, jitter_adu: float, drift_adu: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    amp = COMCAM_AMP
    x = np.linspace(0.0, 1.0, amp.raw_rows)
    level = (
        BIAS_LEVEL + drift_adu * np.sin(2 * np.pi * 0.7 * x + 0.3) + rng.normal(0.0, jitter_adu, amp.raw_rows)
    )
    raw = np.rint(level[:, None] + rng.normal(0.0, SIGMA_ADU, (amp.raw_rows, amp.raw_cols)))
    return level, raw


def test_auto_serial_fit_keeps_row_jitter() -> None:
    """The simulator's per-exposure row jitter (1 ADU rms, white) is real structure: kept row by row."""
    rng = np.random.default_rng(20)
    amp = COMCAM_AMP
    n = amp.serial_overscan_cols - 6
    level, raw = _serial_truth_and_raw(rng, jitter_adu=1.0)
    fit = serial_overscan_per_row(raw, amp, include_parallel_rows=True)
    error = fit - level
    # The error is a per-row mean's (σ/√n, plus rounding), not the jitter the fit would leave if smoothed.
    assert np.std(error) < 1.15 * SIGMA_ADU / np.sqrt(n)
    assert np.std(error) < 0.6 * 1.0
    smoothed = fit_overscan_levels(raw[:, amp.serial_overscan_slice[1]][:, 3:-3], "AUTO")
    assert smoothed[1] == "MEAN_PER_ROW"
    # The mean beats IsrTaskLSST's median (variance π/2 larger, plus integer ties).
    median = serial_overscan_per_row(raw, amp, include_parallel_rows=True, fit="MEDIAN_PER_ROW")
    assert np.std(error) < 0.9 * np.std(median - level)


def test_auto_serial_fit_smooths_an_overscan_without_row_structure() -> None:
    rng = np.random.default_rng(21)
    amp = COMCAM_AMP
    n = amp.serial_overscan_cols - 6
    level, raw = _serial_truth_and_raw(rng, jitter_adu=0.0, drift_adu=1.0)
    fit, used = fit_overscan_levels(raw[:, amp.serial_overscan_slice[1]][:, 3:-3], "AUTO")
    assert used == SMOOTH
    # A cubic along 448 rows: ~ (4/448)^½ of a per-row mean's error.
    assert np.std(fit - level) < 0.3 * SIGMA_ADU / np.sqrt(n)


def test_auto_parallel_fit_smooths_flat_overscan_and_keeps_column_pattern(detector: Detector) -> None:
    rng = np.random.default_rng(22)
    flat = {a.name: _raw_amp(a, rng, noise=2.0) for a in detector.amplifiers}
    result = run_isr(RawDetectorImage(header=_header(), amplifiers=flat), detector)
    assert {f["parallel"] for f in result.overscan_fits.values()} == {SMOOTH}
    column_bias = {a.name: rng.uniform(-15.0, 15.0, COLS) for a in detector.amplifiers}
    patterned = {
        a.name: _raw_amp(a, rng, column_bias=column_bias[a.name], noise=0.5) for a in detector.amplifiers
    }
    result = run_isr(RawDetectorImage(header=_header(), amplifiers=patterned), detector)
    assert {f["parallel"] for f in result.overscan_fits.values()} == {"MEAN_PER_ROW"}
    assert np.abs(result.image.image).max() < 6 * 0.5 * 1.1


def test_simulated_camera_overscans_keep_rows_and_smooth_columns(tmp_path: Path) -> None:
    """Simulator frames: serial per row (its row jitter is real), parallel smooth (no column structure)."""
    cam = SimulatedCamera(
        get_instrument("LSSTComCam"),
        tmp_path / "raw",
        seed=4,
        amp_data_shape=(200, 64),
        state_dir=tmp_path / "s",
    )
    frame = asyncio.run(cam.take_image(ExposureRequest("BIAS", 0.0, cam.physical_filter), [1]))[0]
    raw = read_raw(frame.path, cam.instrument)
    result = run_isr(raw, cam.detector_geometry(1))
    assert {f["serial"] for f in result.overscan_fits.values()} == {"MEAN_PER_ROW"}
    assert {f["parallel"] for f in result.overscan_fits.values()} == {SMOOTH}


def test_unknown_overscan_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown overscan fit 'POLY'"):
        fit_overscan_levels(np.zeros((10, 10)), "POLY")

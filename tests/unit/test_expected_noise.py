"""The expected-noise rule of the NOISE tests matches the noise of simulated residuals (issue 13).

One `SimulatedCamera` (LSSTComCam detector 1, 16 amplifiers of 200 x 100, no gain spread so the
nominal read noise is the true one in ISR electrons) takes 50 biases and 50 darks for the
references and 3 new biases and darks; references of N = 5, 20 and 50 frames are combined as
the generator does, and the NOISE statistic of the new frames' residuals (what the verifier
measures) is compared with `services.verifier.expected_noise`.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest

from services.acquirer.camera import ExposureRequest
from services.acquirer.simulated_camera import SimulatedCamera
from services.generator.combine import combine_clipped_mean
from services.generator.generation import _mask_cosmic_rays, unflag_persistent_cosmic_rays
from services.verifier.expected_noise import (
    bias_residual_noise,
    clipped_mean_efficiency,
    dark_residual_noise,
    frame_noise,
)
from services.verifier.statistics import bias_amp_statistics
from shared.images import CalibImage, MaskPlane, RawDetectorImage
from shared.instruments import Detector, get_instrument
from shared.isr import run_isr
from shared.rawformat import read_raw
from shared.stats import clipped_stats

DETECTOR = 1
N_MAX = 50
N_TEST = 3
DARK_EXPTIME = 30.0
BIAS_REJECT = int(MaskPlane.DETECTED | MaskPlane.INTRP)
DARK_REJECT = int(MaskPlane.SAT | MaskPlane.DETECTED | MaskPlane.INTRP | MaskPlane.CR)


@dataclass
class Frames:
    cam: SimulatedCamera
    det: Detector
    biases: list[CalibImage]
    dark_raws: list[RawDetectorImage]
    test_biases: list[RawDetectorImage]
    test_darks: list[RawDetectorImage]
    short_darks: list[RawDetectorImage]


def _take(cam: SimulatedCamera, image_type: str, exptime: float) -> RawDetectorImage:
    request = ExposureRequest(image_type, exptime, cam.physical_filter)
    frame = asyncio.run(cam.take_image(request, [DETECTOR]))[0]
    return read_raw(frame.path, cam.instrument)


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Frames:
    out = tmp_path_factory.mktemp("expected_noise")
    cam = SimulatedCamera(
        get_instrument("LSSTComCam"),
        out / "raw",
        seed=9,
        amp_data_shape=(200, 100),
        state_dir=out / "state",
        clock=lambda: datetime(2026, 11, 28, 3, 15, tzinfo=UTC),
        gain_spread=0.0,
        compress=False,  # plain int32 segments: same pixels, written and read faster
    )
    det = cam.detector_geometry(DETECTOR)
    biases = [run_isr(_take(cam, "BIAS", 0.0), det).image for _ in range(N_MAX)]
    dark_raws = [_take(cam, "DARK", DARK_EXPTIME) for _ in range(N_MAX)]
    test_biases = [_take(cam, "BIAS", 0.0) for _ in range(N_TEST)]
    test_darks = [_take(cam, "DARK", DARK_EXPTIME) for _ in range(N_TEST)]
    short_darks = [_take(cam, "DARK", DARK_EXPTIME / 2) for _ in range(N_TEST)]
    return Frames(cam, det, biases, dark_raws, test_biases, test_darks, short_darks)


def _references(frames: Frames, n: int) -> tuple[CalibImage, CalibImage, list[float]]:
    bias = combine_clipped_mean(frames.biases[:n], reject_mask=BIAS_REJECT).image
    boxes = {a.name: a.detector_slice for a in frames.det.amplifiers}
    darks, times = [], []
    for raw in frames.dark_raws[:n]:
        image = run_isr(raw, frames.det, bias=bias).image
        _mask_cosmic_rays(image, boxes)
        darks.append(image)
        times.append(raw.dark_time)
    unflag_persistent_cosmic_rays(darks)
    dark = combine_clipped_mean(darks, scales=times, reject_mask=DARK_REJECT).image
    dark.header["DARKTIME"] = 1.0
    return bias, dark, times


def _ratios(
    frames: Frames, raws: list[RawDetectorImage], expected: dict[str, float], **calibs: CalibImage
) -> float:
    """Median over amplifiers and frames of measured NOISE / expected noise."""
    ratios = []
    for raw in raws:
        result = run_isr(raw, frames.det, **calibs)
        stats = bias_amp_statistics(result.image, result.amp_boxes)
        assert {f["serial"] for f in result.overscan_fits.values()} == {"MEAN_PER_ROW"}
        ratios.extend(stats[amp]["NOISE"] / expected[amp] for amp in stats)
    return float(np.median(ratios))


def _serial_pixels(frames: Frames) -> int:
    return frames.det.amplifiers[0].serial_overscan_cols - 6


@pytest.mark.parametrize("n", [5, 20, 50])
def test_expected_noise_matches_simulated_residuals(frames: Frames, n: int) -> None:
    bias, dark, times = _references(frames, n)
    n_s = _serial_pixels(frames)
    amps = frames.det.amplifiers
    expected_bias = {a.name: bias_residual_noise(a.read_noise, n, serial_pixels=n_s) for a in amps}
    ratio = _ratios(frames, frames.test_biases, expected_bias, bias=bias)
    assert ratio == pytest.approx(1.0, abs=0.01), ("bias", n, ratio)

    current = {
        a.name: clipped_stats(dark.image[a.detector_slice], 3.0, 3).mean for a in amps
    }  # e⁻/s, as the verifier measures it on the reference dark
    for raws in (frames.test_darks, frames.short_darks):
        t = raws[0].dark_time
        expected_dark = {
            a.name: dark_residual_noise(
                a.read_noise,
                dark_time=t,
                reference_dark_times=times,
                n_bias=n,
                dark_current=current[a.name],
                serial_pixels=n_s,
            )
            for a in amps
        }
        ratio = _ratios(frames, raws, expected_dark, bias=bias, dark=dark)
        assert ratio == pytest.approx(1.0, abs=0.01), ("dark", n, t, ratio)


def test_expected_noise_is_above_the_read_noise_by_the_reference_noise() -> None:
    """The rule's figures for the issue's case: N = 20, 58 serial-overscan pixels per row."""
    rn = 6.0
    k20 = clipped_mean_efficiency(20)
    assert 1.03 < k20 < 1.12
    assert bias_residual_noise(rn, 20) / rn == pytest.approx(math.sqrt(1 + k20 / 20))
    assert frame_noise(rn, 58) / rn == pytest.approx(math.sqrt(1 + 1 / 58))
    same_time = dark_residual_noise(rn, dark_time=30.0, reference_dark_times=[30.0] * 20, n_bias=20)
    assert same_time / rn == pytest.approx(math.sqrt(1 + k20 / 20))  # the bias cancels at equal dark times
    half_time = dark_residual_noise(rn, dark_time=15.0, reference_dark_times=[30.0] * 20, n_bias=20)
    assert half_time / rn == pytest.approx(math.sqrt(1 + 0.25 * k20 / 20 + 0.25 * k20 / 20))
    with pytest.raises(ValueError, match="at least one input"):
        bias_residual_noise(rn, 0)


def test_clipped_mean_efficiency_is_the_combines() -> None:
    """k(N) is what the generator's combine gives on Gaussian frames."""
    rng = np.random.default_rng(3)
    for n in (5, 20):
        stack = rng.standard_normal((n, 300, 300)).astype(np.float32)
        combined = combine_clipped_mean(stack).image.image.astype(np.float64)
        assert float(np.var(combined)) * n == pytest.approx(clipped_mean_efficiency(n), rel=0.03)

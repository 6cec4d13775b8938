"""Simulated scenes with a known truth, shared by the truth-recovery tests and their figures.

`build_truth_products` drives one `SimulatedCamera` (LATISS geometry, 16 amplifiers of 300 x 192
pixels, fixed seed) through biases, darks (with cosmic rays), flats and a photon-transfer series
of flat pairs, and builds each product with the per-amplifier pieces the generator's builders call.
``tests/unit/test_truth_recovery.py`` asserts limits on the errors; ``bench/truth_figures.py``
prints them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from services.acquirer.camera import ExposureRequest
from services.acquirer.simulated_camera import DEFAULT_FLAT_FLUX_E_PER_S, SimulatedCamera
from services.generator.combine import combine_clipped_mean
from services.generator.generation import _bias_in_adu, _mask_cosmic_rays, unflag_persistent_cosmic_rays
from services.generator.ptc import AmpPtc, PairMeasurement, extract_pair, pair_exposures, solve_ptc
from shared.images import CalibImage, MaskPlane, RawDetectorImage
from shared.instruments import Detector, get_instrument
from shared.isr import IsrConfig, run_isr
from shared.rawformat import read_raw
from shared.stats import clipped_stats

NOW = datetime(2026, 11, 28, 3, 15, 0, tzinfo=UTC)
SEED = 11
SHAPE = (300, 192)
N_BIAS = 10
N_DARK = 8
DARK_EXPTIME = 120.0
N_FLAT = 6
FLAT_EXPTIME = 15.0  # 30 000 e⁻ per pixel
PTC_LEVELS_E = (
    # low signal: read noise and gain
    40,
    150,
    600,
    1_200,
    2_500,
    5_000,
    10_000,
    15_000,
    20_000,
    30_000,
    45_000,
    60_000,
    # 2.5 % steps across the full wells (90–110 ke⁻ / amplifier response)
    86_000,
    88_000,
    90_500,
    93_000,
    95_500,
    98_000,
    100_500,
    103_000,
    105_500,
    108_000,
    111_000,
    # beyond full well everywhere
    125_000,
)
SERIAL_OVERSCAN_USED = 64 - 6
PARALLEL_OVERSCAN_USED = 48 - 6
CLIP_EFFICIENCY = 1.05
"""Allowance for the variance of a 3σ clipped mean of 6–10 Gaussian values (vs the plain mean)."""
DARK_REJECT = int(MaskPlane.SAT | MaskPlane.DETECTED | MaskPlane.INTRP | MaskPlane.CR)
BIAS_REJECT = int(MaskPlane.DETECTED | MaskPlane.INTRP)


@dataclass
class Products:
    camera: SimulatedCamera
    det: Detector
    truth: dict
    amp_boxes: dict[str, tuple[slice, slice]]
    bias: CalibImage
    dark: CalibImage
    dark_clip_only: CalibImage
    dark_time: float
    n_cosmic_rays: list[int]
    flat: CalibImage
    ptc: dict[str, AmpPtc]
    pairs: dict[str, list[PairMeasurement]]


def _take(cam: SimulatedCamera, image_type: str, exptime: float) -> RawDetectorImage:
    frame = asyncio.run(cam.take_image(ExposureRequest(image_type, exptime, "g"), [0]))[0]
    return read_raw(frame.path)


def _take_with_truth(cam: SimulatedCamera, image_type: str, exptime: float) -> tuple[RawDetectorImage, int]:
    """A frame and the number of cosmic rays injected into it (from its truth file)."""
    frame = asyncio.run(cam.take_image(ExposureRequest(image_type, exptime, "g"), [0]))[0]
    return read_raw(frame.path), int(SimulatedCamera.frame_truth(frame.path)["n_cosmic_rays"])


def build_truth_products(out: Path) -> Products:
    """Drive the camera once (biases, darks, flats, a PTC series) and build every product."""
    cam = SimulatedCamera(
        get_instrument("LATISS"),
        out / "raw",
        seed=SEED,
        amp_data_shape=SHAPE,
        state_dir=out / "state",
        clock=lambda: NOW,
        compress=False,  # plain int32 segments: same pixels, written and read faster
    )
    det = cam.detector_geometry(0)

    # Bias (build_bias): ISR in e⁻, clipped mean, no scaling.
    biases = [run_isr(_take(cam, "BIAS", 0.0), det).image for _ in range(N_BIAS)]
    amp_boxes = {a.name: a.detector_slice for a in det.amplifiers}
    bias = combine_clipped_mean(biases, reject_mask=BIAS_REJECT).image
    del biases

    # Dark (build_dark): bias-subtracted, cosmic rays flagged, each divided by its dark time.
    darks, dark_times, n_cr = [], [], []
    for _ in range(N_DARK):
        raw, cosmic_rays = _take_with_truth(cam, "DARK", DARK_EXPTIME)
        darks.append(run_isr(raw, det, bias=bias).image)
        dark_times.append(raw.dark_time)
        n_cr.append(cosmic_rays)
    for image in darks:
        _mask_cosmic_rays(image, amp_boxes)
    unflag_persistent_cosmic_rays(darks)
    dark = combine_clipped_mean(darks, scales=dark_times, reject_mask=DARK_REJECT).image
    dark.header["DARKTIME"] = 1.0
    # The same darks combined without the cosmic-ray mask (the 3σ clip alone rejects them).
    dark_clip_only = combine_clipped_mean(
        darks, scales=dark_times, reject_mask=DARK_REJECT & ~MaskPlane.CR
    ).image
    del darks

    # Flat (build_flat, one detector): bias- and dark-corrected, each divided by its clipped mean.
    flats, scales = [], []
    for _ in range(N_FLAT):
        image = run_isr(_take(cam, "FLAT", FLAT_EXPTIME), det, bias=bias, dark=dark).image
        flats.append(image)
        scales.append(clipped_stats(image.image[image.mask == 0], 3.0, 3).mean)
    flat = combine_clipped_mean(
        flats, scales=scales, reject_mask=int(MaskPlane.SAT | MaskPlane.DETECTED | MaskPlane.INTRP)
    ).image
    del flats

    # PTC (_ptc_measurements + build_ptc): flat pairs in ADU minus the combined bias in ADU.
    bias_adu = _bias_in_adu(bias, det)
    adu = IsrConfig(apply_gains=False)
    images: dict[int, CalibImage] = {}
    times = []
    for level in PTC_LEVELS_E:
        exptime = level / DEFAULT_FLAT_FLUX_E_PER_S
        for _ in range(2):
            raw = _take(cam, "FLAT", exptime)
            assert raw.exposure_id is not None
            exp_id = raw.exposure_id
            images[exp_id] = run_isr(raw, det, config=adu, bias=bias_adu).image
            times.append((exp_id, raw.exposure_time))
    measurements: dict[str, list[PairMeasurement]] = {}
    for first, second in pair_exposures(times):
        pair = extract_pair(images.pop(first), images.pop(second), amp_boxes)
        for amp, measurement in pair.items():
            measurements.setdefault(amp, []).append(measurement)
    ptc = solve_ptc(measurements)

    return Products(
        camera=cam,
        det=det,
        truth=cam.truth(0),
        amp_boxes=amp_boxes,
        bias=bias,
        dark=dark,
        dark_clip_only=dark_clip_only,
        dark_time=float(np.mean(dark_times)),
        n_cosmic_rays=n_cr,
        flat=flat,
        ptc=ptc,
        pairs=measurements,
    )

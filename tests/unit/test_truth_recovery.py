"""The calibration science recovers the simulated camera's injected truth.

One `SimulatedCamera` (LATISS geometry, 16 amplifiers of 300 x 192 pixels, fixed seed) is
driven once per module: biases, darks (with cosmic rays), flats and a photon-transfer series of
flat pairs from low signal to beyond full well. The products are built with the per-amplifier
pieces the builders of `services.generator.generation` call (ISR, clipped-mean combine,
cosmic-ray masking, `find_defects`, `extract_pair`, `solve_ptc`) and compared with the truth
API of the camera (`truth`, `bias_structure_e`, `dark_current_map_e_per_s`, `flat_response`,
`defect_mask`).

Expected errors. A pixel of a combined product made of ``N`` inputs has the noise of one input
divided by sqrt(N) (times a small clipped-mean efficiency loss), plus the noise of the overscan
levels subtracted from every input: one serial-overscan median per row (``n_s`` = 58 pixels
after the 3 + 3 skipped) and one parallel-overscan median per column (``n_p`` = 42 rows), each
with variance ~ (π/2)·σ²/n. A dark also carries the error of the combined bias it was
corrected with (common to all darks, so not divided by the number of darks).

PTC turnoff. The simulator clips the collected charge at ``full_well_e`` and then applies the
amplifier nonlinearity ``ADU = e/g·(1 − k(e/FW)²)``, so the ADU plateau of a saturated flat is
``(1 − k)·FW/g``, which is the truth's ``turnoff_adu`` (~1–2 % below FW/g). The PTC is measured
in (not linearised) ADU and its turnoff is the largest mean of the PTC. The measured turnoff
sits a further ~2–4 % below the plateau: a pair is rejected as soon as the brightest few per
cent of its pixels (response spread of the amplifier: PRNU and vignetting) reach full well, and
the exposure levels near full well are 2.5 % apart.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from services.acquirer.camera import ExposureRequest
from services.acquirer.simulated_camera import DEFAULT_FLAT_FLUX_E_PER_S, SimulatedCamera
from services.generator.combine import combine_clipped_mean
from services.generator.defects import find_defects
from services.generator.generation import _bias_in_adu, _mask_cosmic_rays, unflag_persistent_cosmic_rays
from services.generator.ptc import (
    AmpPtc,
    PairMeasurement,
    extract_pair,
    gain_from_flat_pairs,
    pair_exposures,
    solve_ptc,
)
from shared.images import CalibImage, MaskPlane, RawDetectorImage
from shared.instruments import Detector, get_instrument
from shared.isr import IsrConfig, run_isr
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
    with fits.open(frame.path) as hdul:
        return RawDetectorImage.from_hdulist(hdul)


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> Products:
    out: Path = tmp_path_factory.mktemp("truth_recovery")
    cam = SimulatedCamera(
        get_instrument("LATISS"),
        out / "raw",
        seed=SEED,
        amp_data_shape=SHAPE,
        state_dir=out / "state",
        clock=lambda: NOW,
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
        raw = _take(cam, "DARK", DARK_EXPTIME)
        darks.append(run_isr(raw, det, bias=bias).image)
        dark_times.append(raw.dark_time)
        n_cr.append(int(raw.header["SIMNCR"]))
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
            exp_id = int(raw.header["EXPID"])
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


def _overscan_variance(read_noise: float) -> float:
    """Variance (``read_noise`` units²) added to each pixel by the per-row and per-column overscan medians."""
    return (math.pi / 2) * read_noise**2 * (1 / SERIAL_OVERSCAN_USED + 1 / PARALLEL_OVERSCAN_USED)


def _bias_pixel_variance(read_noise_e: float) -> float:
    """Expected variance (e⁻²) of a combined-bias pixel about the truth."""
    return (CLIP_EFFICIENCY * read_noise_e**2 + _overscan_variance(read_noise_e)) / N_BIAS


def _dark_sigma(products: Products, amp_name: str, truth_e_per_s: np.ndarray) -> np.ndarray:
    """Expected per-pixel error (e⁻/s) of the combined dark: darks' read and shot noise, bias error."""
    rn = products.truth["amplifiers"][amp_name]["read_noise_e"]
    t = products.dark_time
    per_dark = CLIP_EFFICIENCY * (rn**2 + np.maximum(truth_e_per_s, 0.0) * t) + _overscan_variance(rn)
    return np.sqrt(per_dark / N_DARK + _bias_pixel_variance(rn)) / t


def test_combined_bias_matches_bias_structure(products: Products) -> None:
    residual = products.bias.image.astype(np.float64) - products.camera.bias_structure_e(0)
    for amp in products.det.amplifiers:
        box = products.amp_boxes[amp.name]
        r = residual[box]
        rn = products.truth["amplifiers"][amp.name]["read_noise_e"]
        sigma = math.sqrt(_bias_pixel_variance(rn))
        # The mean is limited by the noise common to rows and columns (overscan medians).
        line = (math.pi / 2) * rn**2 / N_BIAS
        sigma_mean = math.sqrt(
            sigma**2 / r.size
            + line / SERIAL_OVERSCAN_USED / r.shape[0]
            + line / PARALLEL_OVERSCAN_USED / r.shape[1]
        )
        assert abs(r.mean()) < 5 * sigma_mean, (amp.name, r.mean(), sigma_mean)
        assert 0.9 * sigma < r.std() < 1.1 * sigma, (amp.name, r.std(), sigma)


def test_combined_dark_matches_dark_current(products: Products) -> None:
    truth = products.camera.dark_current_map_e_per_s(0).astype(np.float64)
    masks = products.camera.defect_mask(0)
    hot = masks["hot_pixel"] | masks["hot_column"]
    residual = products.dark.image.astype(np.float64) - truth
    for amp in products.det.amplifiers:
        box = products.amp_boxes[amp.name]
        sigma = _dark_sigma(products, amp.name, truth[box])
        good = ~hot[box]
        r = residual[box]
        sigma_good = float(np.sqrt(np.mean(sigma[good] ** 2)))
        rn = products.truth["amplifiers"][amp.name]["read_noise_e"]
        line = (
            (math.pi / 2)
            * rn**2
            * (1 / SERIAL_OVERSCAN_USED / r.shape[0] + 1 / PARALLEL_OVERSCAN_USED / r.shape[1])
        )
        sigma_mean = math.sqrt(
            sigma_good**2 / good.sum() + line * (1 / N_DARK + 1 / N_BIAS) / products.dark_time**2
        )
        assert abs(r[good].mean()) < 5 * sigma_mean, (amp.name, r[good].mean(), sigma_mean)
        assert 0.9 * sigma_good < r[good].std() < 1.1 * sigma_good, (amp.name, r[good].std(), sigma_good)


def test_hot_pixels_keep_their_dark_current(products: Products) -> None:
    truth = products.camera.dark_current_map_e_per_s(0).astype(np.float64)
    masks = products.camera.defect_mask(0)
    hot = masks["hot_pixel"] | masks["hot_column"]
    assert masks["hot_pixel"].sum() > 100 and masks["hot_column"].sum() == SHAPE[0]
    residual = products.dark.image.astype(np.float64) - truth
    for amp in products.det.amplifiers:
        box = products.amp_boxes[amp.name]
        if hot[box].any():
            pulls = residual[box][hot[box]] / _dark_sigma(products, amp.name, truth[box])[hot[box]]
            assert np.all(np.abs(pulls) < 5), (amp.name, pulls[np.abs(pulls) >= 5])
    assert not np.any(products.dark.mask & MaskPlane.BAD)


def test_cosmic_rays_do_not_survive_into_the_combined_dark(products: Products) -> None:
    assert sum(products.n_cosmic_rays) > 0 and all(n > 0 for n in products.n_cosmic_rays)
    truth = products.camera.dark_current_map_e_per_s(0).astype(np.float64)
    masks = products.camera.defect_mask(0)
    hot = masks["hot_pixel"] | masks["hot_column"]
    for amp in products.det.amplifiers:
        box = products.amp_boxes[amp.name]
        excess = (products.dark.image[box] - truth[box]) / _dark_sigma(products, amp.name, truth[box])
        assert excess[~hot[box]].max() < 5.0, (amp.name, excess[~hot[box]].max())
    # Pixels without any good input (no cosmic ray hits one pixel in every dark) are hot pixels or
    # their grown neighbours (see test_hot_pixels_keep_their_dark_current).
    near_hot = ndimage.binary_dilation(hot, structure=np.ones((3, 3), dtype=bool))
    assert not np.any((products.dark.mask & MaskPlane.BAD).astype(bool) & ~near_hot)


def _check_defects(products: Products, dark: CalibImage) -> None:
    masks = products.camera.defect_mask(0)
    found = find_defects(dark=dark, flat=products.flat, amp_boxes=products.amp_boxes).mask
    for kind in ("hot_pixel", "cold_pixel"):
        injected = masks[kind]
        assert injected.sum() > 50, kind
        recovered = (found & injected).sum() / injected.sum()
        assert recovered >= 0.99, (kind, recovered)
    for kind in ("hot_column", "dead_column"):
        injected = masks[kind]
        assert injected.sum() == SHAPE[0], kind
        assert np.all(found[injected]), kind
    false_positive = int((found & ~masks["any"]).sum())
    assert false_positive <= 0.01 * int(masks["any"].sum()), false_positive


def test_defects_recover_injected_defects(products: Products) -> None:
    """find_defects on a dark whose cosmic rays were rejected by the clipped mean alone."""
    _check_defects(products, products.dark_clip_only)


def test_defects_recover_injected_defects_from_build_dark(products: Products) -> None:
    _check_defects(products, products.dark)


def test_combined_flat_matches_response(products: Products) -> None:
    response = products.camera.flat_response(0).astype(np.float64)
    # Normalised as build_flat normalises each input: by the clipped mean over the detector.
    response /= clipped_stats(response, 3.0, 3).mean
    good = ~products.camera.defect_mask(0)["any"]
    ratio = products.flat.image.astype(np.float64)[good] / response[good]
    assert abs(ratio.mean() - 1.0) < 1e-3, ratio.mean()
    assert ratio.std() < 0.005, ratio.std()
    # and the shot noise of N_FLAT flats of FLAT_EXPTIME explains it
    shot = 1.0 / math.sqrt(N_FLAT * FLAT_EXPTIME * DEFAULT_FLAT_FLUX_E_PER_S)
    assert ratio.std() < 1.2 * shot, (ratio.std(), shot)


def test_ptc_recovers_gain_noise_and_turnoff(products: Products) -> None:
    for name, amp in products.ptc.items():
        t = products.truth["amplifiers"][name]
        assert not amp.bad, name
        assert amp.gain == pytest.approx(t["gain"], rel=0.01), name
        assert amp.noise == pytest.approx(t["read_noise_e"], rel=0.03), name
        assert amp.a00 == pytest.approx(t["a00"], rel=0.3), name
        plateau_adu = t["turnoff_adu"]
        assert amp.turnoff == pytest.approx(plateau_adu, rel=0.05), name
        assert amp.turnoff <= plateau_adu, name


def test_ptc_full_covariance_recovers_gain_noise_and_a00(products: Products) -> None:
    """The Astier+19 Eq. 20 fit (``ptcFitType=FULLCOVARIANCE``) on the same pairs."""
    full = solve_ptc(products.pairs, fit_type="FULLCOVARIANCE")
    for name, amp in full.items():
        t = products.truth["amplifiers"][name]
        assert amp.fit_type == "FULLCOVARIANCE" and amp.full_covariance is not None, name
        assert amp.gain == pytest.approx(t["gain"], rel=0.01), name
        assert amp.noise == pytest.approx(t["read_noise_e"], rel=0.03), name
        # a00 is a small term: its statistical error on 300 x 192 amplifiers is ~10-20 %.
        assert amp.a00 == pytest.approx(t["a00"], rel=0.3), name


def test_gains_from_flat_pairs(products: Products) -> None:
    """The reference's GAIN mode on mid-level pairs, with read-noise and a00 corrections."""
    read_noise_adu = {n: t["read_noise_adu"] for n, t in products.truth["amplifiers"].items()}
    a00 = {n: t["a00"] for n, t in products.truth["amplifiers"].items()}
    gains = gain_from_flat_pairs(products.pairs, read_noise_adu, a00=a00, min_mean=1000.0, max_mean=30000.0)
    for name, gain in gains.items():
        assert gain == pytest.approx(products.truth["amplifiers"][name]["gain"], rel=0.01), name

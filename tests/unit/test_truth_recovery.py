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
levels subtracted from every input (`shared.isr.fit_overscan_levels`, ``AUTO``): the simulator's
per-exposure row jitter is real row-to-row structure, so the serial overscan is one mean per row
(``n_s`` = 58 pixels after the 3 + 3 skipped, variance σ²/n_s); the parallel overscan has no
column structure, so it is a smooth fit along the columns whose per-column error is a small
fraction of a per-column mean's (``n_p`` = 42 rows, σ²/n_p); only the latter's common part
(σ²/(n_p · columns)) is kept, in the error of an amplifier's mean. A dark also carries the
error of the combined bias it was corrected with (common to all darks, so not divided by the
number of darks).

PTC turnoff. The simulator clips the collected charge at ``full_well_e`` and then applies the
amplifier nonlinearity ``ADU = e/g·(1 − k(e/FW)²)``, so the ADU plateau of a saturated flat is
``(1 − k)·FW/g``, which is the truth's ``turnoff_adu`` (~1–2 % below FW/g). The PTC is measured
in (not linearised) ADU and its turnoff is the largest mean of the PTC. The measured turnoff
sits a further ~2–4 % below the plateau: a pair is rejected as soon as the brightest few per
cent of its pixels (response spread of the amplifier: PRNU and vignetting) reach full well, and
the exposure levels near full well are 2.5 % apart.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from bench.scenes import (
    CLIP_EFFICIENCY,
    FLAT_EXPTIME,
    N_BIAS,
    N_DARK,
    N_FLAT,
    PARALLEL_OVERSCAN_USED,
    SERIAL_OVERSCAN_USED,
    SHAPE,
    Products,
    build_truth_products,
)
from services.acquirer.simulated_camera import DEFAULT_FLAT_FLUX_E_PER_S
from services.generator.defects import find_defects
from services.generator.ptc import (
    gain_from_flat_pairs,
    solve_ptc,
)
from shared.images import CalibImage, MaskPlane
from shared.stats import clipped_stats


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> Products:
    return build_truth_products(tmp_path_factory.mktemp("truth_recovery"))


def _overscan_variance(read_noise: float) -> float:
    """Variance (``read_noise`` units²) added to each pixel by the per-row serial-overscan means."""
    return read_noise**2 / SERIAL_OVERSCAN_USED


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
        line = rn**2 / N_BIAS
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
        line = rn**2 * (1 / SERIAL_OVERSCAN_USED / r.shape[0] + 1 / PARALLEL_OVERSCAN_USED / r.shape[1])
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
        # 5.5σ: over the ~920 000 pixels the Gaussian maximum is ~4.9σ (a 5σ cut fails a quarter
        # of the time by chance); a cosmic ray that survived (≥ 300 e⁻ in one of 8 darks) is ≥ 15σ.
        assert excess[~hot[box]].max() < 5.5, (amp.name, excess[~hot[box]].max())
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

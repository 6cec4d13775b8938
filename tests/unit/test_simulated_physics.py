"""Tests of the simulated camera's physics: gains, dark current, defects, flat response, PTC, CRs, faults."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from services.acquirer.app import make_camera as app_make_camera
from services.acquirer.camera import ExposureRequest
from services.acquirer.simulated_camera import (
    A00_RANGE,
    DEFECT_BITS,
    FULL_WELL_RANGE_E,
    PIXEL_SIZE_CM,
    SimulatedCamera,
    unassemble,
)
from shared.images import RawDetectorImage
from shared.instruments import AmplifierGeometry, get_instrument
from shared.isr import IsrConfig, run_isr
from shared.rawformat import read_raw
from shared.runconfig import SimulatorConfig, SimulatorFault
from tests.unit.rawtools import overscan_corrected

NOW = datetime(2026, 11, 28, 3, 15, 0, tzinfo=UTC)


def make_camera(
    tmp_path: Path, *, seed: int = 3, shape: tuple[int, int] = (200, 128), out: str = "raw", **kwargs: object
) -> SimulatedCamera:
    return SimulatedCamera(
        get_instrument("LATISS"),
        tmp_path / out,
        seed=seed,
        amp_data_shape=shape,
        state_dir=tmp_path / f"state_{out}",
        clock=lambda: NOW,
        **kwargs,  # type: ignore[arg-type]
    )


_TRUTH: dict[int, dict[str, Any]] = {}


async def take(cam: SimulatedCamera, image_type: str, exptime: float) -> RawDetectorImage:
    """Take one frame and read it with the raw reader; its injected truth is `truth_of` it."""
    frame = (await cam.take_image(ExposureRequest(image_type, exptime, "g"), [0]))[0]
    raw = read_raw(frame.path)
    _TRUTH[id(raw)] = SimulatedCamera.frame_truth(frame.path)
    return raw


def truth_of(raw: RawDetectorImage) -> dict[str, Any]:
    """What the camera injected into a frame `take` returned (from its truth file, not its header)."""
    return _TRUTH[id(raw)]


def signal_e(cam: SimulatedCamera, raw: RawDetectorImage) -> np.ndarray:
    """ISR (overscans, nominal gains) minus the known bias structure: collected ISR e⁻, float64."""
    det = cam.detector_geometry(0)
    image = run_isr(raw, det, config=IsrConfig(do_parallel_overscan=False)).image.image.astype(np.float64)
    return image - cam.bias_structure_e(0)


def level_sigma(amp: AmplifierGeometry, n_pixels: int, signal_e: float = 0.0) -> float:
    """Standard error (e⁻) of an amplifier's mean level: pixel noise and per-row overscan medians."""
    rows = min(n_pixels, amp.data_rows)
    overscan = 1.25 * amp.read_noise / np.sqrt(amp.serial_overscan_cols - 6)
    return float(np.sqrt((max(signal_e, 0.0) + amp.read_noise**2) / n_pixels + overscan**2 / rows))


def test_truth_scalars(tmp_path: Path) -> None:
    cam = make_camera(tmp_path, gain_spread=0.05)
    truth = cam.truth(0)
    amps = truth["amplifiers"]
    det = cam.detector_geometry(0)
    ratios = []
    for amp in det.amplifiers:
        t = amps[amp.name]
        assert t["nominal_gain"] == amp.gain
        ratios.append(t["gain"] / t["nominal_gain"])
        assert t["read_noise_e"] == amp.read_noise
        assert t["read_noise_adu"] == pytest.approx(amp.read_noise / t["gain"])
        assert A00_RANGE[0] <= t["a00"] <= A00_RANGE[1]
        assert FULL_WELL_RANGE_E[0] <= t["full_well_e"] <= FULL_WELL_RANGE_E[1]
        assert t["turnoff_adu"] == pytest.approx((1 - t["nonlinearity_k"]) * t["full_well_e"] / t["gain"])
        assert 0.01 <= t["nonlinearity_k"] <= 0.02
    assert all(0.95 <= r <= 1.05 for r in ratios)
    assert np.std(ratios) > 0.01  # the gains really differ from the nominal ones
    assert truth["n_hot_pixels"] == sum(a["n_hot_pixels"] for a in amps.values())
    assert truth["hot_column"]["amplifier"] != truth["dead_column"]["amplifier"]
    assert 0.95 <= truth["response"] <= 1.05
    # The scalars depend on the seed only, not on the frame size; the gains scale with the spread.
    other = make_camera(tmp_path, shape=(50, 40), out="other", gain_spread=0.05).truth(0)["amplifiers"]
    for name, t in amps.items():
        assert {k: other[name][k] for k in ("gain", "a00", "full_well_e")} == {
            k: t[k] for k in ("gain", "a00", "full_well_e")
        }
    assert make_camera(tmp_path, out="zero", gain_spread=0.0).truth(0)["amplifiers"]["C10"]["gain"] == (
        det.amplifier("C10").gain
    )
    json.dumps(truth)


async def test_dark_matches_dark_map_and_defects(tmp_path: Path) -> None:
    cam = make_camera(tmp_path, hot_pixel_fraction=1e-3, cosmic_ray_rate=0.0)
    raw = await take(cam, "DARK", 300.0)
    assert truth_of(raw)["n_cosmic_rays"] == 0
    measured = signal_e(cam, raw)
    expected = cam.dark_current_map_e_per_s(0) * raw.dark_time
    masks = cam.defect_mask(0)
    truth = cam.truth(0)
    det = cam.detector_geometry(0)
    # Background: 0.02 e⁻/s (true) x nominal / actual gain, per amplifier.
    for amp in det.amplifiers:
        box = amp.detector_slice
        good = ~masks["any"][box]
        t = truth["amplifiers"][amp.name]
        background = 0.02 * raw.dark_time * t["nominal_gain"] / t["gain"]
        assert expected[box][good] == pytest.approx(background, rel=1e-5)
        sigma = level_sigma(amp, int(good.sum()), background)
        assert measured[box][good].mean() == pytest.approx(background, abs=5 * sigma), amp.name
    # Every hot pixel is where the truth puts it, with the injected dark current.
    hot = masks["hot_pixel"]
    assert hot.sum() == truth["n_hot_pixels"] > 10
    noise = np.sqrt(np.abs(expected) + 12.0**2)
    assert np.all(np.abs(measured - expected)[hot] < 5 * noise[hot])
    assert np.all(expected[hot] >= 5.0 * raw.dark_time * 0.9)
    # Thresholding the dark at 3 e⁻/s finds exactly the hot pixels and the hot column.
    found = measured / raw.dark_time > 3.0
    np.testing.assert_array_equal(found, masks["hot_pixel"] | masks["hot_column"])
    column = truth["hot_column"]["column"]
    amp = det.amplifier(truth["hot_column"]["amplifier"])
    assert masks["hot_column"][:, column].sum() == amp.data_rows
    assert masks["hot_column"].sum() == amp.data_rows
    assert np.median(measured[amp.detector_slice][:, column - amp.x0]) / raw.dark_time > 4.5


async def test_bias_has_no_dark_charge(tmp_path: Path) -> None:
    cam = make_camera(tmp_path, hot_pixel_fraction=1e-2)
    raw = await take(cam, "BIAS", 0.0)
    measured = signal_e(cam, raw)
    hot = cam.defect_mask(0)["hot_pixel"]
    assert abs(measured[hot].mean()) < 5 * 10.0 / np.sqrt(hot.sum())
    assert truth_of(raw)["n_cosmic_rays"] == 0 and ",".join(truth_of(raw)["faults"]) == ""


async def test_flat_matches_response_map(tmp_path: Path) -> None:
    cam = make_camera(tmp_path, cold_pixel_fraction=2e-3)
    exptime, flux = 10.0, cam.flat_flux_e_per_s
    raw = await take(cam, "FLAT", exptime)
    assert raw.header["SHUTTIME"] == exptime
    measured = signal_e(cam, raw) - cam.dark_current_map_e_per_s(0) * raw.dark_time
    response = cam.flat_response(0)
    det = cam.detector_geometry(0)
    lit = response > 0.05
    ratio = np.where(lit, measured / (flux * exptime * np.where(lit, response, 1.0)), np.nan)
    masks = cam.defect_mask(0)
    for amp in det.amplifiers:
        r = ratio[amp.detector_slice][~masks["any"][amp.detector_slice]]
        # Shot noise (and read noise) only: sqrt(20000 + 80) / 20000 = 0.7 % per pixel.
        assert np.mean(r) == pytest.approx(1.0, abs=2e-3), amp.name
        assert np.std(r) == pytest.approx(
            np.sqrt(flux * exptime + amp.read_noise**2) / (flux * exptime), rel=0.1
        )
    # The map is not flat: PRNU (1 %) is visible pixel by pixel, vignetting in the corners.
    physical = cam.flat_response(0, isr_units=False)
    good = ~masks["any"]
    assert np.corrcoef(measured[good], response[good])[0, 1] > 0.8
    assert np.std(ratio[good]) < 0.8 * np.std(response[good])  # the map explains the structure
    rows, cols = physical.shape
    centre = physical[rows // 2 - 10 : rows // 2 + 10, cols // 2 - 10 : cols // 2 + 10].mean()
    corners = np.mean([physical[:10, :10].mean(), physical[-10:, -10:].mean()])
    assert 0.005 < 1 - corners / centre < 0.08
    # Vignetting is continuous across amplifier boundaries (detector coordinates).
    # In ISR units the gain errors make steps there.
    c = det.amplifier("C10").data_cols
    boundaries = np.arange(c - 1, cols - 1, c)
    for image, continuous in ((physical, True), (response, False)):
        column_means = np.nanmean(np.where(good, image, np.nan), axis=0)
        steps = np.abs(np.diff(column_means))
        interior = np.delete(steps, boundaries)
        limit = 5 * np.sqrt(np.mean(interior**2))
        assert bool(steps[boundaries].max() < limit) == continuous
    # Cold pixels and the dead column are found below 0.9 of the local level; nothing else.
    truth = cam.truth(0)
    low = np.zeros_like(good)
    for amp in det.amplifiers:
        box = amp.detector_slice
        low[box] = measured[box] < 0.9 * np.median(measured[box])
    np.testing.assert_array_equal(low, masks["cold_pixel"] | masks["dead_column"])
    assert masks["cold_pixel"].sum() == truth["n_cold_pixels"] > 10
    dead = truth["dead_column"]
    dead_amp = det.amplifier(dead["amplifier"])
    assert masks["dead_column"][dead_amp.detector_slice[0], dead["column"]].all()
    assert masks["dead_column"].sum() == dead_amp.data_rows
    dead_ratio = ratio[dead_amp.detector_slice[0], dead["column"]]
    assert np.nanmedian(dead_ratio) == pytest.approx(1.0, abs=0.03)
    assert np.median(measured[dead_amp.detector_slice[0], dead["column"]]) < 0.4 * flux * exptime


def pair_stats(
    cam: SimulatedCamera, a: RawDetectorImage, b: RawDetectorImage
) -> dict[str, tuple[float, float]]:
    """Per amplifier: mean (ADU, bias structure removed) and var(difference) / 2 (ADU²)."""
    det = cam.detector_geometry(0)
    ca, cb = overscan_corrected(a, det), overscan_corrected(b, det)
    structure = unassemble(det, cam.bias_structure_e(0))
    good = unassemble(det, ~cam.defect_mask(0)["any"])
    out = {}
    for amp in det.amplifiers:
        g = good[amp.name]
        s = structure[amp.name][g] / amp.gain
        mean = 0.5 * ((ca[amp.name][g] - s).mean() + (cb[amp.name][g] - s).mean())
        out[amp.name] = (float(mean), float(np.var(ca[amp.name][g] - cb[amp.name][g]) / 2))
    return out


async def test_photon_transfer_follows_astier_eq16_and_turns_off(tmp_path: Path) -> None:
    cam = make_camera(tmp_path, shape=(250, 160))
    truth = cam.truth(0)["amplifiers"]
    for exptime in (5.0, 25.0):
        stats = pair_stats(cam, await take(cam, "FLAT", exptime), await take(cam, "FLAT", exptime))
        for name, (mu, c00) in stats.items():
            t = truth[name]
            g, a00, k, fw = t["gain"], t["a00"], t["nonlinearity_k"], t["full_well_e"]
            x2 = (mu * g / fw) ** 2
            mu_lin = mu / (1 - k * x2)  # undo the (small) nonlinearity
            eq16 = np.expm1(2 * a00 * mu_lin * g) / (2 * g**2 * a00) + t["read_noise_e"] ** 2 / g**2
            shot = eq16 - t["read_noise_e"] ** 2 / g**2
            expected = shot * (1 - 3 * k * x2) ** 2 + t["read_noise_e"] ** 2 / g**2
            assert c00 == pytest.approx(expected, rel=0.03), (name, exptime)
            if exptime == 25.0:
                # The brighter-fatter deficit is well resolved: a Poisson PTC would be > 8 % higher.
                assert c00 < 0.92 * (mu / g + t["read_noise_e"] ** 2 / g**2)
            else:
                # The actual gain is recovered; the nominal one would be off by the injected spread.
                assert mu_lin / (c00 - t["read_noise_e"] ** 2 / g**2) == pytest.approx(
                    g / (1 + a00 * mu_lin * g), rel=0.03
                )
    # Above the full well the charge is clipped: the variance collapses to the read noise.
    stats = pair_stats(cam, await take(cam, "FLAT", 100.0), await take(cam, "FLAT", 100.0))
    for name, (mu, c00) in stats.items():
        t = truth[name]
        assert mu == pytest.approx(t["turnoff_adu"], rel=0.003)
        assert c00 < 1.3 * t["read_noise_adu"] ** 2


async def test_cosmic_rays_on_darks_only(tmp_path: Path) -> None:
    rate = 5.0
    cam = make_camera(tmp_path, cosmic_ray_rate=rate, hot_pixel_fraction=0.0)
    det = cam.detector_geometry(0)
    area_cm2 = det.shape[0] * det.shape[1] * PIXEL_SIZE_CM**2
    dark = await take(cam, "DARK", 30.0)
    n_cr = truth_of(dark)["n_cosmic_rays"]
    expected = rate * area_cm2 * dark.dark_time
    assert abs(n_cr - expected) < 5 * np.sqrt(expected)
    measured = signal_e(cam, dark)
    hits = (measured > 200.0) & ~cam.defect_mask(0)["hot_column"]
    assert n_cr <= hits.sum() <= 10 * n_cr
    assert measured.max() > 250.0
    for image_type, exptime in (("BIAS", 0.0), ("FLAT", 1.0)):
        assert truth_of(await take(cam, image_type, exptime))["n_cosmic_rays"] == 0
    quiet = make_camera(tmp_path, out="quiet", cosmic_ray_rate=0.0)
    assert truth_of(await take(quiet, "DARK", 30.0))["n_cosmic_rays"] == 0


async def test_light_leak_fault_on_selected_biases(tmp_path: Path) -> None:
    fault = SimulatorFault(kind="light_leak", image_type="BIAS", exposures=[1], level_e=500.0)
    cam = make_camera(tmp_path, faults=[fault])
    raws = [await take(cam, "BIAS", 0.0) for _ in range(3)]
    assert [truth_of(r)["index"] for r in raws] == [0, 1, 2]
    assert [",".join(truth_of(r)["faults"]) for r in raws] == ["", "light_leak", ""]
    level = truth_of(raws[1])["light_leak_e"]
    assert 0.0 < level <= 1000.0
    assert truth_of(raws[0])["light_leak_e"] == 0.0
    truth = cam.truth(0)["amplifiers"]
    for i, raw in enumerate(raws):
        measured = signal_e(cam, raw)
        for amp in cam.detector_geometry(0).amplifiers:
            t = truth[amp.name]
            box = measured[amp.detector_slice]
            want = level * t["nominal_gain"] / t["gain"] if i == 1 else 0.0
            assert box.mean() == pytest.approx(want, abs=5 * level_sigma(amp, box.size, want)), amp.name
        if i == 1:  # with shot noise
            assert np.std(measured) ** 2 > np.mean(
                [a.read_noise**2 for a in cam.detector_geometry(0).amplifiers]
            )
    # Darks and flats of the same camera are not affected.
    assert ",".join(truth_of(await take(cam, "DARK", 1.0))["faults"]) == ""


async def test_hot_amplifier_and_dark_ramp_faults(tmp_path: Path) -> None:
    faults = [
        SimulatorFault(kind="hot_amplifier", image_type="DARK", amplifiers=["C10"], factor=3.0),
        SimulatorFault(kind="dark_ramp", step_e_per_s=2.0),
    ]
    cam = make_camera(tmp_path, faults=faults, cosmic_ray_rate=0.0)
    det = cam.detector_geometry(0)
    truth = cam.truth(0)["amplifiers"]
    good = ~cam.defect_mask(0)["any"]
    for i in range(3):
        raw = await take(cam, "DARK", 20.0)
        assert ",".join(truth_of(raw)["faults"]) == "hot_amplifier,dark_ramp"
        assert truth_of(raw)["dark_ramp_e_per_s"] == pytest.approx(2.0 * i)
        measured = signal_e(cam, raw)
        for amp in det.amplifiers:
            t = truth[amp.name]
            overscan = raw.amplifiers[amp.name][amp.serial_overscan_slice].astype(float)
            noise = np.std(overscan - np.median(overscan, axis=1)[:, None])
            factor = 3.0 if amp.name == "C10" else 1.0
            assert noise == pytest.approx(factor * t["read_noise_adu"], rel=0.1), amp.name
            want = (0.02 + 2.0 * i) * raw.dark_time * t["nominal_gain"] / t["gain"]
            box = measured[amp.detector_slice][good[amp.detector_slice]]
            assert box.mean() == pytest.approx(
                want, abs=5 * factor * level_sigma(amp, box.size, want) + 0.01 * want
            ), amp.name
    # Biases and flats: neither fault applies.
    bias = await take(cam, "BIAS", 0.0)
    assert ",".join(truth_of(bias)["faults"]) == "" and truth_of(bias)["dark_ramp_e_per_s"] == 0.0
    overscan = bias.amplifiers["C10"][det.amplifier("C10").serial_overscan_slice].astype(float)
    noise = np.std(overscan - np.median(overscan, axis=1)[:, None])
    assert noise == pytest.approx(truth["C10"]["read_noise_adu"], rel=0.1)


async def test_deterministic_with_seed(tmp_path: Path) -> None:
    kwargs = {"cosmic_ray_rate": 3.0, "faults": [SimulatorFault(kind="light_leak")]}
    a = make_camera(tmp_path, seed=11, out="a", **kwargs)
    b = make_camera(tmp_path, seed=11, out="b", **kwargs)
    c = make_camera(tmp_path, seed=12, out="c", **kwargs)
    for image_type, exptime in (("DARK", 30.0), ("FLAT", 5.0)):
        ra, rb, rc = [await take(cam, image_type, exptime) for cam in (a, b, c)]
        assert truth_of(ra)["n_cosmic_rays"] == truth_of(rb)["n_cosmic_rays"]
        assert truth_of(ra)["light_leak_e"] == truth_of(rb)["light_leak_e"]
        for name in ra.amplifiers:
            np.testing.assert_array_equal(ra.amplifiers[name], rb.amplifiers[name])
            assert not np.array_equal(ra.amplifiers[name], rc.amplifiers[name])
    np.testing.assert_array_equal(a.flat_response(0), b.flat_response(0))
    np.testing.assert_array_equal(a.dark_current_map_e_per_s(0), b.dark_current_map_e_per_s(0))
    assert not np.array_equal(a.flat_response(0), c.flat_response(0))
    assert a.truth(0) == b.truth(0) != c.truth(0)


def test_write_truth_extensions(tmp_path: Path) -> None:
    cam = make_camera(tmp_path, hot_pixel_fraction=1e-3, cold_pixel_fraction=1e-3)
    fits_path, json_path = cam.write_truth()
    with fits.open(fits_path) as hdul:
        names = [h.name for h in hdul[1:]]
        assert names == ["BIAS_STRUCTURE_E", "DARK_CURRENT_E_PER_S", "FLAT_RESPONSE", "DEFECTS"]
        np.testing.assert_allclose(hdul["DARK_CURRENT_E_PER_S"].data, cam.dark_current_map_e_per_s(0))
        np.testing.assert_allclose(hdul["FLAT_RESPONSE"].data, cam.flat_response(0))
        defects = hdul["DEFECTS"].data
        header = hdul[0].header
        assert header["HIERARCH C10 A00"] == pytest.approx(cam.truth(0)["amplifiers"]["C10"]["a00"])
        assert header["HIERARCH HOT COLUMN AMPLIFIER"] == cam.truth(0)["hot_column"]["amplifier"]
        assert hdul["DEFECTS"].header["HIERARCH BIT HOT PIXEL"] == DEFECT_BITS["hot_pixel"]
    masks = cam.defect_mask(0)
    for key, bit in DEFECT_BITS.items():
        np.testing.assert_array_equal((defects & bit) > 0, masks[key])
    summary = json.loads(json_path.read_text())
    det0 = summary["detectors"]["0"]
    assert det0["hot_column"] == cam.truth(0)["hot_column"]
    assert det0["amplifiers"]["C10"]["turnoff_adu"] == pytest.approx(
        cam.truth(0)["amplifiers"]["C10"]["turnoff_adu"]
    )


def test_app_make_camera_passes_simulator_settings(tmp_path: Path) -> None:
    fault = SimulatorFault(kind="dark_ramp")
    sim = SimulatorConfig(
        seed=5,
        amp_data_shape=(20, 10),
        hot_pixel_fraction=0.01,
        cold_pixel_fraction=0.02,
        cosmic_ray_rate=0.5,
        gain_spread=0.1,
        dark_current_e_per_s=0.5,
        flat_flux_e_per_s=100.0,
        faults=[fault],
    )
    ctx = SimpleNamespace(settings=SimpleNamespace(camera_dir=tmp_path))
    config = SimpleNamespace(camera="simulated", instrument="LATISS", simulator=sim)
    cam = app_make_camera(ctx, config, "run1")  # type: ignore[arg-type]
    assert isinstance(cam, SimulatedCamera)
    assert (cam.seed, cam.amp_data_shape) == (5, (20, 10))
    assert (cam.hot_pixel_fraction, cam.cold_pixel_fraction) == (0.01, 0.02)
    assert (cam.cosmic_ray_rate, cam.gain_spread, cam.flat_flux_e_per_s) == (0.5, 0.1, 100.0)
    assert cam.truth(0)["amplifiers"]["C10"]["dark_current_e_per_s"] == 0.5
    assert cam.faults == (fault,)
    default = app_make_camera(
        ctx, SimpleNamespace(camera="simulated", instrument="LATISS", simulator=None), "r2"
    )  # type: ignore[arg-type]
    assert isinstance(default, SimulatedCamera)
    assert default.gain_spread == SimulatorConfig().gain_spread

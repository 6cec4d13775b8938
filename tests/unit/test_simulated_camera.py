"""Tests of the simulated camera: files, headers, sequence numbers and the injected physics."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from services.acquirer.camera import CameraDriver, CameraError, ExposureRequest
from services.acquirer.simulated_camera import READOUT_OVERHEAD_S, SimulatedCamera, assemble, unassemble
from shared import rawformat
from shared.images import RawDetectorImage
from shared.instruments import get_instrument
from shared.translation import compute_exposure_id, translate
from tests.unit.rawtools import overscan_corrected

ROWS, COLS = 40, 30
NOW = datetime(2026, 11, 28, 3, 15, 0, tzinfo=UTC)  # day_obs 20261127


def fixed_clock() -> datetime:
    return NOW


def make_camera(
    tmp_path: Path,
    *,
    name: str = "LATISS",
    seed: int = 0,
    shape: tuple[int, int] = (ROWS, COLS),
    out: str = "raw",
    state: str = "state",
    **kwargs: object,
) -> SimulatedCamera:
    return SimulatedCamera(
        get_instrument(name),
        tmp_path / out,
        seed=seed,
        amp_data_shape=shape,
        state_dir=tmp_path / state,
        clock=fixed_clock,
        **kwargs,  # type: ignore[arg-type]
    )


def bias_request() -> ExposureRequest:
    return ExposureRequest(image_type="BIAS", exposure_time=0.0, group_id="g1")


def read_raw(path: Path) -> RawDetectorImage:
    return rawformat.read_raw(path)


async def test_bias_file_layout_and_headers(tmp_path: Path) -> None:
    cam = make_camera(tmp_path)
    assert isinstance(cam, CameraDriver)
    await cam.setup_instrument("SDSSr_65mm~empty")
    req = ExposureRequest("BIAS", 0.0, "grp", program="CALIB", reason=None, note="hello")
    frames = await cam.take_image(req, [0])
    assert len(frames) == 1
    frame = frames[0]
    assert frame.path == tmp_path / "raw" / f"{frame.obs_id}_det000.fits"
    assert frame.path.exists()
    assert frame.obs_id == "AT_O_20261127_000001"
    assert frame.exposure_id == 2026112700001

    with fits.open(frame.path) as hdul:
        assert len(hdul) == 19  # primary, 16 segments, REB_COND, CONFIG_COND
        names = [h.header["EXTNAME"] for h in hdul[1:]]
        assert names[:16] == [f"Segment1{i}" for i in range(8)] + [f"Segment0{7 - i}" for i in range(8)]
        assert names[16:] == ["REB_COND", "CONFIG_COND"]
        for hdu in hdul[1:17]:
            assert isinstance(hdu, fits.CompImageHDU)
            assert hdu.data.shape == (ROWS + 48, 3 + COLS + 64)
            assert hdu.data.dtype == np.int32
        assert isinstance(hdul[17], fits.BinTableHDU)
        c10 = hdul["Segment10"].header
        assert (c10["CHANNEL"], c10["CCDSUM"]) == (1, "1 1")
        assert c10["DATASEC"] == f"[4:{3 + COLS},1:{ROWS}]"
        assert "BIASSEC" not in c10  # real segments have none
        # IRAF DETSEC (DM's frame flipped top to bottom): C10 is at the bottom left there.
        assert c10["DETSEC"] == f"[{COLS}:1,1:{ROWS}]"
        assert hdul["Segment00"].header["DETSEC"] == f"[{COLS}:1,{2 * ROWS}:{ROWS + 1}]"
        h = hdul[0].header
    assert h["IMGTYPE"] == "BIAS"
    assert h["INSTRUME"] == "LATISS"
    assert h["CAMCODE"] == "AT"
    assert h["CONTRLLR"] == "O"
    assert h["DAYOBS"] == "20261127"  # a string, as the camera writes it
    assert h["SEQNUM"] == 1
    assert "EXPID" not in h and "DETECTOR" not in h  # real headers have neither
    assert compute_exposure_id(h["DAYOBS"], h["SEQNUM"], h["CONTRLLR"]) == frame.exposure_id
    assert h["OBSID"] == f"AT_O_{h['DAYOBS']}_{h['SEQNUM']:06d}"
    assert h["GROUPID"] == "grp"
    assert h["EXPTIME"] == 0.0
    assert h["DARKTIME"] == pytest.approx(READOUT_OVERHEAD_S)
    assert (h["FILTER"], h["GRATING"]) == ("SDSSr_65mm", "empty_1")
    assert (h["PROGRAM"], h["OBSANNOT"]) == ("CALIB", "hello")
    assert h["REASON"] is None or isinstance(h["REASON"], fits.card.Undefined)
    assert (h["RAFTBAY"], h["CCDSLOT"], h["LSST_NUM"]) == ("R00", "S00", "ITL-3800C-068")
    assert h["HIERARCH SIMULATE ATCAMERA"] == 1
    assert not [k for k in h if str(k).startswith("SIM") and str(k) not in ("SIMPLE", "SIMULATE ATCAMERA")]
    truth = SimulatedCamera.frame_truth(frame.path)
    assert (truth["seed"], truth["exposure_id"], truth["n_cosmic_rays"]) == (0, frame.exposure_id, 0)
    info = translate(h)
    assert (info.exposure_id, info.detector, info.physical_filter) == (
        frame.exposure_id,
        0,
        "SDSSr_65mm~empty",
    )
    assert h["TIMESYS"] == "TAI"
    # DATE-BEG is the clock time in TAI (37 s ahead of UTC in 2026).
    beg = Time(h["DATE-BEG"], scale="tai")
    assert (beg - Time(NOW.replace(tzinfo=None), scale="utc")).sec == pytest.approx(0.0, abs=1e-3)
    assert (beg.utc.datetime - NOW.replace(tzinfo=None)).total_seconds() == pytest.approx(0.0, abs=1e-3)
    assert h["DATE-BEG"].startswith("2026-11-28T03:15:37")
    assert h["MJD-BEG"] == pytest.approx(beg.mjd)


async def test_dark_times_and_date_end(tmp_path: Path) -> None:
    cam = make_camera(tmp_path)
    frames = await cam.take_image(ExposureRequest("DARK", 30.0, "g"), [0])
    h = fits.getheader(frames[0].path)
    assert h["IMGTYPE"] == "DARK"
    assert h["EXPTIME"] == 30.0
    assert h["DARKTIME"] == pytest.approx(30.0 + READOUT_OVERHEAD_S)
    dt = Time(h["DATE-END"], scale="tai") - Time(h["DATE-BEG"], scale="tai")
    assert dt.sec == pytest.approx(30.0, abs=1e-3)
    assert (h["MJD-END"] - h["MJD-BEG"]) * 86400 == pytest.approx(30.0, abs=1e-3)
    assert (h["FILTER"], h["GRATING"]) == ("empty_1", "empty_1")
    assert translate(h).physical_filter == get_instrument("LATISS").default_filter


async def test_exposure_ids_increase_and_persist(tmp_path: Path) -> None:
    cam = make_camera(tmp_path)
    ids = [(await cam.take_image(bias_request(), [0]))[0].exposure_id for _ in range(3)]
    assert ids == [2026112700001, 2026112700002, 2026112700003]
    # A restarted service (new camera, same state_dir) continues the sequence.
    cam2 = make_camera(tmp_path, out="raw2")
    frames = await cam2.take_image(bias_request(), [0])
    assert frames[0].exposure_id == 2026112700004
    assert frames[0].obs_id == "AT_O_20261127_000004"
    # Two cameras exposing concurrently never share an id.
    results = await asyncio.gather(*(c.take_image(bias_request(), [0]) for c in (cam, cam2, cam, cam2)))
    new_ids = [r[0].exposure_id for r in results]
    assert len(set(new_ids)) == 4
    assert min(new_ids) == 2026112700005


async def test_day_obs_rolls_over_at_noon_utc(tmp_path: Path) -> None:
    assert SimulatedCamera.day_obs(datetime(2026, 11, 28, 11, 59, tzinfo=UTC)) == 20261127
    assert SimulatedCamera.day_obs(datetime(2026, 11, 28, 12, 0, tzinfo=UTC)) == 20261128


async def test_reproducible_with_seed(tmp_path: Path) -> None:
    a = make_camera(tmp_path, seed=7, out="a", state="sa")
    b = make_camera(tmp_path, seed=7, out="b", state="sb")
    c = make_camera(tmp_path, seed=8, out="c", state="sc")
    for _ in range(2):
        fa, fb, fc = [(await cam.take_image(bias_request(), [0]))[0] for cam in (a, b, c)]
    ra, rb, rc = read_raw(fa.path), read_raw(fb.path), read_raw(fc.path)
    for name in ra.amplifiers:
        np.testing.assert_array_equal(ra.amplifiers[name], rb.amplifiers[name])
        assert not np.array_equal(ra.amplifiers[name], rc.amplifiers[name])
    # Different exposures of the same camera differ (fresh noise) but share the structure.
    first = read_raw(tmp_path / "a" / "AT_O_20261127_000001_det000.fits")
    assert not np.array_equal(first.amplifiers["C10"], ra.amplifiers["C10"])
    np.testing.assert_array_equal(a.bias_structure_e(0), b.bias_structure_e(0))
    assert not np.array_equal(a.bias_structure_e(0), c.bias_structure_e(0))


async def test_read_noise_after_overscan_subtraction(tmp_path: Path) -> None:
    cam = make_camera(tmp_path, shape=(200, 100))
    det = cam.detector_geometry(0)
    frame = (await cam.take_image(bias_request(), [0]))[0]
    corrected = overscan_corrected(read_raw(frame.path), det)
    structure_adu = unassemble(det, cam.bias_structure_e(0))
    truth = cam.truth(0)["amplifiers"]
    for amp in det.amplifiers:
        residual = corrected[amp.name] - structure_adu[amp.name] / amp.gain
        # Read noise is fixed in electrons; in ADU it scales with the actual (not nominal) gain.
        expected = amp.read_noise / truth[amp.name]["gain"]
        assert truth[amp.name]["read_noise_adu"] == pytest.approx(expected)
        assert np.std(residual) == pytest.approx(expected, rel=0.10), amp.name
        # Without the known structure the data section is noisier: the structure is real.
        assert np.std(corrected[amp.name]) > 1.05 * expected
        # The row structure is common to data and serial overscan: rows are flat after correction.
        row_means = residual.mean(axis=1)
        assert np.std(row_means) < 3 * expected / np.sqrt(amp.data_cols)


async def test_raw_levels_and_row_structure(tmp_path: Path) -> None:
    cam = make_camera(tmp_path, shape=(200, 100))
    det = cam.detector_geometry(0)
    raw = read_raw((await cam.take_image(bias_request(), [0]))[0].path)
    truth = cam.truth(0)["amplifiers"]
    levels = [truth[a.name]["bias_level_adu"] for a in det.amplifiers]
    assert np.std(levels) > 50  # per-amp offsets of a few hundred ADU
    assert all(14_600 < lv < 15_400 for lv in levels)
    for amp in det.amplifiers:
        arr = raw.amplifiers[amp.name].astype(float)
        overscan = arr[amp.serial_overscan_slice]
        assert np.median(overscan) == pytest.approx(truth[amp.name]["bias_level_adu"], abs=10)
        # Row-to-row variation of the overscan exceeds what read noise alone gives.
        rn = amp.read_noise / amp.gain
        assert np.std(overscan.mean(axis=1)) > 1.2 * rn / np.sqrt(amp.serial_overscan_cols)
        # Parallel overscan has no column structure and no signal.
        assert np.median(arr[amp.parallel_overscan_slice]) == pytest.approx(
            truth[amp.name]["bias_level_adu"], abs=10
        )


async def test_combined_bias_matches_truth(tmp_path: Path) -> None:
    n = 20
    cam = make_camera(tmp_path)
    det = cam.detector_geometry(0)
    stack = []
    for _ in range(n):
        raw = read_raw((await cam.take_image(bias_request(), [0]))[0].path)
        corrected = overscan_corrected(raw, det)
        gains = {a.name: a.gain for a in det.amplifiers}
        stack.append(assemble(det, {k: v * gains[k] for k, v in corrected.items()}))
    mean = np.mean(stack, axis=0)
    truth = cam.bias_structure_e(0)
    assert truth.shape == det.shape == (2 * ROWS, 8 * COLS)
    assert np.std(truth) > 5.0  # tens of e⁻ of structure to recover
    residual = mean - truth
    for amp in det.amplifiers:
        res = residual[amp.detector_slice]
        expected = amp.read_noise / np.sqrt(n)
        assert abs(res.mean()) < 5 * expected / np.sqrt(res.size) + 0.5 * expected
        assert np.std(res) == pytest.approx(expected, rel=0.15), amp.name
    # The truth carries the first-rows rise near each amplifier's readout corner (row 0 read first).
    # C10 (top left, flipped in y) reads its first row at the top; C00 (bottom left) at the bottom.
    c10, c00 = det.amplifier("C10"), det.amplifier("C00")
    assert (c10.x0, c10.y0, c00.x0, c00.y0) == (0, ROWS, 0, 0)
    assert truth[2 * ROWS - 1, :COLS].mean() > truth[ROWS + ROWS // 2, :COLS].mean() + 10
    assert truth[0, :COLS].mean() > truth[ROWS // 2, :COLS].mean() + 10


async def test_dark_current(tmp_path: Path) -> None:
    cam = make_camera(tmp_path, shape=(400, 200), cosmic_ray_rate=0.0)
    det = cam.detector_geometry(0)
    frame = (await cam.take_image(ExposureRequest("DARK", 30.0, "g"), [0]))[0]
    raw = read_raw(frame.path)
    corrected = overscan_corrected(raw, det)
    structure_adu = unassemble(det, cam.bias_structure_e(0))
    signal_e = np.concatenate(
        [((corrected[a.name] - structure_adu[a.name] / a.gain) * a.gain).ravel() for a in det.amplifiers]
    )
    truth = cam.truth(0)["amplifiers"]["C10"]["dark_current_e_per_s"]
    assert truth == 0.02
    # The truth map (ISR e⁻/s) adds hot pixels and the hot column to the 0.02 e⁻/s background.
    expected = float(cam.dark_current_map_e_per_s(0).mean()) * raw.dark_time
    sigma = np.std(signal_e) / np.sqrt(signal_e.size)
    assert signal_e.mean() == pytest.approx(expected, abs=5 * sigma)
    assert sigma < 0.1 * expected


async def test_per_amp_dark_current_and_flat_gain(tmp_path: Path) -> None:
    cam = make_camera(tmp_path, shape=(100, 60), dark_current_e_per_s={"C10": 5.0}, cosmic_ray_rate=0.0)
    det = cam.detector_geometry(0)
    dark = read_raw((await cam.take_image(ExposureRequest("DARK", 100.0, "g"), [0]))[0].path)
    corrected = overscan_corrected(dark, det)
    dark_map = unassemble(det, cam.dark_current_map_e_per_s(0))  # ISR e⁻/s: nominal gain
    response = unassemble(det, cam.flat_response(0))  # ISR units
    structure = unassemble(det, cam.bias_structure_e(0))
    signal = {a.name: corrected[a.name] * a.gain - structure[a.name] for a in det.amplifiers}
    assert dark_map["C10"].mean() == pytest.approx(5.0, rel=0.05)
    assert signal["C10"].mean() == pytest.approx(dark_map["C10"].mean() * 100.2, rel=0.02)
    assert signal["C11"].mean() == pytest.approx(dark_map["C11"].mean() * 100.2, abs=1.0)
    assert signal["C11"].mean() < 0.1 * signal["C10"].mean()
    # Photon transfer on a pair of flats recovers the injected gain.
    req = ExposureRequest("FLAT", 10.0, "g")
    f1, f2 = [overscan_corrected(read_raw((await cam.take_image(req, [0]))[0].path), det) for _ in range(2)]
    for a in det.amplifiers:
        mean_adu = 0.5 * (f1[a.name].mean() + f2[a.name].mean())
        t = cam.truth(0)["amplifiers"][a.name]
        gain, a00 = t["gain"], t["a00"]
        var_adu = np.var(f1[a.name] - f2[a.name]) / 2 - (a.read_noise / gain) ** 2
        dark_e = dark_map[a.name].mean() * 10.2
        assert mean_adu * a.gain == pytest.approx(2000.0 * 10.0 * response[a.name].mean() + dark_e, rel=0.01)
        # Photon transfer with the brighter-fatter deficit (Astier et al. 2019 Eq. 16) and the actual gain.
        expected = np.expm1(2 * a00 * mean_adu * gain) / (2 * gain**2 * a00)
        assert var_adu == pytest.approx(expected, rel=0.08), a.name


async def test_saturation_clips(tmp_path: Path) -> None:
    # The charge is clipped at the full well (~1e5 e⁻, ~95 000 ADU) first: a high bias level puts
    # that plateau above the raw saturation (120 000 ADU), which then clips every data pixel.
    cam = make_camera(tmp_path, bias_level_adu=60_000.0)
    raw = read_raw((await cam.take_image(ExposureRequest("FLAT", 100.0, "g"), [0]))[0].path)
    amp = cam.detector_geometry(0).amplifier("C10")
    arr = raw.amplifiers["C10"]
    assert (arr.dtype.kind, arr.dtype.itemsize) == ("i", 4)  # int32 (big-endian once in FITS)
    assert arr[amp.data_slice].max() == int(amp.saturation)
    assert np.all(arr[amp.data_slice] == int(amp.saturation))
    assert arr[amp.serial_overscan_slice].max() < 61_000


async def test_invalid_filter_and_requests(tmp_path: Path) -> None:
    cam = make_camera(tmp_path)
    with pytest.raises(CameraError) as err:
        await cam.setup_instrument("nonexistent")
    for name, _ in get_instrument("LATISS").filters:
        assert name in str(err.value)
    with pytest.raises(CameraError, match="image type"):
        await cam.take_image(ExposureRequest("SKY", 1.0, "g"), [0])
    with pytest.raises(CameraError, match="BIAS"):
        await cam.take_image(ExposureRequest("BIAS", 1.0, "g"), [0])
    with pytest.raises(CameraError, match="exposure time"):
        await cam.take_image(ExposureRequest("DARK", -1.0, "g"), [0])
    with pytest.raises(CameraError, match="no detector 5"):
        await cam.take_image(bias_request(), [5])
    await cam.close()
    with pytest.raises(CameraError, match="closed"):
        await cam.take_image(bias_request(), [0])


async def test_comcam_three_detectors(tmp_path: Path) -> None:
    cam = make_camera(tmp_path, name="LSSTComCam")
    await cam.setup_instrument("r_03")
    frames = await cam.take_image(ExposureRequest("FLAT", 1.0, "g"), [4, 0, 8])
    assert [f.detector for f in frames] == [4, 0, 8]
    assert len({f.exposure_id for f in frames}) == 1
    assert len({f.path for f in frames}) == 3
    inst = get_instrument("LSSTComCam")
    for f in frames:
        assert f.path.name == f"CC_O_20261127_000001_det{f.detector:03d}.fits"
        h = fits.getheader(f.path)
        assert f"{h['RAFTBAY']}_{h['CCDSLOT']}" == inst.detector(f.detector).name
        assert translate(h).detector == f.detector
        assert h["INSTRUME"] == "ComCam"
        assert h["CAMCODE"] == "CC"
        assert h["FILTER"] == "r_03"
        assert h["IMGTYPE"] == "FLAT"
    assert sorted(p.name for p in (tmp_path / "raw").glob("*.fits")) == sorted(f.path.name for f in frames)


async def test_write_truth(tmp_path: Path) -> None:
    cam = make_camera(tmp_path, name="LSSTComCam")
    paths = cam.write_truth([0, 1])
    assert [p.name for p in paths] == ["truth_det000.fits", "truth_det001.fits", "truth.json"]
    with fits.open(paths[1]) as hdul:
        assert hdul[0].header["DETECTOR"] == 1
        amp = get_instrument("LSSTComCam").detector(1).amplifier("C03")
        assert hdul[0].header["HIERARCH C03 NOMINAL GAIN"] == pytest.approx(amp.gain)
        assert hdul[0].header["HIERARCH C03 GAIN"] == pytest.approx(cam.truth(1)["amplifiers"]["C03"]["gain"])
        assert hdul[0].header["HIERARCH C03 READ NOISE E"] == pytest.approx(amp.read_noise)
        np.testing.assert_allclose(hdul[1].data, cam.bias_structure_e(1), rtol=1e-6, atol=1e-4)
    summary = json.loads(paths[2].read_text())
    c03 = summary["detectors"]["1"]["amplifiers"]["C03"]
    assert c03 == pytest.approx(cam.truth(1)["amplifiers"]["C03"])
    assert set(c03) >= {"gain", "read_noise_e", "bias_level_adu", "dark_current_e_per_s"}

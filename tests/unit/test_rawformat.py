"""The cameras' raw format and DM's pixel frame, checked against the facts of rubin_formats.md §1-2.

The expected placement below is written out from the camera geometry tables (§2.1, §2.2), not
taken from cpflow's geometry code, so that the two can disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from services.generator.defects import find_defects
from shared.butler.raws import detector_for_raw
from shared.images import CalibImage, RawDetectorImage
from shared.instruments import Detector, get_instrument
from shared.isr import IsrConfig, run_isr
from shared.rawformat import RawFormatError, check_raw, raw_geometry, read_raw, segment_header
from tests.unit.realraws import COMCAM_OBJECT, LATISS_DARK, real_header, write_real_raw

BIAS = 1000

# rubin_formats.md §2.1/§2.2: per vendor, prescan columns, data width and height, and the raw flips
# (flip_x, flip_y) of the top-row (C1x) and bottom-row (C0x) amplifiers. Amplifier Cxy sits at
# column y of row x (C10 top left, C00 bottom left).
VENDORS = {
    "ITL": {"prescan": 3, "w": 509, "h": 2000, "C1": (True, True), "C0": (True, False)},
    "E2V": {"prescan": 10, "w": 512, "h": 2002, "C1": (True, True), "C0": (False, False)},
}
SEGMENT_SHAPE = (2048, 576)


def e2v_header() -> fits.Header:
    """An LSSTCam e2v raw's primary header: the real ComCam header moved to R22_S22 of LSSTCam."""
    return real_header(
        COMCAM_OBJECT,
        INSTRUME="LSSTCam",
        CAMCODE="MC",
        OBSID="MC_O_20241108_000266",
        CCDSLOT="S22",
        LSST_NUM="E2V-CCD250-370",
        CCD_MANU="E2V",
        CCD_TYPE="CCD250",
        FILTER="r_57",
    )


def segments_from_dm(image: np.ndarray, vendor: str) -> dict[str, np.ndarray]:
    """Raw segments (576 x 2048, readout order) whose data pixels hold ``image`` + BIAS at DM (x, y)."""
    v = VENDORS[vendor]
    w, h, pre = v["w"], v["h"], v["prescan"]
    rows, cols = np.mgrid[0:h, 0:w]
    out = {}
    for row in (0, 1):
        for col in range(8):
            flip_x, flip_y = v[f"C{row}"]
            x = col * w + (w - 1 - cols if flip_x else cols)
            y = row * h + (h - 1 - rows if flip_y else rows)
            segment = np.full(SEGMENT_SHAPE, BIAS, dtype=np.int32)
            segment[:h, pre : pre + w] = BIAS + image[y, x]
            out[f"C{row}{col}"] = segment
    return out


def dm_ramp(vendor: str) -> np.ndarray:
    """Pixel value = y x width + x at DM position (x, y)."""
    v = VENDORS[vendor]
    height, width = 2 * v["h"], 8 * v["w"]
    return np.arange(height * width, dtype=np.int64).reshape(height, width)


def _case(vendor: str, tmp_path: Path) -> tuple[Path, Detector, fits.Header]:
    if vendor == "ITL":
        return tmp_path / "latiss.fits", get_instrument("LATISS").detector(0), real_header(LATISS_DARK)
    return tmp_path / "e2v.fits", get_instrument("LSSTCam").detector(98), e2v_header()


def _write(path: Path, vendor: str, detector: Detector, image: np.ndarray, header: fits.Header) -> Path:
    return write_real_raw(path, header, detector, segments_from_dm(image, vendor))


def _read(path: Path) -> tuple[RawDetectorImage, Detector]:
    raw = read_raw(path)
    instrument = get_instrument("LATISS" if raw.header["INSTRUME"] == "LATISS" else "LSSTCam")
    return raw, detector_for_raw(instrument, raw)


@pytest.mark.parametrize("vendor", ["ITL", "E2V"])
def test_isr_returns_every_pixel_at_its_dm_position(vendor: str, tmp_path: Path) -> None:
    """A real-format raw whose data pixels encode their DM (x, y): ISR gives back exactly the ramp."""
    path, detector, header = _case(vendor, tmp_path)
    ramp = dm_ramp(vendor)
    _write(path, vendor, detector, ramp, header)
    with fits.open(path, disable_image_compression=True) as hdul:
        assert (hdul[1].header["ZCMPTYPE"], hdul[1].header["ZBITPIX"], hdul[1].header["ZTILE2"]) == (
            "RICE_1",
            32,
            1,
        )
    raw, geometry = _read(path)
    assert raw.detector_id == detector.id
    assert geometry.shape == ramp.shape == ((4000, 4072) if vendor == "ITL" else (4004, 4096))
    result = run_isr(
        raw, geometry, config=IsrConfig(do_saturation=False), gains=dict.fromkeys(raw.amplifiers, 1.0)
    )
    image = result.image.image
    assert image.shape == ramp.shape
    assert np.array_equal(image, ramp.astype(np.float32)), "pixels off their DM position"
    # The corners: C00 bottom left, C07 bottom right, C10 top left, C17 top right.
    boxes = result.amp_boxes
    assert (boxes["C00"][0].start, boxes["C00"][1].start) == (0, 0)
    assert boxes["C17"][0].stop == ramp.shape[0] and boxes["C17"][1].stop == ramp.shape[1]
    assert boxes["C10"][1].start == 0 and boxes["C10"][0].stop == ramp.shape[0]


@pytest.mark.parametrize("vendor", ["ITL", "E2V"])
def test_defects_are_found_at_their_dm_position(vendor: str, tmp_path: Path) -> None:
    """Hot pixels injected at DM positions come out of defect finding at those positions."""
    path, detector, header = _case(vendor, tmp_path)
    v = VENDORS[vendor]
    height, width = 2 * v["h"], 8 * v["w"]
    rng = np.random.default_rng(5)
    dark = np.rint(rng.normal(200.0, 0.4, (height, width))).astype(np.int64)  # below the 3 e-/s cut
    hot = [(10, 3990), (4000, 7), (1500, 2100), (width - 1, height - 1), (600, 1990)]  # (x, y)
    for x, y in hot:
        dark[y, x] += 5000
    _write(path, vendor, detector, dark, header)
    raw, geometry = _read(path)
    result = run_isr(raw, geometry, gains=dict.fromkeys(raw.amplifiers, 1.0))
    combined = CalibImage(
        image=result.image.image, mask=np.zeros_like(result.image.mask), variance=result.image.variance
    )
    defects = find_defects(dark=combined, flat=None, amp_boxes=result.amp_boxes)
    assert sorted(defects.boxes) == sorted((x, y, 1, 1) for x, y in hot)


def test_segment_keywords_are_those_of_real_files() -> None:
    """DATASEC, DETSEC, DETSIZE and DTV/DTM written for ITL and e2v match the real files (§1.3)."""
    itl = get_instrument("LATISS").detector(0)
    e2v = get_instrument("LSSTCam").detector(98)
    expected = {
        (itl, "C10"): ("[509:1,1:2000]", 513, 0, -1.0, 1.0),
        (itl, "C17"): ("[4072:3564,1:2000]", 4076, 0, -1.0, 1.0),
        (itl, "C07"): ("[4072:3564,4000:2001]", 4076, 4001, -1.0, -1.0),
        (itl, "C00"): ("[509:1,4000:2001]", 513, 4001, -1.0, -1.0),
        (e2v, "C10"): ("[512:1,1:2002]", 523, 0, -1.0, 1.0),
        (e2v, "C17"): ("[4096:3585,1:2002]", 4107, 0, -1.0, 1.0),
        (e2v, "C07"): ("[3585:4096,4004:2003]", 3574, 4005, 1.0, -1.0),
        (e2v, "C00"): ("[1:512,4004:2003]", -10, 4005, 1.0, -1.0),
    }
    for (det, name), (detsec, dtv1, dtv2, dtm11, dtm22) in expected.items():
        hdr = segment_header(det, det.amplifier(name))
        assert hdr["EXTNAME"] == "Segment" + name[1:]
        assert (hdr["DETSEC"], hdr["DTV1"], hdr["DTV2"], hdr["DTM1_1"], hdr["DTM2_2"]) == (
            detsec,
            dtv1,
            dtv2,
            dtm11,
            dtm22,
        ), (det.physical_type, name)
    assert segment_header(itl, itl.amplifier("C10"))["DATASEC"] == "[4:512,1:2000]"
    assert segment_header(e2v, e2v.amplifier("C10"))["DATASEC"] == "[11:522,1:2002]"
    assert segment_header(itl, itl.amplifier("C10"))["DETSIZE"] == "[1:4072,1:4000]"
    assert segment_header(e2v, e2v.amplifier("C10"))["DETSIZE"] == "[1:4096,1:4004]"
    assert [segment_header(itl, a)["CHANNEL"] for a in itl.amplifiers] == list(range(1, 17))


def _small_latiss(tmp_path: Path, name: str = "raw.fits", *, compress: bool = True) -> tuple[Path, Detector]:
    det = get_instrument("LATISS").detector(0).with_data_shape(10, 12)
    rng = np.random.default_rng(1)
    amps = {a.name: rng.integers(900, 1100, (a.raw_rows, a.raw_cols), dtype=np.int32) for a in det.amplifiers}
    return write_real_raw(tmp_path / name, real_header(LATISS_DARK), det, amps, compress=compress), det


def test_compressed_and_plain_segments_read_the_same_and_tables_are_not_amplifiers(tmp_path: Path) -> None:
    packed, _ = _small_latiss(tmp_path, "packed.fits")
    plain, _ = _small_latiss(tmp_path, "plain.fits", compress=False)
    with fits.open(plain) as hdul:
        assert len(hdul) == 19 and not isinstance(hdul[1], fits.CompImageHDU)
        assert [h.header.get("EXTNAME") for h in hdul[17:]] == ["REB_COND", "CONFIG_COND"]
    a, b = read_raw(packed), read_raw(plain)
    assert list(a.amplifiers) == [f"C1{i}" for i in range(8)] + [f"C0{7 - i}" for i in range(8)]
    for name in a.amplifiers:
        assert a.amplifiers[name].dtype == np.int32
        np.testing.assert_array_equal(a.amplifiers[name], b.amplifiers[name])
    assert set(a.conditions) == {"REB_COND", "CONFIG_COND"}
    assert (a.exposure_id, a.detector_id) == (2024062400169, 0)


def test_overscan_boxes_follow_the_on_disk_segment_shape(tmp_path: Path) -> None:
    """A segment wider and taller than nominal keeps its data box; the overscans take the rest."""
    det = get_instrument("LATISS").detector(0)
    shapes = {a.name: (2060, 600) for a in det.amplifiers}
    adapted = raw_geometry(det, shapes)
    amp = adapted.amplifier("C10")
    assert (amp.data_rows, amp.data_cols, amp.prescan_cols) == (2000, 509, 3)
    assert (amp.serial_overscan_cols, amp.parallel_overscan_rows) == (600 - 512, 60)
    assert adapted.shape == (4000, 4072)
    with pytest.raises(RawFormatError, match="cannot hold"):
        raw_geometry(det, {a.name: (1990, 576) for a in det.amplifiers}, source="x.fits")


def test_files_that_are_not_raws_are_refused_by_name(tmp_path: Path) -> None:
    path, det = _small_latiss(tmp_path)
    # Segments out of order.
    with fits.open(path) as hdul:
        hdus = [hdul[0], hdul[2], hdul[1], *hdul[3:]]
        fits.HDUList([h.copy() for h in hdus]).writeto(tmp_path / "swapped.fits")
    with pytest.raises(RawFormatError, match=r"swapped\.fits: image HDU 1 has EXTNAME 'Segment11'"):
        read_raw(tmp_path / "swapped.fits")
    # A segment missing.
    with fits.open(path) as hdul:
        fits.HDUList([h.copy() for i, h in enumerate(hdul) if i != 5]).writeto(tmp_path / "short.fits")
    with pytest.raises(RawFormatError, match=r"short\.fits: 15 image HDUs"):
        check_raw(tmp_path / "short.fits")
    # Another instrument's raw where a LATISS one is expected.
    comcam = tmp_path / "comcam.fits"
    write_real_raw(
        comcam, real_header(COMCAM_OBJECT), get_instrument("LSSTComCam").detector(0).with_data_shape(10, 12)
    )
    with pytest.raises(RawFormatError, match=r"comcam\.fits: .*LSSTComCam raw, not LATISS"):
        check_raw(comcam, get_instrument("LATISS"))
    # Not a FITS file; a header without DAYOBS.
    (tmp_path / "notes.fits").write_text("not a fits file")
    with pytest.raises(RawFormatError, match=r"notes\.fits: not a readable FITS file"):
        check_raw(tmp_path / "notes.fits")
    header = real_header(LATISS_DARK)
    del header["DAYOBS"]
    write_real_raw(tmp_path / "nodayobs.fits", header, det)
    with pytest.raises(RawFormatError, match=r"nodayobs\.fits: the primary header lacks DAYOBS"):
        check_raw(tmp_path / "nodayobs.fits")
    # A float segment.
    with fits.open(path) as hdul:
        copies = [h.copy() for h in hdul]
    copies[3] = fits.ImageHDU(np.zeros((58, 79), dtype=np.float32))
    copies[3].header["EXTNAME"] = "Segment12"
    fits.HDUList(copies).writeto(tmp_path / "float.fits")
    with pytest.raises(RawFormatError, match=r"float\.fits: segment Segment12 is BITPIX=-32"):
        read_raw(tmp_path / "float.fits")


def test_lsstcam_focal_plane_ids_and_vendors() -> None:
    lsstcam = get_instrument("LSSTCam")
    assert len(lsstcam.detectors) == 205 and len(lsstcam.science_detector_ids) == 189
    assert lsstcam.detector(98).name == "R22_S22" and lsstcam.detector(29).name == "R10_S02"
    vendors = [lsstcam.detector(i).physical_type for i in lsstcam.science_detector_ids]
    assert (vendors.count("ITL"), vendors.count("E2V")) == (72, 117)
    assert {lsstcam.detector(i).physical_type for i in range(36, 72)} == {"E2V"}  # R11..R14
    assert {lsstcam.detector(i).physical_type for i in range(72, 81)} == {"ITL"}  # R20
    corners = {d.id: (d.name, d.purpose) for d in lsstcam.detectors if d.purpose != "SCIENCE"}
    assert corners[189] == ("R00_SG0", "GUIDER") and corners[204] == ("R44_SW1", "WAVEFRONT")
    assert len(corners) == 16
    wavefront = lsstcam.detector(191)
    assert len(wavefront.amplifiers) == 8 and wavefront.shape == (2000, 4072)
    assert lsstcam.detector(98).shape == (4004, 4096) and lsstcam.detector(29).shape == (4000, 4072)


async def test_simulated_lsstcam_writes_itl_and_e2v_raws(tmp_path: Path) -> None:
    from services.acquirer.camera import ExposureRequest
    from services.acquirer.simulated_camera import SimulatedCamera

    lsstcam = get_instrument("LSSTCam")
    cam = SimulatedCamera(lsstcam, tmp_path / "raw", amp_data_shape=(20, 16), state_dir=tmp_path / "state")
    frames = await cam.take_image(ExposureRequest("BIAS", 0.0, "g"), [29, 98])
    for frame in frames:
        raw = read_raw(frame.path)
        vendor = lsstcam.detector(frame.detector).physical_type
        assert raw.detector_id == frame.detector and raw.exposure_id == frame.exposure_id
        assert (raw.header["INSTRUME"], raw.header["CCD_MANU"]) == ("LSSTCam", vendor)
        assert f"{raw.header['RAFTBAY']}_{raw.header['CCDSLOT']}" == lsstcam.detector(frame.detector).name
        prescan, overscan, parallel = (10, 54, 46) if vendor == "E2V" else (3, 64, 48)
        assert raw.amplifiers["C10"].shape == (20 + parallel, prescan + 16 + overscan)
        assert raw.amp_headers["C10"]["DATASEC"] == f"[{prescan + 1}:{prescan + 16},1:20]"
        geometry = detector_for_raw(lsstcam, raw)
        assert geometry.amplifiers[0].prescan_cols == prescan
        image = run_isr(raw, geometry).image.image
        assert image.shape == (40, 128)
        assert abs(float(np.median(image))) < 30.0  # overscan-subtracted bias in e-: near zero

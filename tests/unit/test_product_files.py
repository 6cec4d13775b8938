"""Product files in Rubin's layouts (rubin_formats.md §6, §7), checked against the schemas and lsst-images.

The schemas are written here as data from the reference notes, not taken from cpflow's code, so a
column or card that cpflow drops or renames fails these tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import astropy.table
import lsst.images
import numpy as np
import pytest
from astropy.io import fits

from services.generator.defects import DefectResult
from services.generator.ptc import PairMeasurement, ptc_table, solve_ptc
from shared import isrcalib
from shared.butler.formatters import TableFitsFormatter
from shared.images import CalibImage, MaskPlane
from shared.instruments import get_instrument
from shared.isrcalib import isrcalib_metadata

# afw's default mask planes and bits (§6.2) and lsst-images' names for them (§8).
AFW_PLANES = {"BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5, "SUSPECT": 7, "NO_DATA": 8}
LSST_IMAGES_NAME = {"SAT": "SATURATED", "INTRP": "INTERPOLATED", "CR": "COSMIC_RAY", "EDGE": "DETECTION_EDGE"}

# IsrCalib metadata keys (§7.1) and the PTC schema's columns with their shape per amplifier (§7.3):
# "" scalar, "N" per pair, "N2" (N, 2), "P" fit parameters, "FF" F×F raveled, "NSS" N×S×S raveled,
# "NFF" N×F×F raveled, "B" the bad-amplifier list.
ISRCALIB_KEYS = {
    "OBSTYPE",
    "CALIBCLS",
    "INSTRUME",
    "RAFTNAME",
    "SLOTNAME",
    "DETECTOR",
    "DET_NAME",
    "DET_SER",
    "CALIB_ID",
    "CALIBDATE",
    "CALIB_CREATION_DATE",
    "CALIB_CREATION_TIME",
}
PTC_COLUMNS = {
    "AMPLIFIER_NAME": "",
    "PTC_FIT_TYPE": "",
    "COV_MATRIX_SIDE": "",
    "COV_MATRIX_SIDE_FULL_COV_FIT": "",
    "INPUT_EXP_ID_PAIRS": "N2",
    "INPUT_EXP_PAIR_MJD_START": "N",
    "EXP_ID_MASK": "N",
    "EXP_ID_ROLLOFF_MASK": "N",
    "RAW_EXP_TIMES": "N",
    "RAW_MEANS": "N",
    "RAW_VARS": "N",
    "RAW_DELTAS": "N",
    "ROW_MEAN_VARIANCE": "N",
    "GAIN": "",
    "GAIN_ERR": "",
    "GAIN_UNADJUSTED": "",
    "GAIN_LIST": "N",
    "OVERSCAN_MEDIAN_LIST": "N",
    "OVERSCAN_MEDIAN": "",
    "OVERSCAN_MEDIAN_SIGMA": "",
    "NOISE_LIST": "N",
    "NOISE": "",
    "NOISE_ERR": "",
    "HIST_VARS": "N",
    "HIST_CHI2_DOFS": "N",
    "KS_PVALUES": "N",
    "PTC_FIT_PARS": "P",
    "PTC_FIT_PARS_ERROR": "P",
    "PTC_FIT_CHI_SQ": "",
    "PTC_TURNOFF": "",
    "PTC_TURNOFF_SAMPLING_ERROR": "",
    "PTC_ROLLOFF": "",
    "PTC_ROLLOFF_ERROR": "",
    "PTC_ROLLOFF_TAU": "",
    "PTC_ROLLOFF_TAU_ERROR": "",
    "A_MATRIX": "FF",
    "B_MATRIX": "FF",
    "NOISE_MATRIX": "FF",
    "BAD_AMPS": "B",
    "PHOTO_CHARGE": "N",
    "PHOTO_CHARGE_DELTAS": "N",
    "AMP_OFFSETS": "N",
    "NPIXEL_COVARIANCES": "NSS",
    "COVARIANCES": "NSS",
    "COVARIANCES_SQRT_WEIGHTS": "NSS",
    "COVARIANCES_MODEL": "NFF",
    "FINAL_VARS": "N",
    "FINAL_MODEL_VARS": "N",
    "FINAL_MEANS": "N",
}

LATISS = get_instrument("LATISS")
DETECTOR = LATISS.detector(0)


def _calib(tmp_path: Path, unit: str | None = "electron") -> tuple[CalibImage, Path]:
    rng = np.random.default_rng(3)
    header = {"OBSTYPE": "dark", "DARKTIME": 1.0, "EXPTIME": 1.0, "NCOMBINE": 7, "DETNAME": DETECTOR.name}
    if unit:
        header["BUNIT"] = unit
    image = CalibImage.empty((40, 30), header)
    image.image[:] = rng.normal(5.0, 1.0, image.image.shape)
    image.variance[:] = rng.uniform(1.0, 2.0, image.image.shape)
    image.mask[2, 3] = MaskPlane.BAD
    image.mask[5, 7] = MaskPlane.SAT | MaskPlane.CR
    image.mask[9, 11] = MaskPlane.NO_DATA
    image.mask[13, 17] = MaskPlane.INTRP | MaskPlane.SUSPECT
    path = tmp_path / "dark.fits"
    image.to_hdulist().writeto(path)
    return image, path


def test_calibration_images_have_afws_layout(tmp_path: Path) -> None:
    _image, path = _calib(tmp_path)
    with fits.open(path) as hdul:
        assert [h.header.get("EXTNAME") for h in hdul[1:]] == ["IMAGE", "MASK", "VARIANCE"]
        primary = hdul[0].header
        assert hdul[0].data is None
        assert "BUNIT" not in primary  # afw moves it to the pixel HDUs
        assert primary["DARKTIME"] == 1.0 and primary["NCOMBINE"] == 7  # read as metadata (INHERIT)
        for hdu in hdul[1:]:
            h = hdu.header
            assert h["EXTTYPE"] == h["EXTNAME"]
            assert h["INHERIT"] is True  # without it afw ignores the primary (§6.3)
            assert (h["LTV1"], h["LTV2"]) == (0, 0)
            assert (h["CTYPE1A"], h["CTYPE2A"], h["CUNIT1A"]) == ("LINEAR", "LINEAR", "PIXEL")
            assert (h["CRPIX1A"], h["CRVAL1A"], h["CRPIX2A"], h["CRVAL2A"]) == (1, 0, 1, 0)
        assert hdul["IMAGE"].header["BUNIT"] == "electron"
        assert hdul["VARIANCE"].header["BUNIT"] == "electron**2"
        assert "BUNIT" not in hdul["MASK"].header
        assert {k[3:]: v for k, v in hdul["MASK"].header.items() if k.startswith("MP_")}.items() >= (
            AFW_PLANES.items()
        )
        assert hdul["IMAGE"].data.dtype == np.dtype(">f4") and hdul["MASK"].data.dtype == np.dtype(">i4")


def test_lsst_images_reads_cpflows_calibration_images(tmp_path: Path) -> None:
    image, path = _calib(tmp_path)
    legacy = lsst.images.MaskedImage.read_legacy(str(path))
    assert legacy.image.array.shape == image.image.shape
    np.testing.assert_array_equal(legacy.image.array, image.image)
    np.testing.assert_array_equal(legacy.variance.array, image.variance)
    assert str(legacy.image.unit) == "electron"
    for plane in MaskPlane:
        if plane.name not in AFW_PLANES:
            continue
        expected = (image.mask & int(plane)) != 0
        got = legacy.mask.get(LSST_IMAGES_NAME.get(plane.name, plane.name))
        np.testing.assert_array_equal(got, expected, err_msg=plane.name)
    assert legacy.mask.get("COSMIC_RAY")[5, 7] and legacy.mask.get("SATURATED")[5, 7]


def test_a_dark_in_electrons_per_second_keeps_its_units_in_lsst_images(tmp_path: Path) -> None:
    _image, path = _calib(tmp_path, unit="electron/s")
    legacy = lsst.images.MaskedImage.read_legacy(str(path))
    assert legacy.image.unit == legacy.variance.unit**0.5
    assert str(legacy.image.unit) == "electron / s"


def test_the_formatter_round_trips_and_remaps_older_mask_bits(tmp_path: Path) -> None:
    image, path = _calib(tmp_path)
    with fits.open(path) as hdul:
        back = CalibImage.from_hdulist(hdul)
    np.testing.assert_array_equal(back.mask, image.mask)
    assert back.header["BUNIT"] == "electron"
    # A file cpflow wrote before (its own bits: CR = 4, NO_DATA = 8) is read by plane name.
    with fits.open(path) as hdul:
        old_bits = {"BAD": 0, "SAT": 1, "CR": 2, "NO_DATA": 3, "SUSPECT": 4, "DETECTED": 5, "INTRP": 6}
        mask = np.zeros_like(hdul["MASK"].data)
        mask[5, 7] = (1 << 1) | (1 << 2)
        mask[9, 11] = 1 << 3
        hdu = fits.ImageHDU(mask, name="MASK")
        for name, bit in old_bits.items():
            hdu.header[f"HIERARCH MP_{name}"] = bit
        old = CalibImage.from_hdulist(fits.HDUList([hdul[0], hdul["IMAGE"], hdu, hdul["VARIANCE"]]))
    assert old.mask[5, 7] == MaskPlane.SAT | MaskPlane.CR
    assert old.mask[9, 11] == MaskPlane.NO_DATA


def _write_table(table: astropy.table.Table, path: Path) -> fits.HDUList:
    from lsst.resources import ResourcePath

    formatter = TableFitsFormatter.__new__(TableFitsFormatter)
    formatter.write_local_file(table, ResourcePath(str(path)))
    return fits.open(path)


def test_defects_are_an_isrcalib_table(tmp_path: Path) -> None:
    result = DefectResult(boxes=[(3, 4, 1, 10), (20, 0, 2, 2)], mask=np.zeros((50, 50), dtype=bool))
    table = result.to_table()
    table.meta.update(isrcalib_metadata(isrcalib.DEFECTS, "LATISS", DETECTOR))
    with _write_table(table, tmp_path / "defects.fits") as hdul:
        assert hdul[0].data is None and len(hdul) == 2
        header, data = hdul[1].header, hdul[1].data
        assert set(header) >= ISRCALIB_KEYS
        assert header["OBSTYPE"] == "defects" and header["CALIBCLS"] == "lsst.ip.isr.defects.Defects"
        assert header["DEFECTS_SCHEMA"] == "" and header["DEFECTS_VERSION"] == 2.0
        assert (header["RAFTNAME"], header["SLOTNAME"], header["DET_NAME"]) == ("RXX", "S00", "RXX_S00")
        assert data.columns.names[:4] == ["x0", "y0", "width", "height"]
        assert all(np.issubdtype(data[c].dtype, np.integer) for c in ("x0", "y0", "width", "height"))
        assert [tuple(int(v) for v in row[:4]) for row in data] == [(3, 4, 1, 10), (20, 0, 2, 2)]


def _pairs(gain: float, noise_e: float, n_pairs: int, side: int = 3) -> list[PairMeasurement]:
    a00 = 2.5e-6
    pairs = []
    for k, mu in enumerate(np.geomspace(500.0, 60_000.0, n_pairs)):
        variance = (np.expm1(2 * a00 * mu * gain) / (2 * a00 * gain**2)) + (noise_e / gain) ** 2
        covariances = np.zeros((side, side))
        covariances[0, 0] = variance
        weights = np.full((side, side), math.sqrt(5e5) / variance)
        pairs.append(
            PairMeasurement(
                exposure_ids=(100 + 2 * k, 101 + 2 * k),
                exposure_time=float(mu / 1000),
                mean=float(mu),
                variance=float(variance),
                covariances=covariances,
                cov_weights=weights,
                n_pixels=1_000_000,
                mean1=float(mu) + 1,
                mean2=float(mu) - 1,
                row_mean_variance=0.5,
            )
        )
    return pairs


def test_the_ptc_has_ip_isrs_schema_and_metadata(tmp_path: Path) -> None:
    measurements = {"C10": _pairs(1.1, 8.0, 12), "C11": _pairs(1.3, 6.0, 12)}
    solved = solve_ptc(measurements)
    table = ptc_table(solved, measurements)
    table.meta.update(isrcalib_metadata(isrcalib.PTC, "LATISS", DETECTOR))
    with _write_table(table, tmp_path / "ptc.fits") as hdul:
        header = hdul[1].header
        assert set(header) >= ISRCALIB_KEYS
        assert header["OBSTYPE"] == "PTC"
        assert header["PTC_SCHEMA"] == "Gen3 Photon Transfer Curve" and header["PTC_VERSION"] == 2.6
        assert header["CALIBCLS"] == "lsst.ip.isr.ptcDataset.PhotonTransferCurveDataset"
        written = astropy.table.Table(hdul[1].data)
    assert set(written.colnames) == set(PTC_COLUMNS)
    n = 12
    side = int(written["COV_MATRIX_SIDE"][0])
    full = int(written["COV_MATRIX_SIDE_FULL_COV_FIT"][0])
    n_pars = written["PTC_FIT_PARS"].shape[1]  # EXPAPPROXIMATION: a00, gain, n00 (and what ip_isr adds)
    assert n_pars >= 3
    lengths = {
        "": (),
        "N": (n,),
        "N2": (n, 2),
        "P": (n_pars,),
        "FF": (full * full,),
        "NSS": (n * side * side,),
    }
    lengths["NFF"] = (n * full * full,)
    for column, kind in PTC_COLUMNS.items():
        if kind == "B":
            continue
        assert written[column].shape[1:] == lengths[kind], column
    assert list(written["AMPLIFIER_NAME"]) == ["C10", "C11"]
    assert list(written["GAIN"]) == [solved["C10"].gain, solved["C11"].gain]
    assert list(written["NOISE"]) == [solved["C10"].noise, solved["C11"].noise]  # electrons
    assert written["GAIN"] == pytest.approx([1.1, 1.3], rel=0.05)
    assert written["EXP_ID_MASK"].dtype == bool and written["EXP_ID_MASK"].all()
    assert np.isnan(written["PHOTO_CHARGE"]).all()  # not measured: NaN, as ip_isr fills it
    assert [list(p) for p in written["INPUT_EXP_ID_PAIRS"][0][:2]] == [[100, 101], [102, 103]]


def test_verification_results_round_trip_through_parquet(tmp_path: Path) -> None:
    """ArrowAstropy (daf_butler's Parquet conversion) takes the results table as the verifier builds it."""
    from services.verifier.statistics import results_rows

    det = {
        "RXX_S00": {"AMP": {"C10": {"MEAN": 1.0, "NOISE": 8.0}}, "VERIFY": {"AMP": {"C10": {"MEAN": True}}}}
    }
    table = astropy.table.Table(rows=results_rows({7: det}, "BIAS", None))
    import pyarrow.parquet
    from lsst.daf.butler.formatters.parquet import arrow_to_astropy, astropy_to_arrow

    pyarrow.parquet.write_table(astropy_to_arrow(table), tmp_path / "r.parq")
    back = arrow_to_astropy(pyarrow.parquet.read_table(tmp_path / "r.parq"))
    assert back.colnames == table.colnames and len(back) == len(table) > 0
    assert all(back[c].dtype.kind != "O" for c in back.colnames)

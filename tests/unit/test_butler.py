"""Tests of shared.butler against real (SQLite) butler repositories."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import astropy.table
import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time, TimeDelta
from lsst.daf.butler import Butler, CollectionType, DatasetRef, Timespan

from shared.butler import (
    BIAS,
    PTC,
    RAW,
    CertificationConflict,
    calib_chain,
    certify_calibrations,
    create_repository,
    ensure_calibration_collection,
    find_certified,
    ingest_raws,
    open_butler,
    raw_collection,
    register_dataset_types,
    run_collection,
)
from shared.images import CalibImage, RawDetectorImage
from shared.instruments import get_instrument
from tests.unit.realraws import LATISS_DARK, real_header, write_real_raw

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_raw(path: Path, *, exposure_id: int = 2026031500001, detector: int = 0) -> Path:
    """A small real-format LATISS bias: the real 2024 header with another day, number and type."""
    seq_num = exposure_id % 100000
    header = real_header(
        LATISS_DARK,
        DAYOBS="20260315",
        SEQNUM=seq_num,
        OBSID=f"AT_O_20260315_{seq_num:06d}",
        GROUPID="2026-03-15T18:00:00.000",
        IMGTYPE="BIAS",
        TESTTYPE="BIAS",
        EXPTIME=0.0,
        DARKTIME=0.25,
        SHUTTIME=0.0,
        **{"DATE-BEG": "2026-03-15T18:00:00.000", "DATE-END": "2026-03-15T18:00:02.500"},
        **{"MJD-BEG": None, "MJD-END": None, "MJD-OBS": None, "DATE-OBS": "2026-03-15T18:00:00.000"},
        GRATING="empty_1",
        FILTER="empty_1",
    )
    geometry = get_instrument("LATISS").detector(detector).with_data_shape(6, 8)
    rng = np.random.default_rng(exposure_id)
    amps = {
        a.name: rng.integers(1000, 1100, size=(a.raw_rows, a.raw_cols), dtype=np.int32)
        for a in geometry.amplifiers
    }
    return write_real_raw(path, header, geometry, amps)


def make_calib(value: float, shape: tuple[int, int] = (8, 10)) -> CalibImage:
    rng = np.random.default_rng(int(value * 1000))
    image = CalibImage(
        image=rng.normal(value, 1.0, size=shape).astype(np.float32),
        mask=rng.integers(0, 4, size=shape, dtype=np.int32),
        variance=np.full(shape, 2.5, dtype=np.float32),
    )
    image.header["NCOMBINE"] = (5, "number of combined exposures")
    image.header["CALIBDT"] = "2026-03-15"
    return image


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_repository(tmp_path_factory.mktemp("repo"))


def test_create_repository_idempotent(tmp_path: Path) -> None:
    root = create_repository(tmp_path / "repo")
    assert create_repository(tmp_path / "repo") == root
    assert (root / "butler.yaml").exists()
    assert (root / "gen3.sqlite3").exists()
    with open_butler(root, writeable=False) as butler:
        instruments = {rec.name for rec in butler.query_dimension_records("instrument")}
        assert instruments == {"LATISS", "LSSTComCam", "LSSTCam"}
        lsstcam = {rec.id: rec for rec in butler.query_dimension_records("detector", instrument="LSSTCam")}
        assert len(lsstcam) == 205
        assert (lsstcam[98].full_name, lsstcam[98].raft, lsstcam[98].name_in_raft) == (
            "R22_S22",
            "R22",
            "S22",
        )
        assert lsstcam[29].full_name == "R10_S02"
        assert [lsstcam[i].purpose for i in (188, 189, 191)] == ["SCIENCE", "GUIDER", "WAVEFRONT"]
        comcam = butler.query_dimension_records("detector", instrument="LSSTComCam")
        assert sorted(rec.id for rec in comcam) == list(range(9))
        assert {rec.full_name for rec in comcam} == {d.name for d in get_instrument("LSSTComCam").detectors}
        latiss = butler.query_dimension_records("detector", instrument="LATISS")
        assert [(rec.id, rec.full_name, rec.raft) for rec in latiss] == [(0, "RXX_S00", None)]
        filters = butler.query_dimension_records("physical_filter", instrument="LATISS")
        assert {(rec.name, rec.band) for rec in filters} == set(get_instrument("LATISS").filters)
        assert butler.get_dataset_type(BIAS).isCalibration()
        assert not butler.get_dataset_type(RAW).isCalibration()
    with open_butler(root) as butler:
        register_dataset_types(butler)  # again: no conflict


def test_run_collection_names() -> None:
    assert run_collection("LATISS", "r1") == "LATISS/runs/r1"
    assert run_collection("LATISS", "r1", "bias") == "LATISS/runs/r1/bias"
    assert raw_collection("LSSTComCam") == "LSSTComCam/raw/all"
    assert calib_chain("LATISS") == "LATISS/calib"


def test_ingest_raw(repo: Path, tmp_path: Path) -> None:
    latiss = get_instrument("LATISS")
    raw_path = make_raw(tmp_path / "raw.fits")
    run = raw_collection("LATISS")
    with open_butler(repo) as butler:
        refs = ingest_raws(butler, [raw_path], latiss, run=run)
        assert len(refs) == 1
        (exposure,) = butler.query_dimension_records("exposure", instrument="LATISS", exposure=2026031500001)
        assert exposure.observation_type == "bias"
        assert exposure.exposure_time == 0.0
        assert exposure.dark_time == 0.25
        assert exposure.group == "2026-03-15T18:00:00.000"
        assert exposure.day_obs == 20260315
        assert exposure.physical_filter == "empty~empty"
        assert exposure.observation_reason == "bias"  # TESTTYPE, the header has no REASON
        assert exposure.science_program == "unknown"
        assert exposure.has_simulated is False  # every SIMULATE card is 0 or undefined
        assert exposure.timespan.begin == Time("2026-03-15T18:00:00", scale="tai")

        again = ingest_raws(butler, [raw_path], latiss, run=run)
        assert [r.id for r in again] == [r.id for r in refs]
        assert len(butler.query_datasets(RAW, collections=run, instrument="LATISS")) == 1

        raw = butler.get(RAW, instrument="LATISS", exposure=2026031500001, detector=0, collections=run)
        assert isinstance(raw, RawDetectorImage)
        assert len(raw.amplifiers) == 16
        assert (raw.exposure_id, raw.detector_id) == (2026031500001, 0)
        with fits.open(raw_path) as original:
            np.testing.assert_array_equal(raw.amplifiers["C10"], original["Segment10"].data)
            np.testing.assert_array_equal(raw.amplifiers["C00"], original[16].data)


def test_calib_image_roundtrip(repo: Path) -> None:
    run = run_collection("LATISS", "roundtrip", "bias")
    bias = make_calib(1.0)
    with open_butler(repo, run=run) as butler:
        ref = butler.put(bias, BIAS, instrument="LATISS", detector=0)
        back = butler.get(ref)
        path = butler.getURI(ref).ospath
    assert isinstance(back, CalibImage)
    np.testing.assert_array_equal(back.image, bias.image)
    np.testing.assert_array_equal(back.mask, bias.mask)
    np.testing.assert_array_equal(back.variance, bias.variance)
    assert back.header["NCOMBINE"] == 5
    assert path.endswith(".fits")
    with fits.open(path) as hdul:
        assert [hdu.name for hdu in hdul[1:]] == ["IMAGE", "MASK", "VARIANCE"]
        np.testing.assert_array_equal(hdul["IMAGE"].data, bias.image)


def test_table_roundtrip(repo: Path) -> None:
    run = run_collection("LATISS", "roundtrip", "ptc")
    table = astropy.table.Table(
        {"amp": ["C00", "C01"], "gain": [1.07, 1.08], "noise": np.array([8.1, 9.2], dtype=np.float32)}
    )
    table.meta["PTCFIT"] = "EXPAPPROXIMATION"
    with open_butler(repo, run=run) as butler:
        ref = butler.put(table, PTC, instrument="LATISS", detector=0)
        back = butler.get(ref)
        path = butler.getURI(ref).ospath
    assert isinstance(back, astropy.table.Table)
    assert list(back["amp"]) == ["C00", "C01"]
    np.testing.assert_allclose(back["gain"], [1.07, 1.08])
    assert back.meta["PTCFIT"] == "EXPAPPROXIMATION"
    with fits.open(path) as hdul:
        assert isinstance(hdul[1], fits.BinTableHDU)
        assert hdul[1].header["PTCFIT"] == "EXPAPPROXIMATION"


def test_certify(repo: Path) -> None:
    begin = Time("2026-03-15T00:00:00", scale="tai")
    end = Time("2026-04-15T00:00:00", scale="tai")
    calib_collection = "LATISS/calib/daily"
    with open_butler(repo) as butler:
        for run in ("LATISS/runs/c1/bias", "LATISS/runs/c2/bias"):
            butler.collections.register(run)
        ref = butler.put(make_calib(2.0), BIAS, instrument="LATISS", detector=0, run="LATISS/runs/c1/bias")
        other = butler.put(make_calib(3.0), BIAS, instrument="LATISS", detector=0, run="LATISS/runs/c2/bias")

        ensure_calibration_collection(butler, "LATISS", calib_collection)
        ensure_calibration_collection(butler, "LATISS", calib_collection)  # idempotent
        assert butler.registry.getCollectionType("LATISS/calib") is CollectionType.CHAINED
        assert list(butler.registry.getCollectionChain("LATISS/calib")) == [calib_collection]

        assert certify_calibrations(butler, [ref], calib_collection, begin, end) == "certified"
        assert certify_calibrations(butler, [ref], calib_collection, begin, end) == "already-certified"

        inside = Timespan(begin + TimeDelta(3, format="jd"), begin + TimeDelta(3.001, format="jd"))
        found = butler.get(BIAS, instrument="LATISS", detector=0, collections="LATISS/calib", timespan=inside)
        np.testing.assert_array_equal(found.image, make_calib(2.0).image)

        with pytest.raises(CertificationConflict) as excinfo:
            certify_calibrations(
                butler,
                [other],
                calib_collection,
                begin + TimeDelta(10, format="jd"),
                end + TimeDelta(10, format="jd"),
            )
        message = str(excinfo.value)
        assert "2026-03-15T00:00:00.000" in message and "2026-04-15T00:00:00.000" in message
        assert "detector=0" in message and calib_collection in message and "bias" in message

        # Adjacent (half-open) range is fine.
        later = end + TimeDelta(30, format="jd")
        assert certify_calibrations(butler, [other], calib_collection, end, later) == "certified"
        certified = find_certified(butler, BIAS, "LATISS", 0, calib_collection)
        assert [(r.id, ts) for r, ts in certified] == [
            (ref.id, Timespan(begin, end)),
            (other.id, Timespan(end, later)),
        ]
        assert find_certified(butler, BIAS, "LATISS", 0, "LATISS/calib") == certified


def _bias_in_run(butler: Butler, run: str) -> DatasetRef:
    butler.collections.register(run)
    return butler.put(make_calib(2.0), BIAS, instrument="LATISS", detector=0, run=run)


@pytest.mark.parametrize("kind", [CollectionType.CALIBRATION, CollectionType.CHAINED])
def test_a_calib_collection_cpflow_did_not_make_is_left_unchanged(
    tmp_path: Path, kind: CollectionType
) -> None:
    """As obs_lsst makes it (CALIBRATION), or a chain of its own: certified beside it, told how to chain."""
    root = create_repository(tmp_path / "repo")
    with open_butler(root) as butler:
        butler.collections.register("LATISS/calib", kind, doc="curated")
        if kind is CollectionType.CHAINED:
            butler.collections.register("LATISS/calib/curated", CollectionType.CALIBRATION)
            butler.collections.extend_chain("LATISS/calib", ["LATISS/calib/curated"])
        ref = _bias_in_run(butler, "LATISS/runs/x/bias")
        note = ensure_calibration_collection(butler, "LATISS", "LATISS/calib/daily")
        assert note is not None and "LATISS/calib/daily" in note and "unchanged" in note
        assert certify_calibrations(butler, [ref], "LATISS/calib/daily", None, None) == "certified"
        info = butler.collections.get_info("LATISS/calib")
        assert info.type is kind and info.doc == "curated"
        if kind is CollectionType.CHAINED:
            assert info.children == ("LATISS/calib/curated",)
            assert "butler collection-chain" in note
        else:
            assert "not a chain" in note
        assert len(find_certified(butler, BIAS, "LATISS", 0, "LATISS/calib/daily")) == 1


def test_a_chain_that_already_holds_the_collection_is_used_as_it_is(tmp_path: Path) -> None:
    """The summit's layout: someone else's LATISS/calib chain already holds LATISS/calib/daily."""
    root = create_repository(tmp_path / "repo")
    with open_butler(root) as butler:
        butler.collections.register("LATISS/calib/daily", CollectionType.CALIBRATION)
        butler.collections.register("LATISS/calib", CollectionType.CHAINED, doc="summit")
        butler.collections.extend_chain("LATISS/calib", ["LATISS/calib/daily"])
        assert ensure_calibration_collection(butler, "LATISS", "LATISS/calib/daily") is None
        assert ensure_calibration_collection(butler, "LATISS", "LATISS/calib/other") is not None
        assert butler.collections.get_info("LATISS/calib").children == ("LATISS/calib/daily",)


def test_a_calib_collection_of_another_type_is_refused(tmp_path: Path) -> None:
    root = create_repository(tmp_path / "repo")
    with open_butler(root) as butler:
        butler.collections.register("LATISS/calib/daily", CollectionType.RUN)
        with pytest.raises(TypeError, match="not CALIBRATION"):
            ensure_calibration_collection(butler, "LATISS", "LATISS/calib/daily")


def test_fresh_process_knows_storage_classes(repo: Path) -> None:
    """A Butler opened by another process, with no search path, reads cpflow datasets."""
    run = run_collection("LATISS", "fresh", "bias")
    with open_butler(repo, run=run) as butler:
        butler.put(make_calib(4.0), BIAS, instrument="LATISS", detector=0)
    script = textwrap.dedent(
        f"""
        from lsst.daf.butler import Butler
        butler = Butler.from_config({str(repo)!r}, collections={run!r})
        image = butler.get("bias", instrument="LATISS", detector=0)
        print(type(image).__name__, butler.get_dataset_type("bias").storageClass_name)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert out.stdout.split() == ["CalibImage", "CpflowCalibImage"]
    assert (
        Butler.from_config(str(repo)).storageClasses.getStorageClass("CpflowTable").pytype
        is astropy.table.Table
    )


def test_one_retry_policy_retries_only_transient_errors() -> None:
    import sqlalchemy.exc

    from shared.retry import call_with_retries, retrying

    calls = []

    def flaky(x: int, *, y: int) -> int:
        calls.append(x)
        if len(calls) < 3:
            raise sqlalchemy.exc.OperationalError("INSERT ...", {}, Exception("database is locked"))
        return x + y

    assert retrying(5, first_delay=0.001)(flaky, 1, y=2) == 3
    assert len(calls) == 3

    def broken() -> None:
        calls.append(0)
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("no such table: foo"))

    calls.clear()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        call_with_retries(5, broken)
    assert len(calls) == 1  # not transient: reported at once

    calls.clear()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        retrying(2, first_delay=0.001)(flaky, 1, y=2)
    assert len(calls) == 2


def test_a_crash_between_exposure_and_raw_leaves_neither(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exposure record and its raw are one transaction: a failure in the ingest undoes both."""
    latiss = get_instrument("LATISS")
    exposure_id = 2026031500077
    raw_path = make_raw(tmp_path / "raw.fits", exposure_id=exposure_id)
    run = raw_collection("LATISS")
    with open_butler(repo) as butler:

        def crash(*args: object, **kwargs: object) -> None:
            raise RuntimeError("killed between the exposure record and the raw")

        monkeypatch.setattr(butler, "ingest", crash)
        with pytest.raises(RuntimeError, match="killed"):
            ingest_raws(butler, [raw_path], latiss, run=run)
        monkeypatch.undo()
        assert (
            list(
                butler.query_dimension_records(
                    "exposure", instrument="LATISS", exposure=exposure_id, explain=False
                )
            )
            == []
        )
        # The next attempt makes both.
        (ref,) = ingest_raws(butler, [raw_path], latiss, run=run)
        assert ref.dataId["exposure"] == exposure_id
        assert len(butler.query_dimension_records("exposure", instrument="LATISS", exposure=exposure_id)) == 1

"""Header translation with obs_lsst's rules, on real raw headers, and their ingest into a butler."""

from __future__ import annotations

from pathlib import Path

import pytest
from astropy.io import fits
from astropy.time import Time

from shared.butler import create_repository, ingest_raws, open_butler, raw_collection
from shared.instruments import get_instrument
from shared.rawformat import RawFormatError
from shared.translation import HeaderError, compute_exposure_id, detector_of, physical_filter_of, translate
from tests.unit.realraws import COMCAM_OBJECT, LATISS_CCS_2022, LATISS_DARK, real_header, write_real_raw


def test_latiss_2024_dark_header() -> None:
    info = translate(real_header(LATISS_DARK))
    assert info.instrument == "LATISS"
    assert info.exposure_id == 2024062400169
    assert info.obs_id == "AT_O_20240624_000169"
    assert info.detector == 0  # RAFTBAY R00 is ignored
    assert info.detector_serial == "ITL-3800C-068"
    assert info.physical_filter == "SDSSr_65mm~empty"  # FILTER SDSSr_65mm, GRATING empty_1
    assert (info.day_obs, info.seq_num, info.seq_start, info.seq_end) == (20240624, 169, 169, 169)
    assert info.group == "2024-06-25T07:10:40.297"
    assert (info.observation_type, info.observation_reason) == ("dark", "dark")  # REASON null: TESTTYPE
    assert (info.science_program, info.target_name) == ("unknown", "FlatField position")
    assert (info.exposure_time, info.dark_time) == (30.0, 30.0096)
    assert info.can_see_sky is False  # VIGN_MIN FULLY
    assert info.has_simulated is False  # SIMULATE cards 0 or null
    assert info.datetime_begin == Time(60486.29907850688, format="mjd", scale="tai")
    assert info.datetime_end == Time(60486.29942583339, format="mjd", scale="tai")
    assert info.sky_angle == pytest.approx(3.8810207341278717)  # ROTCOORD sky
    assert (info.tracking_ra, info.tracking_dec) == (None, None)  # TRACKSYS null
    assert info.azimuth == pytest.approx(-171.23888407563265)
    assert info.zenith_angle == pytest.approx(90.0 - 38.992927174779474)


def test_comcam_2024_object_header() -> None:
    info = translate(real_header(COMCAM_OBJECT), get_instrument("LSSTComCam"))
    assert (info.instrument, info.exposure_id, info.obs_id) == (
        "LSSTComCam",
        2024110800266,
        "CC_O_20241108_000266",
    )
    assert info.detector == 0  # R22_S00
    assert info.physical_filter == "g_01"
    assert (info.observation_type, info.observation_reason) == ("science", "science")  # IMGTYPE OBJECT
    assert (info.science_program, info.target_name) == ("PP-SURVEY", "slew_icrs")
    assert info.can_see_sky is True  # VIGN_MIN NO
    assert info.tracking_ra == pytest.approx(53.312407782266014)
    assert info.tracking_dec == pytest.approx(-27.994761670941685)
    assert info.group == "2024-11-09T06:33:55.311"
    assert info.detector_serial == "ITL-3800C-229"
    other = real_header(COMCAM_OBJECT, CCDSLOT="S21")
    assert translate(other).detector == 7
    with pytest.raises(HeaderError, match=r"x\.fits: LSSTComCam has no detector R22_S33"):
        translate(real_header(COMCAM_OBJECT, CCDSLOT="S33"), source="x.fits")


def test_latiss_2022_ccs_header_has_the_controller_offset() -> None:
    header = real_header(LATISS_CCS_2022)
    latiss = get_instrument("LATISS")
    exposure_id = compute_exposure_id(header["DAYOBS"], header["SEQNUM"], header["CONTRLLR"])
    assert exposure_id == 3022042600004  # C before 2023-10-04: +1000 years
    assert detector_of(header, latiss) == 0
    assert physical_filter_of(header, latiss) == "unknown~unknown"  # FILTER and GRATING null
    with pytest.raises(HeaderError, match=r"old\.fits: the primary header lacks EXPTIME"):
        translate(header, source="old.fits")


def test_exposure_id_controller_rules() -> None:
    assert compute_exposure_id("20190319", 1, "C") == 3019031900001  # MC_C_20190319_000001 (det029 file)
    assert compute_exposure_id("20231005", 7, "C") == 2023100500007  # CCS shares the OCS counter
    assert compute_exposure_id("2024-06-24", 169, "O") == 2024062400169
    assert compute_exposure_id("2024-06-24T12:00:00", 169, None) == 2024062400169
    assert compute_exposure_id("20240321", 93, "S") == 7024032100093  # simulated before 2025-04-18
    assert compute_exposure_id("20250418", 93, "S") == 2025041800093
    assert compute_exposure_id("20250418", 1, "H") == 4025041800001  # phosim: always offset
    with pytest.raises(ValueError, match="SEQNUM 100000"):
        compute_exposure_id("20240624", 100_000, "O")
    with pytest.raises(ValueError, match="CONTRLLR 'X'"):
        compute_exposure_id("20240624", 1, "X")


def test_physical_filter_rules() -> None:
    latiss, comcam = get_instrument("LATISS"), get_instrument("LSSTComCam")

    def header(**cards: object) -> fits.Header:
        h = fits.Header()
        for key, value in cards.items():
            h[key] = value
        return h

    assert physical_filter_of(header(FILTER="empty_1", GRATING="empty_3"), latiss) == "empty~empty"
    assert physical_filter_of(header(FILTER="Empty2", GRATING=""), latiss) == "empty~empty"
    assert (
        physical_filter_of(header(FILTER="SDSSg_65mm", GRATING="holo4_003"), latiss) == "SDSSg_65mm~holo4_003"
    )
    assert physical_filter_of(header(GRATING="ronchi90lpmm"), latiss) == "unknown~ronchi90lpmm"
    assert physical_filter_of(header(FILTER="SDSSi", FILTER2="empty"), comcam) == "SDSSi"
    assert physical_filter_of(header(FILTER="NONE"), comcam) == "none"
    assert physical_filter_of(header(FILTER="r_03", FILTER1="ND_OD1.0"), comcam) == "r_03~ND_OD1.0"
    assert physical_filter_of(header(), comcam) == "unknown"


def _raw(tmp_path: Path, name: str, header_name: str, instrument: str, **changes: object) -> Path:
    geometry = get_instrument(instrument).detector(0).with_data_shape(6, 8)
    return write_real_raw(tmp_path / name, real_header(header_name, **changes), geometry)


def test_real_headers_are_ingested_with_obs_lsst_records(tmp_path: Path) -> None:
    root = create_repository(tmp_path / "repo")
    latiss_raw = _raw(tmp_path, "AT_O_20240624_000169_R00_S00.fits", LATISS_DARK, "LATISS")
    comcam_raw = _raw(tmp_path, "CC_O_20241108_000266_R22_S00.fits", COMCAM_OBJECT, "LSSTComCam")
    with open_butler(root) as butler:
        (ref,) = ingest_raws(butler, [latiss_raw], get_instrument("LATISS"), run=raw_collection("LATISS"))
        assert dict(ref.dataId.required) == {"instrument": "LATISS", "exposure": 2024062400169, "detector": 0}
        (exposure,) = butler.query_dimension_records("exposure", instrument="LATISS", exposure=2024062400169)
        assert exposure.obs_id == "AT_O_20240624_000169"
        assert exposure.physical_filter == "SDSSr_65mm~empty"
        assert (exposure.day_obs, exposure.seq_num, exposure.group) == (
            20240624,
            169,
            "2024-06-25T07:10:40.297",
        )
        assert (exposure.observation_type, exposure.exposure_time, exposure.dark_time) == (
            "dark",
            30.0,
            30.0096,
        )
        assert exposure.can_see_sky is False and exposure.has_simulated is False
        assert exposure.target_name == "FlatField position"
        begin = Time(60486.29907850688, format="mjd", scale="tai")
        assert abs((exposure.timespan.begin - begin).sec) < 1e-6

        (ref,) = ingest_raws(
            butler, [comcam_raw], get_instrument("LSSTComCam"), run=raw_collection("LSSTComCam")
        )
        (exposure,) = butler.query_dimension_records(
            "exposure", instrument="LSSTComCam", exposure=2024110800266
        )
        assert (exposure.physical_filter, exposure.observation_type) == ("g_01", "science")
        assert exposure.science_program == "PP-SURVEY"
        assert exposure.tracking_ra == pytest.approx(53.312407782266014)
        raw = butler.get(ref)
        assert (raw.exposure_id, raw.detector_id, len(raw.amplifiers)) == (2024110800266, 0, 16)


def test_a_file_that_is_not_a_raw_of_the_instrument_stops_the_ingest_before_anything(tmp_path: Path) -> None:
    root = create_repository(tmp_path / "repo")
    good = _raw(tmp_path, "good.fits", LATISS_DARK, "LATISS")
    other = _raw(tmp_path, "comcam.fits", COMCAM_OBJECT, "LSSTComCam")
    odd_filter = _raw(tmp_path, "filter.fits", LATISS_DARK, "LATISS", FILTER="KPNO_999", SEQNUM=170)
    run = raw_collection("LATISS")
    with open_butler(root) as butler:
        with pytest.raises(RawFormatError, match=r"comcam\.fits: .*LSSTComCam raw, not LATISS"):
            ingest_raws(butler, [good, other], get_instrument("LATISS"), run=run)
        with pytest.raises(RawFormatError, match=r"filter\.fits: physical_filter 'KPNO_999~empty'"):
            ingest_raws(butler, [good, odd_filter], get_instrument("LATISS"), run=run)
        assert list(butler.query_dimension_records("exposure", instrument="LATISS", explain=False)) == []
        assert run not in list(butler.registry.queryCollections())  # not even the run was made


def test_real_headers_and_existing_filter_combinations_translate_to_obs_lsst_names(tmp_path: Path) -> None:
    for name in (LATISS_DARK, LATISS_CCS_2022, COMCAM_OBJECT):
        header = real_header(name)
        instrument = get_instrument("LSSTComCam" if name == COMCAM_OBJECT else "LATISS")
        assert physical_filter_of(header, instrument) in instrument.filter_names
    latiss = get_instrument("LATISS")
    for filt, grating, physical in (
        ("BG40", "holo4_003", "BG40~holo4_003"),
        ("empty_2", "SDSSr_65mm", "empty~SDSSr_65mm"),
        ("quadnotch1", "blue300lpmm_qn1", "quadnotch1~blue300lpmm_qn1"),
    ):
        header = real_header(LATISS_DARK, FILTER=filt, GRATING=grating)
        assert physical_filter_of(header, latiss) == physical and physical in latiss.filter_names
    comcam = real_header(COMCAM_OBJECT, FILTER="u_05")
    assert physical_filter_of(comcam, get_instrument("LSSTComCam")) == "u_05"
    root = create_repository(tmp_path / "repo")
    holo = _raw(tmp_path, "holo.fits", LATISS_DARK, "LATISS", FILTER="BG40", GRATING="holo4_003")
    diffuser = _raw(tmp_path, "diff.fits", LATISS_DARK, "LATISS", FILTER="diffuser", SEQNUM=171)
    with open_butler(root) as butler:
        run = raw_collection("LATISS")
        with pytest.raises(
            RawFormatError, match=r"diff\.fits: physical_filter 'diffuser~empty' .*never used with"
        ):
            ingest_raws(butler, [diffuser], latiss, run=run)
        ingest_raws(butler, [holo], latiss, run=run)
        (exposure,) = butler.query_dimension_records("exposure", instrument="LATISS", explain=False)
        assert exposure.physical_filter == "BG40~holo4_003"

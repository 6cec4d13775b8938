"""The physical_filter records cpflow registers are obs_lsst's, for LATISS, LSSTComCam and LSSTCam.

The expected values are literal data read from lsst/obs_lsst @ ``0e84d755``
``python/lsst/obs/lsst/filters.py`` (rubin_formats.md §4.4): the number of records, a sample of
``(name, band)`` pairs, names obs_lsst does not have, the records per band, and a SHA-256 of every
record in obs_lsst's order (``name<TAB>band`` lines joined by newlines), computed from the
``FilterDefinitionCollection`` of each instrument that obs_lsst's module builds, with a band of
``None`` registered as the name (obs_base ``_registerFilters``; none of the three has one).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from shared.butler import create_repository, open_butler
from shared.butler.instruments import filter_records
from shared.instruments import get_instrument, instrument_names

OBS_LSST_COUNTS = {"LATISS": 707, "LSSTComCam": 15, "LSSTCam": 276}

OBS_LSST_SHA256 = {
    "LATISS": "7041303c9c37a694928630fee38500775ff1dc9514c033bb9b35d8a61d8bbc64",
    "LSSTComCam": "f16e54b70973f641a690a9d00504d507f002734d7a764f8ff0dbb955e00e35e9",
    "LSSTCam": "f0bf786ad2c7e56d825a3348d3d2316cf90161f24f52d2c1334018c12cab6033",
}

OBS_LSST_SAMPLE = {
    "LATISS": [
        ("empty~empty", "white"),
        ("SDSSr_65mm~empty", "r"),
        ("BG40~holo4_003", "g"),
        ("diffuser", "diffuser"),  # on its own only
        ("empty~SDSSr_65mm", "r"),  # a 65 mm filter in the grating wheel: its band
        ("empty~holo4_003", "white"),
        ("SDSSr_65mm~holo4_003", "r"),
        ("quadnotch1~blue300lpmm_qn1", "notch"),
        ("KPNO_373A_677nm~pinhole_2_1_1000", "r"),
        ("OG550_65mm_1~ronchi170lpmm", "g"),
        ("cyl_lens~pinhole_1_0100", "white"),
        ("unknown~unknown", "unknown"),
        ("BG40", "g"),
        ("empty", "white"),
    ],
    "LSSTComCam": [
        ("u_05", "u"),
        ("u_02", "u"),
        ("g_01", "g"),
        ("r_03", "r"),
        ("OG590_2_5mm", "OG590"),
        ("pinhole", "white"),
        ("none", "white"),
        ("unknown", "unknown"),
        ("empty", "white"),
    ],
    "LSSTCam": [
        ("empty", "white"),
        ("none", "white"),
        ("ph_5", "white"),
        ("ef_43", "white"),
        ("u_24", "u"),
        ("y_10", "y"),
        ("unknown", "unknown"),
        ("950nm", "y"),
        ("ND_OD0.5", "white~nd"),
        ("SDSSi~ND_OD0.5", "i~nd"),
        ("grid~ND_OD4.0", "grid~nd"),
        ("ellipses~ND_OD0.01", "ellipses~nd"),
        ("HIGH", "white"),
        ("uv", "u"),
        ("u_24~uv", "u"),
        ("r_57~LOW", "r"),
        ("none~nm960", "y"),
        ("ef_43~red", "r"),
        ("y_10~nm960", "y"),
    ],
}

NOT_IN_OBS_LSST = {
    "LATISS": [
        "diffuser~empty",  # the diffuser is never combined
        "diffuser~holo4_003",
        "SDSSr_65mm~SDSSg_65mm",  # two 65 mm filters: the grating-wheel ones go only with empty
        "BG40~SDSSr_65mm",
    ],
    "LSSTComCam": ["r", "u_24", "empty~empty"],
    "LSSTCam": ["u_24~blue", "empty~HIGH", "empty~ND_OD0.5", "SDSSu~empty", "u_02"],
}

OBS_LSST_BANDS = {
    "LATISS": {
        "white": 112, "g": 225, "r": 141, "z": 57, "diffuser": 1, "unknown": 28, "notch": 28, "i": 57,
        "u": 29, "y": 29,
    },
    "LSSTComCam": {"white": 3, "unknown": 1, "OG590": 1, "u": 3, "g": 2, "r": 1, "i": 1, "z": 2, "y": 1},
    "LSSTCam": {
        "white": 12, "u": 9, "g": 10, "r": 10, "i": 10, "z": 10, "y": 11, "unknown": 1, "white~nd": 11,
        "u~nd": 11, "g~nd": 22, "r~nd": 22, "i~nd": 22, "z~nd": 22, "y~nd": 33, "grid": 1, "grid~nd": 11,
        "spot": 1, "spot~nd": 11, "sparsegrid": 1, "sparsegrid~nd": 11, "streak": 1, "streak~nd": 11,
        "ellipses": 1, "ellipses~nd": 11,
    },
}  # fmt: skip


def _pairs(instrument: str) -> list[tuple[str, str]]:
    records = filter_records(get_instrument(instrument))
    assert all(r["instrument"] == instrument and set(r) == {"instrument", "name", "band"} for r in records)
    return [(r["name"], r["band"]) for r in records]


@pytest.mark.parametrize("instrument", ["LATISS", "LSSTComCam", "LSSTCam"])
def test_filter_records_are_obs_lsst_records(instrument: str) -> None:
    pairs = _pairs(instrument)
    assert len(pairs) == OBS_LSST_COUNTS[instrument]
    assert len({name for name, _ in pairs}) == len(pairs)  # one record per name
    assert set(OBS_LSST_SAMPLE[instrument]) <= set(pairs)
    names = {name for name, _ in pairs}
    assert [n for n in NOT_IN_OBS_LSST[instrument] if n in names] == []
    assert Counter(band for _, band in pairs) == OBS_LSST_BANDS[instrument]
    text = "\n".join(f"{name}\t{band}" for name, band in pairs)
    assert hashlib.sha256(text.encode()).hexdigest() == OBS_LSST_SHA256[instrument]


def test_the_on_sky_filters_come_first_and_defaults_are_records() -> None:
    assert [name for name, _ in _pairs("LSSTCam")[:10]] == [
        "empty", "none", "ph_5", "ef_43", "u_24", "g_6", "r_57", "i_39", "z_20", "y_10",
    ]  # fmt: skip
    for name in instrument_names():
        instrument = get_instrument(name)
        assert instrument.default_filter in instrument.filter_names  # the simulated camera's default
        assert instrument.filter_problem(instrument.default_filter) is None


def test_a_repository_holds_obs_lsst_physical_filters(tmp_path: Path) -> None:
    root = create_repository(tmp_path / "repo")
    with open_butler(root, writeable=False) as butler:
        for instrument, count in OBS_LSST_COUNTS.items():
            records = butler.query_dimension_records("physical_filter", instrument=instrument, explain=False)
            found = {(rec.name, rec.band) for rec in records}
            assert len(found) == count
            assert found == set(_pairs(instrument))
            assert set(OBS_LSST_SAMPLE[instrument]) <= found
        names = [rec.name for rec in butler.query_dimension_records("physical_filter", explain=False)]
        assert (
            max(len(name) for name in names) == 32
        )  # the butler's limit (e.g. KPNO_373A_677nm~pinhole_2_1_1000)


def test_why_a_filter_is_missing() -> None:
    latiss = get_instrument("LATISS")
    assert latiss.filter_problem("BG40~holo4_003") is None
    assert latiss.filter_problem("diffuser~empty") == "filter 'diffuser' is never used with a grating"
    assert latiss.filter_problem("SDSSr_65mm~SDSSg_65mm") == (
        "filter 'SDSSr_65mm' is not used with grating 'SDSSg_65mm': "
        "grating 'SDSSg_65mm' is used only with filter empty"
    )
    assert (latiss.filter_problem("KPNO_999~empty") or "").startswith(
        "'KPNO_999' is not a LATISS filter; the filters are: empty, blank_bk7_wg05,"
    )
    grating = latiss.filter_problem("BG40~holo5") or ""
    assert grating.startswith("'holo5' is not a LATISS grating; the gratings are: ronchi90lpmm,")
    assert grating.endswith("SDSSz_65mm, SDSSy_65mm")  # all 33, nothing left off
    comcam = get_instrument("LSSTComCam").filter_problem("r") or ""
    assert comcam.startswith("LSSTComCam has 15 physical filters (obs_lsst's): empty, none,")
    assert comcam.endswith("z_02, y_04")
    lsstcam = get_instrument("LSSTCam").filter_problem("u_24~blue") or ""
    assert lsstcam.startswith(
        "LSSTCam has 276 physical filters (obs_lsst's): empty, none, ph_5, ef_43, u_24,"
    )
    assert lsstcam.endswith("(and 256 more)")

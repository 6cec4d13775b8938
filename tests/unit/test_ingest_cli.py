"""``cpflow ingest-raws``: real-format files and directories into ``<INSTR>/raw/all``, file by file."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpflow.cli import main
from shared.butler import RAW, open_butler, raw_collection
from shared.instruments import get_instrument
from tests.unit.realraws import COMCAM_OBJECT, LATISS_DARK, real_header, write_real_raw


def _latiss(directory: Path, seq_num: int) -> Path:
    geometry = get_instrument("LATISS").detector(0).with_data_shape(6, 8)
    header = real_header(LATISS_DARK, SEQNUM=seq_num, OBSID=f"AT_O_20240624_{seq_num:06d}")
    return write_real_raw(directory / f"AT_O_20240624_{seq_num:06d}_R00_S00.fits", header, geometry)


def _comcam(directory: Path) -> Path:
    geometry = get_instrument("LSSTComCam").detector(0).with_data_shape(6, 8)
    return write_real_raw(
        directory / "CC_O_20241108_000266_R22_S00.fits", real_header(COMCAM_OBJECT), geometry
    )


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CPFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CPFLOW_BUTLER_REPO", raising=False)
    monkeypatch.delenv("CPFLOW_REGISTRY_DB", raising=False)
    return tmp_path / "home"


def test_ingest_raws_reports_each_file_and_is_idempotent(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    night = tmp_path / "night"
    (night / "sub").mkdir(parents=True)
    _latiss(night, 169)
    _latiss(night / "sub", 170)
    _comcam(night)
    (night / "broken.fits").write_bytes(b"SIMPLE  =    T" + b" " * 100)
    (night / "notes.txt").write_text("not a raw, not looked at")

    assert main(["ingest-raws", str(night)]) == 1  # one file could not be ingested
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert sum(line.startswith("ingested ") for line in lines) == 3
    (failed,) = [line for line in lines if line.startswith("failed ")]
    assert "broken.fits" in failed and "not a readable FITS file" in failed
    assert "notes.txt" not in out
    assert lines[-1] == "3 ingested, 0 already there (unchanged), 1 failed"
    with open_butler(home / "butler", writeable=False) as butler:
        latiss = butler.query_datasets(RAW, collections=raw_collection("LATISS"), explain=False)
        assert sorted(ref.dataId["exposure"] for ref in latiss) == [2024062400169, 2024062400170]
        comcam = butler.query_datasets(RAW, collections=raw_collection("LSSTComCam"), explain=False)
        assert [ref.dataId["exposure"] for ref in comcam] == [2024110800266]
        (exposure,) = butler.query_dimension_records("exposure", instrument="LATISS", exposure=2024062400170)
        assert (exposure.obs_id, exposure.physical_filter) == ("AT_O_20240624_000170", "SDSSr_65mm~empty")

    # Again: nothing changes, and it says so.
    (night / "broken.fits").unlink()
    assert main(["ingest-raws", str(night)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("unchanged ") for line in lines) == 3
    assert "already in LATISS/raw/all" in lines[0] or "already in LSSTComCam/raw/all" in lines[0]
    assert lines[-1] == "0 ingested, 3 already there (unchanged), 0 failed"
    with open_butler(home / "butler", writeable=False) as butler:
        assert len(butler.query_datasets(RAW, collections=raw_collection("LATISS"), explain=False)) == 2


def test_ingest_raws_with_an_instrument_refuses_the_others_by_name(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    comcam = _comcam(tmp_path)
    latiss = _latiss(tmp_path, 171)
    assert main(["ingest-raws", str(comcam), str(latiss), "--instrument", "LATISS"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0].startswith("failed ")
        and str(comcam) in lines[0]
        and "LSSTComCam raw, not LATISS" in lines[0]
    )
    assert lines[1].startswith("ingested ") and "exposure=2024062400171" in lines[1]
    assert main(["ingest-raws", str(tmp_path / "nowhere.fits")]) == 1
    assert "nowhere.fits: no such file or directory" in capsys.readouterr().out
    assert main(["ingest-raws", str(latiss), "--instrument", "HSC"]) == 2
    assert "unknown instrument 'HSC'" in capsys.readouterr().err

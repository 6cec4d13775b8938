"""cpflow export: the certified calibrations of a run, with a manifest and the butler commands that
ingest and certify them elsewhere; the commands are run here against a second repository."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.time import Time
from lsst.daf.butler import Timespan

from cpflow.export import ExportError, export_run
from shared.butler import BIAS, FLAT, certify_calibrations, create_repository, ensure_calibration_collection
from shared.butler.certify import find_certified
from shared.butler.repo import open_butler
from shared.butler.runrecords import store_run_config, write_record
from shared.records import CalibOutcome
from shared.runconfig import validate_run_configuration
from tests.unit.test_butler import make_calib

BEGIN, END = "2026-03-01T00:00:00.000", "2026-04-01T00:00:00.000"
CALIB = "LATISS/calib/exported"


def certified_run(root: Path, run_id: str) -> dict[str, str]:
    """A run whose bias and flat were certified, recorded as the certifier records them."""
    config = validate_run_configuration(
        {"instrument": "LATISS", "script_mode": "BIAS_DARK_FLAT", "calib_collection": CALIB}
    )
    ids = {}
    with open_butler(root) as butler:
        store_run_config(butler, config, run_id)
        ensure_calibration_collection(butler, "LATISS", CALIB)
        for calib_type, data_id, value in (
            ("bias", {"detector": 0}, 2.0),
            ("flat", {"detector": 0, "physical_filter": "empty~empty"}, 1.0),
        ):
            run = f"LATISS/runs/{run_id}/{calib_type}"
            butler.collections.register(run)
            ref = butler.put(make_calib(value), calib_type, instrument="LATISS", run=run, **data_id)
            certify_calibrations(butler, [ref], CALIB, Time(BEGIN, scale="tai"), Time(END, scale="tai"))
            ids[calib_type] = str(ref.id)
            outcome = CalibOutcome(
                calib_type=calib_type,
                success=True,
                stage="certify",
                summary="certified",
                generated=True,
                verdict="PASSED",
                certified=True,
                calib_collection=CALIB,
                begin=BEGIN,
                end=END,
                dataset_ids={"0": str(ref.id)},
            )
            write_record(butler, outcome, "LATISS", run_id, calib_type)
    return ids


def test_an_exported_run_is_ingested_and_certified_elsewhere_by_the_printed_commands(tmp_path: Path) -> None:
    source = create_repository(tmp_path / "source")
    ids = certified_run(source, "20260301T000000-abcdef")
    out = tmp_path / "export"
    with open_butler(source, writeable=False) as butler:
        exported = export_run(butler, "20260301T000000-abcdef", out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_id"] == "20260301T000000-abcdef" and manifest["instrument"] == "LATISS"
    by_type = {entry["dataset_type"]: entry for entry in manifest["files"]}
    assert set(by_type) == {BIAS, FLAT} and len(exported) == 2
    assert by_type["flat"]["data_id"] == {
        "instrument": "LATISS",
        "detector": 0,
        "physical_filter": "empty~empty",
    }
    for entry in manifest["files"]:
        data = (out / entry["file"]).read_bytes()
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert (entry["begin"], entry["end"], entry["calib_collection"]) == (BEGIN, END, CALIB)
        assert entry["dataset_id"] == ids[entry["dataset_type"]]

    # What the CLI prints is what ingest.sh runs: against a second repository, with daf_butler's CLI.
    target = create_repository(tmp_path / "target")
    env = {**os.environ, "CPFLOW_BUTLER_REPO": str(source), "CPFLOW_HOME": str(tmp_path / "home")}
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpflow.cli",
            "export",
            "20260301T000000-abcdef",
            "--to",
            str(tmp_path / "again"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr
    assert "butler ingest-files" in shown.stdout and "butler certify-calibrations" in shown.stdout
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        ["sh", str(out / "ingest.sh"), str(target)],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with open_butler(target, writeable=False) as butler:
        for calib_type, value in (("bias", 2.0), ("flat", 1.0)):
            (found,) = find_certified(butler, calib_type, "LATISS", 0, CALIB)
            assert found[1] == Timespan(Time(BEGIN, scale="tai"), Time(END, scale="tai"))
            np.testing.assert_array_equal(butler.get(found[0]).image, make_calib(value).image)


def test_a_run_that_certified_nothing_is_not_exported(tmp_path: Path) -> None:
    root = create_repository(tmp_path / "repo")
    with open_butler(root) as butler:
        store_run_config(
            butler, validate_run_configuration({"instrument": "LATISS", "script_mode": "BIAS"}), "r-none"
        )
    with open_butler(root, writeable=False) as butler:
        with pytest.raises(ExportError, match="certified no calibration"):
            export_run(butler, "r-none", tmp_path / "out")
        with pytest.raises(ExportError, match="no run unknown-run"):
            export_run(butler, "unknown-run", tmp_path / "out")

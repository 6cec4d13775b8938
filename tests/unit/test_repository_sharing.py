"""A repository Rubin's software can share: obs_lsst's records, nothing overwritten, nothing crashes.

The expected records are those obs_lsst registers (``rubin_formats.md`` §4.1–4.2).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lsst.daf.butler import Butler, DatasetType

from shared.butler import create_repository, open_butler
from shared.butler.datasets import DatasetTypeConflict
from shared.butler.repo import seed_config

OBS_LSST_INSTRUMENTS = {
    "LATISS": {
        "class_name": "lsst.obs.lsst.Latiss",
        "detector_max": 1,
        "exposure_max": 7050123199999,
        "visit_max": 7050123199999,
        "visit_system": 2,
    },
    "LSSTComCam": {
        "class_name": "lsst.obs.lsst.LsstComCam",
        "detector_max": 1000,
        "exposure_max": 7050123199999,
        "visit_max": 7050123199999,
        "visit_system": 2,
    },
}

OBS_LSST_DETECTORS = {
    "LATISS": [(0, "RXX_S00", None, "RXX_S00", "SCIENCE")],
    "LSSTComCam": [(i, f"R22_S{i // 3}{i % 3}", "R22", f"S{i // 3}{i % 3}", "SCIENCE") for i in range(9)],
}


def bare_repository(root: Path) -> Path:
    Butler.makeRepo(str(root), config=seed_config())
    return root


def test_cpflow_registers_the_records_obs_lsst_registers(tmp_path: Path) -> None:
    root = create_repository(tmp_path / "repo")
    with open_butler(root, writeable=False) as butler:
        for name, expected in OBS_LSST_INSTRUMENTS.items():
            (record,) = butler.query_dimension_records("instrument", instrument=name)
            assert {key: getattr(record, key) for key in expected} == expected, name
            detectors = sorted(
                (r.id, r.full_name, r.raft, r.name_in_raft, r.purpose)
                for r in butler.query_dimension_records("detector", instrument=name)
            )
            assert detectors == OBS_LSST_DETECTORS[name]


def test_records_obs_lsst_registered_first_are_used_as_they_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An older obs_lsst registry (LATISS exposure_max 6050123199999, detector_max 0): used, not rewritten."""
    root = bare_repository(tmp_path / "repo")
    old = {
        **OBS_LSST_INSTRUMENTS["LATISS"],
        "name": "LATISS",
        "exposure_max": 6050123199999,
        "visit_max": 6050123199999,
        "detector_max": 0,
    }
    with open_butler(root) as butler:
        butler.registry.insertDimensionData("instrument", old)
        butler.registry.insertDimensionData(
            "detector",
            {
                "instrument": "LATISS",
                "id": 0,
                "full_name": "RXX_S00",
                "raft": None,
                "name_in_raft": "RXX_S00",
                "purpose": "SCIENCE",
            },
        )
    with caplog.at_level(logging.WARNING):
        create_repository(root)
        create_repository(root)  # and again
    with open_butler(root, writeable=False) as butler:
        (record,) = butler.query_dimension_records("instrument", instrument="LATISS")
        assert (record.exposure_max, record.detector_max) == (6050123199999, 0)
        # What was missing (the filters, ComCam) was added.
        assert butler.query_dimension_records("physical_filter", instrument="LATISS")
        assert len(butler.query_dimension_records("detector", instrument="LSSTComCam")) == 9
    assert "exposure_max 6050123199999 (cpflow: 7050123199999)" in caplog.text


def test_a_repository_defining_cpflow_s_dataset_types_otherwise_is_refused_unchanged(tmp_path: Path) -> None:
    root = bare_repository(tmp_path / "repo")
    with open_butler(root) as butler:
        universe = butler.dimensions
        for name, dims, storage_class, calib in (
            ("raw", ("instrument", "detector", "exposure"), "Exposure", False),
            ("bias", ("instrument", "detector"), "ExposureF", True),
        ):
            butler.registry.registerDatasetType(
                DatasetType(name, dims, storage_class, universe=universe, isCalibration=calib)
            )
    with pytest.raises(DatasetTypeConflict) as excinfo:
        create_repository(root)
    message = str(excinfo.value)
    assert (
        "bias: the repository has calibration, dimensions (instrument, detector), storage class ExposureF"
        in message
    )
    assert (
        "cpflow needs calibration, dimensions (instrument, detector), storage class CpflowCalibImage"
        in message
    )
    assert "raw: the repository has" in message and "storage class Exposure;" in message
    with open_butler(root, writeable=False) as butler:
        assert butler.get_dataset_type("bias").storageClass_name == "ExposureF"
        assert {t.name for t in butler.registry.queryDatasetTypes()} == {"raw", "bias"}  # nothing added

    # `cpflow stack up` refuses in the same words before it starts anything.
    home = tmp_path / "home"
    result = subprocess.run(
        [sys.executable, "-m", "cpflow.cli", "stack", "up"],
        env={**os.environ, "CPFLOW_HOME": str(home), "CPFLOW_BUTLER_REPO": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 6, result.stderr
    assert "bias: the repository has" in result.stderr and "Traceback" not in result.stderr
    assert not (home / "run").exists() or not any((home / "run").glob("*.pid"))

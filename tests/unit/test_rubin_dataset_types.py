"""cpflow's dataset types against Rubin's (rubin_formats.md §5.1), and why some storage classes differ."""

from __future__ import annotations

from pathlib import Path

import pytest
from lsst.daf.butler import Butler, Config, DatasetType

from shared.butler import datasets

# Rubin's definitions, as cp_pipe, cp_verify, obs_base and ip_isr declare them (rubin_formats.md §5.1):
# name -> (dimensions, storage class, is a calibration).
RUBIN = {
    "raw": ({"instrument", "detector", "exposure"}, "Exposure", False),
    "bias": ({"instrument", "detector"}, "ExposureF", True),
    "dark": ({"instrument", "detector"}, "ExposureF", True),
    "flat": ({"instrument", "detector", "physical_filter"}, "ExposureF", True),
    "defects": ({"instrument", "detector"}, "Defects", True),
    "ptc": ({"instrument", "detector"}, "PhotonTransferCurveDataset", True),
    **{
        f"verify{t}DetStats": ({"instrument", "exposure", "detector"}, "StructuredDataDict", False)
        for t in ("Bias", "Dark", "Flat")
    },
    **{f"verify{t}Stats": ({"instrument"}, "StructuredDataDict", False) for t in ("Bias", "Dark", "Flat")},
    **{f"verify{t}Results": ({"instrument"}, "ArrowAstropy", False) for t in ("Bias", "Dark", "Flat")},
}

# The storage classes cpflow cannot share with Rubin from PyPI (their Python types are afw's and
# ip_isr's), as README "Storage classes" lists them.
CPFLOW_OWN = {
    "raw": "CpflowRawImage",
    "bias": "CpflowCalibImage",
    "dark": "CpflowCalibImage",
    "flat": "CpflowCalibImage",
    "defects": "CpflowTable",
    "ptc": "CpflowTable",
}


@pytest.fixture(scope="module")
def universe(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("universe")
    Butler.makeRepo(str(root))
    return Butler.from_config(str(root)).dimensions


def test_names_dimensions_and_calibration_flags_are_rubins(universe) -> None:
    ours = {d.name: d for d in datasets.dataset_types(universe)}
    for name, (dimensions, _storage_class, is_calibration) in RUBIN.items():
        assert name in ours, f"cpflow has no {name}"
        assert set(ours[name].dimensions.required) == dimensions, name
        assert ours[name].isCalibration() is is_calibration, name


def test_storage_classes_are_rubins_except_the_documented_ones(universe) -> None:
    ours = {d.name: d for d in datasets.dataset_types(universe)}
    differing = {
        name: ours[name].storageClass_name
        for name, (_dims, storage_class, _cal) in RUBIN.items()
        if ours[name].storageClass_name != storage_class
    }
    assert differing == CPFLOW_OWN
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name, storage_class in CPFLOW_OWN.items():
        assert f"| `{name}` |" in readme and f"`{storage_class}`" in readme, name


def test_a_rubin_pipeline_reads_cpflows_verification_tables_as_declared(universe) -> None:
    """The verification datasets are the very dataset types Rubin's pipelines declare."""
    ours = {d.name: d for d in datasets.dataset_types(universe)}
    for name, (dimensions, storage_class, is_calibration) in RUBIN.items():
        if not name.startswith("verify"):
            continue
        rubin = DatasetType(name, dimensions, storage_class, universe=universe, isCalibration=is_calibration)
        assert ours[name] == rubin
        assert rubin.is_compatible_with(ours[name]) and ours[name].is_compatible_with(rubin)


def test_rubins_storage_classes_cannot_be_given_cpflows_types(tmp_path: Path) -> None:
    """Why bias is not ExposureF here: daf_butler refuses a second definition of a standard class."""
    seed = Config({"storageClasses": {"ExposureF": {"pytype": "shared.images.CalibImage"}}})
    Butler.makeRepo(str(tmp_path / "repo"), config=seed)
    with pytest.raises(ValueError, match="New definition for StorageClass ExposureF"):
        Butler.from_config(str(tmp_path / "repo"))

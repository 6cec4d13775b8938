"""Dataset types that cpflow stores in the butler.

Names are module constants; `dataset_types` builds the `~lsst.daf.butler.DatasetType` objects for a
dimension universe and `register_dataset_types` registers them all (idempotent).
"""

from __future__ import annotations

from lsst.daf.butler import Butler, DatasetType, DimensionUniverse, MissingDatasetTypeError

from shared.calibtypes import COMBINED_TYPES

__all__ = [
    "ACQUISITION_MANIFEST",
    "BIAS",
    "CALIB_OUTCOME",
    "CALIB_STORAGE_CLASS",
    "DARK",
    "DEFECTS",
    "FLAT",
    "GENERATION_RECORD",
    "PTC",
    "RAW",
    "RAW_STORAGE_CLASS",
    "RESULTS_STORAGE_CLASS",
    "RUN_ACCEPTED",
    "RUN_CANCELLED",
    "RUN_CONFIG",
    "RUN_REPLAY",
    "STRUCTURED_STORAGE_CLASS",
    "TABLE_STORAGE_CLASS",
    "VERIFICATION_RECORD",
    "DatasetTypeConflict",
    "check_dataset_types",
    "dataset_type_conflicts",
    "dataset_types",
    "register_dataset_types",
    "verify_det_stats",
    "verify_results",
    "verify_stats",
]

RAW_STORAGE_CLASS = "CpflowRawImage"
CALIB_STORAGE_CLASS = "CpflowCalibImage"
TABLE_STORAGE_CLASS = "CpflowTable"
STRUCTURED_STORAGE_CLASS = "StructuredDataDict"
RESULTS_STORAGE_CLASS = "ArrowAstropy"
"""Rubin's storage class of cp_verify's results tables (`astropy.table.Table` in Parquet, daf_butler's own
formatter): the one product whose Rubin storage class a PyPI-only install can use as it is."""

RAW = "raw"
BIAS = "bias"
DARK = "dark"
FLAT = "flat"
DEFECTS = "defects"
PTC = "ptc"

RUN_CONFIG = "cpflowRunConfig"
ACQUISITION_MANIFEST = "cpflowAcquisitionManifest"
CALIB_OUTCOME = "cpflowCalibOutcome"
GENERATION_RECORD = "cpflowGeneration"
"""What the generator did for one calibration type of a run (built, skipped and why, gains)."""
RUN_ACCEPTED = "cpflowRunAccepted"
"""When a run was accepted and until when its acquisition may be resumed."""
RUN_CANCELLED = "cpflowRunCancelled"
"""Who cancelled a run, and when."""
RUN_REPLAY = "cpflowRunReplay"
"""Which run a replayed run was made from, from which stage, and whether it may certify."""
VERIFICATION_RECORD = "cpflowVerification"
"""The verification verdict of one calibration type of a run, with the decision's summary."""


def _verify_prefix(calib_type: str) -> str:
    if calib_type not in COMBINED_TYPES:
        raise ValueError(f"no verification datasets for {calib_type!r}; expected one of {COMBINED_TYPES}")
    return "verify" + calib_type[0].upper() + calib_type[1:]


def verify_det_stats(calib_type: str) -> str:
    """Name of the per-(exposure, detector) verification statistics, e.g. ``verifyBiasDetStats``.

    Parameters
    ----------
    calib_type : `str`
        ``bias``, ``dark`` or ``flat``.

    Returns
    -------
    name : `str`
        The dataset type name.
    """
    return _verify_prefix(calib_type) + "DetStats"


def verify_stats(calib_type: str) -> str:
    """Name of the per-run verification statistics, e.g. ``verifyBiasStats``.

    Parameters
    ----------
    calib_type : `str`
        ``bias``, ``dark`` or ``flat``.

    Returns
    -------
    name : `str`
        The dataset type name.
    """
    return _verify_prefix(calib_type) + "Stats"


def verify_results(calib_type: str) -> str:
    """Name of the per-amplifier verification results table, e.g. ``verifyBiasResults``.

    Parameters
    ----------
    calib_type : `str`
        ``bias``, ``dark`` or ``flat``.

    Returns
    -------
    name : `str`
        The dataset type name.
    """
    return _verify_prefix(calib_type) + "Results"


def dataset_types(universe: DimensionUniverse) -> list[DatasetType]:
    """Build every cpflow dataset type.

    Parameters
    ----------
    universe : `lsst.daf.butler.DimensionUniverse`
        The repository's dimension universe.

    Returns
    -------
    types : `list` [`lsst.daf.butler.DatasetType`]
        Raw, calibration, verification and run-record dataset types.
    """

    def make(name: str, dims: tuple[str, ...], storage_class: str, *, calib: bool = False) -> DatasetType:
        return DatasetType(name, dims, storage_class, universe=universe, isCalibration=calib)

    result = [
        make(RAW, ("instrument", "exposure", "detector"), RAW_STORAGE_CLASS),
        make(BIAS, ("instrument", "detector"), CALIB_STORAGE_CLASS, calib=True),
        make(DARK, ("instrument", "detector"), CALIB_STORAGE_CLASS, calib=True),
        make(FLAT, ("instrument", "detector", "physical_filter"), CALIB_STORAGE_CLASS, calib=True),
        make(DEFECTS, ("instrument", "detector"), TABLE_STORAGE_CLASS, calib=True),
        make(PTC, ("instrument", "detector"), TABLE_STORAGE_CLASS, calib=True),
    ]
    for calib_type in COMBINED_TYPES:
        result.append(
            make(
                verify_det_stats(calib_type), ("instrument", "exposure", "detector"), STRUCTURED_STORAGE_CLASS
            )
        )
        result.append(make(verify_stats(calib_type), ("instrument",), STRUCTURED_STORAGE_CLASS))
        result.append(make(verify_results(calib_type), ("instrument",), RESULTS_STORAGE_CLASS))
    for name in (
        RUN_CONFIG,
        RUN_ACCEPTED,
        RUN_CANCELLED,
        RUN_REPLAY,
        ACQUISITION_MANIFEST,
        CALIB_OUTCOME,
        GENERATION_RECORD,
        VERIFICATION_RECORD,
    ):
        result.append(make(name, ("instrument",), STRUCTURED_STORAGE_CLASS))
    return result


class DatasetTypeConflict(RuntimeError):
    """The repository defines some of cpflow's dataset types otherwise; cpflow changes none of them."""


def _describe(dataset_type: DatasetType) -> str:
    kind = "calibration, " if dataset_type.isCalibration() else ""
    dimensions = ", ".join(dataset_type.dimensions.required)
    return f"{kind}dimensions ({dimensions}), storage class {dataset_type.storageClass_name}"


def dataset_type_conflicts(butler: Butler) -> list[str]:
    """Each of cpflow's dataset types that ``butler``'s repository defines otherwise, with both definitions.

    Returns
    -------
    conflicts : `list` [`str`]
        One line per dataset type, e.g. ``bias: the repository has calibration, dimensions
        (instrument, detector), storage class ExposureF; cpflow needs ... CpflowCalibImage``.
    """
    conflicts = []
    for ours in dataset_types(butler.dimensions):
        try:
            theirs = butler.get_dataset_type(ours.name)
        except MissingDatasetTypeError:
            continue
        if theirs != ours:
            conflicts.append(
                f"{ours.name}: the repository has {_describe(theirs)}; cpflow needs {_describe(ours)}"
            )
    return conflicts


def check_dataset_types(butler: Butler) -> None:
    """Raise if the repository defines any of cpflow's dataset types otherwise (before anything is written).

    Raises
    ------
    DatasetTypeConflict
        Naming every such dataset type, both definitions, and what to do.
    """
    conflicts = dataset_type_conflicts(butler)
    if conflicts:
        raise DatasetTypeConflict(
            "the butler repository defines these dataset types otherwise than cpflow, which changes "
            "none of them:\n  "
            + "\n  ".join(conflicts)
            + "\npoint CPFLOW_BUTLER_REPO at a repository of cpflow's own (read raws from another one "
            "with its own reader), or remove these dataset types where nothing uses them"
        )


def register_dataset_types(butler: Butler) -> list[DatasetType]:
    """Register every cpflow dataset type in ``butler``'s registry (idempotent).

    Nothing is registered if any of them exists with another definition.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        A writeable butler.

    Returns
    -------
    types : `list` [`lsst.daf.butler.DatasetType`]
        The registered dataset types.

    Raises
    ------
    DatasetTypeConflict
        If a dataset type of the same name exists with a different definition.
    """
    check_dataset_types(butler)
    types = dataset_types(butler.dimensions)
    for dataset_type in types:
        butler.registry.registerDatasetType(dataset_type)
    return types

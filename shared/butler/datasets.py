"""Dataset types that cpflow stores in the butler.

Names are module constants; `dataset_types` builds the `~lsst.daf.butler.DatasetType` objects for a
dimension universe and `register_dataset_types` registers them all (idempotent).
"""

from __future__ import annotations

from lsst.daf.butler import Butler, DatasetType, DimensionUniverse

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
    "RUN_ACCEPTED",
    "RUN_CANCELLED",
    "RUN_CONFIG",
    "STRUCTURED_STORAGE_CLASS",
    "TABLE_STORAGE_CLASS",
    "VERIFICATION_RECORD",
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
        result.append(make(verify_results(calib_type), ("instrument",), TABLE_STORAGE_CLASS))
    for name in (
        RUN_CONFIG,
        RUN_ACCEPTED,
        RUN_CANCELLED,
        ACQUISITION_MANIFEST,
        CALIB_OUTCOME,
        GENERATION_RECORD,
        VERIFICATION_RECORD,
    ):
        result.append(make(name, ("instrument",), STRUCTURED_STORAGE_CLASS))
    return result


def register_dataset_types(butler: Butler) -> list[DatasetType]:
    """Register every cpflow dataset type in ``butler``'s registry (idempotent).

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
    lsst.daf.butler.registry.ConflictingDefinitionError
        If a dataset type of the same name exists with a different definition.
    """
    types = dataset_types(butler.dimensions)
    for dataset_type in types:
        butler.registry.registerDatasetType(dataset_type)
    return types

"""cpflow's butler layer: repository, dataset types, formatters, raw ingest and certification."""

from .certify import (
    CertificationConflict,
    certify_calibrations,
    ensure_calibration_collection,
    find_certified,
    format_timespan,
)
from .datasets import (
    ACQUISITION_MANIFEST,
    BIAS,
    CALIB_IMAGE_TYPES,
    CALIB_OUTCOME,
    DARK,
    DEFECTS,
    FLAT,
    GENERATION_RECORD,
    PTC,
    RAW,
    RUN_CONFIG,
    VERIFICATION_RECORD,
    dataset_types,
    register_dataset_types,
    verify_det_stats,
    verify_results,
    verify_stats,
)
from .exposures import exposure_record, ingest_raws, read_primary_header
from .formatters import CalibImageFitsFormatter, RawFitsFormatter, TableFitsFormatter
from .instruments import instrument_record, register_instrument
from .repo import SEED_CONFIG, calib_chain, create_repository, open_butler, raw_collection, run_collection
from .retry import is_transient_db_error, retry_transient

__all__ = [
    "ACQUISITION_MANIFEST",
    "BIAS",
    "CALIB_IMAGE_TYPES",
    "CALIB_OUTCOME",
    "DARK",
    "DEFECTS",
    "FLAT",
    "GENERATION_RECORD",
    "PTC",
    "RAW",
    "RUN_CONFIG",
    "SEED_CONFIG",
    "VERIFICATION_RECORD",
    "CalibImageFitsFormatter",
    "CertificationConflict",
    "RawFitsFormatter",
    "TableFitsFormatter",
    "calib_chain",
    "certify_calibrations",
    "create_repository",
    "dataset_types",
    "ensure_calibration_collection",
    "exposure_record",
    "find_certified",
    "format_timespan",
    "ingest_raws",
    "instrument_record",
    "is_transient_db_error",
    "open_butler",
    "raw_collection",
    "read_primary_header",
    "register_dataset_types",
    "register_instrument",
    "retry_transient",
    "run_collection",
    "verify_det_stats",
    "verify_results",
    "verify_stats",
]

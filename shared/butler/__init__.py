"""cpflow's butler layer: repository, collections, dataset types, formatters, raws, run records,
calibrations applied to frames, and certification. One module per concept; import from them."""

from .certify import (
    CertificationConflict,
    certify_calibrations,
    ensure_calibration_collection,
    find_certified,
    format_timespan,
)
from .collections import calib_chain, collection_exists, raw_collection, run_collection, type_collection
from .datasets import BIAS, DARK, DEFECTS, FLAT, PTC, RAW, register_dataset_types
from .exposures import ingest_raws
from .repo import create_repository, open_butler

__all__ = [
    "BIAS",
    "DARK",
    "DEFECTS",
    "FLAT",
    "PTC",
    "RAW",
    "CertificationConflict",
    "calib_chain",
    "certify_calibrations",
    "collection_exists",
    "create_repository",
    "ensure_calibration_collection",
    "find_certified",
    "format_timespan",
    "ingest_raws",
    "open_butler",
    "raw_collection",
    "register_dataset_types",
    "run_collection",
    "type_collection",
]

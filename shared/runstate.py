"""Run records in the butler: the accepted configuration, manifests and outcomes.

The butler is the durable state (DESIGN.md §1): every handler re-derives what is done from
these records, so a restarted or redelivered handler does only what is missing.
"""

from __future__ import annotations

from typing import Any

from lsst.daf.butler import Butler, CollectionType, DatasetRef
from lsst.daf.butler.registry import MissingCollectionError

from shared.butler import datasets
from shared.butler.repo import run_collection
from shared.runconfig import RunConfiguration, validate_run_configuration

__all__ = [
    "expected_calib_types",
    "find_record",
    "load_run_config",
    "put_record",
    "type_collection",
]


def type_collection(instrument: str, run_id: str, calib_type: str) -> str:
    """RUN collection holding everything of one calibration type of a run."""
    return run_collection(instrument, run_id, calib_type.lower())


def find_record(butler: Butler, dataset_type: str, instrument: str, collection: str) -> DatasetRef | None:
    """The ``{instrument}``-dimensioned record ``dataset_type`` in ``collection``, if there is one."""
    try:
        return butler.find_dataset(dataset_type, instrument=instrument, collections=[collection])
    except MissingCollectionError:
        return None


def put_record(
    butler: Butler, payload: Any, dataset_type: str, instrument: str, collection: str
) -> DatasetRef:
    """Store a record once: an existing record is kept (idempotent under redelivery)."""
    existing = find_record(butler, dataset_type, instrument, collection)
    if existing is not None:
        return existing
    butler.collections.register(collection, CollectionType.RUN)
    return butler.put(payload, dataset_type, instrument=instrument, run=collection)


def load_run_config(butler: Butler, instrument: str, run_id: str) -> RunConfiguration:
    """The accepted configuration of a run, as stored by the acquirer."""
    ref = find_record(butler, datasets.RUN_CONFIG, instrument, run_collection(instrument, run_id))
    if ref is None:
        raise LookupError(f"run {run_id} has no stored configuration in {run_collection(instrument, run_id)}")
    return validate_run_configuration(butler.get(ref))


def expected_calib_types(config: RunConfiguration) -> list[str]:
    """The calibration types a run ends with an outcome for.

    With external verification (``generate_calibrations: false``) nothing is generated, so only
    the image types are verified; defects, PTC and gains need generated products.
    """
    if config.generate_calibrations:
        return list(config.calib_types)
    return [t.lower() for t in config.image_types]

"""Reading and writing a run's records in the butler.

Each record is one ``StructuredDataDict`` dataset with only the ``instrument`` dimension, in the
RUN collection of the run (the accepted configuration) or of one of its calibration types (the
acquisition manifest, the generation, verification and outcome records). A record is written
once: writing it again keeps the first (idempotent under redelivery).
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

from lsst.daf.butler import Butler, CollectionType, DatasetRef, MissingCollectionError
from pydantic import BaseModel

from shared.records import (
    AcquisitionManifest,
    CalibOutcome,
    GenerationRecord,
    RunAccepted,
    RunCancelled,
    RunReplay,
    VerificationRecord,
)
from shared.runconfig import RunConfiguration, validate_run_configuration

from . import datasets
from .collections import run_collection, type_collection

__all__ = [
    "RECORD_DATASET_TYPES",
    "differences",
    "expected_calib_types",
    "find_record",
    "instrument_of_run",
    "load_run_config",
    "put_record",
    "read_record",
    "store_run_config",
    "wait_for_record",
    "write_record",
]

R = TypeVar("R", bound=BaseModel)

RECORD_DATASET_TYPES: dict[type[BaseModel], str] = {
    AcquisitionManifest: datasets.ACQUISITION_MANIFEST,
    GenerationRecord: datasets.GENERATION_RECORD,
    VerificationRecord: datasets.VERIFICATION_RECORD,
    CalibOutcome: datasets.CALIB_OUTCOME,
    RunAccepted: datasets.RUN_ACCEPTED,
    RunCancelled: datasets.RUN_CANCELLED,
    RunReplay: datasets.RUN_REPLAY,
}
"""The dataset type each kind of per-type record is stored as."""


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


def _collection(instrument: str, run_id: str, type_name: str | None) -> str:
    return (
        run_collection(instrument, run_id)
        if type_name is None
        else type_collection(instrument, run_id, type_name)
    )


def read_record[R: BaseModel](
    butler: Butler, model: type[R], instrument: str, run_id: str, type_name: str | None
) -> R | None:
    """The ``model`` record of one calibration (or image) type of a run (`None`: of the run), or `None`."""
    ref = find_record(
        butler, RECORD_DATASET_TYPES[model], instrument, _collection(instrument, run_id, type_name)
    )
    return None if ref is None else model.model_validate(butler.get(ref))


def wait_for_record[R: BaseModel](
    butler: Butler,
    model: type[R],
    instrument: str,
    run_id: str,
    type_name: str,
    timeout: float = 10.0,
    interval: float = 0.25,
) -> R | None:
    """`read_record`, waiting up to ``timeout`` seconds for a record that is about to be written.

    A stage publishes its event before it writes its record (so that a crash in between repeats
    the event instead of losing it): the next stage may see the event a moment before the record.
    """
    deadline = time.monotonic() + timeout
    while True:
        record = read_record(butler, model, instrument, run_id, type_name)
        if record is not None or time.monotonic() >= deadline:
            return record
        time.sleep(interval)


def differences(claimed: BaseModel, recorded: BaseModel) -> list[str]:
    """The fields in which an event's claim differs from the butler's record (empty: they agree)."""
    ours, theirs = recorded.model_dump(mode="json"), claimed.model_dump(mode="json")
    return sorted(name for name in ours if ours[name] != theirs.get(name))


def write_record(
    butler: Butler, record: BaseModel, instrument: str, run_id: str, type_name: str | None
) -> DatasetRef:
    """Store ``record`` for one calibration (or image) type of a run (`None`: for the run), once."""
    return put_record(
        butler,
        record.model_dump(mode="json"),
        RECORD_DATASET_TYPES[type(record)],
        instrument,
        _collection(instrument, run_id, type_name),
    )


def store_run_config(butler: Butler, config: RunConfiguration, run_id: str) -> DatasetRef:
    """Store the accepted configuration of a run (every key with its effective value), once."""
    return put_record(
        butler,
        config.to_document(),
        datasets.RUN_CONFIG,
        config.instrument,
        run_collection(config.instrument, run_id),
    )


def instrument_of_run(butler: Butler, run_id: str) -> str | None:
    """The instrument of ``run_id`` (the one whose run collection holds its configuration), or `None`."""
    from shared.instruments import instrument_names

    for name in instrument_names():
        if find_record(butler, datasets.RUN_CONFIG, name, run_collection(name, run_id)) is not None:
            return name
    return None


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

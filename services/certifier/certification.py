"""Certification of a run's calibrations and the run's final state. No Kafka here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from astropy.time import Time
from lsst.daf.butler import Butler

from shared.butler import datasets
from shared.butler.certify import CertificationConflict, certify_calibrations, ensure_calibration_collection
from shared.runstate import find_record, put_record, type_collection

__all__ = ["CertificationResult", "TypeOutcome", "certify_type", "record_outcome", "run_outcome"]

CALIB_DATASET_TYPES = {
    "bias": datasets.BIAS,
    "dark": datasets.DARK,
    "flat": datasets.FLAT,
    "defects": datasets.DEFECTS,
    "ptc": datasets.PTC,
}


@dataclass(frozen=True)
class CertificationResult:
    status: str  # "certified" | "already-certified"
    dataset_ids: dict[str, str]
    begin: str
    end: str


def _tai(value: datetime) -> Time:
    return Time(value, scale="tai")


def certify_type(
    butler: Butler,
    instrument: str,
    run_id: str,
    calib_type: str,
    calib_collection: str,
    begin: datetime,
    end: datetime,
) -> CertificationResult:
    """Certify every ``calib_type`` dataset of the run into ``calib_collection`` for [begin, end).

    Raises
    ------
    CertificationConflict
        If a dataset of the same type and detector is already certified over an overlapping range.
    """
    dataset_type = CALIB_DATASET_TYPES[calib_type]
    collection = type_collection(instrument, run_id, calib_type)
    refs = butler.query_datasets(dataset_type, collections=[collection], instrument=instrument, explain=False)
    if not refs:
        raise LookupError(f"no {dataset_type} datasets in {collection} to certify")
    ensure_calibration_collection(butler, instrument, calib_collection)
    status = certify_calibrations(butler, refs, calib_collection, _tai(begin), _tai(end))
    return CertificationResult(
        status=status,
        dataset_ids={str(ref.dataId["detector"]): str(ref.id) for ref in refs},
        begin=_tai(begin).isot,
        end=_tai(end).isot,
    )


@dataclass
class TypeOutcome:
    """What became of one calibration type of a run (stored in the butler by the certifier)."""

    calib_type: str
    success: bool
    stage: str
    summary: str
    generated: bool = False
    verdict: str | None = None
    certified: bool = False
    calib_collection: str | None = None
    begin: str | None = None
    end: str | None = None
    dataset_ids: dict[str, str] = field(default_factory=dict)
    failed_tests: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_outcome(butler: Butler, instrument: str, run_id: str, outcome: TypeOutcome) -> None:
    put_record(
        butler,
        outcome.to_dict(),
        datasets.CALIB_OUTCOME,
        instrument,
        type_collection(instrument, run_id, outcome.calib_type),
    )


def run_outcome(
    butler: Butler, instrument: str, run_id: str, calib_types: list[str]
) -> list[TypeOutcome] | None:
    """The outcome of every calibration type of the run, or None while some are still open."""
    outcomes = []
    for calib_type in calib_types:
        ref = find_record(
            butler, datasets.CALIB_OUTCOME, instrument, type_collection(instrument, run_id, calib_type)
        )
        if ref is None:
            return None
        outcomes.append(TypeOutcome(**butler.get(ref)))
    return outcomes


__all__ += ["CertificationConflict"]

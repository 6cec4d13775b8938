"""Certification of a run's calibrations and the run's final state. No Kafka here.

Every calibration type of a run reaches the certifier with a verdict (passed, failed, not run)
or an upstream failure, so it is the one place that knows when a run is over. The rules are pure
functions: `outcome_without_certification` (the ladder: what a verdict means when nothing is to
be certified), `outcome_of_certification` (after a certification attempt) and `final_state`
(the run's state from the outcome of every type); `certify_type` does the butler work.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from astropy.time import Time
from lsst.daf.butler import Butler

from shared.butler.certify import CertificationConflict, certify_calibrations, ensure_calibration_collection
from shared.butler.collections import type_collection
from shared.butler.runrecords import read_record
from shared.calibtypes import DATASET_TYPE_OF
from shared.events import RunState
from shared.records import CalibOutcome, CertificationRecord, VerificationRecord

__all__ = [
    "CertificationConflict",
    "CertificationResult",
    "certify_type",
    "final_state",
    "outcome_of_certification",
    "outcome_without_certification",
    "run_outcomes",
]


@dataclass(frozen=True)
class CertificationResult:
    status: str  # "certified" | "already-certified"
    dataset_ids: dict[str, str]
    begin: str
    end: str
    note: str | None = None
    """Where the calibrations are when ``<INSTR>/calib`` does not include them, and what to do."""


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
    dataset_ids: set[str] | None = None,
) -> CertificationResult:
    """Certify the run's ``calib_type`` datasets into ``calib_collection`` for [begin, end).

    With ``dataset_ids``, only those (the ones the verifier's record names) are certified, and each
    must be in the run's collection; without, every dataset of the type in that collection.

    Raises
    ------
    CertificationConflict
        If a dataset of the same type and detector is already certified over an overlapping range.
    LookupError
        If the run has no dataset of that type to certify.
    """
    dataset_type = DATASET_TYPE_OF[calib_type]
    collection = type_collection(instrument, run_id, calib_type)
    refs = butler.query_datasets(dataset_type, collections=[collection], instrument=instrument, explain=False)
    if dataset_ids:
        refs = [ref for ref in refs if str(ref.id) in dataset_ids]
        missing = dataset_ids - {str(ref.id) for ref in refs}
        if missing:
            raise LookupError(f"{len(missing)} verified {dataset_type} dataset(s) are not in {collection}")
    if not refs:
        raise LookupError(f"no {dataset_type} datasets in {collection} to certify")
    note = ensure_calibration_collection(butler, instrument, calib_collection)
    status = certify_calibrations(butler, refs, calib_collection, _tai(begin), _tai(end))
    return CertificationResult(
        status=status,
        dataset_ids={str(ref.dataId["detector"]): str(ref.id) for ref in refs},
        begin=_tai(begin).isot,
        end=_tai(end).isot,
        note=note,
    )


def _failed_tests(verification: VerificationRecord) -> dict[str, int]:
    return verification.summary.failed_tests() if verification.summary is not None else {}


def _outcome(verification: VerificationRecord, **fields: object) -> CalibOutcome:
    return CalibOutcome(
        calib_type=verification.calib_type,
        generated=verification.generated,
        verdict=verification.verdict,
        failed_tests=_failed_tests(verification),
        **fields,  # type: ignore[arg-type]
    )


def _report(verification: VerificationRecord, **fields: object) -> CertificationRecord:
    return CertificationRecord(
        instrument=verification.instrument,
        calib_type=verification.calib_type,
        **fields,  # type: ignore[arg-type]
    )


def outcome_without_certification(
    verification: VerificationRecord,
) -> tuple[CalibOutcome, CertificationRecord] | None:
    """What a verdict means when nothing is certified, or `None` when the type is to be certified.

    - a failure or skip upstream ends the type with that reason (stage generate for a skip);
    - a FAILED verdict ends it, naming the failed tests;
    - external verification certifies nothing (a success when the frames passed or were not tested);
    - gains are reported, never certified (a success).
    """
    calib_type = verification.calib_type
    if verification.outcome != "ok":
        summary = verification.reason or f"{calib_type}: {verification.outcome}"
        stage = "generate" if verification.outcome == "skipped" else "verify"
        return (
            _outcome(verification, success=False, stage=stage, summary=summary),
            _report(verification, certified=False, outcome="skipped", reason=summary),
        )
    if verification.verdict == "FAILED":
        failed = ", ".join(f"{test} ×{n}" for test, n in sorted(_failed_tests(verification).items()))
        summary = f"{calib_type} failed verification ({failed}); not certified"
        return (
            _outcome(verification, success=False, stage="verify", summary=summary),
            _report(verification, certified=False, outcome="skipped", reason=summary),
        )
    if not verification.generated:
        summary = (
            f"{calib_type} frames passed external verification; nothing to certify"
            if verification.verdict == "PASSED"
            else f"{calib_type}: nothing generated or verified"
        )
        return (
            _outcome(verification, success=True, stage="verify", summary=summary),
            _report(verification, certified=False, reason="external verification"),
        )
    if calib_type not in DATASET_TYPE_OF:
        return (
            _outcome(
                verification,
                success=True,
                stage="generate",
                summary="gains from flat pairs reported per amplifier; gains are never certified",
            ),
            _report(verification, certified=False, reason="gains are reported, not certified"),
        )
    return None


def outcome_of_certification(
    verification: VerificationRecord,
    calib_collection: str,
    result: CertificationResult | Exception,
) -> tuple[CalibOutcome, CertificationRecord]:
    """The outcome of a certification attempt: ``result``, or the error that stopped it."""
    calib_type = verification.calib_type
    if isinstance(result, Exception):
        summary = f"certification of {calib_type} failed: {result}"
        return (
            _outcome(verification, success=False, stage="certify", summary=summary),
            _report(
                verification,
                certified=False,
                calib_collection=calib_collection,
                outcome="failed",
                reason=summary,
            ),
        )
    summary = f"{calib_type} certified into {calib_collection} for [{result.begin}, {result.end})"
    if result.note:
        summary = f"{summary}; {result.note}"
    return (
        _outcome(
            verification,
            success=True,
            stage="certify",
            summary=summary,
            certified=True,
            calib_collection=calib_collection,
            begin=result.begin,
            end=result.end,
            dataset_ids=result.dataset_ids,
        ),
        _report(
            verification,
            certified=True,
            calib_collection=calib_collection,
            begin=result.begin,
            end=result.end,
            dataset_ids=result.dataset_ids,
            note=result.note,
        ),
    )


def run_outcomes(
    butler: Butler, instrument: str, run_id: str, calib_types: list[str]
) -> list[CalibOutcome] | None:
    """The outcome of every calibration type of the run, or `None` while some are still open."""
    outcomes = []
    for calib_type in calib_types:
        outcome = read_record(butler, CalibOutcome, instrument, run_id, calib_type)
        if outcome is None:
            return None
        outcomes.append(outcome)
    return outcomes


def final_state(outcomes: list[CalibOutcome]) -> tuple[RunState, list[str]]:
    """The run's final state from the outcome of every type, with one error per unsuccessful type."""
    failures = [f"{o.stage}: {o.summary}" for o in outcomes if not o.success]
    return ("FAILED" if failures else "SUCCEEDED"), failures

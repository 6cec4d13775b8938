"""What the butler records about a run, as typed models.

The butler is the durable state (DESIGN.md §1): each stage writes one record per calibration type
of a run, and every handler re-derives what is done from these records. The events on the topics
carry the same bodies (`shared.events` builds on these models), so a record and the event that
announced it never disagree on a field.

The records are stored as ``StructuredDataDict`` datasets (`shared.butler.runrecords` reads and
writes them); the models here know nothing of the butler.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from shared.calibtypes import CALIB_TYPES, ImageType
from shared.identifiers import validate_collection_name, validate_run_id
from shared.instruments import get_instrument, instrument_names
from shared.runconfig.vocabulary import InstrumentName, VerifyNoiseRule

__all__ = [
    "AcquisitionManifest",
    "CalibOutcome",
    "CalibSource",
    "CertificationRecord",
    "CollectionName",
    "GenerationRecord",
    "NoiseRuleVerdict",
    "Outcome",
    "RunAccepted",
    "RunCancelled",
    "RunId",
    "Verdict",
    "VerificationRecord",
    "VerificationSummary",
]

Outcome = Literal["ok", "failed", "skipped"]
Verdict = Literal["PASSED", "FAILED", "NOT_RUN"]

# Identifiers that arrive on the wire, validated at every service's door (shared.identifiers).
RunId = Annotated[str, AfterValidator(validate_run_id)]
CollectionName = Annotated[str, AfterValidator(validate_collection_name)]
CalibTypeName = Literal["bias", "dark", "flat", "defects", "ptc", "gain"]
DetectorId = Annotated[int, Field(ge=0, le=999)]
ExposureId = Annotated[int, Field(ge=0, le=99_999_999_999_999)]
DatasetId = Annotated[str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
Detectors = Annotated[list[DetectorId], Field(max_length=205)]
Exposures = Annotated[list[ExposureId], Field(max_length=1100)]
Collections = Annotated[list[CollectionName], Field(max_length=32)]
assert set(CALIB_TYPES) == set(CalibTypeName.__args__)  # type: ignore[attr-defined]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _detectors_of_the_instrument(self) -> _Record:
        instrument = getattr(self, "instrument", None)
        detectors = getattr(self, "detectors", None)
        if instrument and detectors:
            check_detectors(instrument, detectors)
        return self


def check_detectors(instrument: str, detectors: list[int]) -> None:
    """Raise `ValueError` unless every detector id is one of ``instrument``'s (when cpflow knows it)."""
    if instrument not in instrument_names():
        return
    valid = set(get_instrument(instrument).detector_ids)
    unknown = sorted(set(detectors) - valid)
    if unknown:
        raise ValueError(f"detectors {unknown} are not detectors of {instrument}")


class CalibSource(_Record):
    """Where a calibration applied to a frame comes from.

    Attributes
    ----------
    calib_type : `str`
        The calibration type (``bias``, ``dark``, ``flat``, ...).
    kind : `str`
        ``run``: the one this run built, in its own RUN collection; ``certified``: the one
        certified, in the given collections, for each exposure's time.
    collections : `tuple` [`str`, ...]
        The collections to search, in order.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    calib_type: CalibTypeName
    kind: Literal["run", "certified"]
    collections: Annotated[tuple[CollectionName, ...], Field(max_length=32)]


class AcquisitionManifest(_Record):
    """The frames of one image type of a run, once all are taken and ingested (or why there are none)."""

    image_type: ImageType
    exposures: Exposures = Field(description="Kept exposure ids, in the order taken.")
    discarded: Exposures = Field(default_factory=list, description="Leading exposures dropped.")
    detectors: Detectors
    physical_filter: str = Field(max_length=64)
    raw_collection: CollectionName
    outcome: Outcome = Field(default="ok", description="failed or skipped: no frames, see reason.")
    reason: str | None = None


class GenerationRecord(_Record):
    """What the generator did for one calibration type of a run (also the body of ``calib.generated``)."""

    instrument: InstrumentName
    calib_type: CalibTypeName = Field(description="bias, dark, flat, defects, ptc or gain.")
    image_type: ImageType | None = None
    detectors: Detectors
    exposures: Exposures = Field(default_factory=list, description="Input exposure ids.")
    generated: bool = Field(description="False for external verification (generate_calibrations: false).")
    collection: CollectionName | None = Field(
        default=None, description="RUN collection holding the new calibration."
    )
    reference_collections: Collections = Field(
        default_factory=list, description="Collections searched for the calibration to verify against."
    )
    dataset_ids: dict[str, DatasetId] = Field(default_factory=dict, description="Detector → dataset id.")
    sources: dict[str, CalibSource] = Field(
        default_factory=dict, description="Prerequisite calibration type → where it was taken from."
    )
    products: dict[str, Any] = Field(
        default_factory=dict,
        description="Per-detector results reported rather than certified, e.g. gain per amplifier (GAIN).",
    )
    outcome: Outcome = "ok"
    reason: str | None = None
    duration_s: float | None = None


class NoiseRuleVerdict(_Record):
    """What one NOISE rule (``cpflow`` or ``cp_verify``) decides on a bias or dark verification."""

    certify: bool
    noise_failures: int = Field(ge=0, description="Failed amplifier NOISE tests, pooled over the exposures.")
    failed_exposures: list[int] = Field(default_factory=list)


class VerificationSummary(_Record):
    """What the reference script logs about a verification, as data."""

    certify: bool
    n_exposures: int
    failed_exposures: list[int] = Field(default_factory=list)
    counts: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Exposure id → test name → number of failures."
    )
    thresholds: dict[str, int] = Field(default_factory=dict)
    failures: dict[str, list[str]] = Field(
        default_factory=dict, description="Exposure id → FAILURES strings."
    )
    tests: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="Test name → {'pass': n, 'fail': n} over exposures, detectors, amplifiers.",
    )
    text: str = ""
    noise_rule: VerifyNoiseRule | None = Field(
        default=None, description="The NOISE rule that decided (verify_noise_rule); None for flats."
    )
    noise_rules: dict[VerifyNoiseRule, NoiseRuleVerdict] = Field(
        default_factory=dict,
        description="Both NOISE rules' decisions (cpflow: expected noise; cp_verify: read noise).",
    )

    def failed_tests(self) -> dict[str, int]:
        """Failures per test name, summed over the exposures."""
        totals: dict[str, int] = {}
        for per_test in self.counts.values():
            for test, n in per_test.items():
                totals[test] = totals.get(test, 0) + int(n)
        return totals


class VerificationRecord(_Record):
    """The verdict on one calibration type of a run (also the body of ``calib.verified``)."""

    instrument: InstrumentName
    calib_type: CalibTypeName
    detectors: Detectors
    exposures: Exposures = Field(default_factory=list)
    generated: bool
    collection: CollectionName | None = None
    dataset_ids: dict[str, DatasetId] = Field(
        default_factory=dict, description="Detector → the dataset id that was verified."
    )
    verdict: Verdict
    summary: VerificationSummary | None = None
    stats_collection: CollectionName | None = None
    outcome: Outcome = "ok"
    reason: str | None = None
    duration_s: float | None = None


class CertificationRecord(_Record):
    """Certification of one calibration type: done, not wanted or failed (body of ``calib.certified``)."""

    instrument: InstrumentName
    calib_type: CalibTypeName
    certified: bool
    calib_collection: CollectionName | None = None
    begin: str | None = Field(default=None, description="Start of the validity range (ISO, TAI).")
    end: str | None = Field(default=None, description="End of the validity range (ISO, TAI).")
    dataset_ids: dict[str, DatasetId] = Field(default_factory=dict)
    outcome: Outcome = "ok"
    reason: str | None = None
    note: str | None = Field(
        default=None,
        max_length=2000,
        description="Where the calibrations are when <INSTR>/calib does not include them, and what to do.",
    )


class RunAccepted(_Record):
    """A run's configuration was accepted: the acquirer takes its frames until they are in, it is
    cancelled, or it expires (a restart resumes it only before then)."""

    accepted_at: datetime
    expires_at: datetime
    submitted_by: str = Field(default="unknown", max_length=256)


class RunCancelled(_Record):
    """An operator cancelled a run: no more frames are taken, and the run ends FAILED."""

    cancelled_at: datetime
    cancelled_by: str = Field(default="unknown", max_length=256)
    reason: str = Field(default="cancelled by an operator", max_length=1000)


class CalibOutcome(_Record):
    """What became of one calibration type of a run (recorded by the certifier)."""

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
    dataset_ids: dict[str, str] = Field(default_factory=dict)
    failed_tests: dict[str, int] = Field(default_factory=dict)

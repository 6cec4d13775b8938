"""What the butler records about a run, as typed models.

The butler is the durable state (DESIGN.md §1): each stage writes one record per calibration type
of a run, and every handler re-derives what is done from these records. The events on the topics
carry the same bodies (`shared.events` builds on these models), so a record and the event that
announced it never disagree on a field.

The records are stored as ``StructuredDataDict`` datasets (`shared.butler.runrecords` reads and
writes them); the models here know nothing of the butler.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.calibtypes import ImageType

__all__ = [
    "AcquisitionManifest",
    "CalibOutcome",
    "CalibSource",
    "CertificationRecord",
    "GenerationRecord",
    "Outcome",
    "Verdict",
    "VerificationRecord",
    "VerificationSummary",
]

Outcome = Literal["ok", "failed", "skipped"]
Verdict = Literal["PASSED", "FAILED", "NOT_RUN"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


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

    calib_type: str
    kind: Literal["run", "certified"]
    collections: tuple[str, ...]


class AcquisitionManifest(_Record):
    """The frames of one image type of a run, once all are taken and ingested."""

    image_type: ImageType
    exposures: list[int] = Field(description="Kept exposure ids, in the order taken.")
    discarded: list[int] = Field(default_factory=list, description="Leading exposures dropped.")
    detectors: list[int]
    physical_filter: str
    raw_collection: str


class GenerationRecord(_Record):
    """What the generator did for one calibration type of a run (also the body of ``calib.generated``)."""

    instrument: str
    calib_type: str = Field(description="bias, dark, flat, defects, ptc or gain.")
    image_type: ImageType | None = None
    detectors: list[int]
    exposures: list[int] = Field(default_factory=list, description="Input exposure ids.")
    generated: bool = Field(description="False for external verification (generate_calibrations: false).")
    collection: str | None = Field(default=None, description="RUN collection holding the new calibration.")
    reference_collections: list[str] = Field(
        default_factory=list, description="Collections searched for the calibration to verify against."
    )
    dataset_ids: dict[str, str] = Field(default_factory=dict, description="Detector → dataset id.")
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

    def failed_tests(self) -> dict[str, int]:
        """Failures per test name, summed over the exposures."""
        totals: dict[str, int] = {}
        for per_test in self.counts.values():
            for test, n in per_test.items():
                totals[test] = totals.get(test, 0) + int(n)
        return totals


class VerificationRecord(_Record):
    """The verdict on one calibration type of a run (also the body of ``calib.verified``)."""

    instrument: str
    calib_type: str
    detectors: list[int]
    exposures: list[int] = Field(default_factory=list)
    generated: bool
    collection: str | None = None
    verdict: Verdict
    summary: VerificationSummary | None = None
    stats_collection: str | None = None
    outcome: Outcome = "ok"
    reason: str | None = None
    duration_s: float | None = None


class CertificationRecord(_Record):
    """Certification of one calibration type: done, not wanted or failed (body of ``calib.certified``)."""

    instrument: str
    calib_type: str
    certified: bool
    calib_collection: str | None = None
    begin: str | None = Field(default=None, description="Start of the validity range (ISO, TAI).")
    end: str | None = Field(default=None, description="End of the validity range (ISO, TAI).")
    dataset_ids: dict[str, str] = Field(default_factory=dict)
    outcome: Outcome = "ok"
    reason: str | None = None


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

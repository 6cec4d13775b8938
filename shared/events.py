"""Event contracts: pydantic v2 models serialised as JSON on the Kafka topics.

Every event carries the same envelope (DESIGN.md §1): ``event_id``, ``schema_version``,
``run_id``, ``causation_id`` (the event that caused this one), ``producer`` and ``time``, plus a
``type`` discriminator. Stage events carry an ``outcome``: a failure or a skip travels down the
chain as an event, so the certifier can close every run with one final status.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "SCHEMA_VERSION",
    "CalibCertified",
    "CalibGenerated",
    "CalibVerified",
    "DeadLetter",
    "Event",
    "FramesAcquired",
    "Outcome",
    "RunRequested",
    "RunState",
    "RunStatus",
    "VerificationSummary",
]

SCHEMA_VERSION = 1

ImageType = Literal["BIAS", "DARK", "FLAT"]
Outcome = Literal["ok", "failed", "skipped"]
RunState = Literal["SUBMITTED", "RUNNING", "SUCCEEDED", "FAILED", "REJECTED"]
FINAL_STATES: tuple[RunState, ...] = ("SUCCEEDED", "FAILED", "REJECTED")


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


class Event(BaseModel):
    """The envelope shared by every event."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(default_factory=_new_id, description="Unique id of this event (UUID4).")
    schema_version: int = Field(default=SCHEMA_VERSION, description="Version of the event schema.")
    run_id: str = Field(description="The run this event belongs to; also the Kafka message key.")
    causation_id: str | None = Field(default=None, description="event_id of the event that caused this one.")
    producer: str = Field(description="Service (or CLI) that produced the event.")
    time: datetime = Field(default_factory=_now, description="When the event was produced (UTC).")

    def caused(self, **kwargs: Any) -> dict[str, Any]:
        """Envelope fields for an event caused by this one."""
        return {"run_id": self.run_id, "causation_id": self.event_id, **kwargs}


class RunRequested(Event):
    """A run was submitted. The configuration is re-validated by the acquirer."""

    type: Literal["run.requested"] = "run.requested"
    config: dict[str, Any] = Field(description="The run configuration as submitted (YAML mapping).")
    submitted_by: str = Field(default="unknown", description="Who submitted the run (user@host).")


class FramesAcquired(Event):
    """All frames of one image type were taken and ingested as ``raw`` (or acquisition failed)."""

    type: Literal["frames.acquired"] = "frames.acquired"
    instrument: str
    image_type: ImageType
    detectors: list[int]
    exposures: list[int] = Field(default_factory=list, description="Kept exposure ids, in order.")
    discarded: list[int] = Field(default_factory=list, description="Leading exposures dropped (n_discard_X).")
    physical_filter: str | None = None
    raw_collection: str | None = None
    outcome: Outcome = "ok"
    reason: str | None = None


class CalibGenerated(Event):
    """A combined calibration was built (or, for external verification, deliberately not)."""

    type: Literal["calib.generated"] = "calib.generated"
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
    sources: dict[str, list[str]] = Field(
        default_factory=dict, description="Prerequisite calibration type → collections it was taken from."
    )
    products: dict[str, Any] = Field(
        default_factory=dict,
        description="Per-detector results reported rather than certified, e.g. gain per amplifier (GAIN).",
    )
    outcome: Outcome = "ok"
    reason: str | None = None
    duration_s: float | None = None


class VerificationSummary(BaseModel):
    """What the reference script logs about a verification, as data."""

    model_config = ConfigDict(extra="forbid")

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


class CalibVerified(Event):
    """Verification of one calibration type finished with a verdict (or was not run)."""

    type: Literal["calib.verified"] = "calib.verified"
    instrument: str
    calib_type: str
    detectors: list[int]
    exposures: list[int] = Field(default_factory=list)
    generated: bool
    collection: str | None = None
    verdict: Literal["PASSED", "FAILED", "NOT_RUN"]
    summary: VerificationSummary | None = None
    stats_collection: str | None = None
    outcome: Outcome = "ok"
    reason: str | None = None
    duration_s: float | None = None


class CalibCertified(Event):
    """Certification of one calibration type: done, not wanted, or failed."""

    type: Literal["calib.certified"] = "calib.certified"
    instrument: str
    calib_type: str
    certified: bool
    calib_collection: str | None = None
    begin: str | None = Field(default=None, description="Start of the validity range (ISO, TAI).")
    end: str | None = Field(default=None, description="End of the validity range (ISO, TAI).")
    dataset_ids: dict[str, str] = Field(default_factory=dict)
    outcome: Outcome = "ok"
    reason: str | None = None


class RunStatus(Event):
    """The state of a run, with a message; the last one of a run has a final state."""

    type: Literal["run.status"] = "run.status"
    state: RunState
    stage: str = Field(description="Which stage reports: submit, acquire, generate, verify, certify, run.")
    message: str = ""
    errors: list[str] = Field(default_factory=list, description="Why a run was rejected or failed.")
    progress: dict[str, int] | None = Field(default=None, description="e.g. {'done': 5, 'total': 21}.")
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


class DeadLetter(BaseModel):
    """A message a service could not decode or process, with everything needed to replay it."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["deadletter"] = "deadletter"
    event_id: str = Field(default_factory=_new_id)
    schema_version: int = SCHEMA_VERSION
    time: datetime = Field(default_factory=_now)
    producer: str
    run_id: str | None = Field(default=None, description="The run id from the message key, if any.")
    origin_topic: str
    origin_partition: int
    origin_offset: int
    key: str | None = None
    payload_base64: str = Field(description="The original message bytes, base64-encoded.")
    payload_text: str | None = Field(
        default=None, description="The original bytes as UTF-8 text, if they are."
    )
    error_type: str
    error: str

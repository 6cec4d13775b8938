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

from shared.calibtypes import ImageType
from shared.records import (
    CertificationRecord,
    GenerationRecord,
    Outcome,
    VerificationRecord,
    VerificationSummary,
)

__all__ = [
    "DEAD_LETTER_EXCERPT_CHARS",
    "DEAD_LETTER_INLINE_BYTES",
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

SCHEMA_VERSION = 2
"""2: ``calib.generated`` carries each prerequisite's whole source (type, kind, collections)."""

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


class CalibGenerated(GenerationRecord, Event):
    """A combined calibration was built (or, for external verification, deliberately not)."""

    type: Literal["calib.generated"] = "calib.generated"

    @classmethod
    def announce(cls, cause: Event, producer: str, record: GenerationRecord) -> CalibGenerated:
        """The event that announces ``record``, caused by ``cause``."""
        return cls(**cause.caused(producer=producer), **dict(record))

    def record(self) -> GenerationRecord:
        """The generation record this event carries."""
        return GenerationRecord(**{name: getattr(self, name) for name in GenerationRecord.model_fields})


class CalibVerified(VerificationRecord, Event):
    """Verification of one calibration type finished with a verdict (or was not run)."""

    type: Literal["calib.verified"] = "calib.verified"

    @classmethod
    def announce(cls, cause: Event, producer: str, record: VerificationRecord) -> CalibVerified:
        """The event that announces ``record``, caused by ``cause``."""
        return cls(**cause.caused(producer=producer), **dict(record))

    def record(self) -> VerificationRecord:
        """The verification record this event carries."""
        return VerificationRecord(**{name: getattr(self, name) for name in VerificationRecord.model_fields})


class CalibCertified(CertificationRecord, Event):
    """Certification of one calibration type: done, not wanted, or failed."""

    type: Literal["calib.certified"] = "calib.certified"

    @classmethod
    def announce(cls, cause: Event, producer: str, record: CertificationRecord) -> CalibCertified:
        """The event that announces ``record``, caused by ``cause``."""
        return cls(**cause.caused(producer=producer), **dict(record))


class RunStatus(Event):
    """The state of a run, with a message; the last one of a run has a final state."""

    type: Literal["run.status"] = "run.status"
    state: RunState
    stage: str = Field(description="Which stage reports: submit, acquire, generate, verify, certify, run.")
    message: str = ""
    errors: list[str] = Field(default_factory=list, description="Why a run was rejected or failed.")
    progress: dict[str, int] | None = Field(default=None, description="e.g. {'done': 5, 'total': 21}.")
    details: dict[str, Any] = Field(default_factory=dict)


DEAD_LETTER_INLINE_BYTES = 256 * 1024
"""Largest payload a dead letter carries whole (base64 makes it 4/3 larger); a larger one is kept
by reference (`DeadLetter.payload_ref`), so a dead letter always fits the broker's 1 MiB limit."""
DEAD_LETTER_EXCERPT_CHARS = 4096
"""Characters of a UTF-8 payload shown as text in a dead letter."""


class DeadLetter(BaseModel):
    """A message a service could not decode or process, with what is needed to replay it.

    The payload is carried once: whole in ``payload_base64`` up to `DEAD_LETTER_INLINE_BYTES`,
    otherwise kept by reference (``payload_ref``) with its size and SHA-256; ``payload_text`` is
    a bounded excerpt for reading.
    """

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
    payload_size: int = Field(description="Size of the original message value in bytes.")
    payload_sha256: str = Field(description="SHA-256 of the original message value (hex).")
    payload_base64: str | None = Field(
        default=None, description="The original bytes, base64-encoded, when they fit inline."
    )
    payload_ref: str | None = Field(
        default=None, description="Where the whole payload is kept when it is too large to carry inline."
    )
    payload_text: str | None = Field(
        default=None, description="The start of the original bytes as UTF-8 text, if they are text."
    )
    error_type: str
    error: str

    def payload(self) -> bytes | None:
        """The original bytes when this letter carries them whole (else see ``payload_ref``)."""
        import base64

        return None if self.payload_base64 is None else base64.b64decode(self.payload_base64)

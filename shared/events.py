"""Event contracts: pydantic v2 models serialised as JSON on the Kafka topics.

Every event carries the same envelope (DESIGN.md §1): ``event_id``, ``schema_version``,
``run_id``, ``causation_id`` (the event that caused this one), ``producer`` and ``time``, plus a
``type`` discriminator. Stage events carry an ``outcome``: a failure or a skip travels down the
chain as an event, so the certifier can close every run with one final status.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from shared.calibtypes import ImageType
from shared.records import (
    CertificationRecord,
    CollectionName,
    Detectors,
    Exposures,
    GenerationRecord,
    Outcome,
    RunId,
    VerificationRecord,
    VerificationSummary,
    check_detectors,
)
from shared.runconfig.vocabulary import InstrumentName

__all__ = [
    "DEAD_LETTER_EXCERPT_CHARS",
    "DEAD_LETTER_INLINE_BYTES",
    "EVENT_OF_TOPIC",
    "SCHEMA_VERSION",
    "CalibCertified",
    "CalibGenerated",
    "CalibVerified",
    "DeadLetter",
    "Event",
    "FramesAcquired",
    "Outcome",
    "RunCancelRequested",
    "RunRequest",
    "RunRequested",
    "RunState",
    "RunStatus",
    "VerificationSummary",
    "parse_event",
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

    event_id: str = Field(
        default_factory=_new_id, max_length=64, description="Unique id of this event (UUID4)."
    )
    schema_version: int = Field(
        default=SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION, description="Version of the event schema."
    )
    run_id: RunId = Field(description="The run this event belongs to; also the Kafka message key.")
    causation_id: str | None = Field(
        default=None, max_length=64, description="event_id of the event that caused this one."
    )
    producer: str = Field(max_length=64, description="Service (or CLI) that produced the event.")
    time: datetime = Field(default_factory=_now, description="When the event was produced (UTC).")

    def caused(self, **kwargs: Any) -> dict[str, Any]:
        """Envelope fields for an event caused by this one."""
        return {"run_id": self.run_id, "causation_id": self.event_id, **kwargs}


class RunRequested(Event):
    """A run was submitted. The configuration is re-validated by the acquirer."""

    type: Literal["run.requested"] = "run.requested"
    config: dict[str, Any] = Field(description="The run configuration as submitted (YAML mapping).")
    submitted_by: str = Field(default="unknown", description="Who submitted the run (user@host).")


class RunCancelRequested(Event):
    """An operator asks to stop a run: no more frames are taken, and the run ends FAILED."""

    type: Literal["run.cancel"] = "run.cancel"
    reason: str = Field(default="cancelled by an operator", max_length=1000)
    requested_by: str = Field(default="unknown", max_length=256, description="Who asked (user@host).")


RunRequest = Annotated[RunRequested | RunCancelRequested, Field(discriminator="type")]
"""What the ``run.requested`` topic carries: a run to take, or a run to cancel."""


class FramesAcquired(Event):
    """All frames of one image type were taken and ingested as ``raw`` (or acquisition failed)."""

    type: Literal["frames.acquired"] = "frames.acquired"
    instrument: InstrumentName
    image_type: ImageType
    detectors: Detectors
    exposures: Exposures = Field(default_factory=list, description="Kept exposure ids, in order.")
    discarded: Exposures = Field(default_factory=list, description="Leading exposures dropped (n_discard_X).")
    physical_filter: str | None = Field(default=None, max_length=64)
    raw_collection: CollectionName | None = None
    outcome: Outcome = "ok"
    reason: str | None = None

    @model_validator(mode="after")
    def _detectors_of_the_instrument(self) -> FramesAcquired:
        check_detectors(self.instrument, self.detectors)
        return self


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


EVENT_OF_TOPIC: dict[str, TypeAdapter[Any]] = {
    "run.requested": TypeAdapter(RunRequest),
    "frames.acquired": TypeAdapter(FramesAcquired),
    "calib.generated": TypeAdapter(CalibGenerated),
    "calib.verified": TypeAdapter(CalibVerified),
    "calib.certified": TypeAdapter(CalibCertified),
    "run.status": TypeAdapter(RunStatus),
}
"""The events each run topic carries (by topic suffix)."""


def parse_event(topic_suffix: str, body: bytes) -> Event | None:
    """The event ``body`` is on topic ``topic_suffix``, or `None` if it is not a valid one.

    Never raises for bad input (bad JSON, wrong types, nesting too deep, unknown topic).
    """
    adapter = EVENT_OF_TOPIC.get(topic_suffix)
    if adapter is None:
        return None
    try:
        event: Event = adapter.validate_json(body)
        return event
    except (ValueError, RecursionError):  # pydantic's ValidationError is a ValueError
        return None


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

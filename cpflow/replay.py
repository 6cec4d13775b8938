"""Event replay for debugging: redo a finished run's work from one stage on, in a sandbox.

``cpflow replay RUN_ID --from STAGE --prefix SANDBOX`` makes a new run (a new run id) that starts
where the original's stage ``STAGE`` started:

1. In the butler, the new run's collection gets a `RunReplay` record (the original run, the stage,
   the sandbox, whether it may certify) and copies of the original's records of every stage before
   ``STAGE`` (configuration, acquisition manifests, generation and verification records). The
   copies name the original's products, which the sandbox's services read and never write.
2. The original's events on the stage's input topic are re-published to the sandbox's topic with
   the new run id; each carries the original event's id as its ``causation_id``.

The sandbox's services (`cpflow.sandbox`) then redo the work from there into the new run's own
collections. Nothing in production's topics, the original run's collections or any existing
calibration collection changes: a replay certifies into a new collection of its own,
``<INSTR>/calib/replay/<new run id>``, never added to ``<INSTR>/calib``, or not at all
(``--no-certify``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from lsst.daf.butler import Butler

from cpflow.sandbox import sandbox_settings
from cpflow.submission import new_run_id
from cpflow.topics_reader import Message, publish_messages, read_events
from shared.butler.repo import open_butler
from shared.butler.runrecords import (
    expected_calib_types,
    instrument_of_run,
    load_run_config,
    read_record,
    store_run_config,
    write_record,
)
from shared.events import parse_event
from shared.kafka_access import connection_for
from shared.records import AcquisitionManifest, GenerationRecord, ReplayStage, RunReplay, VerificationRecord
from shared.runconfig import validate_run_configuration
from shared.settings import Settings
from shared.topics import Topics

__all__ = ["INPUT_TOPIC", "STAGES", "ReplayError", "replay_run"]

STAGES: tuple[ReplayStage, ...] = ("acquire", "generate", "verify", "certify")
INPUT_TOPIC: dict[str, str] = {
    "acquire": "run.requested",
    "generate": "frames.acquired",
    "verify": "calib.generated",
    "certify": "calib.verified",
}
"""The topic whose events start each stage."""


class ReplayError(LookupError):
    """A run that cannot be replayed, and why."""


def replay_collection(instrument: str, run_id: str) -> str:
    """The calibration collection a replayed run certifies into."""
    return f"{instrument}/calib/replay/{run_id}"


def _seed(butler: Butler, run_id: str, new_id: str, stage: ReplayStage, prefix: str, certify: bool) -> Any:
    """Write the new run's replay record and copies of the original's records before ``stage``."""
    instrument = _instrument(butler, run_id)
    original = load_run_config(butler, instrument, run_id)
    document = original.to_document()
    document["calib_collection"] = replay_collection(instrument, new_id)
    config = validate_run_configuration(document)
    replay = RunReplay(original_run_id=run_id, from_stage=stage, topic_prefix=prefix, certify=certify)
    write_record(butler, replay, instrument, new_id, None)
    if stage == "acquire":
        return config
    store_run_config(butler, config, new_id)
    before = STAGES[: STAGES.index(stage)]
    kinds: list[tuple[type[AcquisitionManifest | GenerationRecord | VerificationRecord], list[str]]] = []
    if "acquire" in before:
        kinds.append((AcquisitionManifest, list(config.image_types)))
    if "generate" in before:
        kinds.append((GenerationRecord, expected_calib_types(config)))
    if "verify" in before:
        kinds.append((VerificationRecord, expected_calib_types(config)))
    for model, names in kinds:
        for name in names:
            record = read_record(butler, model, instrument, run_id, name)
            if record is not None:
                write_record(butler, record, instrument, new_id, name)
    return config


def _rewritten(event: dict[str, Any], new_id: str, config_document: dict[str, Any] | None) -> dict[str, Any]:
    fields = {key: value for key, value in event.items() if not key.startswith("_")}
    fields.update(
        run_id=new_id,
        causation_id=event["event_id"],
        event_id=str(uuid.uuid4()),
        time=datetime.now(UTC).isoformat(),
        producer="replay",
    )
    if config_document is not None and "config" in fields:
        fields["config"] = config_document
    return fields


def replay_run(
    settings: Settings, run_id: str, stage: ReplayStage, prefix: str, certify: bool = True
) -> tuple[str, int]:
    """Replay ``run_id`` from ``stage`` into the sandbox ``prefix``; the new run id and the events sent.

    Raises
    ------
    ReplayError
        If the run is unknown or has no event on the stage's input topic.
    ValueError
        If ``prefix`` is not a valid sandbox prefix.
    """
    sandbox = sandbox_settings(settings, prefix)
    topic = INPUT_TOPIC[stage]
    production, target = Topics(settings.topic_prefix), Topics(sandbox.topic_prefix)
    source, destination = _topic(production, topic), _topic(target, topic)
    events = asyncio.run(read_events(connection_for(settings), [source], run_id=run_id))
    if not events:
        raise ReplayError(f"run {run_id} has no {topic} event to replay from {stage}")
    new_id = new_run_id()
    with open_butler(settings.butler_repo) as butler:
        config = _seed(butler, run_id, new_id, stage, prefix, certify)
    document = config.to_document() if stage == "acquire" else None
    messages: list[Message] = []
    for event in events:
        if event.get("type") not in (None, topic):  # e.g. a cancellation on run.requested
            continue
        replayed = parse_event(topic, _json(_rewritten(event, new_id, document)))
        if replayed is None:
            raise ReplayError(f"run {run_id}: a {topic} event does not validate once rewritten")
        messages.append((destination, replayed.model_dump_json().encode(), new_id.encode(), None))
    # Every event is checked before any is sent, and all go through one producer.
    asyncio.run(publish_messages(connection_for(settings, "admin"), messages))
    return new_id, len(messages)


def _json(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, default=str).encode()


def _topic(topics: Topics, suffix: str) -> str:
    name: str = getattr(topics, suffix.replace(".", "_"))
    return name


def _instrument(butler: Butler, run_id: str) -> str:
    instrument = instrument_of_run(butler, run_id)
    if instrument is None:
        raise ReplayError(f"no run {run_id} in the butler repository")
    return instrument

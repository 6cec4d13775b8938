"""Reading and writing the event topics from the operator's side (CLI, tests, demo).

Whatever is on a topic is read defensively: a message that is not a valid event of its topic
(junk, a forgery that does not decode, JSON nested a thousand deep) is skipped and counted, never
a crash.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from cpflow.runview import deciding_status, is_closing
from shared.events import FINAL_STATES, DeadLetter, Event, parse_event
from shared.kafka_access import KafkaConnection
from shared.topics import Topics

__all__ = [
    "Message",
    "publish_event",
    "publish_messages",
    "publish_raw",
    "read_events",
    "wait_for_final_status",
]

Connection = KafkaConnection | str
"""A connection, or bootstrap servers alone (a plaintext broker)."""


def _options(connection: Connection) -> dict[str, Any]:
    if isinstance(connection, str):
        connection = KafkaConnection(bootstrap=connection)
    return connection.aiokafka_options()


Message = tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]
"""A message to publish: topic, value, key and headers."""


async def publish_messages(connection: Connection, messages: Iterable[Message]) -> None:
    """Publish ``messages`` in order with one producer."""
    producer = AIOKafkaProducer(**_options(connection), enable_idempotence=True)
    try:
        await producer.start()
        for topic, value, key, headers in messages:
            await producer.send_and_wait(topic, value=value, key=key, headers=headers)
    finally:
        await producer.stop()


async def publish_raw(
    connection: Connection,
    topic: str,
    value: bytes,
    key: bytes | None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    await publish_messages(connection, [(topic, value, key, headers)])


async def publish_event(connection: Connection, topic: str, event: Event) -> None:
    await publish_raw(connection, topic, event.model_dump_json().encode(), event.run_id.encode())


async def _assign_all(
    consumer: AIOKafkaConsumer, connection: Connection, topics: Iterable[str]
) -> list[TopicPartition]:
    partitions: list[TopicPartition] = []
    wanted = list(topics)
    admin = AIOKafkaAdminClient(**_options(connection))
    try:
        await admin.start()
        described = await admin.describe_topics(wanted)
    finally:
        await admin.close()
    for topic in described:
        if topic.get("error_code", 0) == 0 and topic["topic"] in wanted:
            parts = sorted(p["partition"] for p in topic["partitions"])
            partitions.extend(TopicPartition(topic["topic"], p) for p in parts)
    if not partitions:
        raise RuntimeError(f"none of the topics {list(topics)} exist on the broker; is the stack up?")
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    return partitions


def _decode(record: Any) -> dict[str, Any] | None:
    """The event of ``record`` as a dict (with its position), or `None` if it is not a valid one."""
    try:
        suffix = Topics.suffix(record.topic)
    except ValueError:
        return None
    value = record.value or b""
    parsed: Event | DeadLetter | None
    if suffix == "deadletter":
        try:
            parsed = DeadLetter.model_validate_json(value)
        except (ValueError, RecursionError):
            parsed = None
    else:
        parsed = parse_event(suffix, value)
    if parsed is None:
        return None
    event = parsed.model_dump(mode="json")
    event["_topic"] = record.topic
    event["_partition"] = record.partition
    event["_offset"] = record.offset
    event["_key"] = (record.key or b"").decode(errors="replace")
    return event


async def read_events(
    connection: Connection,
    topics: Iterable[str],
    run_id: str | None = None,
    timeout: float = 20.0,
    on_unreadable: Callable[[Any], None] | None = None,
) -> list[dict[str, Any]]:
    """Every valid event on ``topics`` (of ``run_id`` if given) from the beginning to the current end.

    Messages that are not valid events of their topic are skipped; ``on_unreadable`` is called
    with each such record.
    """
    consumer = AIOKafkaConsumer(**_options(connection), enable_auto_commit=False, group_id=None)
    events: list[dict[str, Any]] = []
    try:
        await consumer.start()
        partitions = await _assign_all(consumer, connection, list(topics))
        end = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [tp for tp in partitions if await consumer.position(tp) < end[tp]]
            if not pending:
                break
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if run_id is not None and (record.key or b"").decode(errors="replace") != run_id:
                        continue
                    event = _decode(record)
                    if event is not None and (run_id is None or event.get("run_id", run_id) == run_id):
                        events.append(event)
                    elif on_unreadable is not None:
                        on_unreadable(record)
    finally:
        await consumer.stop()
    events.sort(key=lambda e: (str(e.get("time", "")), e["_topic"], e["_offset"]))
    return events


FAILURE_GRACE_S = 10.0
"""After a service's FAILED (not a closing state), how long to wait for the run's closing status."""


async def wait_for_final_status(
    connection: Connection,
    status_topic: str,
    run_id: str,
    timeout: float,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any] | None:
    """Follow ``status_topic`` until ``run_id``'s state is decided; `None` on timeout.

    The state is decided as `cpflow.runview.deciding_status` decides it, so this agrees with
    ``cpflow status``: by the run's closing status, or by a service's FAILED when no closing
    status follows within `FAILURE_GRACE_S`. Only valid status events of the run count (keyed
    and stamped with its id), so a stray message keyed by the run's id cannot end the wait.
    """
    statuses: list[dict[str, Any]] = []
    failed_at: float | None = None
    consumer = AIOKafkaConsumer(**_options(connection), enable_auto_commit=False, group_id=None)
    try:
        await consumer.start()
        await _assign_all(consumer, connection, [status_topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    if (record.key or b"").decode(errors="replace") != run_id:
                        continue
                    event = _decode(record)
                    if event is None or event.get("run_id") != run_id:
                        continue
                    if on_status is not None:
                        on_status(event)
                    statuses.append(event)
                    if is_closing(event):
                        return event
                    if event.get("state") in FINAL_STATES and failed_at is None:
                        failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > FAILURE_GRACE_S:
                return deciding_status(statuses)
            await asyncio.sleep(0)
        return None
    finally:
        await consumer.stop()

"""Reading and writing the event topics from the operator's side (CLI, tests, demo)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.events import FINAL_STATES, Event

__all__ = ["publish_event", "publish_raw", "read_events", "wait_for_final_status"]


async def publish_raw(bootstrap: str, topic: str, value: bytes, key: bytes | None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


async def publish_event(bootstrap: str, topic: str, event: Event) -> None:
    await publish_raw(bootstrap, topic, event.model_dump_json().encode(), event.run_id.encode())


async def _assign_all(
    consumer: AIOKafkaConsumer, bootstrap: str, topics: Iterable[str]
) -> list[TopicPartition]:
    partitions: list[TopicPartition] = []
    wanted = list(topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
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
    try:
        value = json.loads(record.value)
    except (TypeError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    value["_topic"] = record.topic
    value["_partition"] = record.partition
    value["_offset"] = record.offset
    value["_key"] = (record.key or b"").decode(errors="replace")
    return value


async def read_events(
    bootstrap: str, topics: Iterable[str], run_id: str | None = None, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Every event on ``topics`` (of ``run_id`` if given) from the beginning to the current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    events: list[dict[str, Any]] = []
    try:
        partitions = await _assign_all(consumer, bootstrap, list(topics))
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
                    if event is not None:
                        events.append(event)
    finally:
        await consumer.stop()
    events.sort(key=lambda e: (e.get("time", ""), e["_topic"], e["_offset"]))
    return events


async def wait_for_final_status(
    bootstrap: str, status_topic: str, run_id: str, timeout: float, on_status: Any = None
) -> dict[str, Any] | None:
    """Follow ``status_topic`` until ``run_id`` reaches a final state; None on timeout."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        await _assign_all(consumer, bootstrap, [status_topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    if (record.key or b"").decode(errors="replace") != run_id:
                        continue
                    event = _decode(record)
                    if event is None:
                        continue
                    if on_status is not None:
                        on_status(event)
                    if event.get("state") in FINAL_STATES:
                        return event
            await asyncio.sleep(0)
        return None
    finally:
        await consumer.stop()

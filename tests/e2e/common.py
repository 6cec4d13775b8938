"""Helpers of the end-to-end tests: the CLI as a user runs it, and the run's events from the topics."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import httpx

from cpflow.kafka_local import LocalKafka
from cpflow.topics_reader import read_events
from shared.kafka_access import KafkaConnection, connection_for
from shared.settings import Settings
from shared.topics import Topics
from tests.conftest import settings_env

__all__ = ["admin", "assert_every_service_ready", "cpflow", "events_of", "operator", "wait_until"]


def admin(settings: Settings) -> KafkaConnection:
    """The broker's super user: what the tests' attacks and inspections connect as."""
    return LocalKafka(settings.home, settings.kafka_port, settings.kafka_controller_port).admin_connection()


def operator(settings: Settings) -> KafkaConnection:
    """The operator's connection, as the CLI makes it."""
    return connection_for(settings)


def cpflow(settings: Settings, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cpflow.cli", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def events_of(settings: Settings, run_id: str | None = None, topics: list[str] | None = None) -> list[dict]:
    t = Topics(settings.topic_prefix)
    return asyncio.run(read_events(admin(settings), topics or t.run_topics(), run_id=run_id))


def assert_every_service_ready(settings: Settings) -> None:
    """Every service's ``/readyz`` answers 200 (the assertion names the one that does not)."""
    for name, port in settings.http_ports.items():
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200, name


def wait_until(predicate: Any, timeout: float = 120.0, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")

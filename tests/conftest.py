"""Shared fixtures: a real local stack (Apache Kafka broker + the four services + a butler)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.settings import SERVICE_NAMES, Settings


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for ``pytest -n 2 --dist loadgroup``: every end-to-end test on one worker (they share one
    stack), each other module whole on one worker (its module fixtures are built once)."""
    for item in items:
        path = Path(str(item.path))
        group = "e2e" if path.parent.name == "e2e" else f"{path.parent.name}/{path.stem}"
        item.add_marker(pytest.mark.xdist_group(group))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stack_settings(home: Path) -> Settings:
    kafka_port = free_port()
    return Settings(
        home=home,
        butler_repo=str(home / "butler"),
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        kafka_port=kafka_port,
        kafka_controller_port=free_port(),
        topic_prefix="cpflowtest",
        partitions=3,
        max_poll_interval_ms=600_000,
        transient_retries=5,
        **{f"{name}_port": free_port() for name in SERVICE_NAMES},
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that points the CLI at ``settings``."""
    return {**os.environ, **settings.environment()}


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    """A PostgreSQL server of the module's own (`tests.postgres`), stopped by pid afterwards."""
    from tests.postgres import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The whole local stack, started once per test session and stopped by pid at the end."""
    from cpflow.stack import stack_down, stack_up
    from tests.embargo import embargo_repository

    home = tmp_path_factory.mktemp("cpflow-home")
    # The raws of runs on frames already in a butler come from a separate, read-only repository
    # laid out as the summit's embargo repository (CPFLOW_RAW_REPO); the simulated camera's stay
    # in cpflow's own.
    embargo = embargo_repository(home / "embargo", ("LATISS", "LSSTComCam", "LSSTCam"))
    settings = stack_settings(home).model_copy(update={"raw_repo": str(embargo)})
    try:
        stack_up(settings, echo=False)
        yield settings
    finally:
        stack_down(settings)

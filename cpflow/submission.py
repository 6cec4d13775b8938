"""Submitting a run and following it to its final state (the CLI's ``submit`` and the demo)."""

from __future__ import annotations

import asyncio
import getpass
import secrets
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cpflow.topics_reader import publish_event, wait_for_final_status
from shared.events import RunCancelRequested, RunRequested
from shared.identifiers import validate_run_id
from shared.kafka_access import connection_for
from shared.runconfig import RunConfiguration, load_run_document
from shared.settings import Settings
from shared.topics import Topics

__all__ = [
    "EXIT_BROKER",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_REJECTED",
    "EXIT_REPOSITORY",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "cancel_run",
    "new_run_id",
    "print_status_line",
    "report_final",
    "submit_run",
    "wait_for_run",
]

EXIT_OK, EXIT_FAILED, EXIT_REJECTED, EXIT_TIMEOUT, EXIT_USAGE, EXIT_BROKER, EXIT_REPOSITORY = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
)
"""Exit codes: submitted (with ``--wait``: SUCCEEDED), FAILED, REJECTED, no final state in time, bad
environment, the broker cannot be reached, the butler repository defines cpflow's dataset types otherwise."""


def new_run_id() -> str:
    """A sortable, unique run id, e.g. ``20261127T161503-3f9a1c``."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def submit_run(settings: Settings, path: str | Path) -> tuple[str, RunConfiguration]:
    """Validate the configuration file at ``path`` and publish the run request; return its run id.

    Raises
    ------
    shared.runconfig.ConfigurationError
        If the file cannot be read or the configuration is invalid (nothing is published).
    """
    document, config = load_run_document(path)
    topics = Topics(settings.topic_prefix)
    run_id = new_run_id()
    request = RunRequested(
        run_id=run_id,
        producer="cli",
        config=document,
        submitted_by=f"{getpass.getuser()}@{socket.gethostname()}",
    )
    # The operator writes only run.requested (cpflow.access); the acquirer reports the run's states.
    asyncio.run(publish_event(connection_for(settings), topics.run_requested, request))
    return run_id, config


def cancel_run(settings: Settings, run_id: str, reason: str) -> None:
    """Ask the acquirer to stop the run: no more frames are taken, and the run ends FAILED."""
    request = RunCancelRequested(
        run_id=validate_run_id(run_id),
        producer="cli",
        reason=reason,
        requested_by=f"{getpass.getuser()}@{socket.gethostname()}",
    )
    topics = Topics(settings.topic_prefix)
    asyncio.run(publish_event(connection_for(settings), topics.run_requested, request))


def wait_for_run(
    settings: Settings,
    run_id: str,
    timeout: float,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any] | None:
    """The run's final status event, or `None` if it has none within ``timeout`` seconds."""
    topics = Topics(settings.topic_prefix)
    return asyncio.run(
        wait_for_final_status(
            connection_for(settings), topics.run_status, run_id, timeout, on_status=on_status
        )
    )


def print_status_line(event: dict[str, Any]) -> None:
    """One line of a run's progress, as ``submit --wait`` prints it."""
    progress = event.get("progress")
    extra = f" [{progress['done']}/{progress['total']}]" if progress else ""
    print(
        f"  {event.get('time', '')[:19]}  {event.get('state', ''):9s} {event.get('stage', ''):9s} "
        f"{event.get('message', '')}{extra}",
        flush=True,
    )


def report_final(run_id: str, final: dict[str, Any] | None, timeout: float) -> int:
    """Print a run's final state and return the exit code ``submit --wait`` ends with."""
    if final is None:
        print(f"run {run_id}: no final state within {timeout:.0f} s", file=sys.stderr)
        return EXIT_TIMEOUT
    print(f"run {run_id}: {final['state']}", flush=True)
    for error in final.get("errors", []):
        print(f"  - {error}", flush=True)
    return {"SUCCEEDED": EXIT_OK, "FAILED": EXIT_FAILED, "REJECTED": EXIT_REJECTED}[final["state"]]

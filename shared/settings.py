"""Deployment settings shared by the services and the CLI, read from the environment.

Every setting has a ``CPFLOW_`` environment variable; the defaults give a working local stack
under ``./.cpflow``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SERVICE_NAMES", "Settings"]

SERVICE_NAMES = ("acquirer", "generator", "verifier", "certifier")
_DEFAULT_HTTP_PORTS = {"acquirer": 8181, "generator": 8182, "verifier": 8183, "certifier": 8184}


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


@dataclass(frozen=True)
class Settings:
    """Where things are and how to reach them.

    Attributes
    ----------
    home : `pathlib.Path`
        State directory (``CPFLOW_HOME``, default ``./.cpflow``): logs, pid files, the broker's
        data, the simulated camera's output and, by default, the butler repository.
    butler_repo : `str`
        Butler repository (``CPFLOW_BUTLER_REPO``, default ``$CPFLOW_HOME/butler``).
    kafka_bootstrap : `str`
        Kafka bootstrap servers (``CPFLOW_KAFKA_BOOTSTRAP``, default ``127.0.0.1:<kafka_port>``).
    kafka_port, kafka_controller_port : `int`
        Ports of the local broker (``CPFLOW_KAFKA_PORT`` default 9092, controller port + 1).
    topic_prefix : `str`
        Prefix of every topic (``CPFLOW_TOPIC_PREFIX``, default ``cpflow``).
    partitions : `int`
        Partitions per topic when the stack creates them (``CPFLOW_PARTITIONS``, default 3).
    http_ports : `dict`
        Each service's HTTP port for /metrics, /healthz, /readyz (``CPFLOW_<NAME>_PORT``).
    registry_db : `str` or `None`
        A PostgreSQL URL for the butler registry (``CPFLOW_REGISTRY_DB``); SQLite when unset.
    max_poll_interval_ms : `int`
        Longest time a handler may run before Kafka considers the consumer dead
        (``CPFLOW_MAX_POLL_INTERVAL_MS``, default one hour: combines of full-size stacks take minutes).
    """

    home: Path
    butler_repo: str
    kafka_bootstrap: str
    kafka_port: int
    kafka_controller_port: int
    topic_prefix: str
    partitions: int
    http_ports: dict[str, int] = field(default_factory=dict)
    registry_db: str | None = None
    max_poll_interval_ms: int = 3_600_000
    transient_retries: int = 5

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(_env("CPFLOW_HOME", ".cpflow")).absolute()
        kafka_port = int(_env("CPFLOW_KAFKA_PORT", "9092"))
        return cls(
            home=home,
            butler_repo=_env("CPFLOW_BUTLER_REPO", str(home / "butler")),
            kafka_bootstrap=_env("CPFLOW_KAFKA_BOOTSTRAP", f"127.0.0.1:{kafka_port}"),
            kafka_port=kafka_port,
            kafka_controller_port=int(_env("CPFLOW_KAFKA_CONTROLLER_PORT", str(kafka_port + 1))),
            topic_prefix=_env("CPFLOW_TOPIC_PREFIX", "cpflow"),
            partitions=int(_env("CPFLOW_PARTITIONS", "3")),
            http_ports={
                name: int(_env(f"CPFLOW_{name.upper()}_PORT", str(port)))
                for name, port in _DEFAULT_HTTP_PORTS.items()
            },
            registry_db=os.environ.get("CPFLOW_REGISTRY_DB") or None,
            max_poll_interval_ms=int(_env("CPFLOW_MAX_POLL_INTERVAL_MS", "3600000")),
            transient_retries=int(_env("CPFLOW_TRANSIENT_RETRIES", "5")),
        )

    @property
    def camera_dir(self) -> Path:
        """Where the simulated camera writes raw files before ingest."""
        return self.home / "camera"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        """Pid files of the local stack."""
        return self.home / "run"

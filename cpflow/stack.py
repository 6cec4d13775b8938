"""The local stack: a Kafka broker and the four services as background processes.

Logs go to ``$CPFLOW_HOME/logs/<name>.log`` and pid files to ``$CPFLOW_HOME/run/<name>.pid``.
`up` returns only when the broker accepts connections and every service answers ``/readyz``;
`down` stops everything by its pid.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from cpflow.access import principals
from cpflow.kafka_local import LocalKafka, create_topics, pid_alive, port_open, stop_pid
from shared.butler.repo import create_repository
from shared.retry import call_with_retries
from shared.settings import SERVICE_NAMES, Settings
from shared.topics import Topics

__all__ = [
    "ComponentStatus",
    "local_kafka",
    "stack_credentials",
    "stack_down",
    "stack_status",
    "stack_up",
    "start_service",
    "stop_service",
    "wait_until_ready",
]


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    ready: bool
    detail: str


def local_kafka(settings: Settings) -> LocalKafka:
    """The local broker of ``settings``' stack (its state, credentials and pid under ``settings.home``)."""
    return LocalKafka(
        settings.home, settings.kafka_port, settings.kafka_controller_port, settings.kafka_cache
    )


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def _readyz(settings: Settings, name: str, timeout: float = 5.0) -> tuple[bool, str]:
    url = f"http://127.0.0.1:{settings.http_ports[name]}/readyz"
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return False, f"{url}: {type(exc).__name__}"
    return response.status_code == 200, response.text.strip()


def _service_env(settings: Settings, credentials: dict[str, str]) -> dict[str, str]:
    """The environment of a service: the stack's settings and the service's own Kafka user."""
    env = {**os.environ, **settings.environment()}
    env.update(
        {
            "CPFLOW_KAFKA_SECURITY_PROTOCOL": credentials["security_protocol"],
            "CPFLOW_KAFKA_SASL_MECHANISM": credentials["mechanism"],
            "CPFLOW_KAFKA_USERNAME": credentials["username"],
            "CPFLOW_KAFKA_PASSWORD": credentials["password"],
        }
    )
    return env


def start_service(settings: Settings, name: str, credentials: dict[str, str]) -> int:
    """Start ``python -m services.<name>`` in the background (no-op if it runs) and return its pid."""
    pid_file = _pid_file(settings, name)
    pid = _read_pid(pid_file)
    if pid is not None:
        return pid
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_service_env(settings, credentials),
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop_service(settings: Settings, name: str) -> None:
    pid_file = _pid_file(settings, name)
    pid = _read_pid(pid_file)
    if pid is not None:
        stop_pid(pid, timeout=70.0)
    pid_file.unlink(missing_ok=True)


def stack_up(settings: Settings | None = None, timeout: float = 180.0, echo: bool = True) -> None:
    """Create the butler repository, start the broker, create the topics, start the services."""
    settings = settings or Settings.from_env()

    def say(text: str) -> None:
        if echo:
            print(text, flush=True)

    settings.home.mkdir(parents=True, exist_ok=True)
    say(f"butler repository: {settings.butler_repo}")
    call_with_retries(
        settings.transient_retries,
        create_repository,
        settings.butler_repo,
        registry_db=settings.registry_db,
        seed=settings.butler_seed,
    )
    kafka = local_kafka(settings)
    say(f"kafka broker: starting on {kafka.bootstrap}")
    kafka.start()
    asyncio.run(
        create_topics(kafka.admin_connection(), Topics(settings.topic_prefix).all(), settings.partitions)
    )
    credentials = kafka.sync_access(principals(settings))
    say(f"kafka users and ACLs: {', '.join(sorted(credentials))} (credentials in {kafka.credentials_dir})")
    for name in SERVICE_NAMES:
        pid = start_service(settings, name, credentials[name])
        say(f"{name}: pid {pid}, http://127.0.0.1:{settings.http_ports[name]}")
    wait_until_ready(settings, timeout, say)


def wait_until_ready(
    settings: Settings, timeout: float, say: Callable[[str], None] = lambda text: None
) -> None:
    """Return once every service of ``settings``' stack answers ``/readyz``; raise if one exits or is late."""
    deadline = time.monotonic() + timeout
    waiting = set(SERVICE_NAMES)
    while waiting and time.monotonic() < deadline:
        for name in sorted(waiting):
            if _read_pid(_pid_file(settings, name)) is None:
                raise RuntimeError(f"{name} exited during start-up; see {settings.log_dir / (name + '.log')}")
            ready, _detail = _readyz(settings, name)
            if ready:
                waiting.discard(name)
                say(f"{name}: ready")
        if waiting:
            time.sleep(0.5)
    if waiting:
        raise RuntimeError(f"not ready within {timeout:.0f} s: {', '.join(sorted(waiting))}")


def stack_down(settings: Settings | None = None) -> None:
    """Stop the services, then the broker."""
    settings = settings or Settings.from_env()
    for name in SERVICE_NAMES:
        stop_service(settings, name)
    local_kafka(settings).stop()


def stack_status(settings: Settings | None = None) -> list[ComponentStatus]:
    settings = settings or Settings.from_env()
    kafka = local_kafka(settings)
    kpid = kafka.pid()
    statuses = [
        ComponentStatus(
            "kafka",
            kpid,
            kpid is not None,
            kpid is not None and port_open("127.0.0.1", settings.kafka_port),
            kafka.bootstrap,
        )
    ]
    for name in SERVICE_NAMES:
        pid = _read_pid(_pid_file(settings, name))
        ready, detail = _readyz(settings, name, timeout=15.0) if pid is not None else (False, "not running")
        statuses.append(ComponentStatus(name, pid, pid is not None, ready, detail))
    return statuses


def stack_credentials(settings: Settings, role: str) -> dict[str, str]:
    """What a client needs to connect to the local broker as ``role`` (a service, operator, admin)."""
    stored = local_kafka(settings).credentials(role)
    if stored is None:
        known = ", ".join([*sorted(p.name for p in principals(settings)), "admin"])
        raise KeyError(f"no credentials for {role!r} (is the stack up?); the roles are {known}")
    return stored

"""Sandboxes for event replay: another topic prefix on the same broker and butler.

A sandbox is a second set of the four services that consume and publish ``<prefix>.*`` topics,
each with Kafka users of its own (`cpflow.access.username`) that may touch only those topics,
and their state (logs, pid files, credentials, dead letters) under
``$CPFLOW_HOME/sandboxes/<prefix>``. They write into the same butler repository, but only into the
collections of the runs replayed in them (see `cpflow.replay`), so a build with a fix can redo a
run's work from any stage without touching production's topics, runs or calibration chain.
"""

from __future__ import annotations

import asyncio
import json
import re

from cpflow.access import DEFAULT_PREFIX, principals
from cpflow.kafka_local import create_topics, write_private
from cpflow.stack import local_kafka, start_service, stop_service, wait_until_ready
from shared.identifiers import validate_identifier
from shared.settings import SERVICE_NAMES, Settings
from shared.topics import Topics

__all__ = ["sandbox_down", "sandbox_settings", "sandbox_up"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sandbox_settings(settings: Settings, prefix: str) -> Settings:
    """The settings of the sandbox ``prefix`` of the deployment ``settings``.

    Raises
    ------
    ValueError
        If ``prefix`` is not an identifier, or is production's own prefix.
    """
    validate_identifier(prefix)
    if re.fullmatch(r"[A-Za-z0-9_-]{1,40}", prefix) is None:
        raise ValueError(f"the sandbox prefix {prefix!r} must be 1 to 40 letters, digits, '_' or '-'")
    if prefix in (settings.topic_prefix, DEFAULT_PREFIX):
        raise ValueError(f"the sandbox prefix {prefix!r} is production's topic prefix; choose another")
    home = settings.home / "sandboxes" / prefix
    ports_file = home / "ports.json"
    if ports_file.exists():
        ports = {name: int(port) for name, port in json.loads(ports_file.read_text()).items()}
    else:
        ports = {f"{name}_port": _free_port() for name in SERVICE_NAMES}
    return settings.model_copy(
        update={
            "home": home,
            "butler_repo": str(settings.butler_repo),
            "topic_prefix": prefix,
            "kafka_username": None,
            "kafka_password": None,
            **ports,
        }
    )


def sandbox_up(settings: Settings, prefix: str, timeout: float = 180.0) -> Settings:
    """Create the sandbox's topics and users and start its four services; its settings.

    The production stack (``settings``) must be up: the sandbox uses its broker and its super
    user to create the sandbox's topics, users and ACLs.
    """
    sandbox = sandbox_settings(settings, prefix)
    production = local_kafka(settings)
    admin = production.credentials("admin")
    if admin is None:
        raise RuntimeError(f"no broker credentials in {production.credentials_dir}; is the stack up?")
    kafka = local_kafka(sandbox)
    write_private(kafka.credentials_dir / "admin.json", json.dumps(admin, indent=2) + "\n")
    sandbox.home.mkdir(parents=True, exist_ok=True)
    (sandbox.home / "ports.json").write_text(
        json.dumps({f"{name}_port": port for name, port in sandbox.http_ports.items()}) + "\n"
    )
    asyncio.run(create_topics(production.admin_connection(), Topics(prefix).all(), sandbox.partitions))
    credentials = kafka.sync_access(principals(sandbox))
    for name in SERVICE_NAMES:
        start_service(sandbox, name, credentials[name])
    wait_until_ready(sandbox, timeout)
    return sandbox


def sandbox_down(settings: Settings, prefix: str) -> None:
    """Stop the sandbox's services (its topics, users and collections stay for inspection)."""
    sandbox = sandbox_settings(settings, prefix)
    for name in SERVICE_NAMES:
        stop_service(sandbox, name)

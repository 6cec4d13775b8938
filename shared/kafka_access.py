"""How a process connects to the broker: bootstrap servers and, where the broker asks, SCRAM credentials.

A service takes its credentials from the environment (``CPFLOW_KAFKA_SECURITY_PROTOCOL``,
``CPFLOW_KAFKA_SASL_MECHANISM``, ``CPFLOW_KAFKA_USERNAME``, ``CPFLOW_KAFKA_PASSWORD``: set by
``cpflow stack up`` locally and from the KafkaUser's Secret in Kubernetes). The operator's CLI,
when the environment names no user, uses the credentials ``cpflow stack up`` wrote for it under
``$CPFLOW_HOME/credentials/`` (readable by the owner only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faststream.security import BaseSecurity, SASLScram512

from shared.settings import Settings

__all__ = ["KafkaConnection", "connection_for", "credentials_path"]


@dataclass(frozen=True)
class KafkaConnection:
    """Bootstrap servers plus, for a SASL listener, a SCRAM-SHA-512 user."""

    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if self.security_protocol != "PLAINTEXT" and not (self.username and self.password):
            raise ValueError(
                f"security protocol {self.security_protocol} needs a user and a password "
                "(CPFLOW_KAFKA_USERNAME and CPFLOW_KAFKA_PASSWORD)"
            )

    def aiokafka_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's clients (consumer, producer, admin)."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol != "PLAINTEXT":
            options.update(
                sasl_mechanism=self.mechanism or "SCRAM-SHA-512",
                sasl_plain_username=self.username,
                sasl_plain_password=self.password,
            )
        return options

    def faststream_security(self) -> BaseSecurity | None:
        """The security object of a faststream `KafkaBroker` (`None`: plaintext)."""
        if self.security_protocol == "PLAINTEXT":
            return None
        assert self.username and self.password
        return SASLScram512(self.username, self.password, use_ssl=self.security_protocol == "SASL_SSL")

    def as_dict(self) -> dict[str, str | None]:
        """What a client needs to connect (``cpflow stack credentials NAME --json``)."""
        return {
            "bootstrap": self.bootstrap,
            "security_protocol": self.security_protocol,
            "mechanism": self.mechanism,
            "username": self.username,
            "password": self.password,
        }


def credentials_path(settings: Settings, role: str) -> Path:
    """Where ``cpflow stack up`` keeps the credentials of ``role`` (a service, or ``operator``)."""
    return settings.home / "credentials" / f"{role}.json"


def connection_for(settings: Settings, role: str = "operator") -> KafkaConnection:
    """How ``role`` connects: the environment's user if it names one, else ``role``'s credentials file."""
    if settings.kafka_username:
        return KafkaConnection(
            bootstrap=settings.kafka_bootstrap,
            security_protocol=settings.kafka_security_protocol,
            mechanism=settings.kafka_sasl_mechanism,
            username=settings.kafka_username,
            password=settings.kafka_password.get_secret_value() if settings.kafka_password else None,
        )
    path = credentials_path(settings, role)
    if path.exists():
        stored = json.loads(path.read_text())
        return KafkaConnection(
            bootstrap=settings.kafka_bootstrap,
            security_protocol=str(stored["security_protocol"]),
            mechanism=stored.get("mechanism"),
            username=stored.get("username"),
            password=stored.get("password"),
        )
    return KafkaConnection(
        bootstrap=settings.kafka_bootstrap, security_protocol=settings.kafka_security_protocol
    )

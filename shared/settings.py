"""Deployment settings shared by the services and the CLI, read from the environment.

Every setting is a ``CPFLOW_<NAME>`` environment variable (pydantic-settings, one field each);
the defaults give a working local stack under ``./.cpflow``. A bad value is rejected with a
`SettingsError` that names the variable, what it must be and what it was.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["SERVICE_NAMES", "Settings", "SettingsError", "load_settings"]

SERVICE_NAMES = ("acquirer", "generator", "verifier", "certifier")

_Port = Field(ge=1, le=65535)


class SettingsError(ValueError):
    """An environment variable has a value cpflow cannot use; the message names it."""


class Settings(BaseSettings):
    """Where things are and how to reach them (each field is ``CPFLOW_<FIELD>``).

    Construct with `load_settings` (environment) or with keyword arguments (tests), which take
    precedence over the environment.
    """

    model_config = SettingsConfigDict(
        env_prefix="CPFLOW_", env_ignore_empty=True, frozen=True, extra="ignore"
    )

    home: Path = Field(
        default=Path(".cpflow"),
        description="State directory: logs, pid files, the broker's data, the simulated camera's output "
        "and, by default, the butler repository.",
    )
    butler_repo: str = Field(default="", description="Butler repository (default $CPFLOW_HOME/butler).")
    raw_repo: str = Field(
        default="",
        description="A separate, read-only butler repository whose <INSTR>/raw/all holds the raws (the "
        "summit's embargo repository, where the OODS ingests); {instrument} in it: one repository per "
        "instrument (/repo/{instrument}); cpflow's own repository when unset.",
    )
    registry_db: str | None = Field(
        default=None,
        description="PostgreSQL URL of the butler registry; SQLite in the repository when unset.",
    )
    kafka_port: int = Field(default=9092, ge=1, le=65535, description="Port of the local broker.")
    kafka_controller_port: int = Field(
        default=0, ge=0, le=65535, description="Controller port of the local broker (default kafka_port + 1)."
    )
    kafka_bootstrap: str = Field(
        default="", description="Bootstrap servers (default 127.0.0.1:<kafka_port>)."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How clients talk to the broker (SASL with SCRAM-SHA-512 users)."
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism of the broker's users."
    )
    kafka_username: str | None = Field(default=None, description="The Kafka user of this process.")
    kafka_password: SecretStr | None = Field(default=None, description="That user's password.")
    kafka_cache: Path | None = Field(
        default=None,
        description="Where the Kafka jars are fetched to (default ~/.cache/cpflow/kafka-<version>).",
    )
    topic_prefix: str = Field(
        default="cpflow", pattern=r"^[A-Za-z0-9_-]{0,64}$", description="Prefix of every topic."
    )
    partitions: int = Field(
        default=3, ge=1, le=1000, description="Partitions per topic (the same for all: co-partitioning)."
    )
    http_host: str = Field(
        default="127.0.0.1",
        description="Address the services' HTTP servers listen on (0.0.0.0 in a container, for probes).",
    )
    acquirer_port: int = Field(default=8181, ge=1, le=65535, description="HTTP port of the acquirer.")
    generator_port: int = Field(default=8182, ge=1, le=65535, description="HTTP port of the generator.")
    verifier_port: int = Field(default=8183, ge=1, le=65535, description="HTTP port of the verifier.")
    certifier_port: int = Field(default=8184, ge=1, le=65535, description="HTTP port of the certifier.")
    max_poll_interval_ms: int = Field(
        default=3_600_000,
        ge=10_000,
        le=86_400_000,
        description="Longest handler before Kafka considers the consumer dead (combines take minutes).",
    )
    max_message_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        le=16_777_216,
        description="Largest message a service accepts; a larger one is dead-lettered by reference, unread.",
    )
    transient_retries: int = Field(
        default=5, ge=1, le=100, description="Attempts of a step that fails for a transient reason."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Log level; logs are JSON lines carrying the run id."
    )
    combine_memory_mb: float = Field(
        default=4096.0,
        gt=0,
        le=1_048_576,
        description="RAM for one combine's ISR'd inputs; inputs past it go to scratch memory maps.",
    )
    butler_seed: Path | None = Field(
        default=None,
        description="Seed configuration of a new butler repository (default: the one cpflow ships).",
    )
    network_dir: Path | None = Field(
        default=None,
        description="Generated sorting networks and their compiled code (default $TMPDIR/cpflow-networks).",
    )
    register_networks: bool = Field(
        default=True, description="False: the combine sorts from its comparator table only (same results)."
    )

    @field_validator("raw_repo")
    @classmethod
    def _raw_repo_fields(cls, value: str) -> str:
        fields = re.findall(r"\{[^{}]*\}?|\}", value)
        unknown = sorted({f for f in fields if f != "{instrument}"})
        if unknown:
            raise ValueError(f"the only field it may hold is {{instrument}}, not {', '.join(unknown)}")
        return value

    @model_validator(mode="after")
    def _derived_defaults(self) -> Settings:
        home = self.home.absolute()
        object.__setattr__(self, "home", home)
        if not self.butler_repo:
            object.__setattr__(self, "butler_repo", str(home / "butler"))
        if not self.kafka_controller_port:
            object.__setattr__(self, "kafka_controller_port", self.kafka_port + 1)
        if not self.kafka_bootstrap:
            object.__setattr__(self, "kafka_bootstrap", f"127.0.0.1:{self.kafka_port}")
        if self.network_dir is None:
            object.__setattr__(self, "network_dir", Path(tempfile.gettempdir()) / "cpflow-networks")
        return self

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of this process's environment (see `load_settings`)."""
        return load_settings()

    def group_id(self, service: str) -> str:
        """The consumer group of ``service``: ``cpflow-<service>``, or ``<prefix>-<service>`` for
        another topic prefix (a sandbox's services never join production's groups)."""
        return f"{self.topic_prefix or 'cpflow'}-{service}"

    @property
    def http_ports(self) -> dict[str, int]:
        """Each service's HTTP port for /metrics, /healthz and /readyz."""
        return {name: int(getattr(self, f"{name}_port")) for name in SERVICE_NAMES}

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

    def environment(self) -> dict[str, str]:
        """These settings as ``CPFLOW_*`` variables, for a child process."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"CPFLOW_{name.upper()}"] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return env


def _message(error: dict[str, Any]) -> str:
    name = "CPFLOW_" + "_".join(str(part) for part in error["loc"]).upper()
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bound = {"greater_than_equal": "≥", "less_than_equal": "≤", "greater_than": ">", "less_than": "<"}[
            kind
        ]
        limit = next(iter(ctx.values()), "")
        what = f"must be {bound} {limit}"
    elif kind.startswith("int_"):
        what = "must be an integer"
    elif kind.startswith("float_"):
        what = "must be a number"
    elif kind.startswith("bool_"):
        what = "must be true or false (1/0)"
    elif kind == "literal_error":
        what = f"must be one of {ctx.get('expected', '')}"
    elif kind == "value_error":
        what = str(ctx.get("error", error.get("msg", "is not valid")))
    elif kind == "string_pattern_mismatch":
        what = f"must match {ctx.get('pattern', '')}"
    else:
        what = str(error.get("msg", "is not valid"))
    return f"{name}: {what}, got {error.get('input')!r}"


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment (keyword arguments take precedence).

    Raises
    ------
    SettingsError
        If a variable has a value cpflow cannot use; one line per bad variable, each naming it.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError("\n".join(_message(dict(e)) for e in exc.errors())) from None

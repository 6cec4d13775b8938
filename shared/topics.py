"""Kafka topic names.

Every event of a run is keyed by its run id, and every topic has the same number of
partitions, so all events of one run land on the same partition number of every topic, in
order.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TOPIC_SUFFIXES", "Topics"]

TOPIC_SUFFIXES = (
    "run.requested",
    "frames.acquired",
    "calib.generated",
    "calib.verified",
    "calib.certified",
    "run.status",
    "deadletter",
)


@dataclass(frozen=True)
class Topics:
    """Full topic names under a prefix (default ``cpflow``)."""

    prefix: str = "cpflow"

    def _name(self, suffix: str) -> str:
        return f"{self.prefix}.{suffix}" if self.prefix else suffix

    @property
    def run_requested(self) -> str:
        return self._name("run.requested")

    @property
    def frames_acquired(self) -> str:
        return self._name("frames.acquired")

    @property
    def calib_generated(self) -> str:
        return self._name("calib.generated")

    @property
    def calib_verified(self) -> str:
        return self._name("calib.verified")

    @property
    def calib_certified(self) -> str:
        return self._name("calib.certified")

    @property
    def run_status(self) -> str:
        return self._name("run.status")

    @property
    def deadletter(self) -> str:
        return self._name("deadletter")

    @staticmethod
    def suffix(topic: str) -> str:
        """The suffix of a full topic name (``cpflow.run.requested`` → ``run.requested``)."""
        for suffix in TOPIC_SUFFIXES:
            if topic == suffix or topic.endswith("." + suffix):
                return suffix
        raise ValueError(f"{topic!r} is not a cpflow topic; the suffixes are {', '.join(TOPIC_SUFFIXES)}")

    def all(self) -> list[str]:
        return [self._name(s) for s in TOPIC_SUFFIXES]

    def run_topics(self) -> list[str]:
        """Topics whose events belong to runs (everything but the dead letters)."""
        return [self._name(s) for s in TOPIC_SUFFIXES if s != "deadletter"]

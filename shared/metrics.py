"""cpflow's domain metrics (prefix ``cpflow_``), on a service's own Prometheus registry.

Labels are bounded: calibration type, test name, outcome, instrument, image type, stage,
topic. Never a run id or an exposure id: those go into logs and events.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.calibtypes import CALIB_TYPES, IMAGE_TYPES, VERIFIED_TYPES
from shared.instruments import instrument_names
from shared.records import Verdict

__all__ = ["STAGE_BUCKETS", "STAGE_OF", "Metrics"]

STAGE_OF = {"acquirer": "acquire", "generator": "generate", "verifier": "verify", "certifier": "certify"}
"""The ``stage`` label each service reports its retries and failures under."""

UNTRUSTED_REASONS = ("no-record", "disagrees")

# Calibration steps take from seconds to an hour.
STAGE_BUCKETS = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))


class Metrics:
    """The ``cpflow_`` metrics, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.frames_acquired = Counter(
            "cpflow_frames_acquired",
            "Raw frames taken and ingested, per detector.",
            ["instrument", "image_type"],
            registry=registry,
        )
        self.verification_tests = Counter(
            "cpflow_verification_tests",
            "Verification test outcomes (one per exposure, detector, amplifier and test).",
            ["calib_type", "test", "outcome"],
            registry=registry,
        )
        self.verification_decisions = Counter(
            "cpflow_verification_decisions",
            "Verification decisions per calibration type.",
            ["calib_type", "verdict"],
            registry=registry,
        )
        self.certifications = Counter(
            "cpflow_certifications",
            "Certification attempts per calibration type and outcome.",
            ["calib_type", "outcome"],
            registry=registry,
        )
        self.stage_duration = Histogram(
            "cpflow_stage_duration_seconds",
            "Wall-clock duration of a stage for one calibration type.",
            ["stage", "calib_type"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.runs_started = Counter(
            "cpflow_runs_started",
            "Runs accepted by the acquirer (the alert on stalled runs compares them with the finished ones).",
            ["instrument"],
            registry=registry,
        )
        self.runs_finished = Counter(
            "cpflow_runs_finished",
            "Runs that reached a final state.",
            ["outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "cpflow_dead_letters",
            "Messages sent to the dead-letter topic, by the topic they came from.",
            ["topic"],
            registry=registry,
        )
        self.dead_letter_failures = Counter(
            "cpflow_dead_letter_failures",
            "Messages given up because they could not be dead-lettered either (they are committed).",
            ["topic"],
            registry=registry,
        )
        self.untrusted_events = Counter(
            "cpflow_untrusted_events",
            "Events whose claim the butler does not hold (no record, or a record that disagrees); "
            "the service acts on the butler's record, never on the claim.",
            ["topic", "reason"],
            registry=registry,
        )
        self.readiness_checks = Counter(
            "cpflow_readiness_checks",
            "Readiness checks run against the broker and the butler (answers are cached in between).",
            registry=registry,
        )
        self.transient_retries = Counter(
            "cpflow_transient_retries",
            "Retries of a step after a transient error (butler database, broker, camera).",
            ["stage"],
            registry=registry,
        )
        self.stage_failures = Counter(
            "cpflow_stage_failures",
            "Stage failures reported as events (after retries).",
            ["stage", "calib_type"],
            registry=registry,
        )

    def initialise(self, service: str, consumes: Iterable[str]) -> None:
        """Create, at zero, every label set ``service`` can report that the code knows in advance.

        A labelled counter has no series until its first increment, so a dashboard panel or an
        alert on it shows "no data" where the truth is "none yet". These are the label sets of
        bounded, known values: the topics the service consumes, its stage, the instruments, image
        and calibration types, verdicts and outcomes; verification tests appear with the first run.
        """
        for topic in consumes:
            self.dead_letters.labels(topic=topic)
            self.dead_letter_failures.labels(topic=topic)
            for reason in UNTRUSTED_REASONS:
                self.untrusted_events.labels(topic=topic, reason=reason)
        stage = STAGE_OF.get(service)
        if stage is not None:
            self.transient_retries.labels(stage=stage)
        if service == "acquirer":
            for instrument in instrument_names():
                self.runs_started.labels(instrument=instrument)
                for image_type in IMAGE_TYPES:
                    self.frames_acquired.labels(instrument=instrument, image_type=image_type)
            self.runs_finished.labels(outcome="REJECTED")
            for image_type in IMAGE_TYPES:
                self.stage_failures.labels(stage="acquire", calib_type=image_type.lower())
        elif service == "generator":
            for calib_type in CALIB_TYPES:
                self.stage_failures.labels(stage="generate", calib_type=calib_type)
        elif service == "verifier":
            for calib_type in VERIFIED_TYPES:
                self.stage_failures.labels(stage="verify", calib_type=calib_type)
                for verdict in get_args(Verdict):
                    self.verification_decisions.labels(calib_type=calib_type, verdict=verdict)
        elif service == "certifier":
            for calib_type in CALIB_TYPES:
                for outcome in ("certified", "failed"):
                    self.certifications.labels(calib_type=calib_type, outcome=outcome)
            for outcome in ("SUCCEEDED", "FAILED"):
                self.runs_finished.labels(outcome=outcome)

"""A run's life in the acquirer: accepted, acquired, cancelled or expired. No Kafka here.

The acquirer takes a run's frames in the background, so one long run never holds the consumer
for the others. What makes that safe is the butler: a run is recorded as accepted (its
configuration and a `RunAccepted` record) before the request is committed, each image type's
frames end in an `AcquisitionManifest`, and a cancellation is a `RunCancelled` record. After a
restart the acquirer resumes exactly the runs that were accepted, are not finished, not
cancelled and not expired (`runs_to_resume`); expired ones are closed as failed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from lsst.daf.butler import Butler

from services.acquirer.simulated_camera import READOUT_OVERHEAD_S
from shared.butler import datasets
from shared.butler.runrecords import load_run_config, read_record
from shared.records import AcquisitionManifest, RunAccepted, RunCancelled
from shared.runconfig import RunConfiguration

__all__ = [
    "PendingRun",
    "acceptance",
    "missing_image_types",
    "planned_duration_s",
    "runs_to_resume",
    "unacquired_manifest",
]

DEFAULT_TOPIC_PREFIX = "cpflow"
"""Who accepted a run recorded before acceptances named their prefix: production."""

_RUN_COLLECTION = re.compile(r"^([^/]+)/runs/([^/]+)$")


def planned_duration_s(config: RunConfiguration) -> float:
    """How long data taking should take: exposure times, waits and readouts of every frame."""
    total = 0.0
    for image_type in config.image_types:
        times = config.exposure_times(image_type)
        total += sum(times) + len(times) * (config.wait_between_exposures + READOUT_OVERHEAD_S)
    return total


def acceptance(
    config: RunConfiguration, submitted_by: str, topic_prefix: str, now: datetime | None = None
) -> RunAccepted:
    """The `RunAccepted` record of a run accepted ``now``.

    A run may be resumed after a restart until twice its planned duration plus the ingest timeout
    of each image type and an hour have passed; past that it is closed as expired rather than
    taking frames hours late.
    """
    now = now or datetime.now(UTC)
    # Each image type may wait up to oods_timeout for its frames to be ingested.
    allowed = 2 * planned_duration_s(config) + len(config.image_types) * config.oods_timeout + 3600.0
    return RunAccepted(
        accepted_at=now,
        expires_at=now + timedelta(seconds=allowed),
        submitted_by=submitted_by,
        topic_prefix=topic_prefix,
    )


def missing_image_types(butler: Butler, config: RunConfiguration, run_id: str) -> list[str]:
    """The run's image types that have no manifest yet (their frames are not all in)."""
    return [
        image_type
        for image_type in config.image_types
        if read_record(butler, AcquisitionManifest, config.instrument, run_id, image_type) is None
    ]


def unacquired_manifest(
    config: RunConfiguration, image_type: str, outcome: str, reason: str
) -> AcquisitionManifest:
    """The manifest of an image type whose frames were not taken (failed, cancelled, expired)."""
    from shared.butler.collections import raw_collection

    return AcquisitionManifest(
        image_type=image_type,  # type: ignore[arg-type]
        exposures=[],
        detectors=config.detector_ids,
        physical_filter=config.physical_filter,
        raw_collection=raw_collection(config.instrument),
        outcome=outcome,  # type: ignore[arg-type]
        reason=reason,
    )


@dataclass(frozen=True)
class PendingRun:
    """An accepted run whose frames are not all in."""

    instrument: str
    run_id: str
    config: RunConfiguration
    accepted: RunAccepted
    missing: tuple[str, ...]

    def expired(self, now: datetime) -> bool:
        return now >= self.accepted.expires_at


def runs_to_resume(butler: Butler, topic_prefix: str) -> list[PendingRun]:
    """Accepted runs that are neither finished nor cancelled (expired ones included: close those).

    Only the runs that an acquirer of ``topic_prefix`` accepted: a sandbox's acquirer never resumes
    production's runs, nor production's a sandbox's.
    """
    pending = []
    refs = butler.query_datasets(
        datasets.RUN_ACCEPTED, collections="*/runs/*", find_first=False, explain=False
    )
    for ref in refs:
        match = _RUN_COLLECTION.match(ref.run)
        if match is None:
            continue
        instrument, run_id = match.groups()
        if read_record(butler, RunCancelled, instrument, run_id, None) is not None:
            continue
        config = load_run_config(butler, instrument, run_id)
        missing = missing_image_types(butler, config, run_id)
        if missing:
            accepted = RunAccepted.model_validate(butler.get(ref))
            if (accepted.topic_prefix or DEFAULT_TOPIC_PREFIX) != (topic_prefix or DEFAULT_TOPIC_PREFIX):
                continue
            pending.append(PendingRun(instrument, run_id, config, accepted, tuple(missing)))
    return sorted(pending, key=lambda p: p.accepted.accepted_at)

"""Taking and ingesting one image type's frames for a run. No Kafka here.

Resumable: the exposures already ingested for the run's group of that image type are found in
the butler, and only the missing ones are taken. Once all are in, an acquisition manifest is
stored, and a redelivered request only reads it back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from lsst.daf.butler import Butler

from services.acquirer.camera import CameraDriver, ExposureRequest
from shared.butler import datasets
from shared.butler.collections import raw_collection
from shared.butler.exposures import ingest_raws
from shared.butler.runrecords import read_record, write_record
from shared.instruments import Instrument
from shared.records import AcquisitionManifest
from shared.runconfig import RunConfiguration

__all__ = ["acquire_image_type", "group_id", "ingested_exposures", "stored_manifest"]

Progress = Callable[[int, int], Awaitable[None]]
WithButler = Callable[..., Awaitable[Any]]
"""``with_butler(func, *args)`` runs ``func(butler, *args)`` off the event loop with a butler of its own."""


def group_id(run_id: str, image_type: str) -> str:
    """The exposure group of a run's frames of one image type."""
    return f"{run_id}_{image_type.lower()}"


def stored_manifest(
    butler: Butler, instrument: str, run_id: str, image_type: str
) -> AcquisitionManifest | None:
    """The manifest of a run's frames of ``image_type``, once they are all in."""
    return read_record(butler, AcquisitionManifest, instrument, run_id, image_type)


def ingested_exposures(butler: Butler, instrument: str, group: str, detectors: Sequence[int]) -> list[int]:
    """Exposures of ``group`` whose raws are ingested for every detector, sorted."""
    records = butler.query_dimension_records(
        "exposure", where="exposure.group = grp", bind={"grp": group}, instrument=instrument, explain=False
    )
    complete = []
    for record in records:
        refs = butler.query_datasets(
            datasets.RAW,
            collections=[raw_collection(instrument)],
            instrument=instrument,
            exposure=record.id,
            explain=False,
        )
        if {ref.dataId["detector"] for ref in refs} >= set(detectors):
            complete.append(int(record.id))
    return sorted(complete)


async def acquire_image_type(
    *,
    with_butler: WithButler,
    camera: CameraDriver,
    instrument: Instrument,
    config: RunConfiguration,
    run_id: str,
    image_type: str,
    progress: Progress,
    on_frames: Callable[[int], None] = lambda n: None,
) -> AcquisitionManifest:
    """Take the missing frames of ``image_type``, ingest them, store and return the manifest.

    ``with_butler(func, *args)`` runs blocking butler work off the event loop (with retries).
    """
    name = instrument.name
    existing = await with_butler(stored_manifest, name, run_id, image_type)
    if existing is not None:
        return existing
    detectors = config.detector_ids
    group = group_id(run_id, image_type)
    exposure_times = config.exposure_times(image_type)
    taken: list[int] = list(await with_butler(ingested_exposures, name, group, detectors))
    total = len(exposure_times)
    await progress(len(taken), total)
    for index in range(len(taken), total):
        request = ExposureRequest(
            image_type=image_type,
            exposure_time=float(exposure_times[index]),
            group_id=group,
            program=config.program,
            reason=config.reason,
            note=config.note,
        )
        frames = await camera.take_image(request, detectors)
        await with_butler(
            ingest_raws,
            [f.path for f in frames],
            instrument,
            run=raw_collection(name),
            transfer="move",
        )
        on_frames(len(frames))
        taken.append(frames[0].exposure_id)
        await progress(len(taken), total)
        if config.wait_between_exposures > 0:
            await asyncio.sleep(config.wait_between_exposures)
    n_discard = config.n_discard(image_type)
    manifest = AcquisitionManifest(
        image_type=image_type,
        exposures=taken[n_discard:],
        discarded=taken[:n_discard],
        detectors=list(detectors),
        physical_filter=config.physical_filter,
        raw_collection=raw_collection(name),
    )
    await with_butler(write_record, manifest, name, run_id, image_type)
    return manifest

"""Taking and ingesting one image type's frames for a run. No Kafka here.

Resumable: the exposures already ingested for the run's group of that image type are found in
the butler, and only the missing ones are taken. Once all are in, an acquisition manifest is
stored, and a redelivered request only reads it back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lsst.daf.butler import Butler

from services.acquirer.camera import CameraDriver, ExposureRequest
from shared.butler import datasets
from shared.butler.exposures import ingest_raws
from shared.butler.repo import raw_collection
from shared.instruments import Instrument
from shared.runconfig import RunConfiguration
from shared.runstate import find_record, put_record, type_collection

__all__ = ["AcquisitionResult", "acquire_image_type", "group_id", "ingested_exposures", "stored_manifest"]

Progress = Callable[[int, int], Awaitable[None]]
Blocking = Callable[..., Awaitable[object]]


@dataclass(frozen=True)
class AcquisitionResult:
    image_type: str
    exposures: list[int]
    discarded: list[int]
    detectors: list[int]
    physical_filter: str
    raw_collection: str

    def manifest(self) -> dict[str, object]:
        return {
            "image_type": self.image_type,
            "exposures": self.exposures,
            "discarded": self.discarded,
            "detectors": self.detectors,
            "physical_filter": self.physical_filter,
            "raw_collection": self.raw_collection,
        }

    @classmethod
    def from_manifest(cls, data: dict[str, object]) -> AcquisitionResult:
        return cls(
            image_type=str(data["image_type"]),
            exposures=[int(e) for e in data["exposures"]],  # type: ignore[attr-defined]
            discarded=[int(e) for e in data["discarded"]],  # type: ignore[attr-defined]
            detectors=[int(d) for d in data["detectors"]],  # type: ignore[attr-defined]
            physical_filter=str(data["physical_filter"]),
            raw_collection=str(data["raw_collection"]),
        )


def group_id(run_id: str, image_type: str) -> str:
    """The exposure group of a run's frames of one image type."""
    return f"{run_id}_{image_type.lower()}"


def stored_manifest(
    butler: Butler, instrument: str, run_id: str, image_type: str
) -> AcquisitionResult | None:
    ref = find_record(
        butler, datasets.ACQUISITION_MANIFEST, instrument, type_collection(instrument, run_id, image_type)
    )
    return None if ref is None else AcquisitionResult.from_manifest(butler.get(ref))


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
    butler_factory: Callable[[], Butler],
    blocking: Blocking,
    camera: CameraDriver,
    instrument: Instrument,
    config: RunConfiguration,
    run_id: str,
    image_type: str,
    raw_dir: Path,
    progress: Progress,
    on_frames: Callable[[int], None] = lambda n: None,
) -> AcquisitionResult:
    """Take the missing frames of ``image_type``, ingest them, store and return the manifest.

    ``blocking(func, *args)`` runs blocking butler work off the event loop (with retries).
    """
    name = instrument.name
    butler = butler_factory()
    existing = await blocking(stored_manifest, butler, name, run_id, image_type)
    if isinstance(existing, AcquisitionResult):
        return existing
    detectors = config.detector_ids
    group = group_id(run_id, image_type)
    exposure_times = config.exposure_times(image_type)
    taken: list[int] = list(await blocking(ingested_exposures, butler, name, group, detectors))  # type: ignore[call-overload]
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
        await blocking(
            ingest_raws,
            butler,
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
    result = AcquisitionResult(
        image_type=image_type,
        exposures=taken[n_discard:],
        discarded=taken[:n_discard],
        detectors=list(detectors),
        physical_filter=config.physical_filter,
        raw_collection=raw_collection(name),
    )
    await blocking(
        put_record,
        butler,
        result.manifest(),
        datasets.ACQUISITION_MANIFEST,
        name,
        type_collection(name, run_id, image_type),
    )
    return result

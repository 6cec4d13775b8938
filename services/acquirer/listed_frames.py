"""Frames already in a butler (``camera: none``): wait until the run's listed frames are in. No Kafka here.

At the summit the OODS ingests every frame the camera writes, and the calibration script waits for
the frames it asked for. A ``camera: none`` run does the waiting half: it lists each image type's
frames (``exposures_bias`` ...), and the acquirer polls the raw collection until every
(exposure, detector) of them is there, for at most ``oods_timeout`` seconds. A frame of the
wrong observation type stops the wait at once; a timeout is a failure that names every frame still
missing. The raws are read where they are (cpflow's repository, or the separate raw repository of
`shared.butler.raws`), and their exposure records are copied into cpflow's repository, where the
run's products and verification statistics refer to them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lsst.daf.butler import Butler, MissingCollectionError

from services.acquirer.acquisition import stored_manifest
from shared.butler import datasets
from shared.butler.collections import raw_collection
from shared.butler.raws import copy_exposure_records, raw_butler
from shared.butler.runrecords import write_record
from shared.records import AcquisitionManifest
from shared.runconfig import RunConfiguration
from shared.runconfig.frames import FrameRef

__all__ = ["FrameStatus", "FramesNotIngested", "WrongFrames", "acquire_listed_frames", "frame_status"]

POLL_INTERVAL_S = 2.0
"""How often the raw collection is looked at while frames are missing."""

_LISTED_LIMIT = 20
"""Most missing frames a message names one by one (the rest are counted)."""

Progress = Callable[[int, int], Awaitable[None]]
WithButler = Callable[..., Awaitable[Any]]


class FramesNotIngested(RuntimeError):
    """Listed frames were still not in the raw collection when ``oods_timeout`` ran out."""


class WrongFrames(ValueError):
    """Listed frames are in the butler but are not what the run needs (observation type, filter)."""


@dataclass
class FrameStatus:
    """Where a run's listed frames of one image type are."""

    complete: list[int] = field(default_factory=list)
    """Exposures whose raws are in for every detector."""
    unknown: list[FrameRef] = field(default_factory=list)
    """Listed frames with no exposure record yet."""
    incomplete: dict[int, list[int]] = field(default_factory=dict)
    """Exposure → detectors whose raw is not in yet."""
    wrong: list[str] = field(default_factory=list)
    """Why some frames cannot be used (a dark listed as a bias ...)."""
    physical_filters: dict[int, str] = field(default_factory=dict)
    """Exposure → its physical filter."""

    @property
    def missing(self) -> bool:
        return bool(self.unknown or self.incomplete)


def _raws_of(
    butler: Butler, instrument: str, ids: Sequence[int]
) -> tuple[dict[int, Any], dict[int, set[int]]]:
    """The exposure records of ``ids`` in ``butler`` and, per exposure, the detectors whose raw is in."""
    records = {
        int(r.id): r
        for r in butler.query_dimension_records(
            "exposure",
            instrument=instrument,
            where="exposure.id IN (ids)",
            bind={"ids": list(ids)},
            explain=False,
        )
    }
    found: dict[int, set[int]] = {}
    if records:
        try:
            refs = butler.query_datasets(
                datasets.RAW,
                collections=[raw_collection(instrument)],
                instrument=instrument,
                where="exposure IN (ids)",
                bind={"ids": sorted(records)},
                explain=False,
                limit=None,
            )
        except MissingCollectionError:  # nothing ingested there yet
            refs = []
        for ref in refs:
            found.setdefault(int(ref.dataId["exposure"]), set()).add(int(ref.dataId["detector"]))
    return records, found


def frame_status(
    butler: Butler, instrument: str, frames: Sequence[FrameRef], detectors: Sequence[int], image_type: str
) -> FrameStatus:
    """Look up ``frames`` in cpflow's raw collection, then in the raw repository's.

    Once every frame is in, the exposure records of those found in the raw repository are copied
    into ``butler`` (cpflow's repository); nothing is written to the raw repository.
    """
    status = FrameStatus()
    ids = [f.exposure_id for f in frames]
    records, found = _raws_of(butler, instrument, ids)
    wanted = set(detectors)
    elsewhere = [i for i in ids if not wanted <= found.get(i, set())]
    with raw_butler(instrument) as raws:
        copied: list[int] = []
        if raws is not None and elsewhere:
            their_records, their_found = _raws_of(raws, instrument, elsewhere)
            for exposure, record in their_records.items():
                detectors_in = found.get(exposure, set()) | their_found.get(exposure, set())
                records.setdefault(exposure, record)
                found[exposure] = detectors_in
                if wanted <= their_found.get(exposure, set()):
                    copied.append(exposure)
        expected_type = image_type.lower()
        for frame in frames:
            record = records.get(frame.exposure_id)
            if record is None:
                status.unknown.append(frame)
                continue
            if record.observation_type != expected_type:
                status.wrong.append(
                    f"{frame} is a {record.observation_type} (observation_type), not a {expected_type}; "
                    f"list it under exposures_{record.observation_type} or remove it"
                )
                continue
            if frame.obs_id is not None and record.obs_id != frame.obs_id:
                status.wrong.append(f"{frame}: the exposure's obs_id is {record.obs_id}, not {frame.obs_id}")
                continue
            status.physical_filters[frame.exposure_id] = str(record.physical_filter)
            absent = sorted(wanted - found.get(frame.exposure_id, set()))
            if absent:
                status.incomplete[frame.exposure_id] = absent
            else:
                status.complete.append(frame.exposure_id)
        if raws is not None and copied and not status.wrong and not status.missing:
            copy_exposure_records(raws, butler, instrument, copied)  # once, when all are in
    return status


def _missing_text(status: FrameStatus, frames: Sequence[FrameRef], n_detectors: int) -> str:
    by_id = {f.exposure_id: f for f in frames}
    items = [f"{frame} (no exposure record)" for frame in status.unknown]
    for exposure, absent in status.incomplete.items():
        which = "every detector" if len(absent) == n_detectors else "detector " + ", ".join(map(str, absent))
        items.append(f"{by_id[exposure]} ({which})")
    shown = "; ".join(items[:_LISTED_LIMIT])
    more = f"; and {len(items) - _LISTED_LIMIT} more" if len(items) > _LISTED_LIMIT else ""
    return shown + more


def _physical_filter(config: RunConfiguration, image_type: str, status: FrameStatus) -> str:
    """The frames' physical filter; flats must share one (and be the configured one when it is set)."""
    filters = sorted(set(status.physical_filters.values()))
    if image_type != "FLAT":
        return filters[0] if len(filters) == 1 else config.physical_filter
    if len(filters) > 1:
        by_filter = {
            name: [e for e, f in status.physical_filters.items() if f == name][:3] for name in filters
        }
        raise WrongFrames(
            "the flats do not share one physical filter: "
            + "; ".join(f"{name}: {ids}" for name, ids in by_filter.items())
            + "; list the flats of one filter"
        )
    configured = config.filter is not None or config.grating is not None
    if configured and filters[0] != config.physical_filter:
        raise WrongFrames(
            f"the flats were taken with physical_filter {filters[0]}, the run's filter is "
            f"{config.physical_filter}; fix filter/grating or remove them"
        )
    return filters[0]


async def acquire_listed_frames(
    *,
    with_butler: WithButler,
    config: RunConfiguration,
    run_id: str,
    image_type: str,
    progress: Progress,
    poll_interval: float = POLL_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> AcquisitionManifest:
    """Wait until the listed frames of ``image_type`` are all in; store and return the manifest.

    Raises
    ------
    FramesNotIngested
        ``oods_timeout`` seconds passed with frames still missing; the message names them.
    WrongFrames
        A listed frame is of another observation type, or the flats' filters disagree.
    """
    name = config.instrument
    existing = await with_butler(stored_manifest, name, run_id, image_type)
    if existing is not None:
        return existing
    frames = config.frames(image_type)
    detectors = config.detector_ids
    deadline = clock() + config.oods_timeout
    reported = -1
    while True:
        status: FrameStatus = await with_butler(frame_status, name, frames, detectors, image_type)
        if status.wrong:
            raise WrongFrames("; ".join(status.wrong))
        if len(status.complete) != reported:
            reported = len(status.complete)
            await progress(reported, len(frames))
        if not status.missing:
            break
        remaining = deadline - clock()
        if remaining <= 0:
            raise FramesNotIngested(
                f"{len(frames) - len(status.complete)} of {len(frames)} listed {image_type.lower()} frames "
                f"not in {raw_collection(name)} after oods_timeout = {config.oods_timeout:g} s: "
                + _missing_text(status, frames, len(detectors))
            )
        await asyncio.sleep(min(poll_interval, remaining))
    n_discard = config.n_discard(image_type)
    ids = [f.exposure_id for f in frames]
    manifest = AcquisitionManifest(
        image_type=image_type,  # type: ignore[arg-type]
        exposures=ids[n_discard:],
        discarded=ids[:n_discard],
        detectors=list(detectors),
        physical_filter=_physical_filter(config, image_type, status),
        raw_collection=raw_collection(name),
    )
    await with_butler(write_record, manifest, name, run_id, image_type)
    return manifest

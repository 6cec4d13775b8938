"""Raw frames from the butler, and the detector geometry that matches them.

Raws are in cpflow's repository (``<INSTR>/raw/all``, ingested by the acquirer or by ``cpflow
ingest-raws``) or, when ``CPFLOW_RAW_REPO`` names one, in a separate repository someone else
writes: the summit's embargo repository, where the OODS ingests with obs_lsst's records and its
``raw`` storage class ``Exposure``. cpflow cannot read an ``Exposure`` (it has no afw), so a raw
there is located by the butler (`~lsst.daf.butler.Butler.getURI`) and read with cpflow's own reader
(`shared.rawformat.read_raw`). The raw repository is only ever opened read-only: cpflow registers,
syncs and writes nothing there; the exposure records its runs need are copied into cpflow's own
repository (`copy_exposure_records`). Raws cpflow ingests itself (its simulated camera, ``cpflow
ingest-raws``) stay in its own repository and are looked for there first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from lsst.daf.butler import Butler, MissingCollectionError

from shared.images import RawDetectorImage
from shared.instruments import Detector, Instrument, get_instrument
from shared.rawformat import image_geometry, read_raw

from . import datasets
from .collections import raw_collection
from .factory import ButlerFactory

__all__ = [
    "copy_exposure_records",
    "detector_for_raw",
    "load_raw",
    "raw_butler",
    "use_raw_repository",
]

_raw_repository: ButlerFactory | None = None


def use_raw_repository(repo: str | None) -> None:
    """Read raws from the repository ``repo`` (read-only) from now on; `None` or ``""``: cpflow's own.

    A service calls this once at start-up with its ``raw_repo`` setting.
    """
    global _raw_repository
    if _raw_repository is not None:
        _raw_repository.close()
    _raw_repository = ButlerFactory(repo, writeable=False) if repo else None


@contextmanager
def raw_butler() -> Iterator[Butler | None]:
    """A read-only butler of the separate raw repository, or `None` when there is none."""
    if _raw_repository is None:
        yield None
        return
    with _raw_repository.butler() as raws:
        yield raws


def detector_for_raw(instrument: Instrument, raw: RawDetectorImage) -> Detector:
    """The detector geometry of ``raw``: the camera's data boxes, overscans from the segment shapes.

    (Simulated small frames also have smaller data boxes, see `shared.rawformat`.)
    """
    return image_geometry(raw, instrument)


def load_raw(butler: Butler, instrument: str, exposure: int, detector: int) -> RawDetectorImage:
    """The raw of one detector of one exposure, from ``<INSTR>/raw/all``.

    Raws cpflow ingested (its simulated camera, ``cpflow ingest-raws``) are in ``butler``; any
    other is looked for in the raw repository, when there is one, and read from its URI.

    Raises
    ------
    LookupError
        If neither repository has the raw.
    shared.rawformat.RawFormatError
        If the file is not a raw cpflow can read.
    """
    data_id = {"instrument": instrument, "exposure": exposure, "detector": detector}
    collections = [raw_collection(instrument)]
    if _raw_repository is None:
        raw = butler.get(datasets.RAW, data_id, collections=collections)
    else:
        try:
            ref = butler.find_dataset(datasets.RAW, data_id, collections=collections)
        except MissingCollectionError:  # a deployment that only reads the raw repository
            ref = None
        if ref is not None:
            raw = butler.get(ref)
        else:
            with _raw_repository.butler() as raws:
                ref = raws.find_dataset(datasets.RAW, data_id, collections=collections)
                if ref is None:
                    where = f"{collections[0]} of cpflow's repository or of {_raw_repository.repo}"
                    raise LookupError(f"no raw {data_id} in {where}")
                uri = raws.getURI(ref)
            with uri.as_local() as local:
                raw = read_raw(local.ospath, get_instrument(instrument))
    assert isinstance(raw, RawDetectorImage)
    return raw


_EXPOSURE_ELEMENTS = ("day_obs", "group", "exposure")
"""The records of an exposure, in the order they must be written (each refers to the ones before)."""


def copy_exposure_records(source: Butler, target: Butler, instrument: str, exposures: Sequence[int]) -> int:
    """Copy the exposure records (with their day_obs and group) of ``exposures`` into ``target``.

    Idempotent (records already in ``target`` are left as they are). Only the fields ``target``'s
    dimension universe has are copied. Returns how many exposure records were copied.
    """
    if source is target or not exposures:
        return 0
    ids = sorted(int(e) for e in exposures)
    records = source.query_dimension_records(
        "exposure",
        instrument=instrument,
        where="exposure.id IN (ids)",
        bind={"ids": ids},
        explain=False,
    )
    if not records:
        return 0
    values: dict[str, list[dict[str, Any]]] = {"exposure": [r.toDict() for r in records]}
    for element in ("day_obs", "group"):  # each distinct one once: many exposures share them
        keys = {getattr(r, element) for r in records} - {None}
        values[element] = [
            found.toDict()
            for key in sorted(keys)
            for found in source.query_dimension_records(
                element, data_id={"instrument": instrument, element: key}, explain=False
            )
        ]
    registry = target.registry
    with target.transaction():
        for element in _EXPOSURE_ELEMENTS:
            fields = set(target.dimensions[element].schema.names)
            for value in values[element]:
                registry.syncDimensionData(element, {k: v for k, v in value.items() if k in fields})
    return len(records)

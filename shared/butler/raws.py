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

At the summit each camera has its own repository (``/repo/LATISS``, ``/repo/LSSTComCam``,
``/repo/LSSTCam``); ``CPFLOW_RAW_REPO`` may name them all with the field ``{instrument}``
(``/repo/{instrument}``), each opened the first time a run of that instrument needs it.
"""

from __future__ import annotations

import threading
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
    "INSTRUMENT_FIELD",
    "RawRepositories",
    "copy_exposure_records",
    "detector_for_raw",
    "load_raw",
    "raw_butler",
    "use_raw_repository",
]

INSTRUMENT_FIELD = "{instrument}"
"""The field of ``CPFLOW_RAW_REPO`` replaced by a run's instrument name."""


class RawRepositories:
    """The read-only raw repositories: one, or one per instrument (``{instrument}`` in ``template``)."""

    def __init__(self, template: str) -> None:
        self.template = template
        self._factories: dict[str, ButlerFactory] = {}
        self._lock = threading.Lock()

    def repo(self, instrument: str) -> str:
        """The repository holding ``instrument``'s raws."""
        return self.template.replace(INSTRUMENT_FIELD, instrument)

    def factory(self, instrument: str) -> ButlerFactory:
        """The factory of ``instrument``'s repository, made once (services call from threads)."""
        repo = self.repo(instrument)
        with self._lock:
            if repo not in self._factories:
                self._factories[repo] = ButlerFactory(repo, writeable=False)
            return self._factories[repo]

    def close(self) -> None:
        """Release every opened repository's connections."""
        with self._lock:
            for factory in self._factories.values():
                factory.close()
            self._factories.clear()


_raw_repositories: RawRepositories | None = None


def use_raw_repository(repo: str | None) -> None:
    """Read raws from the repository ``repo`` (read-only) from now on; `None` or ``""``: cpflow's own.

    ``repo`` may contain ``{instrument}``: one repository per instrument. A service calls this once
    at start-up with its ``raw_repo`` setting.
    """
    global _raw_repositories
    if _raw_repositories is not None:
        _raw_repositories.close()
    _raw_repositories = RawRepositories(repo) if repo else None


@contextmanager
def raw_butler(instrument: str) -> Iterator[Butler | None]:
    """A read-only butler of ``instrument``'s raw repository, or `None` when there is none."""
    if _raw_repositories is None:
        yield None
        return
    with _raw_repositories.factory(instrument).butler() as raws:
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
    if _raw_repositories is None:
        raw = butler.get(datasets.RAW, data_id, collections=collections)
    else:
        try:
            ref = butler.find_dataset(datasets.RAW, data_id, collections=collections)
        except MissingCollectionError:  # a deployment that only reads the raw repository
            ref = None
        if ref is not None:
            raw = butler.get(ref)
        else:
            with raw_butler(instrument) as raws:
                assert raws is not None
                ref = raws.find_dataset(datasets.RAW, data_id, collections=collections)
                if ref is None:
                    where = (
                        f"{collections[0]} of cpflow's repository or of {_raw_repositories.repo(instrument)}"
                    )
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

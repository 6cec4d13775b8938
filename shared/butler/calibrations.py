"""Calibrations applied to frames: found where their source says, each dataset read once.

A calibration is applied from this run's RUN collection (``kind: run``) or, for a certified one,
from the dataset whose validity range contains the exposure's time (``kind: certified``).
"""

from __future__ import annotations

import uuid
from typing import Any

from lsst.daf.butler import Butler, DataCoordinate, DatasetNotFoundError, DatasetRef, Timespan

from shared.images import CalibImage
from shared.records import CalibSource

from .collections import collection_exists

__all__ = ["CalibrationCache", "load_calibration"]


def load_calibration(
    butler: Butler,
    source: CalibSource,
    instrument: str,
    detector: int,
    exposure: int,
    physical_filter: str | None = None,
) -> CalibImage:
    """A prerequisite calibration for ``detector``: this run's, or the one certified for ``exposure``.

    One look-up and one read; to read each dataset once across many exposures, use a
    `CalibrationCache`.
    """
    return CalibrationCache(butler).get(source, instrument, detector, exposure, physical_filter)


class CalibrationCache:
    """Prerequisite calibrations, each dataset read from the butler once.

    A certified calibration is found for each exposure (its validity range must contain the
    exposure's time), but consecutive exposures almost always get the same dataset: the reference
    is resolved with a registry query, and the image is read only when that dataset has not been
    read before by this cache. Make one per build (of one detector) or per verification: the
    images stay in memory as long as the cache does, and a cache never sees datasets certified
    after it read.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        The butler to search and read.

    Attributes
    ----------
    n_reads : `int`
        Number of images read from the butler (for tests and benches).
    """

    def __init__(self, butler: Butler) -> None:
        self._butler = butler
        self._images: dict[uuid.UUID, CalibImage] = {}
        self._refs: dict[tuple[Any, ...], DatasetRef] = {}
        self._exposures: dict[tuple[str, int], DataCoordinate] = {}
        self._existing: dict[tuple[str, ...], list[str]] = {}
        self.n_reads = 0

    def _existing_collections(self, collections: tuple[str, ...]) -> list[str]:
        if collections not in self._existing:
            self._existing[collections] = [c for c in collections if collection_exists(self._butler, c)]
        return self._existing[collections]

    def _exposure(self, instrument: str, exposure: int) -> DataCoordinate:
        """The expanded data ID of ``exposure`` (its timespan and physical filter)."""
        key = (instrument, exposure)
        if key not in self._exposures:
            registry = self._butler.registry
            self._exposures[key] = registry.expandDataId(instrument=instrument, exposure=exposure)
        return self._exposures[key]

    def _resolve(
        self, source: CalibSource, existing: list[str], data_id: dict[str, Any], exposure: int | None
    ) -> DatasetRef:
        """The dataset of ``source`` for ``data_id`` (and valid at ``exposure`` when given)."""
        key = (source.calib_type, tuple(existing), tuple(sorted(data_id.items())), exposure)
        ref = self._refs.get(key)
        if ref is not None:
            return ref
        # Butler.get derives a validity timespan from an exposure in the data ID; find_dataset
        # does not, so it is given explicitly (unbounded when there is no exposure, as get does).
        timespan: Timespan | None = Timespan(None, None)
        if exposure is not None:
            expanded = self._exposure(data_id["instrument"], exposure)
            timespan = expanded.timespan
            if "physical_filter" in self._butler.get_dataset_type(source.calib_type).dimensions.names:
                data_id = {**data_id, "physical_filter": expanded["physical_filter"]}
        found = self._butler.find_dataset(source.calib_type, data_id, collections=existing, timespan=timespan)
        if found is None:
            raise DatasetNotFoundError(
                f"Dataset {source.calib_type} with data ID {data_id} could not be found"
                f" in collections {existing}."
            )
        self._refs[key] = found
        return found

    def get(
        self,
        source: CalibSource,
        instrument: str,
        detector: int,
        exposure: int,
        physical_filter: str | None = None,
    ) -> CalibImage:
        """A prerequisite calibration for ``detector``: this run's, or the one certified for ``exposure``.

        Parameters
        ----------
        source : `shared.records.CalibSource`
            Where the calibration comes from.
        instrument : `str`
            Instrument name.
        detector : `int`
            Detector id.
        exposure : `int`
            The exposure it is applied to (for a certified source, the validity time).
        physical_filter : `str`, optional
            The filter of a flat from this run (a certified flat takes the exposure's).

        Returns
        -------
        calib : `shared.images.CalibImage`
            The calibration; the same object for every call that resolves to the same dataset,
            which callers must not modify.

        Raises
        ------
        LookupError
            If none of the source's collections exists, or the dataset cannot be found or read.
        """
        data_id: dict[str, Any] = {"instrument": instrument, "detector": detector}
        if source.calib_type == "flat" and physical_filter is not None and source.kind != "certified":
            data_id["physical_filter"] = physical_filter
        # A calib_collection that does not exist yet (a first run) is simply not searched.
        existing = self._existing_collections(source.collections)
        where = ", ".join(source.collections)
        if not existing:
            raise LookupError(
                f"no {source.calib_type} for {instrument}: none of the collections {where} exists"
            )
        try:
            ref = self._resolve(source, existing, data_id, exposure if source.kind == "certified" else None)
            calib = self._images.get(ref.id)
            if calib is None:
                calib = self._butler.get(ref)
                self.n_reads += 1
                self._images[ref.id] = calib
        except Exception as exc:
            raise LookupError(
                f"no {source.calib_type} for {instrument} detector {detector}"
                + (f" valid at exposure {exposure}" if source.kind == "certified" else "")
                + f" in {where}: {type(exc).__name__}"
            ) from exc
        assert isinstance(calib, CalibImage)
        return calib

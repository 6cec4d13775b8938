"""Exposure dimension records and raw ingest."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import astropy.time
from astropy.io import fits
from lsst.daf.butler import (
    Butler,
    CollectionType,
    DataCoordinate,
    DatasetIdGenEnum,
    DatasetRef,
    DatasetType,
    FileDataset,
    Timespan,
)
from lsst.daf.butler.registry import ConflictingDefinitionError

from shared.instruments import Instrument

from .datasets import RAW
from .formatters import RawFitsFormatter

__all__ = ["day_obs_record", "exposure_record", "group_record", "ingest_raws", "read_primary_header"]

_LOG = logging.getLogger(__name__)

_TRUE_STRINGS = {"T", "TRUE", "Y", "YES", "1"}


def read_primary_header(path: str | Path) -> fits.Header:
    """Read only the primary header of a FITS file.

    Parameters
    ----------
    path : `str` or `pathlib.Path`
        The FITS file.

    Returns
    -------
    header : `astropy.io.fits.Header`
        The primary header.
    """
    return fits.getheader(str(path), 0)


def _header_time(header: fits.Header, key: str) -> astropy.time.Time:
    scale = str(header.get("TIMESYS", "TAI")).strip().lower() or "tai"
    return astropy.time.Time(str(header[key]), format="isot", scale=scale).tai


def _header_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    return str(value).strip().upper() in _TRUE_STRINGS


def _header_str(header: fits.Header, key: str) -> str:
    value = header.get(key)
    return "" if value is None else str(value).strip()


def exposure_record(header: fits.Header, instrument: Instrument) -> dict[str, Any]:
    """Build the ``exposure`` dimension record from a raw's primary header.

    Parameters
    ----------
    header : `astropy.io.fits.Header`
        Primary header written by cpflow's camera (EXPID, OBSID, DAYOBS, SEQNUM, GROUPID, IMGTYPE,
        EXPTIME, DARKTIME, DATE-BEG, DATE-END, FILTER, PROGRAM, REASON, ...).
    instrument : `shared.instruments.Instrument`
        The instrument the raw belongs to.

    Returns
    -------
    record : `dict`
        Values for `lsst.daf.butler.Registry.syncDimensionData` ("exposure").

    Raises
    ------
    KeyError
        If a required header keyword is missing.
    ValueError
        If the header's instrument or filter does not match ``instrument``.
    """
    header_instrument = _header_str(header, "INSTRUME")
    if header_instrument and header_instrument != instrument.name:
        raise ValueError(f"raw header INSTRUME={header_instrument!r} but instrument is {instrument.name!r}")
    physical_filter = _header_str(header, "FILTER")
    known_filters = [name for name, _ in instrument.filters]
    if physical_filter not in known_filters:
        raise ValueError(
            f"raw header FILTER={physical_filter!r} is not a {instrument.name} filter; known: {known_filters}"
        )
    seq_num = int(header["SEQNUM"])
    return {
        "instrument": instrument.name,
        "id": int(header["EXPID"]),
        "obs_id": _header_str(header, "OBSID"),
        "physical_filter": physical_filter,
        "group": _header_str(header, "GROUPID"),
        "day_obs": int(header["DAYOBS"]),
        "seq_num": seq_num,
        "seq_start": seq_num,
        "seq_end": seq_num,
        "exposure_time": float(header["EXPTIME"]),
        "dark_time": float(header["DARKTIME"]),
        "observation_type": _header_str(header, "IMGTYPE").lower(),
        "observation_reason": _header_str(header, "REASON") or "calibration",
        "science_program": _header_str(header, "PROGRAM") or "unknown",
        "target_name": "calibration",
        "has_simulated": _header_bool(header.get("SIMULATE", False)),
        "can_see_sky": False,
        "timespan": Timespan(_header_time(header, "DATE-BEG"), _header_time(header, "DATE-END")),
    }


def day_obs_record(butler: Butler, instrument: str, day_obs: int) -> dict[str, Any]:
    """Build the ``day_obs`` record, with a timespan if the universe has one.

    The observing day ``YYYYMMDD`` runs from 12:00 TAI on that date to 12:00 TAI the next day
    (the Rubin convention of a UTC-12h rollover).

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Butler whose dimension universe is used.
    instrument : `str`
        Instrument name.
    day_obs : `int`
        ``YYYYMMDD``.

    Returns
    -------
    record : `dict`
        Values for ``syncDimensionData("day_obs", ...)``.
    """
    record: dict[str, Any] = {"instrument": instrument, "id": day_obs}
    if butler.dimensions["day_obs"].temporal is not None:
        text = f"{day_obs:08d}"
        begin = astropy.time.Time(f"{text[:4]}-{text[4:6]}-{text[6:]}T12:00:00", format="isot", scale="tai")
        record["timespan"] = Timespan(begin, begin + astropy.time.TimeDelta(1, format="jd"))
    return record


def group_record(instrument: str, group: str) -> dict[str, Any]:
    """Build the ``group`` record.

    Parameters
    ----------
    instrument : `str`
        Instrument name.
    group : `str`
        The header's GROUPID.

    Returns
    -------
    record : `dict`
        Values for ``syncDimensionData("group", ...)``.
    """
    return {"instrument": instrument, "name": group}


def _sync_exposure(butler: Butler, header: fits.Header, instrument: Instrument) -> dict[str, Any]:
    exposure = exposure_record(header, instrument)
    registry = butler.registry

    def sync() -> None:
        registry.syncDimensionData("day_obs", day_obs_record(butler, instrument.name, exposure["day_obs"]))
        registry.syncDimensionData("group", group_record(instrument.name, exposure["group"]))
        registry.syncDimensionData("exposure", exposure)

    sync()
    return exposure


def ingest_raws(
    butler: Butler,
    paths: Sequence[Path],
    instrument: Instrument,
    *,
    run: str,
    transfer: str = "copy",
) -> list[DatasetRef]:
    """Ingest raw FITS files as ``raw`` datasets (idempotent).

    For each file the primary header is read, the day_obs, group and exposure records are synced,
    and the file is ingested into the RUN collection ``run`` with data ID (instrument, exposure,
    detector). Dataset IDs are derived from the data ID and run, so a redelivered raw maps to the
    same dataset; a raw already in ``run`` is skipped and its existing ref returned.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        A writeable butler.
    paths : `~collections.abc.Sequence` [`pathlib.Path`]
        Raw FITS files (one detector of one exposure each).
    instrument : `shared.instruments.Instrument`
        The instrument that took the raws.
    run : `str`
        RUN collection to ingest into (e.g. ``LATISS/raw/all``); registered if missing.
    transfer : `str`, optional
        Datastore transfer mode (``copy``, ``move``, ``direct``, ``link``, ...).

    Returns
    -------
    refs : `list` [`lsst.daf.butler.DatasetRef`]
        One ref per path, in the order of ``paths``.

    Raises
    ------
    ValueError
        If a header names another instrument, an unknown filter or detector.
    """
    registry = butler.registry
    registry.registerCollection(run, CollectionType.RUN)
    raw_type = registry.getDatasetType(RAW)

    # The exposure records and the raws are written in one transaction: a crash between them
    # leaves neither, so no exposure is ever registered without its raw.
    with butler.transaction():
        return _ingest(butler, paths, instrument, run=run, transfer=transfer, raw_type=raw_type)


def _ingest(
    butler: Butler,
    paths: Sequence[Path],
    instrument: Instrument,
    *,
    run: str,
    transfer: str,
    raw_type: DatasetType,
) -> list[DatasetRef]:
    refs: list[DatasetRef | None] = []
    pending: list[tuple[int, FileDataset]] = []
    for index, path in enumerate(paths):
        header = read_primary_header(path)
        detector = int(header["DETECTOR"])
        instrument.detector(detector)  # raises for an unknown detector
        exposure = _sync_exposure(butler, header, instrument)
        data_id = DataCoordinate.standardize(
            instrument=instrument.name,
            exposure=exposure["id"],
            detector=detector,
            universe=butler.dimensions,
        )
        existing = butler.find_dataset(raw_type, data_id, collections=run)
        if existing is not None:
            _LOG.info("raw %s already ingested into %s; skipping %s", data_id, run, path)
            refs.append(existing)
            continue
        ref = DatasetRef(raw_type, data_id, run=run, id_generation_mode=DatasetIdGenEnum.DATAID_TYPE_RUN)
        refs.append(ref)
        pending.append(
            (index, FileDataset(path=str(Path(path).absolute()), refs=[ref], formatter=RawFitsFormatter))
        )

    if pending:
        try:
            butler.ingest(*(dataset for _, dataset in pending), transfer=transfer, skip_existing=True)
        except ConflictingDefinitionError:
            # Another process ingested (some of) these data IDs concurrently: fall back to one at a time.
            for index, dataset in pending:
                ref = dataset.refs[0]
                found = butler.find_dataset(raw_type, ref.dataId, collections=run)
                if found is None:
                    butler.ingest(dataset, transfer=transfer, skip_existing=True)
                    found = ref
                refs[index] = found
    return [ref for ref in refs if ref is not None]

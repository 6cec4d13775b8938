"""Exposure dimension records and raw ingest."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
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

from shared.instruments import Instrument, get_instrument
from shared.rawformat import RawFormatError, check_raw
from shared.translation import HeaderError, RawHeaderInfo, translate

from .collections import collection_exists, raw_collection
from .datasets import RAW
from .formatters import RawFitsFormatter

__all__ = [
    "FileIngest",
    "day_obs_record",
    "exposure_record",
    "group_record",
    "ingest_files",
    "ingest_raws",
    "raw_files",
    "read_primary_header",
]

_LOG = logging.getLogger(__name__)


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


def exposure_record(header: fits.Header, instrument: Instrument, *, source: str = "") -> dict[str, Any]:
    """Build the ``exposure`` dimension record from a raw's primary header, as obs_base does.

    The header is translated with obs_lsst's rules (`shared.translation.translate`): the id from
    DAYOBS, SEQNUM and CONTRLLR, physical_filter from FILTER (and GRATING on LATISS), group from
    GROUPID, observation type from IMGTYPE, ... ; ``exposure_time`` is the requested EXPTIME.

    Parameters
    ----------
    header : `astropy.io.fits.Header`
        Primary header of a raw as the camera writes it.
    instrument : `shared.instruments.Instrument`
        The instrument the raw belongs to.
    source : `str`, optional
        The file's name, for messages.

    Returns
    -------
    record : `dict`
        Values for `lsst.daf.butler.Registry.syncDimensionData` ("exposure").

    Raises
    ------
    shared.translation.HeaderError
        If the header is not that of a raw of ``instrument``, or its physical_filter is not one of
        the instrument's (obs_lsst's list, `shared.filters`).
    """
    info = translate(header, instrument, source=source)
    return _record(info, instrument, source)


def _record(info: RawHeaderInfo, instrument: Instrument, source: str) -> dict[str, Any]:
    problem = instrument.filter_problem(info.physical_filter)
    if problem is not None:
        where = f"{source}: " if source else ""
        raise HeaderError(
            f"{where}physical_filter {info.physical_filter!r} (from FILTER"
            f"{' and GRATING' if instrument.has_grating else ', FILTER1 and FILTER2'}) is not one of "
            f"obs_lsst's {instrument.name} physical filters, so the raw is not ingested: {problem}"
        )
    return {
        "instrument": instrument.name,
        "id": info.exposure_id,
        "obs_id": info.obs_id,
        "physical_filter": info.physical_filter,
        "group": info.group,
        "day_obs": info.day_obs,
        "seq_num": info.seq_num,
        "seq_start": info.seq_start,
        "seq_end": info.seq_end,
        "exposure_time": info.exposure_time,
        "dark_time": info.dark_time,
        "observation_type": info.observation_type,
        "observation_reason": info.observation_reason,
        "science_program": info.science_program,
        "target_name": info.target_name,
        "tracking_ra": info.tracking_ra,
        "tracking_dec": info.tracking_dec,
        "sky_angle": info.sky_angle,
        "azimuth": info.azimuth,
        "zenith_angle": info.zenith_angle,
        "has_simulated": info.has_simulated,
        "can_see_sky": info.can_see_sky,
        "timespan": Timespan(info.datetime_begin, info.datetime_end),
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


def _sync_exposure(butler: Butler, exposure: dict[str, Any], instrument: Instrument) -> dict[str, Any]:
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

    Every file is first checked from its headers (`shared.rawformat.check_raw`: header translation,
    segments, registered filter); one that is not a raw of ``instrument`` stops the ingest before
    anything is written. Then the day_obs, group and exposure records are synced and each file is
    ingested into the RUN collection ``run`` with data ID (instrument, exposure,
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
    shared.rawformat.RawFormatError
        Naming the file, if one is not a raw of ``instrument`` (nothing is then ingested).
    """
    checked = [(Path(path), _checked_record(path, instrument)) for path in paths]
    registry = butler.registry
    registry.registerCollection(run, CollectionType.RUN)
    raw_type = registry.getDatasetType(RAW)

    # The exposure records and the raws are written in one transaction: a crash between them
    # leaves neither, so no exposure is ever registered without its raw.
    with butler.transaction():
        return _ingest(butler, checked, instrument, run=run, transfer=transfer, raw_type=raw_type)


def _checked_record(path: str | Path, instrument: Instrument) -> tuple[int, dict[str, Any]]:
    """(detector, exposure record) of a raw, checked from its headers; raises RawFormatError."""
    info = check_raw(path, instrument)
    try:
        return info.detector, _record(info, instrument, str(path))
    except HeaderError as exc:
        raise RawFormatError(str(exc)) from None


def _ingest(
    butler: Butler,
    checked: Sequence[tuple[Path, tuple[int, dict[str, Any]]]],
    instrument: Instrument,
    *,
    run: str,
    transfer: str,
    raw_type: DatasetType,
) -> list[DatasetRef]:
    refs: list[DatasetRef | None] = []
    pending: list[tuple[int, FileDataset]] = []
    for index, (path, (detector, record)) in enumerate(checked):
        exposure = _sync_exposure(butler, record, instrument)
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


@dataclass(frozen=True)
class FileIngest:
    """What `ingest_files` did with one file."""

    path: Path
    outcome: str
    """``ingested``, ``unchanged`` (already in the raw collection) or ``failed``."""
    detail: str
    """The data ID, or why the file was not ingested."""


RAW_SUFFIXES = (".fits", ".fits.fz", ".fits.gz", ".fz")
"""File names a directory is searched for (``*.fits``, ...)."""


def raw_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files to ingest: each file given, and every raw-named file under each directory (sorted)."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(RAW_SUFFIXES))
            )
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def ingest_files(
    butler: Butler,
    paths: Sequence[Path],
    instrument: Instrument | None = None,
    *,
    transfer: str = "copy",
) -> list[FileIngest]:
    """Ingest raws file by file, as ``butler ingest-raws``: each into ``<INSTR>/raw/all``.

    Each file is checked from its headers and ingested in its own transaction with its exposure
    records; a file that cannot be read, or is not a raw of ``instrument`` (when given; otherwise the
    instrument its INSTRUME names), is reported with the reason and the others go on. A raw whose
    data ID is already in the raw collection is left as it is (``unchanged``).

    Returns
    -------
    outcomes : `list` [`FileIngest`]
        One per path, in order.
    """
    outcomes: list[FileIngest] = []
    for path in paths:
        try:
            info = check_raw(path, instrument)
            target = instrument or get_instrument(info.instrument)
            run = raw_collection(target.name)
            data_id = {"instrument": target.name, "exposure": info.exposure_id, "detector": info.detector}
            label = f"{target.name} exposure={info.exposure_id} ({info.obs_id}) detector={info.detector}"
            if (
                collection_exists(butler, run)
                and butler.find_dataset(RAW, data_id, collections=run) is not None
            ):
                outcomes.append(FileIngest(Path(path), "unchanged", f"{label} is already in {run}"))
                continue
            ingest_raws(butler, [Path(path)], target, run=run, transfer=transfer)
            outcomes.append(FileIngest(Path(path), "ingested", f"{label} into {run}"))
        except (RawFormatError, HeaderError) as exc:
            outcomes.append(FileIngest(Path(path), "failed", str(exc)))
        except Exception as exc:  # a butler or file-system failure on this file: report it, go on
            outcomes.append(FileIngest(Path(path), "failed", f"{path}: {type(exc).__name__}: {exc}"))
    return outcomes

"""Certify combined calibrations into CALIBRATION collections and look them up."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import astropy.time
from lsst.daf.butler import Butler, CollectionType, DatasetRef, Timespan
from lsst.daf.butler.registry import ConflictingDefinitionError, MissingCollectionError

from .collections import calib_chain

__all__ = [
    "MADE_BY_CPFLOW",
    "CertificationConflict",
    "certify_calibrations",
    "ensure_calibration_collection",
    "find_certified",
    "format_timespan",
]

_LOG = logging.getLogger(__name__)


class CertificationConflict(RuntimeError):
    """A different dataset is already certified over an overlapping validity range."""


def format_timespan(timespan: Timespan) -> str:
    """Format a validity range as ``[begin, end)`` in ISO TAI.

    Parameters
    ----------
    timespan : `lsst.daf.butler.Timespan`
        The range; unbounded ends print as ``-inf`` / ``+inf``.

    Returns
    -------
    text : `str`
        E.g. ``[2026-01-01T00:00:00.000 TAI, 2026-02-01T00:00:00.000 TAI)``.
    """
    if timespan.isEmpty():
        return "(empty)"
    begin = f"{timespan.begin.tai.isot} TAI" if isinstance(timespan.begin, astropy.time.Time) else "-inf"
    end = f"{timespan.end.tai.isot} TAI" if isinstance(timespan.end, astropy.time.Time) else "+inf"
    return f"[{begin}, {end})"


def _collection_type(butler: Butler, name: str) -> CollectionType | None:
    try:
        return butler.registry.getCollectionType(name)
    except MissingCollectionError:
        return None


MADE_BY_CPFLOW = "Made by cpflow: calibration collections cpflow certifies into, newest first."
"""Documentation of the ``<INSTR>/calib`` chains cpflow creates: the only chains it changes."""


def ensure_calibration_collection(
    butler: Butler, instrument: str, calib_collection: str, *, chain: bool = True
) -> str | None:
    """Make sure ``calib_collection`` exists, and is in ``<INSTR>/calib`` where cpflow may put it there.

    Registers ``calib_collection`` as a CALIBRATION collection if missing. cpflow never rewrites a
    collection it did not create: it creates the CHAINED collection ``<INSTR>/calib`` if missing
    (documented as `MADE_BY_CPFLOW`) and prepends ``calib_collection`` to a chain it made, unless
    it is already a child (existing children are kept). A ``<INSTR>/calib`` that someone else
    made, a CHAINED collection without ``calib_collection`` or a CALIBRATION collection as
    obs_lsst's ``write-curated-calibrations`` makes it, is left as it is.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        A writeable butler.
    instrument : `str`
        Instrument name.
    calib_collection : `str`
        The CALIBRATION collection, e.g. ``LATISS/calib/daily``.
    chain : `bool`, optional
        `False`: never touch ``<INSTR>/calib`` (a replay's sandbox certification).

    Returns
    -------
    note : `str` or `None`
        `None` when ``calib_collection`` is in ``<INSTR>/calib``; otherwise where the calibrations
        are and what the operator must do to have them found through ``<INSTR>/calib``.

    Raises
    ------
    TypeError
        If ``calib_collection`` exists but is not CALIBRATION.
    ValueError
        If ``calib_collection`` is ``<INSTR>/calib`` itself.
    """
    chain_name = calib_chain(instrument)
    if calib_collection == chain_name:
        raise ValueError(f"the calibration collection cannot be the chain {chain_name!r} itself")
    butler.collections.register(calib_collection, CollectionType.CALIBRATION)
    found = _collection_type(butler, calib_collection)
    if found is not CollectionType.CALIBRATION:
        raise TypeError(
            f"collection {calib_collection!r} exists as {found.name if found else None}, not CALIBRATION"
        )
    if not chain:
        return f"certified into {calib_collection} only (a replay never changes {chain_name})"
    butler.collections.register(chain_name, CollectionType.CHAINED, doc=MADE_BY_CPFLOW)
    info = butler.collections.get_info(chain_name)
    if info.type is not CollectionType.CHAINED:
        return (
            f"certified into {calib_collection}; {chain_name} is a {info.type.name} collection, not a chain, "
            f"so cpflow left it unchanged: search {calib_collection} explicitly, or make {chain_name} a "
            f"CHAINED collection holding both (butler collection-chain)"
        )
    if calib_collection in info.children:
        return None
    if info.doc != MADE_BY_CPFLOW:
        return (
            f"certified into {calib_collection}; {chain_name} is a chain cpflow did not make, so it was "
            f"left unchanged: to use these calibrations by default run `butler collection-chain "
            f"REPO {chain_name} --mode prepend {calib_collection}`"
        )
    butler.collections.prepend_chain(chain_name, calib_collection)
    _LOG.info("added %s to the calibration chain %s", calib_collection, chain_name)
    return None


def _associations(
    butler: Butler, ref: DatasetRef, calib_collection: str
) -> list[tuple[DatasetRef, Timespan]]:
    """Certified datasets in ``calib_collection`` with ``ref``'s dataset type and data ID."""
    result = []
    for assoc in butler.registry.queryDatasetAssociations(
        ref.datasetType.name, collections=calib_collection, collectionTypes={CollectionType.CALIBRATION}
    ):
        if assoc.ref.dataId.required == ref.dataId.required and assoc.timespan is not None:
            result.append((assoc.ref, assoc.timespan))
    return result


def _describe_data_id(ref: DatasetRef) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in ref.dataId.required.items())


def certify_calibrations(
    butler: Butler,
    refs: Sequence[DatasetRef],
    calib_collection: str,
    begin: astropy.time.Time | None,
    end: astropy.time.Time | None,
) -> str:
    """Certify ``refs`` into ``calib_collection`` with validity ``[begin, end)`` (idempotent).

    The caller is expected to have run `ensure_calibration_collection` (the collection must be a
    registered CALIBRATION collection).

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        A writeable butler.
    refs : `~collections.abc.Sequence` [`lsst.daf.butler.DatasetRef`]
        Resolved refs of calibration datasets (``isCalibration`` dataset types).
    calib_collection : `str`
        The CALIBRATION collection.
    begin, end : `astropy.time.Time` or `None`
        Validity range, half open; `None` for unbounded.

    Returns
    -------
    outcome : `str`
        ``"certified"`` if anything was certified, ``"already-certified"`` if every ref already was,
        with exactly this validity range.

    Raises
    ------
    CertificationConflict
        If another dataset of the same type and data ID (or the same dataset with a different
        range) overlaps ``[begin, end)``.
    """
    timespan = Timespan(begin, end)

    def pending_refs() -> list[DatasetRef]:
        pending = []
        for ref in refs:
            existing = _associations(butler, ref, calib_collection)
            if any(other.id == ref.id and span == timespan for other, span in existing):
                continue
            overlapping = [(other, span) for other, span in existing if span.overlaps(timespan)]
            if overlapping:
                raise _conflict(ref, calib_collection, timespan, overlapping)
            pending.append(ref)
        return pending

    pending = pending_refs()
    if not pending:
        return "already-certified"
    try:
        butler.registry.certify(calib_collection, pending, timespan)
    except ConflictingDefinitionError as err:
        # Probably a concurrent certifier: find out who holds the range now.
        if not pending_refs():
            return "already-certified"
        raise CertificationConflict(
            f"cannot certify {len(pending)} dataset(s) into {calib_collection!r} for "
            f"{format_timespan(timespan)}: {err}"
        ) from err
    _LOG.info(
        "certified %d dataset(s) into %s for %s", len(pending), calib_collection, format_timespan(timespan)
    )
    return "certified"


def _conflict(
    ref: DatasetRef,
    calib_collection: str,
    timespan: Timespan,
    overlapping: list[tuple[DatasetRef, Timespan]],
) -> CertificationConflict:
    existing = "; ".join(f"dataset {other.id} valid {format_timespan(span)}" for other, span in overlapping)
    return CertificationConflict(
        f"cannot certify {ref.datasetType.name} {ref.id} ({_describe_data_id(ref)}) into "
        f"{calib_collection!r} for {format_timespan(timespan)}: it overlaps the existing validity "
        f"range of {existing}"
    )


def find_certified(
    butler: Butler, dataset_type: str, instrument: str, detector: int, calib_collection: str
) -> list[tuple[DatasetRef, Timespan]]:
    """List the datasets certified in ``calib_collection`` for one detector, with their validity.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        The butler.
    dataset_type : `str`
        Calibration dataset type name (``bias``, ``dark``, ``flat``, ...).
    instrument : `str`
        Instrument name.
    detector : `int`
        Detector id.
    calib_collection : `str`
        A CALIBRATION collection (or a CHAINED collection of them).

    Returns
    -------
    certified : `list` [`tuple` [`lsst.daf.butler.DatasetRef`, `lsst.daf.butler.Timespan`]]
        Sorted by the start of the validity range (unbounded first).
    """
    result = []
    for assoc in butler.registry.queryDatasetAssociations(
        dataset_type,
        collections=calib_collection,
        collectionTypes={CollectionType.CALIBRATION},
        flattenChains=True,
    ):
        data_id = assoc.ref.dataId
        if data_id["instrument"] == instrument and data_id["detector"] == detector and assoc.timespan:
            result.append((assoc.ref, assoc.timespan))

    def start(item: tuple[DatasetRef, Timespan]) -> float:
        begin = item[1].begin
        return float(begin.tai.mjd) if isinstance(begin, astropy.time.Time) else -float("inf")

    result.sort(key=start)
    return result

"""Register cpflow's instrument definitions as butler dimension records."""

from __future__ import annotations

import logging
from typing import Any

from lsst.daf.butler import Butler

from shared.instruments import Detector, Instrument

__all__ = [
    "detector_record",
    "filter_records",
    "instrument_record",
    "record_differences",
    "register_instrument",
]

_LOG = logging.getLogger(__name__)


def instrument_record(instrument: Instrument) -> dict[str, Any]:
    """The ``instrument`` dimension record of ``instrument``, as obs_lsst registers it.

    Parameters
    ----------
    instrument : `shared.instruments.Instrument`
        The cpflow instrument definition.

    Returns
    -------
    record : `dict`
        Values for ``name``, ``detector_max``, ``exposure_max``, ``visit_max``, ``visit_system``
        and ``class_name``.
    """
    return {
        "name": instrument.name,
        "detector_max": instrument.detector_max,
        "exposure_max": instrument.exposure_max,
        "visit_max": instrument.exposure_max,
        "visit_system": instrument.visit_system,
        "class_name": instrument.class_name,
    }


def detector_record(instrument: Instrument, detector: Detector) -> dict[str, Any]:
    """The ``detector`` dimension record, as obs_lsst registers it.

    The name ``RAFT_SENSOR`` is split at ``_`` into ``raft`` and ``name_in_raft``, except where the
    instrument keeps whole names (LATISS: no raft, ``name_in_raft`` ``RXX_S00``).
    """
    if instrument.whole_detector_names:
        raft, name_in_raft = None, detector.full_name
    else:
        raft, _, name_in_raft = detector.full_name.partition("_")
    return {
        "instrument": instrument.name,
        "id": detector.id,
        "full_name": detector.full_name,
        "raft": raft,
        "name_in_raft": name_in_raft,
        "purpose": detector.purpose,
    }


def filter_records(instrument: Instrument) -> list[dict[str, Any]]:
    """The ``physical_filter`` dimension records cpflow needs for ``instrument``."""
    return [
        {"instrument": instrument.name, "name": physical_filter, "band": band}
        for physical_filter, band in instrument.filters
    ]


def record_differences(butler: Butler, instrument: Instrument) -> list[str]:
    """How the repository's records of ``instrument`` differ from cpflow's (empty: identical)."""
    found: list[str] = []
    wanted: dict[str, list[dict[str, Any]]] = {
        "instrument": [instrument_record(instrument)],
        "detector": [detector_record(instrument, d) for d in instrument.detectors],
        "physical_filter": filter_records(instrument),
    }
    for element, records in wanted.items():
        key_name = "id" if element == "detector" else "name"
        data_id = {"instrument": instrument.name} if element != "instrument" else None
        existing_records = butler.query_dimension_records(element, data_id=data_id, explain=False)
        theirs = {d[key_name]: d for d in (r.toDict() for r in existing_records)}
        for ours in records:
            existing = theirs.get(ours[key_name])
            if existing is None:
                continue
            changed = [
                f"{name} {existing.get(name)!r} (cpflow: {value!r})"
                for name, value in ours.items()
                if existing.get(name) != value
            ]
            if changed:
                found.append(f"{element} {ours[key_name]}: " + ", ".join(changed))
    return found


def register_instrument(butler: Butler, instrument: Instrument) -> list[str]:
    """Register the instrument, physical_filter and detector records of ``instrument`` that are missing.

    Records already in the repository (cpflow's, or obs_lsst's where obs_lsst registered the
    instrument first) are used as they are: nothing that exists is changed, only what is missing
    is added, so cpflow can share a repository with Rubin's software.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        A writeable butler.
    instrument : `shared.instruments.Instrument`
        The cpflow instrument definition.

    Returns
    -------
    differences : `list` [`str`]
        How existing records differ from cpflow's, one line each (each is also logged as a warning).
    """
    registry = butler.registry
    with butler.transaction():
        registry.insertDimensionData("instrument", instrument_record(instrument), skip_existing=True)
        registry.insertDimensionData("physical_filter", *filter_records(instrument), skip_existing=True)
        registry.insertDimensionData(
            "detector", *(detector_record(instrument, d) for d in instrument.detectors), skip_existing=True
        )
    differences = record_differences(butler, instrument)
    for line in differences:
        _LOG.warning("using the repository's record as it is: %s", line)
    return differences

"""Register cpflow's instrument definitions as butler dimension records."""

from __future__ import annotations

from typing import Any

from lsst.daf.butler import Butler

from shared.instruments import Instrument

__all__ = ["instrument_record", "register_instrument"]


def instrument_record(instrument: Instrument) -> dict[str, Any]:
    """Build the ``instrument`` dimension record of ``instrument``.

    Parameters
    ----------
    instrument : `shared.instruments.Instrument`
        The cpflow instrument definition.

    Returns
    -------
    record : `dict`
        Values for ``name``, ``detector_max``, ``exposure_max``, ``visit_max``, ``class_name``.
    """
    return {
        "name": instrument.name,
        "detector_max": max(instrument.detector_ids) + 1,
        "exposure_max": instrument.exposure_max,
        "visit_max": instrument.exposure_max,
        "class_name": instrument.class_name,
    }


def register_instrument(butler: Butler, instrument: Instrument, *, update: bool = False) -> None:
    """Sync the instrument, physical_filter and detector records of ``instrument`` (idempotent).

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        A writeable butler.
    instrument : `shared.instruments.Instrument`
        The cpflow instrument definition.
    update : `bool`, optional
        Overwrite existing records that differ instead of raising.

    Raises
    ------
    lsst.daf.butler.registry.ConflictingDefinitionError
        If a record exists with different values and ``update`` is `False`.
    """
    registry = butler.registry
    with butler.transaction():
        registry.syncDimensionData("instrument", instrument_record(instrument), update=update)
        for physical_filter, band in instrument.filters:
            registry.syncDimensionData(
                "physical_filter",
                {"instrument": instrument.name, "name": physical_filter, "band": band},
                update=update,
            )
        for detector in instrument.detectors:
            registry.syncDimensionData(
                "detector",
                {
                    "instrument": instrument.name,
                    "id": detector.id,
                    "full_name": detector.full_name,
                    "raft": detector.raft,
                    "name_in_raft": detector.name_in_raft,
                    "purpose": detector.purpose,
                },
                update=update,
            )

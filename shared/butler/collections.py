"""The names of cpflow's collections, and whether one exists.

Raws are in ``<INSTR>/raw/all``; everything a run makes is under ``<INSTR>/runs/<run_id>`` (its
accepted configuration there, each calibration type's products in ``.../<calib_type>``);
certified calibrations are in ``calib_collection`` (CALIBRATION), which the CHAINED
``<INSTR>/calib`` includes.
"""

from __future__ import annotations

from lsst.daf.butler import Butler, MissingCollectionError

__all__ = ["calib_chain", "collection_exists", "raw_collection", "run_collection", "type_collection"]


def run_collection(instrument: str, run_id: str, calib_type: str | None = None) -> str:
    """Name of a run's RUN collection: ``<INSTR>/runs/<run_id>[/<calib_type>]``.

    Parameters
    ----------
    instrument : `str`
        Instrument name.
    run_id : `str`
        cpflow run identifier.
    calib_type : `str`, optional
        Calibration type for a per-type sub-collection.

    Returns
    -------
    name : `str`
        The collection name.
    """
    name = f"{instrument}/runs/{run_id}"
    return f"{name}/{calib_type}" if calib_type else name


def type_collection(instrument: str, run_id: str, calib_type: str) -> str:
    """RUN collection holding everything of one calibration (or image) type of a run."""
    return run_collection(instrument, run_id, calib_type.lower())


def raw_collection(instrument: str) -> str:
    """Name of the RUN collection holding an instrument's raws: ``<INSTR>/raw/all``."""
    return f"{instrument}/raw/all"


def calib_chain(instrument: str) -> str:
    """Name of the CHAINED collection of certified calibrations: ``<INSTR>/calib``."""
    return f"{instrument}/calib"


def collection_exists(butler: Butler, name: str) -> bool:
    """Whether the butler has a collection called ``name``."""
    try:
        butler.collections.get_info(name)
    except MissingCollectionError:
        return False
    return True

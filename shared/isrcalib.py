"""The metadata of ip_isr's ``IsrCalib`` FITS tables (defects, PTC), as ip_isr writes and reads them.

ip_isr writes an IsrCalib as an empty primary HDU and one binary table whose header carries the
calibration's metadata (rubin_formats.md §7.1); its reader picks the class from ``CALIBCLS`` and
refuses a table whose ``OBSTYPE`` is not the class's. `isrcalib_metadata` builds those keys for one
detector; `shared.butler.formatters.TableFitsFormatter` writes them into the table header.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from shared.instruments import Detector

__all__ = ["DEFECTS", "PTC", "IsrCalibClass", "isrcalib_metadata"]


@dataclass(frozen=True)
class IsrCalibClass:
    """What ip_isr's reader checks of one calibration class."""

    obstype: str
    """``OBSTYPE`` (ip_isr's ``_OBSTYPE``)."""
    schema: str
    """``<OBSTYPE>_SCHEMA``."""
    version: float
    """``<OBSTYPE>_VERSION``."""
    calibcls: str
    """``CALIBCLS``: the class ip_isr instantiates."""


DEFECTS = IsrCalibClass("defects", "", 2.0, "lsst.ip.isr.defects.Defects")
PTC = IsrCalibClass(
    "PTC", "Gen3 Photon Transfer Curve", 2.6, "lsst.ip.isr.ptcDataset.PhotonTransferCurveDataset"
)


def isrcalib_metadata(
    calib: IsrCalibClass,
    instrument: str,
    detector: Detector,
    *,
    physical_filter: str | None = None,
    created: datetime | None = None,
) -> dict[str, object]:
    """The IsrCalib metadata keys of ``calib`` for one detector, in ip_isr's names.

    Parameters
    ----------
    calib : `IsrCalibClass`
        `DEFECTS` or `PTC`.
    instrument : `str`
        Instrument name (``INSTRUME``).
    detector : `shared.instruments.Detector`
        The detector (``DETECTOR``, ``DET_NAME``, ``DET_SER``, ``RAFTNAME``, ``SLOTNAME``).
    physical_filter : `str`, optional
        ``FILTER`` for by-filter calibrations.
    created : `datetime.datetime`, optional
        Creation time (UTC; default now): ``CALIBDATE``, ``CALIB_CREATION_DATE``/``_TIME``.

    Returns
    -------
    metadata : `dict` [`str`, `object`]
        Keys and values for the table header; keys longer than 8 characters become HIERARCH cards.
    """
    when = (created or datetime.now(UTC)).astimezone(UTC)
    raft, _, slot = detector.name.rpartition("_")
    calib_date = when.strftime("%Y-%m-%dT%H:%M:%S")
    metadata: dict[str, object] = {
        "OBSTYPE": calib.obstype,
        f"{calib.obstype.upper()}_SCHEMA": calib.schema,
        f"{calib.obstype.upper()}_VERSION": calib.version,
        "CALIBCLS": calib.calibcls,
        "INSTRUME": instrument,
        "RAFTNAME": raft or detector.name,
        "SLOTNAME": slot,
        "DETECTOR": detector.id,
        "DET_NAME": detector.name,
        "DET_SER": detector.serial,
        "CALIB_ID": (
            f"instrument={instrument} raftName={raft or detector.name} detectorName={slot} "
            f"detector={detector.id} filter={physical_filter} calibDate={calib_date}"
        ),
        "CALIBDATE": calib_date,
        "CALIB_CREATION_DATE": when.strftime("%Y-%m-%d"),
        "CALIB_CREATION_TIME": when.strftime("%H:%M:%S"),
    }
    if physical_filter is not None:
        metadata["FILTER"] = physical_filter
    return metadata

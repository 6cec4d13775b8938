"""Header translation of Rubin raws, with the rules of obs_lsst's translators (rubin_formats.md §3).

A real raw's primary header has no exposure id and no detector number: both are derived.

* Exposure id: ``DAYOBS`` (``YYYYMMDD`` or ``YYYY-MM-DD``, anything after a ``T`` dropped) and
  ``SEQNUM`` (< 100000) as ``int(f"{dayobs}{seqnum:05d}")``, after the controller offset: the
  controller ``CONTRLLR`` at index *i* of ``"OCHPQS"`` adds *i* x 10 000 000 to the ``YYYYMMDD``
  number, except ``O`` (never), ``C`` after 2023-10-04 and ``P``/``Q``/``S`` after 2025-04-17
  (shared counters); ``H`` always. No ``CONTRLLR`` card, no offset. A header with ``CALIB_ID``
  (a calibration product) has no exposure id and is refused.
* Detector: LATISS is always detector 0 (its ``RAFTBAY R00`` is ignored); LSSTComCam looks up
  ``RAFTBAY_CCDSLOT`` among its detector names.
* physical_filter: LATISS ``FILTER~GRATING`` (``empty``, ``empty_N``, ``emptyN`` → ``empty``;
  a blank grating or one starting with ``empty`` → ``empty``; a missing card → ``unknown``);
  LSSTCam/LSSTComCam the set values of ``FILTER``, ``FILTER1``, ``FILTER2`` joined with ``~``,
  ``NONE`` → ``none``, trailing ``~empty`` parts removed, ``unknown`` if none is set.
* The other exposure fields as obs_base's ``makeExposureRecordFromObsInfo`` fills them
  (`RawHeaderInfo`).

Approximations (no astropy coordinate transforms are made): ``tracking_ra``/``tracking_dec`` are
``RASTART``/``DECSTART`` when ``TRACKSYS`` is ``RADEC``; ``azimuth`` is ``AZSTART`` and
``zenith_angle`` is 90 - ``ELSTART`` when those are set.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import astropy.time
from astropy.io import fits

from shared.exposure_ids import CONTROLLERS, compute_exposure_id, day_obs_number
from shared.instruments import Instrument, get_instrument, instrument_names

__all__ = [
    "CONTROLLERS",
    "HeaderError",
    "RawHeaderInfo",
    "compute_exposure_id",
    "detector_of",
    "instrument_of",
    "physical_filter_of",
    "translate",
]

_EMPTY_FILTER = re.compile(r"^empty(_?\d+)?$", re.IGNORECASE)
_TRUE = {"T", "TRUE", "Y", "YES", "1"}


class HeaderError(ValueError):
    """A primary header that is not that of a raw of the expected instrument; names the file."""


def _value(header: fits.Header, key: str) -> Any:
    """The card's value, `None` when the card is absent or undefined."""
    value = header.get(key)
    if value is None or isinstance(value, fits.card.Undefined):
        return None
    return value


def _text(header: fits.Header, key: str) -> str | None:
    value = _value(header, key)
    if value is None:
        return None
    return str(value).strip()


def _float(header: fits.Header, key: str) -> float | None:
    value = _value(header, key)
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def instrument_of(header: fits.Header, *, source: str = "") -> Instrument:
    """The cpflow instrument named by the header's ``INSTRUME`` (``LATISS``, ``ComCam``, ...)."""
    name = _text(header, "INSTRUME")
    where = f"{source}: " if source else ""
    if not name:
        raise HeaderError(f"{where}the primary header has no INSTRUME; this is not a Rubin raw")
    for candidate in instrument_names():
        instrument = get_instrument(candidate)
        if name == instrument.name or name in instrument.header_names:
            return instrument
    raise HeaderError(
        f"{where}INSTRUME={name!r} is not an instrument cpflow knows ({list(instrument_names())})"
    )


def physical_filter_of(header: fits.Header, instrument: Instrument) -> str:
    """The ``physical_filter`` of a raw (LATISS ``FILTER~GRATING``; LSSTCam/ComCam rules)."""
    if instrument.has_grating:
        filt = _text(header, "FILTER")
        grating = _text(header, "GRATING")
        if filt is None:
            filt = "unknown"
        elif _EMPTY_FILTER.match(filt):
            filt = "empty"
        if grating is None:
            grating = "unknown"
        elif not grating or grating.lower().startswith("empty"):
            grating = "empty"
        return f"{filt}~{grating}"
    parts = []
    for key in ("FILTER", "FILTER1", "FILTER2"):
        value = _text(header, key)
        if value:
            parts.append("none" if value.upper() == "NONE" else value)
    if not parts:
        return "unknown"
    while len(parts) > 1 and parts[-1] == "empty":
        parts.pop()
    return "~".join(parts)


def detector_of(header: fits.Header, instrument: Instrument, *, source: str = "") -> int:
    """The detector id of a raw: 0 for LATISS, else ``RAFTBAY_CCDSLOT`` looked up by name."""
    if instrument.fixed_detector:
        return instrument.detectors[0].id
    where = f"{source}: " if source else ""
    raft, slot = _text(header, "RAFTBAY"), _text(header, "CCDSLOT")
    if not raft or not slot:
        raise HeaderError(f"{where}the primary header lacks RAFTBAY or CCDSLOT: no detector can be named")
    name = f"{raft}_{slot}"
    for detector in instrument.detectors:
        if detector.name == name:
            return detector.id
    known = [d.name for d in instrument.detectors]
    raise HeaderError(f"{where}{instrument.name} has no detector {name} (RAFTBAY_CCDSLOT); known: {known}")


def _time(header: fits.Header, keys: tuple[str, ...]) -> astropy.time.Time | None:
    scale = (_text(header, "TIMESYS") or "TAI").lower()
    for key in keys:
        value = _value(header, key)
        if value is None or value == "":
            continue
        if key.startswith("MJD"):
            number = _float(header, key)
            if number is None:
                continue
            return astropy.time.Time(number, format="mjd", scale=scale).tai
        return astropy.time.Time(str(value), format="isot", scale=scale).tai
    return None


def _truthy(value: Any) -> bool:
    if value is None or isinstance(value, fits.card.Undefined):
        return False
    if isinstance(value, bool | int | float):
        return bool(value)
    return str(value).strip().upper() in _TRUE


@dataclass(frozen=True)
class RawHeaderInfo:
    """What a raw's primary header says, translated (fields of the butler's exposure record)."""

    instrument: str
    exposure_id: int
    detector: int
    detector_serial: str | None
    obs_id: str
    physical_filter: str
    group: str
    day_obs: int
    seq_num: int
    seq_start: int
    seq_end: int
    exposure_time: float
    dark_time: float
    observation_type: str
    observation_reason: str
    science_program: str
    target_name: str
    tracking_ra: float | None
    tracking_dec: float | None
    sky_angle: float | None
    azimuth: float | None
    zenith_angle: float | None
    has_simulated: bool
    can_see_sky: bool | None
    datetime_begin: astropy.time.Time
    datetime_end: astropy.time.Time


def _can_see_sky(header: fits.Header, observation_type: str) -> bool | None:
    shuttime = _float(header, "SHUTTIME")
    vignetting = _text(header, "VIGN_MIN") or _text(header, "VIGNETTE")
    if shuttime == 0.0 or (vignetting and vignetting.upper() == "FULLY"):
        return False
    if vignetting and vignetting.upper() == "UNKNOWN":
        return None
    if vignetting:
        return True
    return False if observation_type in ("bias", "dark") else None


def translate(
    header: fits.Header, instrument: Instrument | None = None, *, source: str = ""
) -> RawHeaderInfo:
    """Translate a raw's primary header.

    Parameters
    ----------
    header : `astropy.io.fits.Header`
        The primary header of a raw as the camera writes it.
    instrument : `shared.instruments.Instrument`, optional
        The instrument the raw must belong to; by default the one its ``INSTRUME`` names.
    source : `str`, optional
        The file's name, for the messages.

    Raises
    ------
    HeaderError
        Naming ``source`` and what is wrong: another instrument, a missing DAYOBS, SEQNUM or
        IMGTYPE, a calibration product, an unknown detector.
    """
    where = f"{source}: " if source else ""
    found = instrument_of(header, source=source)
    if instrument is not None and found.name != instrument.name:
        raise HeaderError(
            f"{where}INSTRUME={_text(header, 'INSTRUME')!r} is a {found.name} raw, not {instrument.name}"
        )
    instrument = found
    if _value(header, "CALIB_ID") is not None:
        raise HeaderError(f"{where}the header has CALIB_ID: a calibration product, not a raw")
    missing = [key for key in ("DAYOBS", "SEQNUM", "IMGTYPE") if _value(header, key) is None]
    if missing:
        raise HeaderError(f"{where}the primary header lacks {', '.join(missing)}; this is not a raw")
    controller = _text(header, "CONTRLLR")
    try:
        seq_num = int(_value(header, "SEQNUM"))
        day_obs = day_obs_number(_value(header, "DAYOBS"))
        exposure_id = compute_exposure_id(day_obs, seq_num, controller)
    except (TypeError, ValueError) as exc:
        raise HeaderError(f"{where}{exc}") from None
    detector = detector_of(header, instrument, source=source)

    observation_type = str(_text(header, "IMGTYPE")).lower()
    if observation_type in ("object", "skyexp"):
        observation_type = "science"
    exposure_time = _float(header, "EXPTIME")
    if exposure_time is None:
        raise HeaderError(f"{where}the primary header lacks EXPTIME")
    dark_time = _float(header, "DARKTIME")
    if dark_time is None:
        dark_time = exposure_time
    cur_index = _value(header, "CURINDEX")
    max_index = _value(header, "MAXINDEX")
    seq_start = seq_num - int(cur_index) + 1 if cur_index is not None else seq_num
    seq_end = (
        seq_num + int(max_index) - int(cur_index)
        if cur_index is not None and max_index is not None
        else seq_num
    )

    begin = _time(header, ("MJD-BEG", "DATE-BEG", "MJD-OBS", "DATE-OBS"))
    if begin is None:
        raise HeaderError(f"{where}the primary header has no MJD-BEG, DATE-BEG, MJD-OBS or DATE-OBS")
    end = _time(header, ("MJD-END", "DATE-END"))
    if end is None:
        end = begin + astropy.time.TimeDelta(exposure_time, format="sec")
    if end < begin:
        end = begin

    tracking_ra = tracking_dec = None
    if (_text(header, "TRACKSYS") or "").upper() == "RADEC":
        tracking_ra, tracking_dec = _float(header, "RASTART"), _float(header, "DECSTART")
    sky_angle = _float(header, "ROTPA") if (_text(header, "ROTCOORD") or "").lower() == "sky" else None
    elevation = _float(header, "ELSTART")
    has_simulated = (controller or "") in ("H", "P", "Q", "S") or any(
        str(key).upper().startswith("SIMULATE") and _truthy(value) for key, value in header.items()
    )
    reason = _text(header, "REASON") or _text(header, "TESTTYPE") or "unknown"
    serial = _text(header, "LSST_NUM") or (_text(header, "DETSER") if instrument.fixed_detector else None)
    return RawHeaderInfo(
        instrument=instrument.name,
        exposure_id=exposure_id,
        detector=detector,
        detector_serial=serial,
        obs_id=_text(header, "OBSID") or str(exposure_id),
        physical_filter=physical_filter_of(header, instrument),
        group=_text(header, "GROUPID") or str(exposure_id),
        day_obs=day_obs,
        seq_num=seq_num,
        seq_start=seq_start,
        seq_end=seq_end,
        exposure_time=exposure_time,
        dark_time=dark_time,
        observation_type=observation_type,
        observation_reason=reason.lower(),
        science_program=_text(header, "PROGRAM") or "unknown",
        target_name=_text(header, "OBJECT") or "UNKNOWN",
        tracking_ra=tracking_ra,
        tracking_dec=tracking_dec,
        sky_angle=sky_angle,
        azimuth=_float(header, "AZSTART"),
        zenith_angle=None if elevation is None else 90.0 - elevation,
        has_simulated=has_simulated,
        can_see_sky=_can_see_sky(header, observation_type),
        datetime_begin=begin,
        datetime_end=end,
    )

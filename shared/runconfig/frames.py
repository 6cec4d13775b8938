"""Frames already in a butler (``camera: none``): how ``exposures_bias/_dark/_flat`` name them.

A run with ``camera: none`` takes no images: it lists, per image type, the frames the OODS has
ingested (or will ingest) as exposure ids (``2024062400169``) or obs ids
(``AT_O_20240624_000169``). An obs id is turned into its exposure id by obs_lsst's rule
(`shared.exposure_ids.compute_exposure_id`), so the acquirer can wait for frames whose records do not
exist yet and name them when they never come.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from shared.exposure_ids import CONTROLLERS, compute_exposure_id
from shared.instruments import get_instrument, instrument_names

__all__ = ["INSTRUMENT_CODES", "MAX_EXPOSURE_ID", "OBS_ID", "FrameRef", "frame_ref", "parse_obs_id"]

OBS_ID = re.compile(r"^(?P<code>[A-Z]{2})_(?P<controller>[A-Z])_(?P<day_obs>\d{8})_(?P<seq_num>\d{6})$")
"""``<instrument code>_<controller>_<day_obs>_<seq_num>``, as obs_lsst writes OBSID."""

MAX_EXPOSURE_ID = max(get_instrument(name).exposure_max for name in instrument_names())
"""The largest exposure id obs_lsst's instruments have (their records' ``exposure_max``)."""

INSTRUMENT_CODES = {get_instrument(name).obs_id_prefix.split("_")[0]: name for name in instrument_names()}
"""The first part of an obs id and the instrument it names (``AT`` LATISS, ``CC``, ``MC``)."""


@dataclass(frozen=True)
class FrameRef:
    """One frame a run lists: its exposure id and, when it was given as one, its obs id."""

    exposure_id: int
    obs_id: str | None = None

    def __str__(self) -> str:
        return f"{self.exposure_id} ({self.obs_id})" if self.obs_id else str(self.exposure_id)


def parse_obs_id(text: str) -> tuple[str, int]:
    """``(instrument, exposure id)`` of an obs id such as ``AT_O_20240624_000169``.

    Raises
    ------
    ValueError
        With what is wrong, for text that is not an obs id of a known instrument and controller.
    """
    match = OBS_ID.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is neither an exposure id (an integer) nor an obs id such as AT_O_20240624_000169"
        )
    code = match["code"]
    if code not in INSTRUMENT_CODES:
        raise ValueError(
            f"{text!r}: {code} is not an instrument code; valid codes are "
            + ", ".join(f"{c} ({name})" for c, name in INSTRUMENT_CODES.items())
        )
    if match["controller"] not in CONTROLLERS:
        raise ValueError(f"{text!r}: controller {match['controller']} is not one of {list(CONTROLLERS)}")
    try:
        datetime.datetime.strptime(match["day_obs"], "%Y%m%d")
    except ValueError:
        raise ValueError(f"{text!r}: day_obs {match['day_obs']} is not a date (YYYYMMDD)") from None
    try:
        exposure_id = compute_exposure_id(match["day_obs"], int(match["seq_num"]), match["controller"])
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    return INSTRUMENT_CODES[code], exposure_id


def frame_ref(value: int | str) -> FrameRef:
    """The `FrameRef` of an ``exposures_*`` item (already validated)."""
    if isinstance(value, int):
        return FrameRef(value)
    return FrameRef(parse_obs_id(value)[1], value)

"""obs_lsst's exposure ids: from (DAYOBS, SEQNUM, CONTRLLR), as its ``compute_exposure_id``.

``int(f"{dayobs}{seqnum:05d}")`` after the controller offset: the controller at index *i* of
``"OCHPQS"`` adds *i* x 10 000 000 to the ``YYYYMMDD`` number, except ``O`` (never), ``C`` after
2023-10-04 and ``P``/``Q``/``S`` after 2025-04-17 (shared counters); ``H`` always. Kept apart from
`shared.translation` (headers, astropy) so that reading a run configuration's obs ids is cheap.
"""

from __future__ import annotations

import re

__all__ = ["CONTROLLERS", "compute_exposure_id", "day_obs_number"]

CONTROLLERS = "OCHPQS"
"""Controller codes in offset order: OCS, CCS, phosim, simulated OCS, simulated CCS, simulated images."""
_CCS_SHARED_COUNTER_AFTER = 20231004
_SIMULATED_SHARED_COUNTER_AFTER = 20250417
_MAX_SEQNUM = 100_000


def day_obs_number(day_obs: int | str) -> int:
    """DAYOBS (``YYYYMMDD`` or ``YYYY-MM-DD``, anything after a ``T`` dropped) as a number."""
    text = str(day_obs).strip().split("T", 1)[0].replace("-", "")
    if not re.fullmatch(r"\d{8}", text):
        raise ValueError(f"DAYOBS {day_obs!r} is not YYYYMMDD or YYYY-MM-DD")
    return int(text)


def compute_exposure_id(day_obs: int | str, seq_num: int, controller: str | None = None) -> int:
    """The exposure id of (DAYOBS, SEQNUM, CONTRLLR), as obs_lsst's ``compute_exposure_id``.

    Examples: ``("20240624", 169, "O")`` → 2024062400169; ``("20190319", 1, "C")`` →
    3019031900001 (CCS before it shared the OCS counter).

    Raises
    ------
    ValueError
        For a malformed DAYOBS, a SEQNUM outside 0..99999 or an unknown controller.
    """
    day = day_obs_number(day_obs)
    if not 0 <= int(seq_num) < _MAX_SEQNUM:
        raise ValueError(f"SEQNUM {seq_num} is outside 0..{_MAX_SEQNUM - 1}")
    if controller:
        code = controller.strip()
        if code not in CONTROLLERS:
            raise ValueError(f"CONTRLLR {controller!r} is not one of {list(CONTROLLERS)}")
        shared_counter = (
            code == "O"
            or (code == "C" and day > _CCS_SHARED_COUNTER_AFTER)
            or (code in "PQS" and day > _SIMULATED_SHARED_COUNTER_AFTER)
        )
        if not shared_counter:
            day += CONTROLLERS.index(code) * 10_000_000
    return int(f"{day}{int(seq_num):05d}")

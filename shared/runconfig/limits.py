"""Limits that keep a run bounded in frames, time, disk and memory, each stated once, with why.

They are checked at validation, so both by ``cpflow submit`` and again by the acquirer (which
validates every ``run.requested`` it receives, whoever sent it). The simulator's own limits are in
`shared.runconfig.simulator`; the bounds of the configuration file itself in
`shared.runconfig.loading`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BeforeValidator

__all__ = [
    "MAX_DATA_TAKING_S",
    "MAX_DISCARDED_FRAMES",
    "MAX_EXPOSURE_TIME_S",
    "MAX_FRAMES_PER_TYPE",
    "MAX_KEPT_FRAMES",
    "MAX_LIST_ITEMS",
    "MAX_PROCESSES",
    "MAX_TEXT_LENGTH",
    "MAX_THRESHOLD",
    "MAX_TIMEOUT_S",
    "MAX_WAIT_BETWEEN_EXPOSURES_S",
    "at_most",
]

MAX_KEPT_FRAMES = 1000
"""Most frames of one type kept (``n_bias``, ``n_dark``, ``n_flat``). The reference takes 20-22; a PTC
takes a few hundred flats. 1000 is 50 times the reference, and 1000 darks of 30 s are more than
eight hours of data taking."""

MAX_DISCARDED_FRAMES = 100
"""Most leading frames of one type discarded (``n_discard_*``): the reference discards 1; a few settle
a camera after idling, a hundred is already a warm-up."""

MAX_FRAMES_PER_TYPE = MAX_KEPT_FRAMES + MAX_DISCARDED_FRAMES
"""Most frames of one type a run takes (also bounds ``exp_times_*`` lists and fault frame indices)."""

MAX_EXPOSURE_TIME_S = 3600.0
"""Longest exposure (``exp_times_dark``, ``exp_times_flat``), s. Reference darks are 5-30 s; an hour is
longer than any calibration exposure (the dark is then dominated by cosmic rays)."""

MAX_WAIT_BETWEEN_EXPOSURES_S = 600.0
"""Longest sleep after each exposure (reference default 0): ten minutes is already a pause in data
taking, not a settling time."""

MAX_DATA_TAKING_S = 86400.0
"""Longest data taking of a run (every exposure time plus the wait after each exposure), s: one day.
The per-key limits alone would allow months."""

MAX_TIMEOUT_S = 3600.0
"""Longest ``oods_timeout`` and ``background_task_timeout``, s (reference defaults 120 and 30): an hour
without an ingested image or a finished job is a failure to report, not to wait for."""

MAX_PROCESSES = 256
"""Most pipetask processes (``n_processes``, ``-j``; reference 8): more than the cores of a node."""

MAX_THRESHOLD = 1000
"""Largest ``number_verification_tests_threshold_*`` (reference 8, half the 16 amplifiers of a
detector). Above 16 a per-amplifier test can no longer fail a detector; 1000 only rejects nonsense."""

MAX_LIST_ITEMS = 64
"""Most names in ``ignore`` (MTCS components; a handful exist)."""

MAX_TEXT_LENGTH = 1024
"""Longest free-text value (``config_options_*``, ``program``, ``reason``, ``note``, ``repo``,
``test_case`` fields, comma-separated collection lists): a pipetask option string or a note is a line,
not a document."""


def at_most(max_items: int) -> BeforeValidator:
    """Field marker bounding a list's length before its items are validated, so that a long list is
    rejected without validating (and reporting) each item."""

    def check(value: Any) -> Any:
        if isinstance(value, list) and len(value) > max_items:
            raise ValueError(f"has {len(value)} items, more than the maximum {max_items}; shorten it")
        return value

    return BeforeValidator(check)

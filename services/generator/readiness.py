"""Readiness and the dependency chain: when can calibration type T of run R be built?

A dark is built with *this run's* bias, a flat with this run's bias and dark, once they are usable:
generated and passed verification (or generated, when ``do_verify`` is false). A prerequisite
that failed stops its dependants. A prerequisite the run does not take (a DARK-only run's bias) is
the one certified in the calibration collections. Everything is read from the butler records, so
the answer is the same after a restart or a redelivery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lsst.daf.butler import Butler

from shared.butler import datasets
from shared.runconfig import RunConfiguration
from shared.runstate import find_record, type_collection

__all__ = [
    "FRAMES_OF",
    "PREREQUISITES",
    "CalibSource",
    "Readiness",
    "dependants",
    "generation_record",
    "readiness",
    "usable_state",
    "verification_record",
]

PREREQUISITES: dict[str, tuple[str, ...]] = {
    "bias": (),
    "dark": ("bias",),
    "flat": ("bias", "dark"),
    "defects": ("dark", "flat"),
    "ptc": ("bias", "dark"),
    "gain": ("bias", "dark"),
}
"""Calibrations each type is built with."""

FRAMES_OF: dict[str, str] = {
    "bias": "BIAS",
    "dark": "DARK",
    "flat": "FLAT",
    "defects": "FLAT",
    "ptc": "FLAT",
    "gain": "FLAT",
}
"""The image type whose frames a calibration type is built from (defects: the run's dark and flat)."""


@dataclass(frozen=True)
class CalibSource:
    """Where a prerequisite calibration comes from."""

    calib_type: str
    kind: Literal["run", "certified"]
    collections: tuple[str, ...]


@dataclass
class Readiness:
    state: Literal["ready", "pending", "blocked", "no-frames"]
    reason: str = ""
    sources: dict[str, CalibSource] = field(default_factory=dict)


def dependants(calib_type: str, config: RunConfiguration) -> list[str]:
    """The run's calibration types that need ``calib_type``."""
    return [t for t in config.calib_types if calib_type in PREREQUISITES.get(t, ())]


def generation_record(butler: Butler, instrument: str, run_id: str, calib_type: str) -> dict[str, Any] | None:
    ref = find_record(
        butler, datasets.GENERATION_RECORD, instrument, type_collection(instrument, run_id, calib_type)
    )
    return None if ref is None else dict(butler.get(ref))


def verification_record(
    butler: Butler, instrument: str, run_id: str, calib_type: str
) -> dict[str, Any] | None:
    ref = find_record(
        butler, datasets.VERIFICATION_RECORD, instrument, type_collection(instrument, run_id, calib_type)
    )
    return None if ref is None else dict(butler.get(ref))


def usable_state(
    butler: Butler, config: RunConfiguration, run_id: str, calib_type: str
) -> tuple[Literal["usable", "failed", "pending"], str]:
    """Whether this run's ``calib_type`` can be used to build its dependants."""
    generated = generation_record(butler, config.instrument, run_id, calib_type)
    if generated is None:
        return "pending", f"{calib_type} not generated yet"
    if generated.get("outcome") != "ok":
        return "failed", f"{calib_type} was not generated ({generated.get('reason')})"
    if not config.do_verify:
        return "usable", ""
    verified = verification_record(butler, config.instrument, run_id, calib_type)
    if verified is None:
        return "pending", f"{calib_type} not verified yet"
    if verified.get("verdict") != "PASSED":
        return "failed", f"{calib_type} failed verification"
    return "usable", ""


def readiness(butler: Butler, config: RunConfiguration, run_id: str, calib_type: str) -> Readiness:
    """Can ``calib_type`` of the run be built now, and with which prerequisite calibrations?"""
    instrument = config.instrument
    frames = FRAMES_OF[calib_type]
    manifest = find_record(
        butler, datasets.ACQUISITION_MANIFEST, instrument, type_collection(instrument, run_id, frames)
    )
    if manifest is None:
        return Readiness("no-frames", f"{frames} frames are not in yet")
    result = Readiness("ready")
    run_types = {t.lower() for t in config.image_types}
    certified = tuple([config.calib_collection, *config.input_collections(calib_type)])
    for prerequisite in PREREQUISITES[calib_type]:
        if prerequisite in run_types:
            state, reason = usable_state(butler, config, run_id, prerequisite)
            if state == "failed":
                return Readiness("blocked", f"{calib_type} not built: {reason}")
            if state == "pending":
                return Readiness("pending", reason)
            result.sources[prerequisite] = CalibSource(
                prerequisite, "run", (type_collection(instrument, run_id, prerequisite),)
            )
        else:
            result.sources[prerequisite] = CalibSource(prerequisite, "certified", certified)
    return result

"""The words a run configuration uses: instruments, cameras, script modes, PTC fit types, NOISE rules
(and the image types of `shared.calibtypes`).

Each vocabulary is a `typing.Literal` (or an enum) that the model's fields are typed with, and the
tuple of its values that messages and other modules list; the tuple is derived from the type, so the
names are written once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

from shared.calibtypes import IMAGE_TYPES, ImageType

__all__ = [
    "CAMERAS",
    "IMAGE_TYPES",
    "IMAGE_TYPES_BY_MODE",
    "INSTRUMENTS",
    "PTC_FIT_TYPES",
    "VERIFY_NOISE_RULES",
    "CameraName",
    "ImageType",
    "InstrumentName",
    "PtcFitType",
    "ScriptMode",
    "VerifyNoiseRule",
]

InstrumentName = Literal["LATISS", "LSSTComCam", "LSSTCam"]
INSTRUMENTS: tuple[str, ...] = get_args(InstrumentName)
"""Instruments a run may name (the reference script exists for these three)."""

CameraName = Literal["simulated", "sal", "none"]
CAMERAS: tuple[str, ...] = get_args(CameraName)
"""Camera drivers: cpflow's simulator, the real camera through SAL, or none (the run lists frames that
are already, or are being, ingested)."""

PtcFitType = Literal["EXPAPPROXIMATION", "FULLCOVARIANCE", "FULLCOVARIANCE_NO_B"]
PTC_FIT_TYPES: tuple[str, ...] = get_args(PtcFitType)
"""PTC fit types, chosen as in cp_pipe with ``config_options_ptc: "-c ptcSolve:ptcFitType=..."``;
the first is the default."""

VerifyNoiseRule = Literal["cpflow", "cp_verify"]
VERIFY_NOISE_RULES: tuple[str, ...] = get_args(VerifyNoiseRule)
"""Which bias/dark NOISE rule decides: ``cpflow`` (the expected noise of the residual given its
reference, the default) or ``cp_verify`` (the bare read noise, as the reference)."""


class ScriptMode(StrEnum):
    """Which image types a run takes (reference ``script_mode``)."""

    BIAS = "BIAS"
    DARK = "DARK"
    BIAS_DARK = "BIAS_DARK"
    BIAS_DARK_FLAT = "BIAS_DARK_FLAT"


IMAGE_TYPES_BY_MODE: dict[ScriptMode, tuple[str, ...]] = {
    ScriptMode.BIAS: ("BIAS",),
    ScriptMode.DARK: ("DARK",),
    ScriptMode.BIAS_DARK: ("BIAS", "DARK"),
    ScriptMode.BIAS_DARK_FLAT: ("BIAS", "DARK", "FLAT"),
}
"""The image types each script mode takes, in order."""

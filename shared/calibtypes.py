"""The image types a camera takes and the calibration types built from them, with their tables.

This is the one place that says which calibrations exist, what each is built from and with,
which of them are verified, and under which dataset type each is stored. Every other module
asks these tables instead of restating them.

Image types are upper case (``BIAS``, ``DARK``, ``FLAT``: the IMGTYPE of a raw); calibration
types are lower case (``bias``, ``dark``, ``flat``, ``defects``, ``ptc``, ``gain``: the products
of a run).
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "APPLIED_IN_VERIFICATION",
    "CALIB_TYPES",
    "COMBINED_TYPES",
    "DATASET_TYPE_OF",
    "FLAT_PRODUCTS",
    "FRAMES_OF",
    "IMAGE_TYPES",
    "INPUT_COLLECTIONS_KEY",
    "PREREQUISITES",
    "VERIFIED_TYPES",
    "CalibType",
    "ImageType",
    "image_type_of",
]

ImageType = Literal["BIAS", "DARK", "FLAT"]
CalibType = Literal["bias", "dark", "flat", "defects", "ptc", "gain"]

IMAGE_TYPES: Final[tuple[ImageType, ...]] = ("BIAS", "DARK", "FLAT")
"""Image types a calibration run takes, in the order they are taken."""

CALIB_TYPES: Final[tuple[CalibType, ...]] = ("bias", "dark", "flat", "defects", "ptc", "gain")
"""Every calibration type a run can produce."""

COMBINED_TYPES: Final[tuple[CalibType, ...]] = ("bias", "dark", "flat")
"""Combined images (one per detector), each built from the frames of its own image type."""

VERIFIED_TYPES: Final[tuple[CalibType, ...]] = COMBINED_TYPES
"""Types that the DMTN-101 tests verify; defects and PTC are certified without verification (as
in the reference script) and gains are reported."""

FLAT_PRODUCTS: Final[tuple[CalibType, ...]] = ("defects", "ptc", "gain")
"""Types built once the flats are in, after the combined flat's own prerequisites."""

PREREQUISITES: Final[dict[str, tuple[str, ...]]] = {
    "bias": (),
    "dark": ("bias",),
    "flat": ("bias", "dark"),
    "defects": ("dark", "flat"),
    "ptc": ("bias", "dark"),
    "gain": ("bias", "dark"),
}
"""Calibrations each type is built with."""

FRAMES_OF: Final[dict[str, ImageType]] = {
    "bias": "BIAS",
    "dark": "DARK",
    "flat": "FLAT",
    "defects": "FLAT",
    "ptc": "FLAT",
    "gain": "FLAT",
}
"""The image type whose frames a calibration type is built from (defects: the run's dark and flat,
once the flats are in)."""

APPLIED_IN_VERIFICATION: Final[dict[str, tuple[str, ...]]] = {
    "bias": ("bias",),
    "dark": ("bias", "dark"),
    "flat": ("bias", "dark", "flat"),
}
"""Calibrations applied to a frame when a verified type is checked (the candidate last)."""

DATASET_TYPE_OF: Final[dict[str, str]] = {
    "bias": "bias",
    "dark": "dark",
    "flat": "flat",
    "defects": "defects",
    "ptc": "ptc",
}
"""The butler dataset type of each certifiable type; gains have none (they are reported)."""

INPUT_COLLECTIONS_KEY: Final[dict[str, str]] = {
    "bias": "bias",
    "dark": "dark",
    "flat": "flat",
    "defects": "defects",
    "ptc": "ptc",
    "gain": "ptc",
}
"""Which ``input_collections_<key>`` a type's certified prerequisites come from (gain: ptc's, as
in the reference script)."""


def image_type_of(calib_type: str) -> ImageType | None:
    """The image type of a combined calibration (``bias`` → ``BIAS``), `None` for the others."""
    return FRAMES_OF[calib_type] if calib_type in COMBINED_TYPES else None

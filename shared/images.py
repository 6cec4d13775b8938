"""In-memory image types exchanged between the butler formatters and the processing code.

`RawDetectorImage` is one detector of one exposure as read out: a FITS primary header and, per
amplifier, the full raw array (prescan, data, serial and parallel overscan) in ADU.

`CalibImage` is an assembled, trimmed detector image with a mask and a variance plane, the
form of combined calibrations (bias, dark, flat) and of ISR output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntFlag

import numpy as np
from astropy.io import fits

__all__ = ["CalibImage", "MaskPlane", "RawDetectorImage"]


class MaskPlane(IntFlag):
    """Mask bits of `CalibImage.mask` (names as in the LSST pipelines)."""

    BAD = 1
    SAT = 2
    CR = 4
    NO_DATA = 8
    SUSPECT = 16
    DETECTED = 32
    INTRP = 64

    @classmethod
    def header_cards(cls) -> list[tuple[str, int, str]]:
        """FITS cards that document the mask bits (``MP_<NAME> = bit``)."""
        return [(f"MP_{m.name}", int(m).bit_length() - 1, f"mask bit of {m.name}") for m in cls]


@dataclass
class RawDetectorImage:
    """One detector of one raw exposure.

    Read and written in the cameras' own format by `shared.rawformat`.

    Attributes
    ----------
    header : `astropy.io.fits.Header`
        Primary header as the camera writes it: IMGTYPE, EXPTIME, DARKTIME, DATE-BEG, OBSID,
        DAYOBS, SEQNUM, RAFTBAY, CCDSLOT, ... (no exposure id, no detector number).
    amplifiers : `dict` [`str`, `numpy.ndarray`]
        Raw segments (rows x columns as on disk, ADU) keyed by cameraGeom amplifier name
        (``C10`` … ``C17``, ``C07`` … ``C00``, the HDU order), in readout order.
    amp_headers : `dict` [`str`, `astropy.io.fits.Header`]
        Per-amplifier segment headers (EXTNAME ``SegmentNN``, CHANNEL, DATASEC, DETSEC, ...).
    exposure_id, detector_id : `int`, optional
        Translated from the header by the reader (`shared.translation`).
    conditions : `dict` [`str`, `astropy.io.fits.Header`]
        Headers of the condition tables (``REB_COND``, ``CONFIG_COND``), by EXTNAME.
    """

    header: fits.Header
    amplifiers: dict[str, np.ndarray]
    amp_headers: dict[str, fits.Header] = field(default_factory=dict)
    exposure_id: int | None = None
    detector_id: int | None = None
    conditions: dict[str, fits.Header] = field(default_factory=dict)

    @property
    def image_type(self) -> str:
        return str(self.header["IMGTYPE"]).upper()

    @property
    def exposure_time(self) -> float:
        return float(self.header["EXPTIME"])

    @property
    def dark_time(self) -> float:
        """DARKTIME, or EXPTIME when the header has none (as obs_lsst)."""
        value = self.header.get("DARKTIME")
        return float(value) if isinstance(value, int | float) else self.exposure_time


@dataclass
class CalibImage:
    """An assembled detector image with mask and variance, plus a FITS header.

    ``image`` and ``variance`` are float32 arrays of the trimmed detector shape, in electrons
    (per second for a combined dark, normalised for a flat); ``mask`` holds `MaskPlane` bits.
    """

    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray
    header: fits.Header = field(default_factory=fits.Header)

    def __post_init__(self) -> None:
        if not (self.image.shape == self.mask.shape == self.variance.shape):
            raise ValueError(
                f"image {self.image.shape}, mask {self.mask.shape} and variance "
                f"{self.variance.shape} must have the same shape"
            )

    @classmethod
    def empty(cls, shape: tuple[int, int], header: Mapping[str, object] | None = None) -> CalibImage:
        hdr = fits.Header()
        for key, value in (header or {}).items():
            hdr[key] = value
        return cls(
            image=np.zeros(shape, dtype=np.float32),
            mask=np.zeros(shape, dtype=np.int32),
            variance=np.zeros(shape, dtype=np.float32),
            header=hdr,
        )

    def to_hdulist(self) -> fits.HDUList:
        primary = fits.PrimaryHDU(header=self.header)
        image = fits.ImageHDU(data=self.image.astype(np.float32, copy=False), name="IMAGE")
        mask_hdu = fits.ImageHDU(data=self.mask.astype(np.int32, copy=False), name="MASK")
        for key, bit, comment in MaskPlane.header_cards():
            mask_hdu.header[key] = (bit, comment)
        variance = fits.ImageHDU(data=self.variance.astype(np.float32, copy=False), name="VARIANCE")
        return fits.HDUList([primary, image, mask_hdu, variance])

    @classmethod
    def from_hdulist(cls, hdul: fits.HDUList) -> CalibImage:
        return cls(
            image=np.asarray(hdul["IMAGE"].data, dtype=np.float32),
            mask=np.asarray(hdul["MASK"].data, dtype=np.int32),
            variance=np.asarray(hdul["VARIANCE"].data, dtype=np.float32),
            header=hdul[0].header.copy(),
        )

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

import astropy.units
import numpy as np
from astropy.io import fits

__all__ = ["CalibImage", "MaskPlane", "RawDetectorImage"]


class MaskPlane(IntFlag):
    """Mask bits of `CalibImage.mask`: afw's default planes, with afw's names and bit numbers.

    afw's ``MaskDict`` starts every mask with these planes in this order (bit 0 = BAD, ...), so a
    mask cpflow writes needs no remapping in Rubin's software; readers remap by name anyway.
    """

    BAD = 1 << 0
    SAT = 1 << 1
    INTRP = 1 << 2
    CR = 1 << 3
    EDGE = 1 << 4
    DETECTED = 1 << 5
    DETECTED_NEGATIVE = 1 << 6
    SUSPECT = 1 << 7
    NO_DATA = 1 << 8

    @classmethod
    def header_cards(cls) -> list[tuple[str, int, str]]:
        """FITS cards that name the mask bits as afw writes them (``MP_<NAME> = bit``)."""
        return [(f"MP_{m.name}", int(m).bit_length() - 1, f"mask bit of {m.name}") for m in cls]

    @classmethod
    def conform(cls, mask: np.ndarray, header: fits.Header) -> np.ndarray:
        """``mask`` with the bits its ``MP_`` cards name moved to this class's bits (afw's rule).

        Planes this class does not know are dropped; a header without ``MP_`` cards is taken as
        written with this class's bits.
        """
        declared = {
            str(key)[3:]: int(value)
            for key, value in header.items()
            if str(key).startswith("MP_") and isinstance(value, int)
        }
        ours = {m.name: int(m).bit_length() - 1 for m in cls}
        if all(ours.get(name) == bit for name, bit in declared.items()):
            return mask
        out = np.zeros_like(mask)
        for name, bit in declared.items():
            if name in cls.__members__:
                out[(mask & (1 << bit)) != 0] |= int(cls[name])
        return out


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
        """The image in afw's ``MaskedImage``/``Exposure`` FITS layout (rubin_formats.md §6).

        An empty primary HDU holds the metadata (afw takes it from there because each pixel HDU
        says ``INHERIT = T``); IMAGE, MASK and VARIANCE follow, each with ``EXTTYPE = EXTNAME``,
        the pixel origin as ``LTV1``/``LTV2`` and as the linear "A" WCS, and ``MP_`` cards on the
        mask. ``BUNIT`` moves from the metadata to IMAGE (unit) and VARIANCE (unit squared).
        """
        metadata = self.header.copy()
        unit = str(metadata.pop("BUNIT", "") or "")
        for key in ("EXTNAME", "EXTTYPE", "INHERIT"):
            metadata.remove(key, ignore_missing=True, remove_all=True)
        primary = fits.PrimaryHDU(header=metadata)
        planes = (
            ("IMAGE", self.image.astype(np.float32, copy=False), unit),
            ("MASK", self.mask.astype(np.int32, copy=False), ""),
            ("VARIANCE", self.variance.astype(np.float32, copy=False), _squared(unit)),
        )
        hdus: list[fits.hdu.base.ExtensionHDU] = []
        for name, data, plane_unit in planes:
            hdu = fits.ImageHDU(data=data, name=name)
            _pixel_hdu_cards(hdu.header, name, plane_unit)
            if name == "MASK":
                for key, bit, comment in MaskPlane.header_cards():
                    hdu.header[key] = (bit, comment)
            hdus.append(hdu)
        return fits.HDUList([primary, *hdus])

    @classmethod
    def from_hdulist(cls, hdul: fits.HDUList) -> CalibImage:
        """Read the layout `to_hdulist` writes (and cpflow's earlier one: no INHERIT, own mask bits)."""
        header = hdul[0].header.copy()
        unit = hdul["IMAGE"].header.get("BUNIT")
        if unit and "BUNIT" not in header:
            header["BUNIT"] = unit
        mask_hdu = hdul["MASK"]
        return cls(
            image=np.asarray(hdul["IMAGE"].data, dtype=np.float32),
            mask=MaskPlane.conform(np.asarray(mask_hdu.data, dtype=np.int32), mask_hdu.header),
            variance=np.asarray(hdul["VARIANCE"].data, dtype=np.float32),
            header=header,
        )


def _squared(unit: str) -> str:
    """The variance unit of ``unit``: ``electron**2`` as afw writes it; a compound unit as astropy
    writes its square (``electron/s`` → ``electron2 / s2``; ``electron/s**2`` would mean e⁻/s²)."""
    if not unit:
        return ""
    if unit.isalnum():
        return f"{unit}**2"
    try:
        return str((astropy.units.Unit(unit) ** 2).to_string())
    except ValueError:
        return f"({unit})**2"


def _pixel_hdu_cards(header: fits.Header, name: str, unit: str, x0: int = 0, y0: int = 0) -> None:
    """The cards afw writes on a pixel HDU: type, inheritance, origin (ds9's LTV and the "A" WCS), unit."""
    header["EXTTYPE"] = (name, "afw image plane")
    header["INHERIT"] = (True, "metadata are in the primary HDU")
    header["LTV1"] = (-x0, "pixel origin: -x0")
    header["LTV2"] = (-y0, "pixel origin: -y0")
    for axis, origin in ((1, x0), (2, y0)):
        header[f"CTYPE{axis}A"] = ("LINEAR", "xy0 offset WCS")
        header[f"CRPIX{axis}A"] = 1.0
        header[f"CRVAL{axis}A"] = float(origin)
        header[f"CUNIT{axis}A"] = "PIXEL"
    if unit:
        header["BUNIT"] = unit

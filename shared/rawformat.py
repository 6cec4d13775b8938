"""The cameras' raw file format: the one format cpflow reads and writes raws in (rubin_formats.md §1-2).

A raw is one file per detector:

* HDU 0: the primary header (no data); no exposure id and no detector number, they are
  translated from DAYOBS/SEQNUM/CONTRLLR and RAFTBAY/CCDSLOT (`shared.translation`);
* the amplifier segments as int32 images, RICE-compressed (``CompImageHDU``, one tile per row)
  or not, in cameraGeom order C10 … C17, C07 … C00 (`shared.instruments.SEGMENT_ORDER`), each
  with ``EXTNAME SegmentNN`` (amplifier ``Cxy`` in ``Segmentxy``);
* binary tables of conditions (``REB_COND``, ``CONFIG_COND``; unnamed in 2018 files), which are
  not amplifiers: their headers are kept in `RawDetectorImage.conditions`.

Reading takes segments **by position** among the image HDUs and checks each EXTNAME. The data box
of each amplifier is the camera geometry's; the serial and parallel overscan boxes follow the
on-disk segment shape (obs_lsst's ``fixAmpGeometry``), so no BIASSEC is needed. One cpflow
extension: a segment whose DATASEC starts at the nominal prescan and is *smaller* than the
nominal data box is a reduced frame of the simulated camera, and its data box is that DATASEC.
The header DETSEC is written (in the IRAF frame the cameras use, which is DM's frame flipped top
to bottom, DM-36115) but never read.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from shared.images import RawDetectorImage
from shared.instruments import AmplifierGeometry, Detector, Instrument, get_instrument
from shared.translation import HeaderError, RawHeaderInfo, translate

__all__ = [
    "RawFormatError",
    "check_raw",
    "image_geometry",
    "parse_section",
    "raw_geometry",
    "raw_hdulist",
    "read_raw",
    "segment_extname",
    "segment_header",
    "write_raw",
]

_LOG = logging.getLogger(__name__)
_SECTION = re.compile(r"^\[\s*(-?\d+)\s*:\s*(-?\d+)\s*,\s*(-?\d+)\s*:\s*(-?\d+)\s*\]$")
_IMAGE_HDUS = (fits.ImageHDU, fits.CompImageHDU)
_STRUCTURAL = re.compile(
    r"^(SIMPLE|EXTEND|XTENSION|BITPIX|NAXIS\d*|PCOUNT|GCOUNT|TFIELDS|T(TYPE|FORM|UNIT|DIM|NULL|SCAL|ZERO|DISP)\d+"
    r"|Z[A-Z0-9_]*|BSCALE|BZERO|CHECKSUM|DATASUM|EXTNAME|INHERIT)$"
)


class RawFormatError(ValueError):
    """A file that is not a raw in the camera's format; the message names the file and the fault."""


def segment_extname(amp_name: str) -> str:
    """EXTNAME of amplifier ``Cxy``: ``Segmentxy``."""
    return "Segment" + amp_name[1:]


def parse_section(text: str) -> tuple[int, int, int, int]:
    """``(x1, x2, y1, y2)`` of a FITS ``[x1:x2,y1:y2]`` section (1-based, inclusive)."""
    match = _SECTION.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a FITS section [x1:x2,y1:y2]")
    x1, x2, y1, y2 = (int(v) for v in match.groups())
    return x1, x2, y1, y2


def _image_hdus(hdul: fits.HDUList) -> list[fits.ImageHDU | fits.CompImageHDU]:
    return [hdu for hdu in hdul[1:] if isinstance(hdu, _IMAGE_HDUS)]


def _segments(hdul: fits.HDUList, detector: Detector, source: str) -> list[tuple[str, fits.ImageHDU]]:
    """``(amplifier name, HDU)`` by position, checked: count, EXTNAME, int32, 2-D."""
    images = _image_hdus(hdul)
    names = [a.name for a in detector.amplifiers]
    if len(images) != len(names):
        raise RawFormatError(
            f"{source}: {len(images)} image HDUs after the primary; a raw of {detector.name} has "
            f"{len(names)} amplifier segments ({segment_extname(names[0])} … {segment_extname(names[-1])})"
        )
    out = []
    for position, (name, hdu) in enumerate(zip(names, images, strict=True), start=1):
        extname = str(hdu.header.get("EXTNAME", "")).strip()
        expected = segment_extname(name)
        if extname and extname != expected:
            raise RawFormatError(
                f"{source}: image HDU {position} has EXTNAME {extname!r}; the camera writes {expected!r} "
                f"there (segments in the order {', '.join(segment_extname(n) for n in names)})"
            )
        bitpix = hdu.header.get("BITPIX")
        naxis = hdu.header.get("NAXIS")
        if bitpix != 32 or naxis != 2:
            raise RawFormatError(
                f"{source}: segment {expected} is BITPIX={bitpix} with NAXIS={naxis}; raw segments are "
                "2-D int32 images (BITPIX=32)"
            )
        out.append((name, hdu))
    return out


def _segment_shape(hdu: fits.ImageHDU) -> tuple[int, int]:
    return int(hdu.header["NAXIS2"]), int(hdu.header["NAXIS1"])


def _adapted_amplifier(
    amp: AmplifierGeometry, shape: tuple[int, int], datasec: str | None, source: str
) -> AmplifierGeometry:
    extname = segment_extname(amp.name)
    if datasec:
        try:
            x1, x2, y1, y2 = parse_section(datasec)
        except ValueError:
            _LOG.warning(
                "%s: %s has an unreadable DATASEC %r; using the camera geometry", source, extname, datasec
            )
        else:
            cols, rows = x2 - x1 + 1, y2 - y1 + 1
            nominal = (amp.data_rows, amp.data_cols)
            starts_nominal = (x1, y1) == (amp.prescan_cols + 1, 1)
            if starts_nominal and (rows, cols) != nominal and rows <= nominal[0] and cols <= nominal[1]:
                amp = amp.with_data_shape(rows, cols)  # a reduced (simulated) frame
            elif (x1, x2, y1, y2) != (
                amp.prescan_cols + 1,
                amp.prescan_cols + amp.data_cols,
                1,
                amp.data_rows,
            ):
                _LOG.warning(
                    "%s: %s DATASEC %s differs from the camera geometry; using the camera geometry",
                    source,
                    extname,
                    datasec,
                )
    try:
        return amp.with_raw_shape(*shape)
    except ValueError as exc:
        raise RawFormatError(f"{source}: segment {extname}: {exc}") from None


def raw_geometry(
    detector: Detector,
    shapes: Mapping[str, tuple[int, int]],
    datasecs: Mapping[str, str | None] | None = None,
    *,
    source: str = "",
) -> Detector:
    """The detector geometry of one raw: camera data boxes, overscan boxes from the segment shapes.

    Parameters
    ----------
    detector : `shared.instruments.Detector`
        The camera geometry.
    shapes : `~collections.abc.Mapping` [`str`, `tuple` [`int`, `int`]]
        On-disk ``(rows, cols)`` of each amplifier's segment.
    datasecs : `~collections.abc.Mapping` [`str`, `str`], optional
        Each segment's DATASEC (only a reduced simulated frame changes the data box).
    source : `str`, optional
        The file, for messages.

    Raises
    ------
    RawFormatError
        If a segment cannot hold its data box, or the data boxes differ between amplifiers.
    """
    datasecs = datasecs or {}
    amps = tuple(
        _adapted_amplifier(amp, shapes[amp.name], datasecs.get(amp.name), source)
        for amp in detector.amplifiers
    )
    data_shapes = {(a.data_rows, a.data_cols) for a in amps}
    if len(data_shapes) > 1:
        raise RawFormatError(f"{source}: the segments' data boxes differ in size: {sorted(data_shapes)}")
    rows, cols = data_shapes.pop()
    base = detector
    if (rows, cols) != (detector.amplifiers[0].data_rows, detector.amplifiers[0].data_cols):
        base = detector.with_data_shape(rows, cols)
    adapted = tuple(
        b.with_raw_shape(a.raw_rows, a.raw_cols) for a, b in zip(amps, base.amplifiers, strict=True)
    )
    return base.with_amplifiers(adapted)


def image_geometry(
    raw: RawDetectorImage, instrument: Instrument | None = None, *, source: str = ""
) -> Detector:
    """The geometry of a raw in memory: its detector's, adapted to its segment shapes (`raw_geometry`).

    Raises
    ------
    RawFormatError
        If the header does not translate or the segments do not fit the detector.
    """
    if raw.detector_id is None or instrument is None:
        try:
            info = translate(raw.header, instrument, source=source)
        except HeaderError as exc:
            raise RawFormatError(str(exc)) from None
        instrument = get_instrument(info.instrument)
        detector_id = info.detector if raw.detector_id is None else raw.detector_id
    else:
        detector_id = raw.detector_id
    detector = instrument.detector(detector_id)
    missing = [a.name for a in detector.amplifiers if a.name not in raw.amplifiers]
    if missing:
        raise RawFormatError(f"{source or detector.name}: the raw lacks amplifiers {missing}")
    return raw_geometry(
        detector,
        {a.name: raw.amplifiers[a.name].shape for a in detector.amplifiers},
        {name: h.get("DATASEC") for name, h in raw.amp_headers.items()},
        source=source or detector.name,
    )


def _open(path: str | Path) -> fits.HDUList:
    try:
        return fits.open(str(path), memmap=False)
    except (OSError, ValueError) as exc:
        raise RawFormatError(f"{path}: not a readable FITS file ({exc})") from None


def _header_info(hdul: fits.HDUList, instrument: Instrument | None, source: str) -> RawHeaderInfo:
    try:
        return translate(hdul[0].header, instrument, source=source)
    except HeaderError as exc:
        raise RawFormatError(str(exc)) from None


def check_raw(path: str | Path, instrument: Instrument | None = None) -> RawHeaderInfo:
    """Check that ``path`` is a raw of ``instrument`` from its headers alone (nothing decompressed).

    Returns the translated primary header.

    Raises
    ------
    RawFormatError
        Naming the file and the fault (header translation, segment count, order, type or size).
    """
    source = str(path)
    with _open(path) as hdul:
        info = _header_info(hdul, instrument, source)
        detector = get_instrument(info.instrument).detector(info.detector)
        segments = _segments(hdul, detector, source)
        raw_geometry(
            detector,
            {name: _segment_shape(hdu) for name, hdu in segments},
            {name: hdu.header.get("DATASEC") for name, hdu in segments},
            source=source,
        )
        return info


def read_raw(
    path: str | Path, instrument: Instrument | None = None, *, detector: Detector | None = None
) -> RawDetectorImage:
    """Read a raw in the camera's format.

    Parameters
    ----------
    path : `str` or `pathlib.Path`
        The file (compressed or uncompressed segments).
    instrument : `shared.instruments.Instrument`, optional
        The instrument it must belong to; by default the one its INSTRUME names.
    detector : `shared.instruments.Detector`, optional
        The camera geometry to read the segments against; by default that of the detector the
        header names.

    Returns
    -------
    raw : `shared.images.RawDetectorImage`
        Segments by amplifier name, with the translated exposure and detector ids.

    Raises
    ------
    RawFormatError
        Naming the file and the fault.
    """
    source = str(path)
    with _open(path) as hdul:
        info = _header_info(hdul, instrument, source)
        if detector is None:
            detector = get_instrument(info.instrument).detector(info.detector)
        amplifiers: dict[str, np.ndarray] = {}
        amp_headers: dict[str, fits.Header] = {}
        for name, hdu in _segments(hdul, detector, source):
            try:
                data = np.asarray(hdu.data)
            except (OSError, ValueError, TypeError) as exc:
                raise RawFormatError(
                    f"{source}: segment {segment_extname(name)} cannot be read ({exc})"
                ) from None
            if data.dtype.kind not in "iu":
                raise RawFormatError(
                    f"{source}: segment {segment_extname(name)} holds {data.dtype}, not int32"
                )
            amplifiers[name] = data
            amp_headers[name] = hdu.header.copy()
        conditions = {}
        for index, hdu in enumerate(hdul[1:], start=1):
            if isinstance(hdu, fits.BinTableHDU) and not isinstance(hdu, fits.CompImageHDU):
                conditions[str(hdu.header.get("EXTNAME", "")).strip() or f"HDU{index}"] = hdu.header.copy()
        raw = RawDetectorImage(
            header=hdul[0].header.copy(),
            amplifiers=amplifiers,
            amp_headers=amp_headers,
            exposure_id=info.exposure_id,
            detector_id=info.detector,
            conditions=conditions,
        )
    raw_geometry(
        detector,
        {name: a.shape for name, a in amplifiers.items()},
        {name: h.get("DATASEC") for name, h in amp_headers.items()},
        source=source,
    )
    return raw


def _fits_section(x1: int, x2: int, y1: int, y2: int) -> str:
    return f"[{x1}:{x2},{y1}:{y2}]"


def segment_header(detector: Detector, amp: AmplifierGeometry) -> fits.Header:
    """The segment keywords a camera writes for ``amp``: EXTNAME, CHANNEL, CCDSUM, DATASEC, DETSEC, ...

    DETSEC, DTV and DTM are in the cameras' IRAF frame: DM's assembled frame flipped top to bottom.
    """
    rows, cols = detector.shape
    w, h = amp.data_cols, amp.data_rows
    # DM position of segment data pixel (i, j), then the IRAF frame (1-based, y flipped).
    x_first = amp.x0 + (w - 1 if amp.flip_x else 0) + 1
    x_last = amp.x0 + (0 if amp.flip_x else w - 1) + 1
    y_first = rows - (amp.y0 + (h - 1 if amp.flip_y else 0))
    y_last = rows - (amp.y0 + (0 if amp.flip_y else h - 1))
    dtm1 = -1 if amp.flip_x else 1
    dtm2 = 1 if amp.flip_y else -1
    hdr = fits.Header()
    hdr["EXTNAME"] = (segment_extname(amp.name), "amplifier segment")
    hdr["CHANNEL"] = (amp.index + 1, "readout channel")
    hdr["CCDSUM"] = ("1 1", "binning")
    hdr["DATASEC"] = (_fits_section(amp.prescan_cols + 1, amp.prescan_cols + w, 1, h), "data section")
    hdr["DETSEC"] = (_fits_section(x_first, x_last, y_first, y_last), "data section in the detector (IRAF)")
    hdr["DETSIZE"] = (_fits_section(1, cols, 1, rows), "detector size")
    hdr["DTV1"] = (x_first - dtm1 * (amp.prescan_cols + 1), "detector x = DTV1 + DTM1_1 * segment x")
    hdr["DTV2"] = (y_first - dtm2, "detector y = DTV2 + DTM2_2 * segment y")
    hdr["DTM1_1"] = (float(dtm1), "detector transform matrix")
    hdr["DTM2_2"] = (float(dtm2), "detector transform matrix")
    hdr["DTM1_2"] = (0.0, "detector transform matrix")
    hdr["DTM2_1"] = (0.0, "detector transform matrix")
    return hdr


def _merge(header: fits.Header, extra: fits.Header) -> None:
    """Append the non-structural cards of ``extra`` that ``header`` lacks."""
    for card in extra.cards:
        if card.keyword and card.keyword not in header and not _STRUCTURAL.match(card.keyword):
            header.append(card)


def raw_hdulist(image: RawDetectorImage, detector: Detector, *, compress: bool = True) -> fits.HDUList:
    """The file of ``image`` in the camera's format: primary, segments in HDU order, condition tables.

    Segment headers are `segment_header` updated with ``image.amp_headers``; the condition tables
    are ``image.conditions`` (empty ``REB_COND`` and ``CONFIG_COND`` tables when there are none).
    """
    hdus: list[fits.hdu.base.ExtensionHDU | fits.PrimaryHDU] = [fits.PrimaryHDU(header=image.header)]
    for amp in detector.amplifiers:
        data = np.ascontiguousarray(image.amplifiers[amp.name], dtype=np.int32)
        header = segment_header(detector, amp)
        _merge(header, image.amp_headers.get(amp.name, fits.Header()))
        if compress:
            hdus.append(
                fits.CompImageHDU(
                    data=data, header=header, compression_type="RICE_1", tile_shape=(1, data.shape[1])
                )
            )
        else:
            hdus.append(fits.ImageHDU(data=data, header=header))
    conditions = image.conditions or {"REB_COND": fits.Header(), "CONFIG_COND": fits.Header()}
    for name, cond_header in conditions.items():
        table = fits.BinTableHDU.from_columns([fits.Column(name="VALUE", format="D", array=np.zeros(0))])
        table.header["EXTNAME"] = name
        _merge(table.header, cond_header)
        hdus.append(table)
    return fits.HDUList(hdus)


def write_raw(
    image: RawDetectorImage, detector: Detector, path: str | Path, *, compress: bool = True
) -> None:
    """Write ``image`` to ``path`` in the camera's format (see `raw_hdulist`)."""
    with warnings.catch_warnings():
        # Real headers carry HIERARCH cards (SIMULATE <CSC>, STUTTER ROWS): intended, do not warn.
        warnings.filterwarnings("ignore", message="Keyword name .* HIERARCH card", category=VerifyWarning)
        raw_hdulist(image, detector, compress=compress).writeto(str(path), overwrite=True)

"""cpflow's own instrument definitions: detectors, amplifier geometry, nominal gains and read noise.

No obs_lsst or afw is used, but the geometry is DM's camera geometry (obs_lsst's
``policy/cameraHeader.yaml``, rubin_formats.md §2), for the two sensor vendors:

============================  ==================  ==================
box (raw segment 576 x 2048)  ITL (``AMP_ITL``)   e2v (``AMP_E2V``)
============================  ==================  ==================
serial prescan (columns)      3                   10
data (columns x rows)         509 x 2000          512 x 2002
serial overscan (columns)     64                  54
parallel overscan (rows)      48                  46
detector (columns x rows)     4072 x 4000         4096 x 4004
============================  ==================  ==================

A raw file holds the 16 segments in the order C10 … C17, C07 … C00 (`SEGMENT_ORDER`). In DM's
assembled (trimmed) detector, amplifier ``C1y`` is in the top row and ``C0y`` in the bottom row,
at column ``y`` (C00 and C10 at the left): data box origin (``y`` x data width, row x data
height). Each segment is flipped when placed (cameraGeom ``rawFlipX``/``rawFlipY``): C1x in x and
y for both vendors; C0x in x only on ITL, not at all on e2v. The header DETSEC is *not* this frame
(it is flipped top to bottom, DM-36115) and is never used for assembly.

Coordinates are numpy ``[row, column]`` (``y``, ``x``), zero-based. Raw amplifier arrays are the
segments as stored on disk, i.e. in *readout order*: the first column read is column 0, so the
prescan is at the left, then the data section, then the serial overscan; the parallel overscan
rows follow the data rows. Assembly flips each amplifier's data section with ``flip_x``/``flip_y``
(the raw flips) and places it at ``(y0, x0)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache, cached_property

from shared.filters import comcam_filters, latiss_filters, lsstcam_filters, missing_filter_reason

__all__ = [
    "AMPLIFIER_TYPES",
    "E2V",
    "ITL",
    "SEGMENT_ORDER",
    "AmplifierGeometry",
    "AmplifierType",
    "Detector",
    "Instrument",
    "amplifier_layout",
    "get_instrument",
    "instrument_names",
    "vendor_amplifiers",
]


@dataclass(frozen=True)
class AmplifierGeometry:
    """One amplifier of a detector.

    Attributes
    ----------
    name : `str`
        Amplifier name, ``C00``..``C17``.
    index : `int`
        Position in the detector's amplifier list (0..15); also the FITS HDU index (1-based + 1).
    gain : `float`
        Nominal gain in e⁻/ADU.
    read_noise : `float`
        Nominal read noise in e⁻.
    saturation : `float`
        Raw saturation level in ADU (bias included).
    data_rows, data_cols : `int`
        Size of the data section.
    prescan_cols, serial_overscan_cols, parallel_overscan_rows : `int`
        Sizes of the overscan regions.
    x0, y0 : `int`
        Lower-left corner of the amplifier's data section in the assembled detector.
    flip_x, flip_y : `bool`
        Whether the readout order is reversed with respect to detector x / y.
    """

    name: str
    index: int
    gain: float
    read_noise: float
    saturation: float
    data_rows: int
    data_cols: int
    prescan_cols: int
    serial_overscan_cols: int
    parallel_overscan_rows: int
    x0: int
    y0: int
    flip_x: bool
    flip_y: bool

    @property
    def raw_rows(self) -> int:
        return self.data_rows + self.parallel_overscan_rows

    @property
    def raw_cols(self) -> int:
        return self.prescan_cols + self.data_cols + self.serial_overscan_cols

    @property
    def data_slice(self) -> tuple[slice, slice]:
        """Data section in the raw amplifier array."""
        return (slice(0, self.data_rows), slice(self.prescan_cols, self.prescan_cols + self.data_cols))

    @property
    def serial_overscan_slice(self) -> tuple[slice, slice]:
        """Serial overscan in the raw amplifier array (data rows only)."""
        c0 = self.prescan_cols + self.data_cols
        return (slice(0, self.data_rows), slice(c0, c0 + self.serial_overscan_cols))

    @property
    def parallel_overscan_slice(self) -> tuple[slice, slice]:
        """Parallel overscan in the raw amplifier array (data columns only)."""
        return (
            slice(self.data_rows, self.data_rows + self.parallel_overscan_rows),
            slice(self.prescan_cols, self.prescan_cols + self.data_cols),
        )

    @property
    def detector_slice(self) -> tuple[slice, slice]:
        """Where the (flipped) data section lands in the assembled detector."""
        return (slice(self.y0, self.y0 + self.data_rows), slice(self.x0, self.x0 + self.data_cols))

    def with_raw_shape(self, raw_rows: int, raw_cols: int) -> AmplifierGeometry:
        """Return this amplifier with the overscan boxes adapted to an on-disk segment shape.

        As obs_lsst's ``fixAmpGeometry``: the prescan and data boxes are kept; the serial overscan
        runs from the end of the data to the last column, the parallel overscan from the end of
        the data to the last row.

        Raises
        ------
        ValueError
            If the segment cannot hold the prescan and data boxes.
        """
        serial = raw_cols - self.prescan_cols - self.data_cols
        parallel = raw_rows - self.data_rows
        if serial < 0 or parallel < 0:
            raise ValueError(
                f"amplifier {self.name}: a {raw_cols} x {raw_rows} segment cannot hold the "
                f"{self.prescan_cols}-column prescan and the {self.data_cols} x {self.data_rows} data box"
            )
        if (serial, parallel) == (self.serial_overscan_cols, self.parallel_overscan_rows):
            return self
        return replace(self, serial_overscan_cols=serial, parallel_overscan_rows=parallel)

    def with_data_shape(self, rows: int, cols: int) -> AmplifierGeometry:
        """Return this amplifier with a different data-section size (simulated small frames)."""
        col_index = self.x0 // self.data_cols
        row_index = self.y0 // self.data_rows
        return AmplifierGeometry(
            name=self.name,
            index=self.index,
            gain=self.gain,
            read_noise=self.read_noise,
            saturation=self.saturation,
            data_rows=rows,
            data_cols=cols,
            prescan_cols=self.prescan_cols,
            serial_overscan_cols=self.serial_overscan_cols,
            parallel_overscan_rows=self.parallel_overscan_rows,
            x0=col_index * cols,
            y0=row_index * rows,
            flip_x=self.flip_x,
            flip_y=self.flip_y,
        )


@dataclass(frozen=True)
class Detector:
    """A detector (CCD) of an instrument."""

    id: int
    name: str
    raft: str
    name_in_raft: str
    serial: str
    physical_type: str
    amplifiers: tuple[AmplifierGeometry, ...]
    purpose: str = "SCIENCE"

    @property
    def full_name(self) -> str:
        return self.name

    @property
    def shape(self) -> tuple[int, int]:
        """Assembled (trimmed) detector shape ``(rows, cols)``."""
        rows = max(a.y0 + a.data_rows for a in self.amplifiers)
        cols = max(a.x0 + a.data_cols for a in self.amplifiers)
        return rows, cols

    def amplifier(self, name: str) -> AmplifierGeometry:
        for amp in self.amplifiers:
            if amp.name == name:
                return amp
        raise KeyError(f"detector {self.name} has no amplifier {name!r}")

    def with_amplifiers(self, amplifiers: tuple[AmplifierGeometry, ...]) -> Detector:
        """Return this detector with other amplifier geometries (same names, same order)."""
        return replace(self, amplifiers=amplifiers)

    def with_data_shape(self, rows: int, cols: int) -> Detector:
        """Return this detector with every amplifier's data section resized."""
        return Detector(
            id=self.id,
            name=self.name,
            raft=self.raft,
            name_in_raft=self.name_in_raft,
            serial=self.serial,
            physical_type=self.physical_type,
            amplifiers=tuple(a.with_data_shape(rows, cols) for a in self.amplifiers),
            purpose=self.purpose,
        )


@dataclass(frozen=True)
class Instrument:
    """An instrument known to cpflow."""

    name: str
    class_name: str
    detectors: tuple[Detector, ...]
    filters: tuple[tuple[str, str], ...]
    """``(physical_filter, band)`` pairs registered in the butler: obs_lsst's (`shared.filters`)."""
    default_filter: str
    obs_id_prefix: str
    """Prefix of OBSID values, e.g. ``AT_O`` for LATISS."""
    has_grating: bool = False
    exposure_max: int = 7_050_123_199_999
    """Largest exposure id (and visit id) of the instrument record, as obs_lsst registers it."""
    detector_max: int = 1000
    """``detector_max`` of the instrument record, as obs_lsst registers it (LATISS: 1)."""
    visit_system: int = 2
    """obs_base's default visit system (``BY_SEQ_START_END``)."""
    whole_detector_names: bool = False
    """The detector records have no raft and the whole name as ``name_in_raft`` (obs_lsst's LATISS)."""
    header_names: tuple[str, ...] = ()
    """``INSTRUME`` values of this instrument's raws; the first is what its camera writes now."""
    telescope: str = ""
    """``TELESCOP`` its camera writes."""
    camera_csc: str = ""
    """Name of the camera CSC, as in the ``SIMULATE <CSC>`` header cards."""
    fixed_detector: bool = False
    """The detector is not taken from RAFTBAY/CCDSLOT: the one detector is 0 (LATISS)."""
    header_raftbay: str = ""
    """RAFTBAY its camera writes when it is not the detector record's raft (LATISS: ``R00``)."""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def detector_ids(self) -> tuple[int, ...]:
        return tuple(d.id for d in self.detectors)

    @property
    def science_detector_ids(self) -> tuple[int, ...]:
        """Ids of the science sensors (not the guider and wavefront sensors of LSSTCam's corners)."""
        return tuple(d.id for d in self.detectors if d.purpose == "SCIENCE")

    @cached_property
    def filter_names(self) -> frozenset[str]:
        """The ``physical_filter`` names of `filters`."""
        return frozenset(name for name, _ in self.filters)

    def filter_problem(self, physical_filter: str) -> str | None:
        """``None`` if ``physical_filter`` is one of this instrument's, else why not (for a message).

        The reason names the wrong part of a LATISS ``filter~grating`` (or the gratings the filter
        is used with); for the other instruments it lists the first 20 names (the on-sky ones).
        """
        if physical_filter in self.filter_names:
            return None
        return missing_filter_reason(self.name, self.filters, physical_filter, combined=self.has_grating)

    def detector(self, detector_id: int) -> Detector:
        for det in self.detectors:
            if det.id == detector_id:
                return det
        raise KeyError(
            f"{self.name} has no detector {detector_id}; valid detectors are {list(self.detector_ids)}"
        )


@dataclass(frozen=True)
class AmplifierType:
    """The raw-segment boxes and raw flips of one sensor vendor (cameraGeom ``AMP_ITL``/``AMP_E2V``).

    ``top_flip`` applies to the C1x amplifiers (top row of the assembled detector), ``bottom_flip``
    to the C0x amplifiers, as ``(flip_x, flip_y)``.
    """

    name: str
    data_rows: int
    data_cols: int
    prescan_cols: int
    serial_overscan_cols: int
    parallel_overscan_rows: int
    top_flip: tuple[bool, bool]
    bottom_flip: tuple[bool, bool]

    @property
    def detector_shape(self) -> tuple[int, int]:
        """Assembled detector ``(rows, cols)`` of 2 x 8 amplifiers."""
        return (2 * self.data_rows, 8 * self.data_cols)


ITL = AmplifierType(
    name="ITL",
    data_rows=2000,
    data_cols=509,
    prescan_cols=3,
    serial_overscan_cols=64,
    parallel_overscan_rows=48,
    top_flip=(True, True),
    bottom_flip=(True, False),
)
E2V = AmplifierType(
    name="E2V",
    data_rows=2002,
    data_cols=512,
    prescan_cols=10,
    serial_overscan_cols=54,
    parallel_overscan_rows=46,
    top_flip=(True, True),
    bottom_flip=(False, False),
)
AMPLIFIER_TYPES = {t.name: t for t in (ITL, E2V)}
"""The vendors by `Detector.physical_type`."""

SEGMENT_ORDER: tuple[str, ...] = tuple([f"C1{i}" for i in range(8)] + [f"C0{7 - i}" for i in range(8)])
"""Amplifier names in the order of the raw file's image HDUs 1..16 (cameraGeom order)."""


def amplifier_layout(vendor: str = "ITL") -> list[tuple[str, int, int, bool, bool]]:
    """Return ``(name, column index, row index, flip_x, flip_y)`` of the 16 amplifiers, in HDU order.

    Row index 1 is the top row (C1x), 0 the bottom row (C0x); the column index of ``Cxy`` is ``y``.
    """
    amp_type = AMPLIFIER_TYPES[vendor]
    layout = []
    for name in SEGMENT_ORDER:
        row = int(name[1])
        flip_x, flip_y = amp_type.top_flip if row == 1 else amp_type.bottom_flip
        layout.append((name, int(name[2]), row, flip_x, flip_y))
    return layout


def vendor_amplifiers(
    vendor: str, gains: list[float], read_noises: list[float], saturation: float
) -> tuple[AmplifierGeometry, ...]:
    """The 16 amplifiers of a ``vendor`` (``ITL`` or ``E2V``) sensor in HDU order, DM placement.

    ``gains`` and ``read_noises`` are in HDU order (`SEGMENT_ORDER`).
    """
    amp_type = AMPLIFIER_TYPES[vendor]
    amps = []
    for index, (name, col, row, flip_x, flip_y) in enumerate(amplifier_layout(vendor)):
        amps.append(
            AmplifierGeometry(
                name=name,
                index=index,
                gain=gains[index],
                read_noise=read_noises[index],
                saturation=saturation,
                data_rows=amp_type.data_rows,
                data_cols=amp_type.data_cols,
                prescan_cols=amp_type.prescan_cols,
                serial_overscan_cols=amp_type.serial_overscan_cols,
                parallel_overscan_rows=amp_type.parallel_overscan_rows,
                x0=col * amp_type.data_cols,
                y0=row * amp_type.data_rows,
                flip_x=flip_x,
                flip_y=flip_y,
            )
        )
    return tuple(amps)


def _nominal(seed: int, low: float, high: float) -> list[float]:
    """Deterministic per-amplifier nominal values spread over a realistic range."""
    # A small linear congruential sequence: fixed values that look like a real table.
    values = []
    state = seed
    for _ in range(16):
        state = (1103515245 * state + 12345) % 2**31
        values.append(round(low + (high - low) * (state / 2**31), 3))
    return values


@cache
def _latiss() -> Instrument:
    # LATISS ITL-3800C-068: gains 1.05-1.10 e/ADU, read noise 8.0-10.3 e (cp_algorithms.md §6).
    det = Detector(
        id=0,
        name="RXX_S00",
        raft="RXX",
        name_in_raft="S00",
        serial="ITL-3800C-068",
        physical_type="ITL",
        amplifiers=vendor_amplifiers("ITL", _nominal(68, 1.05, 1.10), _nominal(168, 8.0, 10.3), 120_000.0),
    )
    return Instrument(
        name="LATISS",
        class_name="lsst.obs.lsst.Latiss",
        detectors=(det,),
        filters=latiss_filters(),
        default_filter="empty~empty",
        obs_id_prefix="AT_O",
        has_grating=True,
        detector_max=1,
        whole_detector_names=True,
        header_names=("LATISS", "LSST_ATISS"),
        telescope="LSST AuxTelescope",
        camera_csc="ATCAMERA",
        fixed_detector=True,
        header_raftbay="R00",
    )


@cache
def _comcam() -> Instrument:
    detectors = []
    for i in range(9):
        sensor = f"S{i // 3}{i % 3}"
        detectors.append(
            Detector(
                id=i,
                name=f"R22_{sensor}",
                raft="R22",
                name_in_raft=sensor,
                serial=f"ITL-3800C-{229 + i:03d}",
                physical_type="ITL",
                # LSSTCam ITL sensors: gain 1.32-1.76 e/ADU, read noise 5.3-12.9 e (median ~6.5).
                amplifiers=vendor_amplifiers(
                    "ITL", _nominal(1000 + i, 1.45, 1.75), _nominal(2000 + i, 5.5, 8.0), 120_000.0
                ),
            )
        )
    return Instrument(
        name="LSSTComCam",
        class_name="lsst.obs.lsst.LsstComCam",
        detectors=tuple(detectors),
        filters=comcam_filters(),
        default_filter="empty",
        obs_id_prefix="CC_O",
        header_names=("ComCam", "LSSTComCam"),
        telescope="Simonyi Survey Telescope",
        camera_csc="CCCAMERA",
    )


# LSSTCam (rubin_formats.md §4.3): the 21 science rafts in obs_lsst's id order, with their vendor.
_LSSTCAM_RAFTS: tuple[tuple[str, str], ...] = (
    ("R01", "ITL"), ("R02", "ITL"), ("R03", "ITL"), ("R10", "ITL"), ("R11", "E2V"), ("R12", "E2V"),
    ("R13", "E2V"), ("R14", "E2V"), ("R20", "ITL"), ("R21", "E2V"), ("R22", "E2V"), ("R23", "E2V"),
    ("R24", "E2V"), ("R30", "E2V"), ("R31", "E2V"), ("R32", "E2V"), ("R33", "E2V"), ("R34", "E2V"),
    ("R41", "ITL"), ("R42", "ITL"), ("R43", "ITL"),
)  # fmt: skip
_LSSTCAM_CORNERS: tuple[tuple[str, int], ...] = (("R00", 189), ("R04", 193), ("R40", 197), ("R44", 201))
"""Corner rafts and the id of their SG0; SG1, SW0 and SW1 follow."""
# Nominal values per vendor (cp_algorithms.md §6, obs_lsst raft files): gain e/ADU, read noise e,
# raw saturation ADU.
_LSSTCAM_NOMINAL = {
    "ITL": ((1.55, 1.75), (5.5, 8.0), 120_000.0),
    "E2V": ((1.38, 1.53), (5.1, 6.5), 130_000.0),
}


def _wavefront_amplifiers(gains: list[float], read_noises: list[float]) -> tuple[AmplifierGeometry, ...]:
    """ITL-4400B half sensor (``CCD_ITL_WF``): C10 … C17 at columns 7 … 0 of one row, flipped in x and y."""
    amps = []
    for index in range(8):
        amps.append(
            AmplifierGeometry(
                name=f"C1{index}",
                index=index,
                gain=gains[index],
                read_noise=read_noises[index],
                saturation=120_000.0,
                data_rows=ITL.data_rows,
                data_cols=ITL.data_cols,
                prescan_cols=ITL.prescan_cols,
                serial_overscan_cols=ITL.serial_overscan_cols,
                parallel_overscan_rows=ITL.parallel_overscan_rows,
                x0=(7 - index) * ITL.data_cols,
                y0=0,
                flip_x=True,
                flip_y=True,
            )
        )
    return tuple(amps)


@cache
def _lsstcam() -> Instrument:
    detectors = []
    for raft_index, (raft, vendor) in enumerate(_LSSTCAM_RAFTS):
        (g_lo, g_hi), (n_lo, n_hi), saturation = _LSSTCAM_NOMINAL[vendor]
        for slot in range(9):
            det_id = 9 * raft_index + slot
            sensor = f"S{slot // 3}{slot % 3}"
            detectors.append(
                Detector(
                    id=det_id,
                    name=f"{raft}_{sensor}",
                    raft=raft,
                    name_in_raft=sensor,
                    # Not the real serial numbers (cpflow's facts do not list them).
                    serial=f"{'ITL-3800C' if vendor == 'ITL' else 'E2V-CCD250'}-{det_id:03d}",
                    physical_type=vendor,
                    amplifiers=vendor_amplifiers(
                        vendor,
                        _nominal(3000 + det_id, g_lo, g_hi),
                        _nominal(4000 + det_id, n_lo, n_hi),
                        saturation,
                    ),
                )
            )
    for raft, first in _LSSTCAM_CORNERS:
        for offset, sensor in enumerate(("SG0", "SG1", "SW0", "SW1")):
            det_id = first + offset
            gains, noises = _nominal(3000 + det_id, 1.55, 1.75), _nominal(4000 + det_id, 5.5, 8.0)
            guider = sensor.startswith("SG")
            detectors.append(
                Detector(
                    id=det_id,
                    name=f"{raft}_{sensor}",
                    raft=raft,
                    name_in_raft=sensor,
                    serial=f"{'ITL-3800C' if guider else 'ITL-4400B'}-{det_id:03d}",
                    physical_type="ITL" if guider else "ITL_WF",
                    amplifiers=(
                        vendor_amplifiers("ITL", gains, noises, 120_000.0)
                        if guider
                        else _wavefront_amplifiers(gains, noises)
                    ),
                    purpose="GUIDER" if guider else "WAVEFRONT",
                )
            )
    return Instrument(
        name="LSSTCam",
        class_name="lsst.obs.lsst.LsstCam",
        detectors=tuple(detectors),
        filters=lsstcam_filters(),
        default_filter="empty",
        obs_id_prefix="MC_O",
        header_names=("LSSTCam", "lsstCam"),
        telescope="Simonyi Survey Telescope",
        camera_csc="MTCAMERA",
    )


_FACTORIES = {"LATISS": _latiss, "LSSTComCam": _comcam, "LSSTCam": _lsstcam}


def instrument_names() -> tuple[str, ...]:
    """Names of the instruments with cpflow definitions."""
    return tuple(_FACTORIES)


def get_instrument(name: str) -> Instrument:
    """Return the definition of instrument ``name``.

    Raises
    ------
    KeyError
        If cpflow has no definition for ``name``; the message lists the known instruments.
    """
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise KeyError(f"unknown instrument {name!r}; known instruments are {list(_FACTORIES)}") from None

"""cpflow's own instrument definitions: detectors, amplifier geometry, nominal gains and read noise.

No obs_lsst or afw is used. The geometry follows the ITL STA3800C layout used by LATISS and
LSSTComCam (cp_algorithms.md §6): 16 amplifiers in two rows of eight, each raw amplifier
576 columns × 2048 rows made of a 3-column serial prescan, a 509 × 2000 data section, a
64-column serial overscan and 48 rows of parallel overscan. The assembled (trimmed) detector
is 4072 × 4000 pixels.

Coordinates are numpy ``[row, column]`` (``y``, ``x``), zero-based. Raw amplifier arrays are
stored in *readout order*: the first column read is column 0, so the prescan is at the left,
then the data section, then the serial overscan; the parallel overscan rows follow the data
rows. Assembly flips each amplifier's data section into detector orientation with
``flip_x``/``flip_y``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

__all__ = [
    "AmplifierGeometry",
    "Detector",
    "Instrument",
    "amplifier_layout",
    "get_instrument",
    "instrument_names",
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
    """``(physical_filter, band)`` pairs registered in the butler."""
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
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def detector_ids(self) -> tuple[int, ...]:
        return tuple(d.id for d in self.detectors)

    def detector(self, detector_id: int) -> Detector:
        for det in self.detectors:
            if det.id == detector_id:
                return det
        raise KeyError(
            f"{self.name} has no detector {detector_id}; valid detectors are {list(self.detector_ids)}"
        )


# ITL STA3800C amplifier layout. Bottom row C10..C17 from left to right, read out towards
# the bottom-left corner of each amplifier; top row C07..C00 from left to right, read out
# from the top (flip_y) and from the right (flip_x), as on the real ITL sensors.
_ITL = {
    "data_rows": 2000,
    "data_cols": 509,
    "prescan_cols": 3,
    "serial_overscan_cols": 64,
    "parallel_overscan_rows": 48,
}


def amplifier_layout() -> list[tuple[str, int, int, bool, bool]]:
    """Return ``(name, column index, row index, flip_x, flip_y)`` for the 16 amplifiers."""
    layout = []
    for i in range(8):
        layout.append((f"C1{i}", i, 0, False, False))
    for i in range(8):
        layout.append((f"C0{7 - i}", i, 1, True, True))
    return layout


def _itl_amplifiers(
    gains: list[float], read_noises: list[float], saturation: float
) -> tuple[AmplifierGeometry, ...]:
    amps = []
    for index, (name, col, row, flip_x, flip_y) in enumerate(amplifier_layout()):
        amps.append(
            AmplifierGeometry(
                name=name,
                index=index,
                gain=gains[index],
                read_noise=read_noises[index],
                saturation=saturation,
                x0=col * _ITL["data_cols"],
                y0=row * _ITL["data_rows"],
                flip_x=flip_x,
                flip_y=flip_y,
                **_ITL,
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
        amplifiers=_itl_amplifiers(_nominal(68, 1.05, 1.10), _nominal(168, 8.0, 10.3), 120_000.0),
    )
    return Instrument(
        name="LATISS",
        class_name="lsst.obs.lsst.Latiss",
        detectors=(det,),
        filters=(
            ("empty~empty", "white"),
            ("SDSSg_65mm~empty", "g"),
            ("SDSSr_65mm~empty", "r"),
            ("SDSSi_65mm~empty", "i"),
            ("empty~holo4_003", "white"),
            ("SDSSr_65mm~holo4_003", "r"),
        ),
        default_filter="empty~empty",
        obs_id_prefix="AT_O",
        has_grating=True,
        detector_max=1,
        whole_detector_names=True,
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
                amplifiers=_itl_amplifiers(
                    _nominal(1000 + i, 1.45, 1.75), _nominal(2000 + i, 5.5, 8.0), 120_000.0
                ),
            )
        )
    return Instrument(
        name="LSSTComCam",
        class_name="lsst.obs.lsst.LsstComCam",
        detectors=tuple(detectors),
        filters=(
            ("empty", "white"),
            ("u_02", "u"),
            ("g_01", "g"),
            ("r_03", "r"),
            ("i_06", "i"),
            ("z_03", "z"),
            ("y_04", "y"),
        ),
        default_filter="empty",
        obs_id_prefix="CC_O",
    )


_FACTORIES = {"LATISS": _latiss, "LSSTComCam": _comcam}


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

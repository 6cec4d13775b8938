"""The ``simulator`` section (``camera: simulated`` only) and the faults it injects.

Every default and limit of the simulated camera is stated here, once (the real amplifier size and
saturation are read from `shared.instruments`): `SimulatorConfig` validates
a configuration with them, and `services.acquirer.simulated_camera.SimulatedCamera` takes its
defaults from here and checks its arguments with `SimulatorConfig.validated`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictStr,
    ValidationError,
    model_serializer,
)

from shared.instruments import amplifier_layout, get_instrument, instrument_names
from shared.runconfig.checked import CheckedModel, Problem, Rule, rule
from shared.runconfig.errors import Noun, Null, Unit, configuration_error, describe
from shared.runconfig.limits import MAX_FRAMES_PER_TYPE, at_most
from shared.runconfig.vocabulary import ImageType

__all__ = [
    "DEFAULT_BIAS_LEVEL_ADU",
    "DEFAULT_COLD_PIXEL_FRACTION",
    "DEFAULT_COSMIC_RAY_RATE",
    "DEFAULT_DARK_CURRENT_E_PER_S",
    "DEFAULT_FLAT_FLUX_E_PER_S",
    "DEFAULT_GAIN_SPREAD",
    "DEFAULT_HOT_PIXEL_FRACTION",
    "FAULT_KINDS",
    "MAX_AMP_DATA_COLS",
    "MAX_AMP_DATA_ROWS",
    "MAX_BIAS_LEVEL_ADU",
    "MAX_COSMIC_RAY_RATE",
    "MAX_DARK_CURRENT_E_PER_S",
    "MAX_DARK_RAMP_E_PER_S",
    "MAX_DEFECT_PIXEL_FRACTION",
    "MAX_FAULTS",
    "MAX_FAULT_FACTOR",
    "MAX_FAULT_LEVEL_E",
    "MAX_FLAT_FLUX_E_PER_S",
    "MAX_GAIN_SPREAD",
    "MAX_SEED",
    "MAX_SIMULATED_PIXELS",
    "SimulatorConfig",
    "SimulatorFault",
]

DEFAULT_BIAS_LEVEL_ADU = 15000.0
"""Mean bias (pedestal) level, ADU."""
DEFAULT_FLAT_FLUX_E_PER_S = 2000.0
"""Flat-field illumination, e⁻/s per pixel of unit response."""
DEFAULT_DARK_CURRENT_E_PER_S = 0.02
"""Background dark current, e⁻/s per pixel."""
DEFAULT_HOT_PIXEL_FRACTION = 2e-4
"""Fraction of hot pixels."""
DEFAULT_COLD_PIXEL_FRACTION = 1e-4
"""Fraction of cold (low-response or dead) pixels."""
DEFAULT_COSMIC_RAY_RATE = 0.1
"""Cosmic rays per cm² per second of dark time (DARK frames only); about 50 per detector in a 30 s dark."""
DEFAULT_GAIN_SPREAD = 0.03
"""Actual gains are nominal x (1 + uniform(±this))."""

MAX_DEFECT_PIXEL_FRACTION = 0.1
"""Most hot or cold pixels, as a fraction: beyond it a detector is not a plausible science sensor."""
MAX_GAIN_SPREAD = 0.2
"""Largest fractional spread of the actual gains around the nominal ones."""


def _real_amplifiers() -> tuple[int, int, float, int]:
    """Data rows, data columns, raw saturation (ADU) and raw pixels per detector of the real sensors."""
    detectors = [det for name in instrument_names() for det in get_instrument(name).detectors]
    amps = [amp for det in detectors for amp in det.amplifiers]
    pixels = max(sum(a.raw_rows * a.raw_cols for a in det.amplifiers) for det in detectors)
    return (
        max(a.data_rows for a in amps),
        max(a.data_cols for a in amps),
        max(a.saturation for a in amps),
        pixels,
    )


MAX_AMP_DATA_ROWS, MAX_AMP_DATA_COLS, MAX_BIAS_LEVEL_ADU, _DETECTOR_RAW_PIXELS = _real_amplifiers()
"""``amp_data_shape`` is at most the real data section (2000 x 509): real frames are the largest the
simulator writes. The bias level is at most the raw saturation (ADU)."""

MAX_SEED = 2**32 - 1
"""Largest ``seed``: one 32-bit word, as most seeding interfaces take; larger seeds are not more random."""
MAX_FAULTS = 64
"""Most injected faults: each is applied to every frame it selects; a test needs a handful."""
MAX_FLAT_FLUX_E_PER_S = 1e6
"""Brightest flat illumination, e⁻/s per pixel: the full well (~1e5 e⁻) in 0.1 s."""
MAX_DARK_CURRENT_E_PER_S = 100.0
"""Largest background dark current, e⁻/s per pixel: 5000 times the default, twice the hottest pixel."""
MAX_COSMIC_RAY_RATE = 10.0
"""Largest cosmic-ray rate, per cm² per s: 100 times the default. Cosmic rays are drawn one by one, so
this bounds the work of a frame (about 37 000 per amplifier in an hour-long dark)."""
MAX_FAULT_LEVEL_E = 1e6
"""Brightest light leak, e⁻ per pixel: ten full wells."""
MAX_FAULT_FACTOR = 100.0
"""Largest read-noise multiplier of a hot amplifier."""
MAX_DARK_RAMP_E_PER_S = 100.0
"""Largest dark-ramp step per dark frame, e⁻/s."""
MAX_SIMULATED_PIXELS = 2000 * _DETECTOR_RAW_PIXELS
"""Most raw pixels a simulated run may write (frames x detectors x raw pixels per detector): 2000
full-size detector frames, about 150 GB of int32 before compression; 3.4 times the reference run
(65 exposures) on all nine LSSTComCam detectors."""

FaultKind = Literal["light_leak", "hot_amplifier", "dark_ramp"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
"""Kinds of `SimulatorFault`."""

_FAULT_COMMON_KEYS: tuple[str, ...] = ("kind", "image_type", "exposures")
_FAULT_KIND_KEYS: dict[str, tuple[str, ...]] = {
    "light_leak": ("level_e",),
    "hot_amplifier": ("amplifiers", "factor"),
    "dark_ramp": ("step_e_per_s",),
}


def _amplifier_names(value: Any) -> Any:
    """``"all"`` or a non-empty list of amplifier names of the (ITL) layout."""
    names = [name for name, *_ in amplifier_layout()]
    if value == "all":
        return value
    if not (isinstance(value, list) and value and all(isinstance(a, str) for a in value)):
        raise ValueError(f'must be "all" or a non-empty list of amplifier names, got {describe(value)}')
    unknown = [a for a in value if a not in names]
    if unknown:
        raise ValueError(f"unknown amplifier {unknown[0]!r}; valid names are: {', '.join(names)}")
    return value


_FrameIndex = Annotated[int, Field(strict=True, ge=0, le=MAX_FRAMES_PER_TYPE - 1), Noun("a frame index")]
_Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class SimulatorFault(CheckedModel):
    """A fault injected by the simulated camera, to exercise verification.

    Attributes
    ----------
    kind : `str`
        ``light_leak``: extra uniform illumination (with shot noise) on every amplifier; the level of
        each affected frame is drawn uniformly in [0, 2 x ``level_e``] e⁻ per pixel.
        ``hot_amplifier``: the read noise of ``amplifiers`` is multiplied by ``factor``.
        ``dark_ramp``: dark frame ``i`` (0-based, in the order taken) gets ``i x step_e_per_s`` e⁻/s of
        extra dark current on every pixel (DARK frames only).
    image_type : `str` or `None`
        ``BIAS``, ``DARK`` or ``FLAT``: the frames affected; `None` means every image type (``dark_ramp``:
        DARK only).
    exposures : `list` [`int`] or `None`
        0-based indices, among the frames of that image type taken by one camera instance, of the
        frames affected; `None` means all.
    level_e : `float`
        ``light_leak`` only: mean extra illumination per frame, e⁻ per pixel (default 200).
    amplifiers : `list` [`str`] or ``"all"``
        ``hot_amplifier`` only: amplifier names (default all).
    factor : `float`
        ``hot_amplifier`` only: read-noise multiplier (default 3).
    step_e_per_s : `float`
        ``dark_ramp`` only: dark-current increment per dark frame, e⁻/s (default 0.5).
    """

    kind: FaultKind
    image_type: Annotated[ImageType | None, Null("every image type")] = None
    exposures: Annotated[
        list[_FrameIndex] | None,
        at_most(MAX_FRAMES_PER_TYPE),
        Noun("a list of frame indices (0-based)"),
        Null("all frames"),
    ] = None
    level_e: Annotated[_Number, Field(ge=0, le=MAX_FAULT_LEVEL_E), Unit("e⁻ per pixel")] = 200.0
    amplifiers: Annotated[list[StrictStr] | Literal["all"], BeforeValidator(_amplifier_names)] = "all"
    factor: Annotated[_Number, Field(gt=0, le=MAX_FAULT_FACTOR), Unit("read-noise multiplier")] = 3.0
    step_e_per_s: Annotated[_Number, Field(ge=0, le=MAX_DARK_RAMP_E_PER_S), Unit("e⁻/s per dark frame")] = 0.5

    @classmethod
    def rules(cls) -> tuple[Rule[Any], ...]:
        return _FAULT_RULES

    @model_serializer(mode="wrap")
    def _only_keys_of_kind(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Serialise only the keys this kind uses, so that a stored configuration validates again."""
        data: dict[str, Any] = handler(self)
        keep = {*_FAULT_COMMON_KEYS, *_FAULT_KIND_KEYS[self.kind]}
        return {key: value for key, value in data.items() if key in keep}

    def applies(self, image_type: str, index: int) -> bool:
        """Whether this fault affects frame ``index`` (0-based, per image type) of ``image_type``."""
        wanted = "DARK" if self.kind == "dark_ramp" else self.image_type
        if wanted is not None and image_type.upper() != wanted:
            return False
        return self.exposures is None or index in self.exposures

    def affects_amplifier(self, name: str) -> bool:
        """Whether amplifier ``name`` is affected (only ``hot_amplifier`` selects amplifiers)."""
        return self.amplifiers == "all" or name in self.amplifiers


@rule("kind")
def _keys_of_kind(fault: SimulatorFault, given: frozenset[str]) -> Iterator[Problem]:
    valid = [*_FAULT_COMMON_KEYS, *_FAULT_KIND_KEYS[fault.kind]]
    for key in sorted(given & set(SimulatorFault.model_fields) - set(valid)):
        yield key, f"not used by a {fault.kind} fault; valid keys are: {', '.join(valid)}"


@rule("kind", "image_type")
def _dark_ramp_on_darks(fault: SimulatorFault, given: frozenset[str]) -> Iterator[Problem]:
    if fault.kind == "dark_ramp" and fault.image_type not in (None, "DARK"):
        yield "image_type", f"a dark_ramp only applies to DARK frames, got {fault.image_type!r}"


_FAULT_RULES: tuple[Rule[Any], ...] = (_keys_of_kind, _dark_ramp_on_darks)


_DataRows = Annotated[int, Field(strict=True, ge=1, le=MAX_AMP_DATA_ROWS), Unit("data rows of an amplifier")]
_DataCols = Annotated[
    int, Field(strict=True, ge=1, le=MAX_AMP_DATA_COLS), Unit("data columns of an amplifier")
]
_PerPixel = Unit("e⁻/s per pixel")
_DefectFraction = Annotated[
    _Number, Field(ge=0, le=MAX_DEFECT_PIXEL_FRACTION), Unit("a fraction of the pixels")
]


class SimulatorConfig(BaseModel):
    """Settings of cpflow's simulated camera (``camera: simulated`` only).

    Attributes
    ----------
    seed : `int`
        Seed of the random generator; the same seed gives the same images.
    amp_data_shape : `tuple` [`int`, `int`] or `None`
        ``[rows, cols]`` of each amplifier's data section; `None` means the instrument's real size
        (2000 x 509). Small shapes make fast test runs.
    bias_level_adu : `float`
        Bias (pedestal) level in ADU.
    faults : `list` [`SimulatorFault`]
        Faults to inject (default none).
    flat_flux_e_per_s : `float`
        Flat-field illumination, e⁻/s per pixel (default 2000).
    dark_current_e_per_s : `float`
        Background dark current, e⁻/s per pixel (default 0.02).
    hot_pixel_fraction, cold_pixel_fraction : `float`
        Fractions of hot and cold pixels (defaults 2e-4 and 1e-4; at most 0.1).
    cosmic_ray_rate : `float`
        Cosmic rays per cm² per second on darks (default 0.1, about 50 per detector in a 30 s dark).
    gain_spread : `float`
        Actual gains differ from the nominal ones by up to ± this fraction (0..0.2, default 0.03).
    compress : `bool`
        RICE-compress the segments, as the cameras write them (default); false writes the same
        files with plain int32 segments, which the raw reader also takes (about 3x faster to write
        small frames: astropy's compressed-HDU overhead dominates them).
    """

    model_config = ConfigDict(extra="forbid")

    seed: Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)] = 0
    amp_data_shape: Annotated[
        tuple[_DataRows, _DataCols] | None,
        Noun("[rows, cols] of an amplifier's data section"),
        Null("the instrument's real size"),
    ] = None
    bias_level_adu: Annotated[_Number, Field(ge=0, le=MAX_BIAS_LEVEL_ADU), Unit("ADU")] = (
        DEFAULT_BIAS_LEVEL_ADU
    )
    faults: Annotated[
        list[SimulatorFault], at_most(MAX_FAULTS), Noun("a list of faults (mappings with a kind)")
    ] = Field(default_factory=list)
    flat_flux_e_per_s: Annotated[_Number, Field(ge=0, le=MAX_FLAT_FLUX_E_PER_S), _PerPixel] = (
        DEFAULT_FLAT_FLUX_E_PER_S
    )
    dark_current_e_per_s: Annotated[_Number, Field(ge=0, le=MAX_DARK_CURRENT_E_PER_S), _PerPixel] = (
        DEFAULT_DARK_CURRENT_E_PER_S
    )
    hot_pixel_fraction: _DefectFraction = DEFAULT_HOT_PIXEL_FRACTION
    cold_pixel_fraction: _DefectFraction = DEFAULT_COLD_PIXEL_FRACTION
    cosmic_ray_rate: Annotated[
        _Number, Field(ge=0, le=MAX_COSMIC_RAY_RATE), Unit("cosmic rays per cm² per s")
    ] = DEFAULT_COSMIC_RAY_RATE
    gain_spread: Annotated[
        _Number, Field(ge=0, le=MAX_GAIN_SPREAD), Unit("a fractional spread of the gains")
    ] = DEFAULT_GAIN_SPREAD
    compress: StrictBool = True

    @classmethod
    def validated(cls, **values: Any) -> SimulatorConfig:
        """Construct from keyword values, raising `ConfigurationError` (in cpflow's words) if invalid."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise configuration_error(exc, cls) from None

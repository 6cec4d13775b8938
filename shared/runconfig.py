"""The configuration of one calibration run.

The keys, defaults and meanings are those of the reference ScriptQueue script
``BaseMakeCalibrations`` and its LATISS / LSSTComCam / LSSTCam subclasses (``ts_externalscripts``,
see ``reference/make_calibrations_script.md`` §1), plus cpflow's own keys ``instrument``, ``camera``
and ``simulator``. An operator can therefore paste the configuration they would give the ScriptQueue.

Unlike the reference, everything is checked when the configuration is submitted: the length of
``exp_times_*`` against ``n_X + n_discard_X``, null counts, detector ids against the instrument,
``certify_calib_begin_date < certify_calib_end_date``, keys that do not apply to the instrument, and
unknown keys. Every problem is reported (not only the first) as ``"<key>: <what is wrong>; <what is
valid>"`` in a `ConfigurationError`.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import math
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from shared.instruments import amplifier_layout, get_instrument, instrument_names

__all__ = [
    "CAMERAS",
    "FAULT_KINDS",
    "INSTRUMENTS",
    "PTC_FIT_TYPES",
    "ConfigurationError",
    "RunConfiguration",
    "ScriptMode",
    "SimulatorConfig",
    "SimulatorFault",
    "TestCase",
    "load_run_configuration",
    "validate_run_configuration",
]

INSTRUMENTS: tuple[str, ...] = ("LATISS", "LSSTComCam", "LSSTCam")
"""Instruments a run may name (the reference script exists for these three)."""

CAMERAS: tuple[str, ...] = ("simulated", "sal")
"""Camera drivers: cpflow's simulator, or the real camera through SAL."""

IMAGE_TYPES: tuple[str, ...] = ("BIAS", "DARK", "FLAT")

# LSSTCam has no cpflow geometry yet; its detector ids are 0..204 (189 science, 16 corner sensors).
_LSSTCAM_DETECTOR_IDS: tuple[int, ...] = tuple(range(205))

_DEFAULT_EXP_TIMES_DARK: list[float] = [5.0, 5.0, 5.0, 5.0, 5.0, 15.0, 15.0] + [30.0] * 16


class ScriptMode(StrEnum):
    """Which image types a run takes (reference ``script_mode``)."""

    BIAS = "BIAS"
    DARK = "DARK"
    BIAS_DARK = "BIAS_DARK"
    BIAS_DARK_FLAT = "BIAS_DARK_FLAT"


_IMAGE_TYPES_BY_MODE: dict[ScriptMode, list[str]] = {
    ScriptMode.BIAS: ["BIAS"],
    ScriptMode.DARK: ["DARK"],
    ScriptMode.BIAS_DARK: ["BIAS", "DARK"],
    ScriptMode.BIAS_DARK_FLAT: ["BIAS", "DARK", "FLAT"],
}


class ConfigurationError(ValueError):
    """A run configuration was rejected.

    Parameters
    ----------
    errors : `list` [`str`] or `str`
        One message per problem, each ``"<key>: <what is wrong>; <what is valid>"``.

    Attributes
    ----------
    errors : `list` [`str`]
        The messages; ``str(exc)`` joins them with newlines.
    """

    errors: list[str]

    def __init__(self, errors: list[str] | str) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


class TestCase(BaseModel):
    """The ``test_case`` section inherited from ``BaseBlockScript``.

    Attributes
    ----------
    name : `str` or `None`
        Test-case name.
    execution : `str` or `None`
        Test execution id.
    version : `str`
        Test-case version (required).
    initial_step : `int` or `None`
        First step to report.
    project : `str` or `None`
        Test project.
    """

    __test__ = False  # not a pytest test class

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    execution: str | None = None
    version: str
    initial_step: int | None = None
    project: str | None = None


PTC_FIT_TYPES: tuple[str, ...] = ("EXPAPPROXIMATION", "FULLCOVARIANCE", "FULLCOVARIANCE_NO_B")
"""PTC fit types, chosen as in cp_pipe with ``config_options_ptc: "-c ptcSolve:ptcFitType=..."``."""
_PTC_FIT_TYPE_OPTION = re.compile(r"ptcFitType\s*=\s*([A-Za-z_]+)")

FAULT_KINDS: tuple[str, ...] = ("light_leak", "hot_amplifier", "dark_ramp")
"""Kinds of `SimulatorFault`."""

_FAULT_COMMON_KEYS: tuple[str, ...] = ("kind", "image_type", "exposures")
_FAULT_KIND_KEYS: dict[str, tuple[str, ...]] = {
    "light_leak": ("level_e",),
    "hot_amplifier": ("amplifiers", "factor"),
    "dark_ramp": ("step_e_per_s",),
}


class SimulatorFault(BaseModel):
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

    model_config = ConfigDict(extra="forbid")

    kind: Literal["light_leak", "hot_amplifier", "dark_ramp"]
    image_type: Literal["BIAS", "DARK", "FLAT"] | None = None
    exposures: list[Annotated[int, Field(ge=0)]] | None = None
    level_e: float = Field(default=200.0, ge=0)
    amplifiers: list[str] | Literal["all"] = "all"
    factor: float = Field(default=3.0, gt=0)
    step_e_per_s: float = Field(default=0.5, ge=0)

    @model_validator(mode="after")
    def _check_kind(self) -> SimulatorFault:
        if self.kind == "dark_ramp" and self.image_type not in (None, "DARK"):
            raise ValueError(f"image_type: a dark_ramp only applies to DARK frames, got {self.image_type!r}")
        given = self.model_fields_set - set(_FAULT_COMMON_KEYS)
        foreign = sorted(given - set(_FAULT_KIND_KEYS[self.kind]))
        if foreign:
            raise ValueError(f"{foreign[0]}: not used by a {self.kind} fault; remove it")
        return self

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
    """

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    amp_data_shape: tuple[int, int] | None = None
    bias_level_adu: float = 15000.0
    faults: list[SimulatorFault] = Field(default_factory=list)
    flat_flux_e_per_s: float = Field(default=2000.0, ge=0)
    dark_current_e_per_s: float = Field(default=0.02, ge=0)
    hot_pixel_fraction: float = Field(default=2e-4, ge=0, le=0.1)
    cold_pixel_fraction: float = Field(default=1e-4, ge=0, le=0.1)
    cosmic_ray_rate: float = Field(default=0.1, ge=0)
    gain_spread: float = Field(default=0.03, ge=0, le=0.2)


# --------------------------------------------------------------------------------------------------
# Raw checks: they run on the submitted mapping, before pydantic, so that every problem is reported
# with a message in our own words.

_INT_KEYS: dict[str, int] = {
    "n_bias": 1,
    "n_discard_bias": 0,
    "n_dark": 1,
    "n_discard_dark": 0,
    "n_flat": 1,
    "n_discard_flat": 0,
    "number_verification_tests_threshold_bias": 0,
    "number_verification_tests_threshold_dark": 0,
    "number_verification_tests_threshold_flat": 0,
    "n_processes": 1,
}
_POSITIVE_NUMBER_KEYS = ("oods_timeout", "background_task_timeout")
_NON_NEGATIVE_NUMBER_KEYS = ("wait_between_exposures",)
_BOOL_KEYS = ("generate_calibrations", "do_verify", "do_defects", "do_ptc", "do_gain_from_flat_pairs")
_STR_KEYS = (
    "config_options_bias",
    "config_options_dark",
    "config_options_flat",
    "config_options_defects",
    "config_options_ptc",
)
_OPTIONAL_STR_KEYS = ("program", "reason", "note")
_COLLECTION_KEYS = (
    "input_collections_bias",
    "input_collections_verify_bias",
    "input_collections_dark",
    "input_collections_verify_dark",
    "input_collections_flat",
    "input_collections_verify_flat",
    "input_collections_defects",
    "input_collections_ptc",
)
_DATE_KEYS = ("certify_calib_begin_date", "certify_calib_end_date")


def _describe(value: Any) -> str:
    """Render a submitted value for an error message (YAML spelling for null and booleans)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _parse_datetime(text: str) -> _dt.datetime:
    """Parse an ISO-8601 date or datetime; raise `ValueError` if it is neither."""
    value = _dt.datetime.fromisoformat(text.strip())
    if value.tzinfo is not None:
        raise ValueError("has a time zone")
    return value


def _unknown_key_message(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.75)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    return f"unknown key {key!r}; valid keys are: {', '.join(sorted(valid))}"


def _check_exp_times(raw: dict[str, Any], image_type: str, given: bool, errors: list[str]) -> None:
    """Check ``exp_times_<type>`` and normalise it to a float or a list of floats in ``raw``."""
    key = f"exp_times_{image_type}"
    n_key, d_key = f"n_{image_type}", f"n_discard_{image_type}"
    value = raw[key]
    n_val: Any = raw.get(n_key)
    d_val: Any = raw.get(d_key)
    counts_ok = _is_int(n_val) and n_val >= 1 and _is_int(d_val) and d_val >= 0
    if _is_number(value):
        if value < 0:
            errors.append(f"{key}: exposure time must be ≥ 0 seconds, got {_describe(value)}")
        else:
            raw[key] = float(value)
        return
    if not isinstance(value, list) or not value:
        errors.append(
            f"{key}: must be a number ≥ 0 (used for every exposure) or a non-empty list of numbers ≥ 0 "
            f"(one per exposure), got {_describe(value)}"
        )
        return
    bad = [v for v in value if not _is_number(v) or v < 0]
    if bad:
        errors.append(f"{key}: exposure times must be numbers ≥ 0 seconds, got {_describe(bad[0])}")
        return
    if counts_ok:
        expected = n_val + d_val
        if len(value) != expected:
            origin = "" if given else " (the default list)"
            errors.append(
                f"{key}: has {len(value)} values{origin} but {n_key} + {d_key} = {expected}; give one value "
                f"per exposure ({expected} values) or a single number"
            )
            return
    raw[key] = [float(v) for v in value]


def _check_filter_value(
    key: str, value: Any, valid_names: list[str] | None, simulated: bool, errors: list[str]
) -> None:
    """Check ``filter`` or ``grating``: a string, an int ≥ 1 or null."""
    if value is None:
        return
    if _is_int(value):
        if value < 1:
            errors.append(f"{key}: a filter-wheel position must be an integer ≥ 1, got {value}")
        elif simulated and valid_names is not None:
            errors.append(
                f"{key}: the simulated camera needs a name, not a wheel position ({value}); "
                f"valid names are: {', '.join(valid_names)}"
            )
        return
    if not isinstance(value, str):
        errors.append(f"{key}: must be a name, an integer ≥ 1 or null, got {_describe(value)}")
        return
    if valid_names is not None and value not in valid_names:
        errors.append(f"{key}: unknown {key} {value!r}; valid values are: {', '.join(valid_names)}")


_SIMULATOR_NUMBER_RANGES: dict[str, tuple[float, float | None, str]] = {
    "flat_flux_e_per_s": (0.0, None, "e⁻/s per pixel"),
    "dark_current_e_per_s": (0.0, None, "e⁻/s per pixel"),
    "hot_pixel_fraction": (0.0, 0.1, "a fraction of the pixels"),
    "cold_pixel_fraction": (0.0, 0.1, "a fraction of the pixels"),
    "cosmic_ray_rate": (0.0, None, "cosmic rays per cm² per s"),
    "gain_spread": (0.0, 0.2, "a fractional spread of the gains"),
}


def _check_simulator(value: Any, errors: list[str]) -> None:
    if value is None:
        return
    valid = list(SimulatorConfig.model_fields)
    if not isinstance(value, Mapping):
        errors.append(f"simulator: must be a mapping with keys {', '.join(valid)}, got {_describe(value)}")
        return
    for key in value:
        if key not in valid:
            errors.append("simulator: " + _unknown_key_message(str(key), valid))
    if "seed" in value and not (_is_int(value["seed"]) and value["seed"] >= 0):
        errors.append(f"simulator.seed: must be an integer ≥ 0, got {_describe(value['seed'])}")
    if "amp_data_shape" in value:
        shape = value["amp_data_shape"]
        if shape is not None and not (
            isinstance(shape, list | tuple) and len(shape) == 2 and all(_is_int(v) and v >= 1 for v in shape)
        ):
            errors.append(
                f"simulator.amp_data_shape: must be [rows, cols] with two integers ≥ 1, or null for the "
                f"instrument's real size (2000 x 509), got {_describe(shape)}"
            )
    if "bias_level_adu" in value and not _is_number(value["bias_level_adu"]):
        errors.append(
            f"simulator.bias_level_adu: must be a number (ADU), got {_describe(value['bias_level_adu'])}"
        )
    for key, (low, high, unit) in _SIMULATOR_NUMBER_RANGES.items():
        if key not in value:
            continue
        number = value[key]
        if not _is_number(number) or number < low or (high is not None and number > high):
            bounds = f"between {low:g} and {high:g}" if high is not None else f"≥ {low:g}"
            errors.append(f"simulator.{key}: must be a number {bounds} ({unit}), got {_describe(number)}")
    if "faults" in value:
        faults = value["faults"]
        if not isinstance(faults, list):
            errors.append(
                f"simulator.faults: must be a list of faults (mappings with a kind), got {_describe(faults)}"
            )
        else:
            for index, fault in enumerate(faults):
                _check_fault(f"simulator.faults[{index}]", fault, errors)


def _check_fault(where: str, fault: Any, errors: list[str]) -> None:
    """Check one ``simulator.faults`` entry; ``where`` names it in the messages."""
    kinds = ", ".join(FAULT_KINDS)
    if not isinstance(fault, Mapping):
        errors.append(f"{where}: must be a mapping with a kind ({kinds}), got {_describe(fault)}")
        return
    kind = fault.get("kind")
    if kind is None:
        errors.append(f"{where}.kind: required; valid kinds are: {kinds}")
        return
    if kind not in FAULT_KINDS:
        errors.append(f"{where}.kind: unknown fault kind {_describe(kind)}; valid kinds are: {kinds}")
        return
    valid = [*_FAULT_COMMON_KEYS, *_FAULT_KIND_KEYS[kind]]
    other_kinds = {k for keys in _FAULT_KIND_KEYS.values() for k in keys}
    for key in fault:
        if key in valid:
            continue
        if key in other_kinds:
            errors.append(f"{where}.{key}: not used by a {kind} fault; valid keys are: {', '.join(valid)}")
        else:
            errors.append(f"{where}: " + _unknown_key_message(str(key), valid))
    image_type = fault.get("image_type")
    if image_type is not None:
        if image_type not in IMAGE_TYPES:
            errors.append(
                f"{where}.image_type: unknown image type {_describe(image_type)}; "
                f"valid values are: {', '.join(IMAGE_TYPES)} or null (all)"
            )
        elif kind == "dark_ramp" and image_type != "DARK":
            errors.append(f"{where}.image_type: a dark_ramp only applies to DARK frames, got {image_type!r}")
    exposures = fault.get("exposures")
    if exposures is not None and not (
        isinstance(exposures, list) and all(_is_int(v) and v >= 0 for v in exposures)
    ):
        errors.append(
            f"{where}.exposures: must be a list of frame indices (integers ≥ 0) or null (all frames), "
            f"got {_describe(exposures)}"
        )
    for key, strict in (("level_e", False), ("factor", True), ("step_e_per_s", False)):
        if key in fault and key in valid:
            number = fault[key]
            if not _is_number(number) or number < 0 or (strict and number == 0):
                relation = ">" if strict else "≥"
                errors.append(f"{where}.{key}: must be a number {relation} 0, got {_describe(number)}")
    if "amplifiers" in fault and "amplifiers" in valid:
        amps = fault["amplifiers"]
        names = [name for name, *_ in amplifier_layout()]
        if amps != "all" and not (isinstance(amps, list) and amps and all(isinstance(a, str) for a in amps)):
            errors.append(
                f'{where}.amplifiers: must be "all" or a non-empty list of amplifier names, '
                f"got {_describe(amps)}"
            )
        elif isinstance(amps, list):
            unknown = [a for a in amps if a not in names]
            if unknown:
                errors.append(
                    f"{where}.amplifiers: unknown amplifier {unknown[0]!r}; "
                    f"valid names are: {', '.join(names)}"
                )


def _check_test_case(value: Any, errors: list[str]) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        errors.append(
            "test_case: must be a mapping with keys name, execution, version (required), initial_step, "
            f"project; got {_describe(value)}"
        )
        return
    valid = list(TestCase.model_fields)
    for key in value:
        if key not in valid:
            errors.append("test_case: " + _unknown_key_message(str(key), valid))
    if value.get("version") is None:
        errors.append(
            "test_case.version: required when test_case is given; give the test-case version string"
        )
    for key in ("name", "execution", "version", "project"):
        if value.get(key) is not None and not isinstance(value[key], str):
            errors.append(f"test_case.{key}: must be a string, got {_describe(value[key])}")
    if value.get("initial_step") is not None and not _is_int(value["initial_step"]):
        errors.append(f"test_case.initial_step: must be an integer, got {_describe(value['initial_step'])}")


def _prepare(data: Any, field_names: list[str]) -> dict[str, Any]:
    """Check the submitted mapping and fill in the instrument-dependent defaults.

    Raises
    ------
    ConfigurationError
        With one message per problem found.
    """
    if not isinstance(data, Mapping):
        raise ConfigurationError(
            f"configuration: must be a mapping of keys to values, got {type(data).__name__}"
        )
    raw: dict[str, Any] = {str(k): v for k, v in data.items()}
    errors: list[str] = []

    for key in raw:
        if key not in field_names:
            errors.append(_unknown_key_message(key, field_names))

    # Required keys.
    modes = [m.value for m in ScriptMode]
    mode = raw.get("script_mode")
    if "script_mode" not in raw or mode is None:
        errors.append(f"script_mode: required; valid values are: {', '.join(modes)}")
        mode = None
    elif mode not in modes:
        errors.append(f"script_mode: unknown mode {_describe(mode)}; valid values are: {', '.join(modes)}")
        mode = None

    instrument = raw.get("instrument")
    if "instrument" not in raw or instrument is None:
        errors.append(f"instrument: required; valid values are: {', '.join(INSTRUMENTS)}")
        instrument = None
    elif instrument not in INSTRUMENTS:
        errors.append(
            f"instrument: unknown instrument {_describe(instrument)}; "
            f"valid values are: {', '.join(INSTRUMENTS)}"
        )
        instrument = None

    camera = raw.setdefault("camera", "simulated")
    if camera not in CAMERAS:
        errors.append(f"camera: unknown camera {_describe(camera)}; valid values are: {', '.join(CAMERAS)}")
        camera = None
    simulated = camera == "simulated"
    if instrument == "LSSTCam" and simulated:
        errors.append(
            "instrument: LSSTCam cannot be simulated (cpflow has no LSSTCam geometry yet); only "
            f"{' and '.join(instrument_names())} can be simulated; use camera: sal for LSSTCam"
        )

    # Scalars.
    for key, minimum in _INT_KEYS.items():
        if key in raw:
            value = raw[key]
            if not _is_int(value) or value < minimum:
                errors.append(f"{key}: must be an integer ≥ {minimum}, got {_describe(value)}")
    for key in _POSITIVE_NUMBER_KEYS:
        if key in raw and (not _is_number(raw[key]) or raw[key] <= 0):
            errors.append(f"{key}: must be a number of seconds > 0, got {_describe(raw[key])}")
    for key in _NON_NEGATIVE_NUMBER_KEYS:
        if key in raw and (not _is_number(raw[key]) or raw[key] < 0):
            errors.append(f"{key}: must be a number of seconds ≥ 0, got {_describe(raw[key])}")
    for key in _BOOL_KEYS:
        if key in raw and not isinstance(raw[key], bool):
            errors.append(f"{key}: must be true or false, got {_describe(raw[key])}")
    for key in (*_STR_KEYS, *_COLLECTION_KEYS, "calib_collection", "repo"):
        if key in raw and not isinstance(raw[key], str):
            errors.append(f"{key}: must be a string, got {_describe(raw[key])}")
    for key in _OPTIONAL_STR_KEYS:
        if raw.get(key) is not None and not isinstance(raw[key], str):
            errors.append(f"{key}: must be a string or null, got {_describe(raw[key])}")
    for key in _COLLECTION_KEYS:
        if isinstance(raw.get(key), str) and not [c for c in raw[key].split(",") if c.strip()]:
            errors.append(f"{key}: names no collection; give comma-separated collection names")
    if isinstance(raw.get("calib_collection"), str) and not raw["calib_collection"].strip():
        errors.append("calib_collection: is empty; give the CALIBRATION collection to certify into")

    # Exposure times.
    exp_given = {t: f"exp_times_{t}" in raw for t in ("dark", "flat")}
    raw.setdefault("exp_times_dark", list(_DEFAULT_EXP_TIMES_DARK))
    raw.setdefault("exp_times_flat", 5.0)
    for count_key, count_default in (
        ("n_dark", 22),
        ("n_discard_dark", 1),
        ("n_flat", 20),
        ("n_discard_flat", 1),
    ):
        raw.setdefault(count_key, count_default)
    for image_type in ("dark", "flat"):
        _check_exp_times(raw, image_type, exp_given[image_type], errors)

    # Certification dates.
    parsed: dict[str, _dt.datetime] = {}
    for key, default in zip(_DATE_KEYS, ("1950-01-01", "2050-01-01"), strict=True):
        date_value: Any = raw.setdefault(key, default)
        if isinstance(date_value, _dt.date):  # YAML turns unquoted dates into date/datetime objects
            date_value = raw[key] = date_value.isoformat()
        if not isinstance(date_value, str):
            errors.append(
                f"{key}: must be an ISO-8601 date or datetime such as 2024-01-31, got {_describe(date_value)}"
            )
            continue
        try:
            parsed[key] = _parse_datetime(date_value)
        except ValueError:
            errors.append(
                f"{key}: {date_value!r} is not an ISO-8601 date or datetime without time zone (TAI); "
                "give e.g. 2024-01-31 or 2024-01-31T12:00:00"
            )
    if len(parsed) == 2 and parsed[_DATE_KEYS[0]] >= parsed[_DATE_KEYS[1]]:
        errors.append(
            f"certify_calib_begin_date: {raw[_DATE_KEYS[0]]} is not before certify_calib_end_date "
            f"{raw[_DATE_KEYS[1]]}; the begin date must be earlier than the end date"
        )

    # Instrument-specific keys.
    if instrument is not None:
        _check_instrument_keys(raw, instrument, simulated, errors)

    # The one pipetask option cpflow interprets: the PTC fit type.
    options = raw.get("config_options_ptc")
    if isinstance(options, str):
        match = _PTC_FIT_TYPE_OPTION.search(options)
        if match and match.group(1) not in PTC_FIT_TYPES:
            errors.append(
                f"config_options_ptc: unknown ptcFitType {match.group(1)!r}; "
                f"valid fit types are: {', '.join(PTC_FIT_TYPES)}"
            )

    # Options that only apply to BIAS_DARK_FLAT. do_gain_from_flat_pairs defaults to true, so it simply
    # does not apply in the other modes.
    if mode is not None and mode != ScriptMode.BIAS_DARK_FLAT:
        for key in ("do_defects", "do_ptc"):
            if raw.get(key) is True:
                errors.append(
                    f"{key}: only used with script_mode BIAS_DARK_FLAT, got {mode}; set script_mode: "
                    f"BIAS_DARK_FLAT or remove {key}"
                )

    # cpflow sections.
    if "simulator" in raw and camera == "sal":
        errors.append(
            "simulator: only allowed with camera: simulated (camera is sal); remove the simulator section"
        )
    else:
        _check_simulator(raw.get("simulator"), errors)
        if simulated and raw.get("simulator") is None:
            raw["simulator"] = {}
    _check_test_case(raw.get("test_case"), errors)

    if errors:
        raise ConfigurationError(errors)
    return raw


def _check_instrument_keys(raw: dict[str, Any], instrument: str, simulated: bool, errors: list[str]) -> None:
    """Check detectors, filter, grating and ignore; fill the collection defaults."""
    for key in _COLLECTION_KEYS:
        raw.setdefault(key, f"{instrument}/calib")
    raw.setdefault("calib_collection", f"{instrument}/calib/daily")
    raw.setdefault("repo", f"/repo/{instrument}/butler+sasquatch.yaml")

    known = instrument in instrument_names()
    inst = get_instrument(instrument) if known else None
    valid_ids = list(inst.detector_ids) if inst is not None else list(_LSSTCAM_DETECTOR_IDS)

    if instrument == "LATISS":
        if "detectors" in raw:
            errors.append("detectors: not a LATISS key (LATISS always uses detector 0); remove the key")
    elif "detectors" in raw:
        dets = raw["detectors"]
        if not isinstance(dets, list) or not all(_is_int(d) for d in dets):
            errors.append(
                f"detectors: must be a list of detector ids (integers), [] for all; got {_describe(dets)}"
            )
        else:
            invalid = sorted({d for d in dets if d not in valid_ids})
            if invalid:
                errors.append(
                    f"detectors: {invalid} not detectors of {instrument}; valid ids are "
                    f"{valid_ids[0]}..{valid_ids[-1]} ({', '.join(map(str, valid_ids))})"
                    if len(valid_ids) <= 16
                    else f"detectors: {invalid} not detectors of {instrument}; valid ids are "
                    f"{valid_ids[0]}..{valid_ids[-1]}"
                )
            dupes = sorted({d for d in dets if dets.count(d) > 1})
            if dupes:
                errors.append(f"detectors: ids {dupes} are listed more than once; list each detector once")

    if instrument != "LATISS" and "grating" in raw:
        errors.append(f"grating: only a LATISS key (instrument is {instrument}); remove the key")
    if instrument != "LSSTCam" and "ignore" in raw:
        errors.append(f"ignore: only an LSSTCam key (instrument is {instrument}); remove the key")
    if instrument == "LSSTCam" and "ignore" in raw:
        ignore = raw["ignore"]
        if not isinstance(ignore, list) or not all(isinstance(v, str) for v in ignore):
            errors.append(
                f"ignore: must be a list of MTCS component names (strings), got {_describe(ignore)}"
            )

    filter_names: list[str] | None = None
    grating_names: list[str] | None = None
    if inst is not None:
        physical = [name for name, _ in inst.filters]
        if inst.has_grating:
            filter_names = sorted({name.split("~")[0] for name in physical})
            grating_names = sorted({name.split("~")[1] for name in physical if "~" in name})
            # A full physical filter name is accepted when no grating is given.
            if raw.get("grating") is None:
                filter_names = filter_names + [p for p in physical if p not in filter_names]
        else:
            filter_names = physical
    _check_filter_value("filter", raw.get("filter"), filter_names, simulated, errors)
    if instrument == "LATISS":
        _check_filter_value("grating", raw.get("grating"), grating_names, simulated, errors)


# --------------------------------------------------------------------------------------------------


class RunConfiguration(BaseModel):
    """The accepted configuration of one calibration run.

    Construct it with `validate_run_configuration` or `load_run_configuration`, or directly with
    keyword arguments; any problem raises `ConfigurationError` listing every problem.

    Attributes
    ----------
    instrument : `str`
        ``LATISS``, ``LSSTComCam`` or ``LSSTCam`` (required; cpflow key).
    camera : `str`
        ``simulated`` (cpflow's simulator, default) or ``sal`` (the real camera).
    simulator : `SimulatorConfig` or `None`
        Simulator settings; present exactly when ``camera`` is ``simulated``.
    program, reason : `str` or `None`
        Program id and reason (``BaseBlockScript``).
    test_case : `TestCase` or `None`
        Test-case reporting (``BaseBlockScript``).
    script_mode : `ScriptMode`
        ``BIAS``, ``DARK``, ``BIAS_DARK`` or ``BIAS_DARK_FLAT`` (required).
    n_bias, n_dark, n_flat : `int`
        Exposures kept for processing (20, 22, 20).
    n_discard_bias, n_discard_dark, n_discard_flat : `int`
        Extra exposures taken first and dropped (1 each).
    exp_times_dark, exp_times_flat : `float` or `list` [`float`]
        Exposure times; a single number applies to every exposure, a list has one value per exposure
        (``n_X + n_discard_X`` values). See `exposure_times`.
    wait_between_exposures : `float`
        Seconds to sleep after every exposure.
    generate_calibrations : `bool`
        Generate calibrations from the new images (false: verify existing ones, certify nothing).
    do_verify : `bool`
        Run cp_verify and the decision logic.
    number_verification_tests_threshold_bias, _dark, _flat : `int`
        Per-test failure threshold (a maximum-failures count, as in the reference code).
    config_options_bias, _dark, _flat, _defects, _ptc : `str`
        Extra pipetask options of the reference, recorded. cpflow interprets one:
        ``ptcFitType=EXPAPPROXIMATION|FULLCOVARIANCE|FULLCOVARIANCE_NO_B`` in ``config_options_ptc``.
    do_defects, do_ptc : `bool`
        Also make defects / a PTC (BIAS_DARK_FLAT only).
    do_gain_from_flat_pairs : `bool`
        Measure gains from flat pairs (BIAS_DARK_FLAT only; replaced by the PTC when ``do_ptc``).
    n_processes : `int`
        Parallel processes per pipetask (``-j``).
    certify_calib_begin_date, certify_calib_end_date : `str`
        ISO-8601 validity range of certified calibrations (TAI).
    oods_timeout : `float`
        Seconds to wait for the images of one type to be ingested, and for each job result.
    background_task_timeout : `float`
        Seconds per background task to wait for processing after data taking.
    note : `str` or `None`
        Note attached to each exposure.
    detectors : `list` [`int`]
        Detector ids (LSSTComCam/LSSTCam); empty means all. See `detector_ids`.
    filter, grating : `str`, `int` or `None`
        Filter and (LATISS) grating; see `physical_filter`.
    input_collections_bias, input_collections_verify_bias, ... : `str`
        Comma-separated input collections (default ``<instrument>/calib``).
    calib_collection : `str`
        CALIBRATION collection to certify into (default ``<instrument>/calib/daily``).
    repo : `str`
        The reference script's Butler repository (default ``/repo/<instrument>/butler+sasquatch.yaml``).
        cpflow records it but always uses its own deployment's butler.
    ignore : `list` [`str`]
        MTCS components to skip in status checks (LSSTCam only).
    """

    model_config = ConfigDict(extra="forbid", validate_default=False)

    # cpflow keys
    instrument: str
    camera: str = "simulated"
    simulator: SimulatorConfig | None = None

    # BaseBlockScript
    program: str | None = None
    reason: str | None = None
    test_case: TestCase | None = None

    # BaseMakeCalibrations
    script_mode: ScriptMode
    n_bias: int = Field(default=20, ge=1)
    n_discard_bias: int = Field(default=1, ge=0)
    n_dark: int = Field(default=22, ge=1)
    n_discard_dark: int = Field(default=1, ge=0)
    exp_times_dark: float | list[float] = Field(default_factory=lambda: list(_DEFAULT_EXP_TIMES_DARK))
    n_flat: int = Field(default=20, ge=1)
    n_discard_flat: int = Field(default=1, ge=0)
    exp_times_flat: float | list[float] = 5.0
    wait_between_exposures: float = Field(default=0.0, ge=0)
    generate_calibrations: bool = False
    do_verify: bool = True
    number_verification_tests_threshold_bias: int = Field(default=8, ge=0)
    number_verification_tests_threshold_dark: int = Field(default=8, ge=0)
    number_verification_tests_threshold_flat: int = Field(default=8, ge=0)
    config_options_bias: str = " "
    config_options_dark: str = " "
    config_options_flat: str = " "
    do_defects: bool = False
    config_options_defects: str = " "
    do_ptc: bool = False
    config_options_ptc: str = " "
    do_gain_from_flat_pairs: bool = True
    n_processes: int = Field(default=8, ge=1)
    certify_calib_begin_date: str = "1950-01-01"
    certify_calib_end_date: str = "2050-01-01"
    oods_timeout: float = Field(default=120.0, gt=0)
    background_task_timeout: float = Field(default=30.0, gt=0)
    note: str | None = None

    # Subclass keys (instrument-dependent defaults are filled in by the validator)
    detectors: list[int] = Field(default_factory=list)
    filter: str | int | None = None
    grating: str | int | None = None
    input_collections_bias: str = ""
    input_collections_verify_bias: str = ""
    input_collections_dark: str = ""
    input_collections_verify_dark: str = ""
    input_collections_flat: str = ""
    input_collections_verify_flat: str = ""
    input_collections_defects: str = ""
    input_collections_ptc: str = ""
    calib_collection: str = ""
    repo: str = ""
    ignore: list[str] = Field(default_factory=list)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _convert_validation_error(exc) from None

    @model_validator(mode="before")
    @classmethod
    def _check_and_fill_defaults(cls, data: Any) -> Any:
        """Run cpflow's own checks (all problems at once) and fill the instrument defaults."""
        return _prepare(data, list(cls.model_fields))

    # ------------------------------------------------------------------ derived values

    @property
    def image_types(self) -> list[str]:
        """Image types taken, in order: ``["BIAS"]``, ``["DARK"]``, ``["BIAS", "DARK"]`` or
        ``["BIAS", "DARK", "FLAT"]``."""
        return list(_IMAGE_TYPES_BY_MODE[self.script_mode])

    @staticmethod
    def _image_type(image_type: str) -> str:
        key = image_type.lower()
        if key.upper() not in IMAGE_TYPES:
            raise ValueError(f"unknown image type {image_type!r}; valid image types are {list(IMAGE_TYPES)}")
        return key

    def n_kept(self, image_type: str) -> int:
        """Number of exposures of ``image_type`` kept for processing (``n_bias`` etc.)."""
        value: int = getattr(self, f"n_{self._image_type(image_type)}")
        return value

    def n_discard(self, image_type: str) -> int:
        """Number of leading exposures of ``image_type`` that are taken and dropped."""
        value: int = getattr(self, f"n_discard_{self._image_type(image_type)}")
        return value

    def exposure_times(self, image_type: str) -> list[float]:
        """Exposure time of every exposure of ``image_type``, discarded ones first.

        Returns
        -------
        times : `list` [`float`]
            ``n_kept + n_discard`` values in seconds; zeros for BIAS.
        """
        key = self._image_type(image_type)
        count = self.n_kept(key) + self.n_discard(key)
        if key == "bias":
            return [0.0] * count
        value: float | list[float] = getattr(self, f"exp_times_{key}")
        if isinstance(value, list):
            return [float(v) for v in value]
        return [float(value)] * count

    @property
    def detector_ids(self) -> list[int]:
        """Detectors to process: ``[0]`` for LATISS, all of the instrument (sorted) when ``detectors``
        is empty, otherwise the configured ids, sorted."""
        if self.instrument == "LATISS":
            return [0]
        if self.detectors:
            return sorted(self.detectors)
        if self.instrument in instrument_names():
            return sorted(get_instrument(self.instrument).detector_ids)
        return list(_LSSTCAM_DETECTOR_IDS)

    @property
    def calib_types(self) -> list[str]:
        """Calibration types produced: the image types in lower case plus, for BIAS_DARK_FLAT,
        ``defects`` (``do_defects``), ``ptc`` (``do_ptc``) and ``gain`` (``do_gain_from_flat_pairs``
        and not ``do_ptc``)."""
        types = [t.lower() for t in self.image_types]
        if self.script_mode == ScriptMode.BIAS_DARK_FLAT:
            if self.do_defects:
                types.append("defects")
            if self.do_ptc:
                types.append("ptc")
            if self.do_gain_from_flat_pairs and not self.do_ptc:
                types.append("gain")
        return types

    @property
    def ptc_fit_type(self) -> str:
        """The PTC fit type: ``ptcFitType=...`` in ``config_options_ptc``, else EXPAPPROXIMATION."""
        match = _PTC_FIT_TYPE_OPTION.search(self.config_options_ptc)
        return match.group(1) if match else PTC_FIT_TYPES[0]

    def threshold(self, image_type: str) -> int:
        """``number_verification_tests_threshold_<type>`` for ``image_type``."""
        value: int = getattr(self, f"number_verification_tests_threshold_{self._image_type(image_type)}")
        return value

    @staticmethod
    def _split(collections: str) -> list[str]:
        return [c.strip() for c in collections.split(",") if c.strip()]

    def input_collections_verify(self, image_type: str) -> list[str]:
        """Input collections for verifying ``image_type`` (``input_collections_verify_<type>``, split)."""
        value: str = getattr(self, f"input_collections_verify_{self._image_type(image_type)}")
        return self._split(value)

    def input_collections(self, calib_type: str) -> list[str]:
        """Input collections for generating ``calib_type`` (``input_collections_<type>``, split).

        ``gain`` uses ``input_collections_ptc``, as in the reference script.
        """
        key = calib_type.lower()
        if key == "gain":
            key = "ptc"
        if key not in ("bias", "dark", "flat", "defects", "ptc"):
            raise ValueError(
                f"unknown calibration type {calib_type!r}; "
                "valid types are bias, dark, flat, defects, ptc, gain"
            )
        value: str = getattr(self, f"input_collections_{key}")
        return self._split(value)

    @property
    def certify_timespan_bounds(self) -> tuple[_dt.datetime, _dt.datetime]:
        """``(begin, end)`` of the certification timespan as naive datetimes (to be read as TAI)."""
        return _parse_datetime(self.certify_calib_begin_date), _parse_datetime(self.certify_calib_end_date)

    @property
    def physical_filter(self) -> str:
        """The physical filter the run uses.

        For LATISS ``"<filter>~<grating>"``, with ``empty`` for the one that is null; for the other
        instruments ``filter``. When both are null, the instrument's default filter (``empty`` for
        LSSTComCam / LSSTCam). A filter-wheel position (an integer) is rendered as its number.
        """
        if self.instrument == "LATISS":
            if self.filter is None and self.grating is None:
                return get_instrument("LATISS").default_filter
            if self.grating is None and isinstance(self.filter, str) and "~" in self.filter:
                return self.filter
            first = "empty" if self.filter is None else str(self.filter)
            second = "empty" if self.grating is None else str(self.grating)
            return f"{first}~{second}"
        if self.filter is None:
            if self.instrument in instrument_names():
                return get_instrument(self.instrument).default_filter
            return "empty"
        return str(self.filter)

    def to_document(self) -> dict[str, Any]:
        """Every key with its effective value, as a JSON-able dict.

        Keys that do not apply (``detectors`` for LATISS, ``grating`` outside LATISS, ``ignore``
        outside LSSTCam, ``simulator`` with ``camera: sal``) are left out, so the document validates
        again to an equal configuration.
        """
        doc: dict[str, Any] = self.model_dump(mode="json")
        if self.instrument == "LATISS":
            doc.pop("detectors")
        else:
            doc.pop("grating")
        if self.instrument != "LSSTCam":
            doc.pop("ignore")
        if self.camera != "simulated":
            doc.pop("simulator")
        return doc


def _convert_validation_error(exc: ValidationError) -> ConfigurationError:
    """Turn a pydantic `ValidationError` into a `ConfigurationError` with our messages."""
    messages: list[str] = []
    for err in exc.errors():
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, ConfigurationError):
            messages.extend(inner.errors)
            continue
        loc = ".".join(str(p) for p in err["loc"]) or "configuration"
        if err["type"] == "extra_forbidden":
            messages.append(f"unknown key {loc!r}; remove it")
        elif err["type"] == "missing":
            messages.append(f"{loc}: required; give a value")
        else:
            messages.append(f"{loc}: {err['msg']}; got {_describe(err.get('input'))}")
    return ConfigurationError(messages or [str(exc)])


def validate_run_configuration(data: Mapping[str, Any]) -> RunConfiguration:
    """Validate a submitted run configuration.

    Parameters
    ----------
    data : `~collections.abc.Mapping`
        The configuration keys and values, as parsed from YAML or JSON.

    Returns
    -------
    config : `RunConfiguration`
        The accepted configuration, with every default filled in.

    Raises
    ------
    ConfigurationError
        With one ``"<key>: <what is wrong>; <what is valid>"`` message per problem.
    """
    try:
        return RunConfiguration.model_validate(data)
    except ValidationError as exc:
        raise _convert_validation_error(exc) from None


def load_run_configuration(path: str | Path) -> RunConfiguration:
    """Read and validate a run configuration from a YAML file.

    Parameters
    ----------
    path : `str` or `~pathlib.Path`
        The YAML file; its top level must be a mapping.

    Returns
    -------
    config : `RunConfiguration`
        The accepted configuration.

    Raises
    ------
    ConfigurationError
        If the file cannot be read, is not valid YAML, has no mapping at the top level, or the
        configuration is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"{path}: cannot read the configuration file: {exc.strerror or exc}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigurationError(
            f"{path}: the top level must be a mapping of configuration keys to values, "
            f"got {type(data).__name__}"
        )
    return validate_run_configuration(data)

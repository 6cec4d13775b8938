"""Rules across keys, and what each instrument allows.

The rules here are those the reference script checks late or not at all (``reference/
make_calibrations_script.md`` §1.4): ``exp_times_*`` lengths against ``n_X + n_discard_X``, detector
ids of the instrument, filter and grating names, ``certify_calib_begin_date < certify_calib_end_date``,
options that only apply to ``BIAS_DARK_FLAT``, keys that do not apply to the instrument, and the one
pipetask option cpflow interprets (``ptcFitType``); and cpflow's own: ``calib_collection`` is not a
reserved collection, the data taking fits in a day and a simulated run's pixels fit their budget.
Each is a `~shared.runconfig.checked.Rule` that names the keys it reads, so it runs whenever those
keys are valid, even if others are not.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shared.filters import COMBINE, listed, wheel_names
from shared.instruments import Instrument, get_instrument, instrument_names
from shared.runconfig.checked import Problem, Rule, rule
from shared.runconfig.frames import parse_obs_id
from shared.runconfig.limits import MAX_DATA_TAKING_S
from shared.runconfig.simulator import MAX_SIMULATED_PIXELS
from shared.runconfig.vocabulary import INSTRUMENTS, PTC_FIT_TYPES, ScriptMode

if TYPE_CHECKING:
    from shared.runconfig.model import RunConfiguration

__all__ = [
    "COLLECTION_KEYS",
    "MOST_DETECTORS",
    "NOT_WITH_LISTED_FRAMES",
    "RUN_RULES",
    "check_ptc_options",
    "fill_instrument_defaults",
    "instrument_detector_ids",
    "parse_certify_date",
    "ptc_fit_type",
]

COLLECTION_KEYS: tuple[str, ...] = (
    "input_collections_bias",
    "input_collections_verify_bias",
    "input_collections_dark",
    "input_collections_verify_dark",
    "input_collections_flat",
    "input_collections_verify_flat",
    "input_collections_defects",
    "input_collections_ptc",
)
"""The comma-separated input-collection keys; each defaults to ``<instrument>/calib``."""

# Detector ids of an instrument without a cpflow definition (LSSTCam's 0..204 before it had one).
_LSSTCAM_DETECTOR_IDS: tuple[int, ...] = tuple(range(205))

_PTC_FIT_TYPE_OPTION = re.compile(r"ptcFitType\s*=\s*([A-Za-z_]+)")


def parse_certify_date(text: str) -> _dt.datetime:
    """Parse an ISO-8601 date or datetime without time zone; raise `ValueError` otherwise."""
    value = _dt.datetime.fromisoformat(text.strip())
    if value.tzinfo is not None:
        raise ValueError("has a time zone")
    return value


def instrument_detector_ids(instrument: str) -> list[int]:
    """The ids of ``instrument``'s science detectors, sorted (what an empty ``detectors`` means)."""
    if instrument in instrument_names():
        return sorted(get_instrument(instrument).science_detector_ids)
    return list(_LSSTCAM_DETECTOR_IDS)


MOST_DETECTORS = max(len(instrument_detector_ids(name)) for name in INSTRUMENTS)
"""Most ``detectors`` a configuration may list: the largest camera's (LSSTCam, 205)."""


def fill_instrument_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Fill the defaults that depend on other keys into a submitted mapping (in place).

    ``camera`` defaults to ``simulated``, which gets an empty ``simulator`` section; a known
    ``instrument`` sets the defaults of the collections and of ``repo``, as in the reference subclasses.
    """
    camera = data.setdefault("camera", "simulated")
    if camera == "simulated" and data.get("simulator") is None:
        data["simulator"] = {}
    instrument = data.get("instrument")
    if isinstance(instrument, str) and instrument in INSTRUMENTS:
        for key in COLLECTION_KEYS:
            data.setdefault(key, f"{instrument}/calib")
        data.setdefault("calib_collection", f"{instrument}/calib/daily")
        data.setdefault("repo", f"/repo/{instrument}/butler+sasquatch.yaml")
    return data


def check_ptc_options(options: str) -> str:
    """Check the ``ptcFitType=...`` option of ``config_options_ptc``, if there is one."""
    match = _PTC_FIT_TYPE_OPTION.search(options)
    if match and match.group(1) not in PTC_FIT_TYPES:
        raise ValueError(
            f"unknown ptcFitType {match.group(1)!r}; valid fit types are: {', '.join(PTC_FIT_TYPES)}"
        )
    return options


def ptc_fit_type(options: str) -> str:
    """The PTC fit type that ``config_options_ptc`` chooses (the first of `PTC_FIT_TYPES` by default)."""
    match = _PTC_FIT_TYPE_OPTION.search(options)
    return match.group(1) if match else PTC_FIT_TYPES[0]


# --------------------------------------------------------------------------------------------------
# Rules of a RunConfiguration, in the order their messages are reported.


@rule("instrument", "camera")
def _simulated_instrument(config: RunConfiguration, given: frozenset[str]) -> Iterator[Problem]:
    if config.camera == "simulated" and config.instrument not in instrument_names():
        yield (
            "instrument",
            f"{config.instrument} cannot be simulated (cpflow has no {config.instrument} geometry yet); "
            f"only {' and '.join(instrument_names())} can be simulated; use camera: sal for "
            f"{config.instrument}",
        )


@rule("camera")
def _simulator_section(config: RunConfiguration, given: frozenset[str]) -> Iterator[Problem]:
    if config.camera != "simulated" and "simulator" in given:
        yield (
            "simulator",
            f"only allowed with camera: simulated (camera is {config.camera}); remove the simulator section",
        )


_LISTED_FRAMES = tuple(f"exposures_{t}" for t in ("bias", "dark", "flat"))

NOT_WITH_LISTED_FRAMES: tuple[str, ...] = (
    "n_bias",
    "n_dark",
    "n_flat",
    "exp_times_dark",
    "exp_times_flat",
    "wait_between_exposures",
)
"""Keys about taking images, which a ``camera: none`` run does not do (its frames are listed)."""


@rule(
    "camera",
    "instrument",
    "script_mode",
    *_LISTED_FRAMES,
    *NOT_WITH_LISTED_FRAMES,
    "n_discard_bias",
    "n_discard_dark",
    "n_discard_flat",
)
def _listed_frames(config: RunConfiguration, given: frozenset[str]) -> Iterator[Problem]:
    """``camera: none`` lists each image type's frames, and only its types; no other camera lists any."""
    types = [t.lower() for t in config.image_types]
    if config.camera != "none":
        for key in _LISTED_FRAMES:
            if key in given:
                yield (
                    key,
                    f"only used with camera: none (camera is {config.camera}, which takes the frames); "
                    "set camera: none to use frames already in the butler, or remove the key",
                )
        return
    for key in NOT_WITH_LISTED_FRAMES:
        if key in given:
            yield (
                key,
                "not used with camera: none (no images are taken: the kept frames are those exposures_* "
                "lists after the n_discard_* first, their exposure times are in their headers); "
                "remove the key",
            )
    seen: dict[int, str] = {}
    for image_type in ("bias", "dark", "flat"):
        key, discard = f"exposures_{image_type}", f"n_discard_{image_type}"
        items = getattr(config, key)
        if image_type not in types:
            if items:
                yield (
                    key,
                    f"script_mode {config.script_mode} takes no {image_type} frames; remove the key or "
                    "choose a script_mode that does",
                )
            continue
        if not items:
            yield (
                key,
                f"camera: none takes no images, so the run needs its {image_type} frames: list them "
                "(exposure ids or obs ids such as AT_O_20240624_000169), in the order they were taken",
            )
            continue
        n_discard = getattr(config, discard)
        if len(items) <= n_discard:
            yield (
                key,
                f"lists {len(items)} frame(s) and {discard} = {n_discard} drops the first {n_discard}, "
                f"which leaves none; list more frames or set a smaller {discard}",
            )
        for item in items:
            if isinstance(item, str):
                named, exposure_id = parse_obs_id(item)
                if named != config.instrument:
                    yield key, f"{item} is an obs id of {named}; the run's instrument is {config.instrument}"
            else:
                exposure_id = item
            if exposure_id in seen and seen[exposure_id] != key:
                yield (
                    key,
                    f"{item} is also listed in {seen[exposure_id]}; a frame has one image type, list it once",
                )
            seen.setdefault(exposure_id, key)


def _exposure_time_count(image_type: str) -> Rule[Any]:
    key, n_key, d_key = f"exp_times_{image_type}", f"n_{image_type}", f"n_discard_{image_type}"

    @rule("camera", key, n_key, d_key)
    def check(config: RunConfiguration, given: frozenset[str]) -> Iterator[Problem]:
        if config.camera == "none":
            return  # _listed_frames
        value = getattr(config, key)
        expected = getattr(config, n_key) + getattr(config, d_key)
        if isinstance(value, list) and len(value) != expected:
            origin = "" if key in given else " (the default list)"
            yield (
                key,
                f"has {len(value)} values{origin} but {n_key} + {d_key} = {expected}; give one value "
                f"per exposure ({expected} values) or a single number",
            )

    return check


@rule("certify_calib_begin_date", "certify_calib_end_date")
def _begin_before_end(config: RunConfiguration, given: frozenset[str]) -> Iterator[Problem]:
    begin, end = config.certify_calib_begin_date, config.certify_calib_end_date
    if parse_certify_date(begin) >= parse_certify_date(end):
        yield (
            "certify_calib_begin_date",
            f"{begin} is not before certify_calib_end_date {end}; the begin date must be earlier than "
            "the end date",
        )


@rule("script_mode", "do_defects", "do_ptc")
def _bias_dark_flat_options(config: RunConfiguration, given: frozenset[str]) -> Iterator[Problem]:
    # do_gain_from_flat_pairs defaults to true, so it simply does not apply in the other modes.
    if config.script_mode == ScriptMode.BIAS_DARK_FLAT:
        return
    for key in ("do_defects", "do_ptc"):
        if getattr(config, key):
            yield (
                key,
                f"only used with script_mode BIAS_DARK_FLAT, got {config.script_mode}; set script_mode: "
                f"BIAS_DARK_FLAT or remove {key}",
            )


@rule("instrument")
def _keys_of_instrument(config: RunConfiguration, given: frozenset[str]) -> Iterator[Problem]:
    instrument = config.instrument
    if instrument == "LATISS" and "detectors" in given:
        yield "detectors", "not a LATISS key (LATISS always uses detector 0); remove the key"
    if instrument != "LATISS" and "grating" in given:
        yield "grating", f"only a LATISS key (instrument is {instrument}); remove the key"
    if instrument != "LSSTCam" and "ignore" in given:
        yield "ignore", f"only an LSSTCam key (instrument is {instrument}); remove the key"


@rule("instrument", "detectors")
def _detectors_of_instrument(config: RunConfiguration, given: frozenset[str]) -> Iterator[Problem]:
    if config.instrument == "LATISS":
        return
    valid = instrument_detector_ids(config.instrument)
    if config.instrument in instrument_names():
        inst = get_instrument(config.instrument)
        corner = [
            inst.detector(d) for d in sorted(set(config.detectors) & set(inst.detector_ids) - set(valid))
        ]
        if corner:
            named = ", ".join(f"{d.id} ({d.name}, {d.purpose.lower()})" for d in corner)
            yield (
                "detectors",
                f"{named}: corner-raft guider and wavefront sensors take no bias, dark or flat "
                f"calibrations here; the science sensors are {valid[0]}..{valid[-1]}",
            )
        invalid = sorted(set(config.detectors) - set(inst.detector_ids))
    else:
        invalid = sorted(set(config.detectors) - set(valid))
    if invalid:
        listed = f" ({', '.join(map(str, valid))})" if len(valid) <= 16 else ""
        yield (
            "detectors",
            f"{invalid} not detectors of {config.instrument}; valid ids are {valid[0]}..{valid[-1]}{listed}",
        )


def _wheel_choices(inst: Instrument, key: str) -> str:
    """The names the ``filter`` (or LATISS ``grating``) key takes, for a message."""
    if not inst.has_grating:
        return listed([name for name, _ in inst.filters], 20)
    filters, gratings = wheel_names(inst.filters)
    if key == "grating":
        return listed(gratings)
    return f"{listed(filters)}, or a whole physical filter <filter>~<grating> without a grating key"


def _blamed_key(inst: Instrument, config: RunConfiguration, physical: str) -> str:
    """Which key made a physical filter the instrument does not have."""
    if not inst.has_grating or config.grating is None:
        return "filter"
    filters, _ = wheel_names(inst.filters)
    return "filter" if physical.partition(COMBINE)[0] not in filters else "grating"


@rule("instrument", "camera", "filter", "grating")
def _filter_and_grating(config: RunConfiguration, given: frozenset[str]) -> Iterator[Problem]:
    """The physical filter of ``filter`` (and LATISS ``grating``) is one of obs_lsst's.

    A wheel position (an integer) is for the real camera: it is not checked (the simulated camera
    needs names), and with one the other LATISS key is only checked to be in its wheel.
    """
    if config.instrument not in instrument_names():
        return
    inst = get_instrument(config.instrument)
    positions = False
    for key, value in (("filter", config.filter), ("grating", config.grating)):
        if isinstance(value, int):
            positions = True
            if config.camera == "simulated":
                yield (
                    key,
                    f"the simulated camera needs a name, not a wheel position ({value}); "
                    f"valid names are: {_wheel_choices(inst, key)}",
                )
    if positions:  # the other key may still be a name that is in neither wheel
        if inst.has_grating:
            names = wheel_names(inst.filters)
            wheels = zip(("filter", "grating"), (config.filter, config.grating), names, strict=True)
            for key, value, valid in wheels:
                if isinstance(value, str) and value not in valid:
                    yield key, f"unknown {key} {value!r}; valid values are: {_wheel_choices(inst, key)}"
        return
    physical = config.physical_filter
    problem = inst.filter_problem(physical)
    if problem is None:
        return
    key = _blamed_key(inst, config, physical)
    if inst.has_grating:
        yield key, f"physical_filter {physical!r} is not one of obs_lsst's {inst.name} filters: {problem}"
    else:
        yield key, f"unknown filter {physical!r}: {problem}"


_COUNT_KEYS = tuple(f"n_{k}{t}" for t in ("bias", "dark", "flat") for k in ("", "discard_"))


@rule("script_mode", "wait_between_exposures", "exp_times_dark", "exp_times_flat", *_COUNT_KEYS)
def _data_taking_time(config: RunConfiguration, given: frozenset[str]) -> Iterator[Problem]:
    exposures = [t for image_type in config.image_types for t in config.exposure_times(image_type)]
    seconds = sum(exposures) + len(exposures) * config.wait_between_exposures
    if seconds > MAX_DATA_TAKING_S:
        yield (
            "",
            f"data taking: {len(exposures)} exposures (exp_times_*, with wait_between_exposures after "
            f"each) would take {seconds / 3600:.1f} h, more than the {MAX_DATA_TAKING_S / 3600:g} h a run "
            "may take; take fewer or shorter exposures, or wait less",
        )


@rule("instrument", "camera", "simulator", "detectors", "script_mode", *_COUNT_KEYS)
def _simulated_pixels(config: RunConfiguration, given: frozenset[str]) -> Iterator[Problem]:
    if (
        config.camera != "simulated"
        or config.simulator is None
        or config.instrument not in instrument_names()
    ):
        return
    shape = config.simulator.amp_data_shape
    inst = get_instrument(config.instrument)
    pixels_per_frame = 0
    detectors = [
        inst.detector(d) for d in config.detector_ids if d in inst.detector_ids
    ]  # others: a rule above
    for detector in detectors:
        if shape is not None:
            detector = detector.with_data_shape(*shape)
        pixels_per_frame += sum(amp.raw_rows * amp.raw_cols for amp in detector.amplifiers)
    n_exposures = sum(config.n_kept(t) + config.n_discard(t) for t in config.image_types)
    pixels = n_exposures * pixels_per_frame
    if pixels > MAX_SIMULATED_PIXELS:
        yield (
            "simulator",
            f"the run would simulate {n_exposures} exposures x {len(detectors)} detector(s), "
            f"{pixels:.3g} raw pixels, more than the {MAX_SIMULATED_PIXELS:.3g} a simulated run may write; "
            "take fewer exposures or detectors, or set a smaller simulator.amp_data_shape",
        )


def _reserved_collections(instrument: str) -> dict[str, str]:
    # The names of shared.butler.collections (raw_collection, calib_chain, run_collection), not imported so
    # that reading a configuration needs no butler; tests/unit/test_identifiers.py checks they agree.
    return {
        f"{instrument}/raw/all": f"holds the {instrument} raws",
        f"{instrument}/calib": f"is the CHAINED collection of {instrument}'s certified calibrations",
        f"{instrument}/runs": "holds every run's outputs",
    }


@rule("calib_collection")
def _calib_collection_not_reserved(config: RunConfiguration, given: frozenset[str]) -> Iterator[Problem]:
    name = config.calib_collection
    for instrument in INSTRUMENTS:
        for reserved, what in _reserved_collections(instrument).items():
            if name == reserved or (reserved.endswith("/runs") and name.startswith(reserved + "/")):
                yield (
                    "calib_collection",
                    f"{name!r} is reserved ({reserved} {what}); certify into a CALIBRATION collection "
                    f"of its own, such as {instrument}/calib/daily",
                )
                return


RUN_RULES: tuple[Rule[Any], ...] = (
    _simulated_instrument,
    _listed_frames,
    _exposure_time_count("dark"),
    _exposure_time_count("flat"),
    _begin_before_end,
    _keys_of_instrument,
    _detectors_of_instrument,
    _filter_and_grating,
    _bias_dark_flat_options,
    _simulator_section,
    _calib_collection_not_reserved,
    _data_taking_time,
    _simulated_pixels,
)
"""The rules of a `~shared.runconfig.model.RunConfiguration`, in the order their messages are reported."""

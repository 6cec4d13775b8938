"""`RunConfiguration`: the keys of a run, their types, defaults and limits, and the values derived from them.

Each key's type and range is stated once, in its field; `shared.runconfig.errors` words pydantic's
findings and `shared.runconfig.rules` adds the checks across keys.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
)

from shared.identifiers import validate_collection_name
from shared.instruments import get_instrument, instrument_names
from shared.runconfig.checked import CheckedModel, Rule
from shared.runconfig.errors import ConfigurationError, Noun, configuration_error, describe, key_text
from shared.runconfig.frames import MAX_EXPOSURE_ID, FrameRef, frame_ref, parse_obs_id
from shared.runconfig.limits import (
    MAX_DISCARDED_FRAMES,
    MAX_EXPOSURE_TIME_S,
    MAX_FRAMES_PER_TYPE,
    MAX_KEPT_FRAMES,
    MAX_LIST_ITEMS,
    MAX_PROCESSES,
    MAX_TEXT_LENGTH,
    MAX_THRESHOLD,
    MAX_TIMEOUT_S,
    MAX_WAIT_BETWEEN_EXPOSURES_S,
    at_most,
)
from shared.runconfig.rules import (
    MOST_DETECTORS,
    NOT_WITH_LISTED_FRAMES,
    RUN_RULES,
    check_ptc_options,
    fill_instrument_defaults,
    instrument_detector_ids,
    parse_certify_date,
    ptc_fit_type,
)
from shared.runconfig.simulator import SimulatorConfig
from shared.runconfig.vocabulary import (
    IMAGE_TYPES,
    IMAGE_TYPES_BY_MODE,
    CameraName,
    InstrumentName,
    ScriptMode,
    VerifyNoiseRule,
)

__all__ = ["RunConfiguration", "TestCase", "validate_run_configuration"]

_DEFAULT_EXP_TIMES_DARK: list[float] = [5.0, 5.0, 5.0, 5.0, 5.0, 15.0, 15.0] + [30.0] * 16


def _number_or_list(value: Any) -> str | None:
    if isinstance(value, list):
        return "list"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "number"
    return None


def _date_text(value: Any) -> Any:
    # YAML turns unquoted dates into date or datetime objects.
    return value.isoformat() if isinstance(value, _dt.date) else value


def _certify_date(text: str) -> str:
    try:
        parse_certify_date(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO-8601 date or datetime without time zone (TAI); "
            "give e.g. 2024-01-31 or 2024-01-31T12:00:00"
        ) from None
    return text


def _collection_list(value: str) -> str:
    names = [c.strip() for c in value.split(",") if c.strip()]
    if not names:
        raise ValueError("names no collection; give comma-separated collection names")
    for name in names:
        validate_collection_name(name)
    return value


def _calib_collection(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; give the CALIBRATION collection to certify into")
    return validate_collection_name(value)


def _each_once(ids: list[int]) -> list[int]:
    dupes = sorted({d for d in ids if ids.count(d) > 1})
    if dupes:
        raise ValueError(f"ids {dupes} are listed more than once; list each detector once")
    return ids


def _exposure_item(value: Any) -> Any:
    """An ``exposures_*`` item: an exposure id (an integer ≥ 1) or an obs id."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_EXPOSURE_ID:
            raise ValueError(f"an exposure id must be an integer from 1 to {MAX_EXPOSURE_ID}, got {value}")
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT_LENGTH:
            raise ValueError(f"has {len(value)} characters, more than the maximum {MAX_TEXT_LENGTH}")
        parse_obs_id(value)
        return value
    raise ValueError(
        "must be an exposure id (an integer) or an obs id such as AT_O_20240624_000169, "
        f"got {describe(value)}"
    )


def _frames_once(items: list[int | str]) -> list[int | str]:
    ids = [frame_ref(item).exposure_id for item in items]
    dupes = sorted({str(item) for item, i in zip(items, ids, strict=True) if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"{', '.join(dupes)} name the same exposure more than once; list each frame once")
    return items


def _filter_choice(value: Any) -> Any:
    """A filter or grating: a name, a filter-wheel position (an integer ≥ 1) or null."""
    if value is None:
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT_LENGTH:
            raise ValueError(
                f"has {len(value)} characters, more than the maximum {MAX_TEXT_LENGTH}; give a name"
            )
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"a filter-wheel position must be an integer ≥ 1, got {value}")
        return value
    raise ValueError(f"must be a name, an integer ≥ 1 or null, got {describe(value)}")


_Seconds = Annotated[float, Field(strict=True, allow_inf_nan=False), Noun("a number of seconds")]
_Count = Annotated[int, Field(strict=True, ge=1, le=MAX_KEPT_FRAMES)]
_Discarded = Annotated[int, Field(strict=True, ge=0, le=MAX_DISCARDED_FRAMES)]
_Threshold = Annotated[int, Field(strict=True, ge=0, le=MAX_THRESHOLD)]
_ExposureTime = Annotated[_Seconds, Field(ge=0, le=MAX_EXPOSURE_TIME_S)]
_ExposureTimes = Annotated[
    Annotated[_ExposureTime, Tag("number")]
    | Annotated[
        list[_ExposureTime],
        at_most(MAX_FRAMES_PER_TYPE),
        Field(min_length=1),
        Tag("list"),
        Noun("a non-empty list with one exposure time per exposure"),
    ],
    Discriminator(_number_or_list),
]
_Timeout = Annotated[_Seconds, Field(gt=0, le=MAX_TIMEOUT_S)]
_Text = Annotated[StrictStr, Field(max_length=MAX_TEXT_LENGTH)]
_Collections = Annotated[_Text, AfterValidator(_collection_list)]
_CertifyDate = Annotated[
    StrictStr,
    BeforeValidator(_date_text),
    AfterValidator(_certify_date),
    Noun("an ISO-8601 date or datetime such as 2024-01-31"),
]
_Exposures = Annotated[
    list[Annotated[StrictInt | StrictStr, BeforeValidator(_exposure_item)]],
    at_most(MAX_FRAMES_PER_TYPE),
    AfterValidator(_frames_once),
    Noun("a list of exposure ids (integers) or obs ids such as AT_O_20240624_000169"),
]
_FilterChoice = Annotated[StrictStr | StrictInt | None, BeforeValidator(_filter_choice)]


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

    name: _Text | None = None
    execution: _Text | None = None
    version: _Text
    initial_step: StrictInt | None = None
    project: _Text | None = None


class RunConfiguration(CheckedModel):
    """The accepted configuration of one calibration run.

    Construct it with `validate_run_configuration` or `~shared.runconfig.load_run_configuration`,
    or directly with keyword arguments; any problem raises `ConfigurationError` listing every problem.

    Attributes
    ----------
    instrument : `str`
        ``LATISS``, ``LSSTComCam`` or ``LSSTCam`` (required; cpflow key).
    camera : `str`
        ``simulated`` (cpflow's simulator, default), ``sal`` (the real camera) or ``none`` (no
        images are taken: the run uses frames that are, or will be, in the raw collection).
    simulator : `SimulatorConfig` or `None`
        Simulator settings; present exactly when ``camera`` is ``simulated``.
    exposures_bias, exposures_dark, exposures_flat : `list` [`int` or `str`]
        With ``camera: none`` (and only then): the frames of each image type, as exposure ids or obs
        ids, in the order they were taken; the first ``n_discard_<type>`` are dropped. See
        `frames`.
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
    verify_noise_rule : `str`
        Which bias/dark NOISE rule decides (cpflow key): ``cpflow`` (default) compares the
        residual's noise with the noise expected given the reference it was made against (number
        of frames, their noise; the bias's for a dark); ``cp_verify`` with the bare read noise, as
        cp_verify. Both are computed and reported; see README "Verification".
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

    # cpflow keys
    instrument: InstrumentName
    camera: CameraName = "simulated"
    simulator: SimulatorConfig | None = None
    exposures_bias: _Exposures = Field(default_factory=list)
    exposures_dark: _Exposures = Field(default_factory=list)
    exposures_flat: _Exposures = Field(default_factory=list)

    # BaseBlockScript
    program: _Text | None = None
    reason: _Text | None = None
    test_case: TestCase | None = None

    # BaseMakeCalibrations
    script_mode: ScriptMode
    n_bias: _Count = 20
    n_discard_bias: _Discarded = 1
    n_dark: _Count = 22
    n_discard_dark: _Discarded = 1
    exp_times_dark: _ExposureTimes = Field(default_factory=lambda: list(_DEFAULT_EXP_TIMES_DARK))
    n_flat: _Count = 20
    n_discard_flat: _Discarded = 1
    exp_times_flat: _ExposureTimes = 5.0
    wait_between_exposures: Annotated[_Seconds, Field(ge=0, le=MAX_WAIT_BETWEEN_EXPOSURES_S)] = 0.0
    generate_calibrations: StrictBool = False
    do_verify: StrictBool = True
    number_verification_tests_threshold_bias: _Threshold = 8
    number_verification_tests_threshold_dark: _Threshold = 8
    number_verification_tests_threshold_flat: _Threshold = 8
    verify_noise_rule: VerifyNoiseRule = "cpflow"
    config_options_bias: _Text = " "
    config_options_dark: _Text = " "
    config_options_flat: _Text = " "
    do_defects: StrictBool = False
    config_options_defects: _Text = " "
    do_ptc: StrictBool = False
    config_options_ptc: Annotated[_Text, AfterValidator(check_ptc_options)] = " "
    do_gain_from_flat_pairs: StrictBool = True
    n_processes: Annotated[int, Field(strict=True, ge=1, le=MAX_PROCESSES)] = 8
    certify_calib_begin_date: _CertifyDate = "1950-01-01"
    certify_calib_end_date: _CertifyDate = "2050-01-01"
    oods_timeout: _Timeout = 120.0
    background_task_timeout: _Timeout = 30.0
    note: _Text | None = None

    # Subclass keys (the instrument-dependent defaults are filled in by rules.fill_instrument_defaults)
    detectors: Annotated[
        list[StrictInt],
        at_most(MOST_DETECTORS),
        AfterValidator(_each_once),
        Noun("a list of detector ids (integers), [] for all"),
    ] = Field(default_factory=list)
    filter: _FilterChoice = None
    grating: _FilterChoice = None
    input_collections_bias: _Collections = ""
    input_collections_verify_bias: _Collections = ""
    input_collections_dark: _Collections = ""
    input_collections_verify_dark: _Collections = ""
    input_collections_flat: _Collections = ""
    input_collections_verify_flat: _Collections = ""
    input_collections_defects: _Collections = ""
    input_collections_ptc: _Collections = ""
    calib_collection: Annotated[StrictStr, AfterValidator(_calib_collection)] = ""
    repo: _Text = ""
    ignore: Annotated[
        list[_Text],
        at_most(MAX_LIST_ITEMS),
        Noun("a list of MTCS component names (strings)"),
    ] = Field(default_factory=list)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise configuration_error(exc, type(self)) from None

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        return fill_instrument_defaults(data)

    @classmethod
    def rules(cls) -> tuple[Rule[Any], ...]:
        return RUN_RULES

    # ------------------------------------------------------------------ derived values

    @property
    def image_types(self) -> list[str]:
        """Image types taken, in order: ``["BIAS"]``, ``["DARK"]``, ``["BIAS", "DARK"]`` or
        ``["BIAS", "DARK", "FLAT"]``."""
        return list(IMAGE_TYPES_BY_MODE[self.script_mode])

    @staticmethod
    def _image_type(image_type: str) -> str:
        key = image_type.lower()
        if key.upper() not in IMAGE_TYPES:
            raise ValueError(f"unknown image type {image_type!r}; valid image types are {list(IMAGE_TYPES)}")
        return key

    def n_kept(self, image_type: str) -> int:
        """Number of exposures of ``image_type`` kept for processing (``n_bias`` etc.; with
        ``camera: none`` the frames listed after the discarded ones)."""
        key = self._image_type(image_type)
        if self.camera == "none":
            return max(len(self.frames(key)) - self.n_discard(key), 0)
        value: int = getattr(self, f"n_{key}")
        return value

    def frames(self, image_type: str) -> list[FrameRef]:
        """The frames ``exposures_<type>`` lists (``camera: none``), discarded ones first."""
        items: list[int | str] = getattr(self, f"exposures_{self._image_type(image_type)}")
        return [frame_ref(item) for item in items]

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
        if self.camera == "none":
            return []  # not taken here: the frames' own exposure times are in their records
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
        return instrument_detector_ids(self.instrument)

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
        return ptc_fit_type(self.config_options_ptc)

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
        begin, end = self.certify_calib_begin_date, self.certify_calib_end_date
        return parse_certify_date(begin), parse_certify_date(end)

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
        if self.camera == "none":
            for key in NOT_WITH_LISTED_FRAMES:
                doc.pop(key)
        else:
            for image_type in IMAGE_TYPES:
                doc.pop(f"exposures_{image_type.lower()}")
        return doc


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
    if not isinstance(data, Mapping):
        raise ConfigurationError(
            f"configuration: must be a mapping of keys to values, got {type(data).__name__}"
        )
    return RunConfiguration(**{key_text(key): value for key, value in data.items()})

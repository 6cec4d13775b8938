"""The configuration of one calibration run.

The keys, defaults and meanings are those of the reference ScriptQueue script
``BaseMakeCalibrations`` and its LATISS / LSSTComCam / LSSTCam subclasses (``ts_externalscripts``,
see ``reference/make_calibrations_script.md`` §1), plus cpflow's own keys ``instrument``, ``camera``
and ``simulator``. An operator can therefore paste the configuration they would give the ScriptQueue.

Unlike the reference, everything is checked when the configuration is submitted: the length of
``exp_times_*`` against ``n_X + n_discard_X``, null counts, detector ids against the instrument,
``certify_calib_begin_date < certify_calib_end_date``, keys that do not apply to the instrument, and
unknown keys. Limits keep a run bounded (frames, times, text, list lengths, simulated pixels),
collection names are checked (`shared.identifiers`), and the YAML file itself is bounded before it
is parsed. Every problem is reported (not only the first) as ``"<key>: <what is wrong>; <what is
valid>"`` in a `ConfigurationError`.

Modules: `~shared.runconfig.vocabulary` (instruments, cameras, modes, image and fit types),
`~shared.runconfig.limits` (the limits of a run, with why), `~shared.runconfig.model`
(`RunConfiguration`, its keys and derived values), `~shared.runconfig.simulator` (the ``simulator``
section and its faults, with their defaults and limits), `~shared.runconfig.rules` (checks across
keys and per instrument), `~shared.runconfig.checked` (how those rules run beside pydantic's field
checks), `~shared.runconfig.errors` (`ConfigurationError` and the one converter of pydantic's
errors into cpflow's messages) and `~shared.runconfig.loading` (reading a YAML file, bounded).
"""

from shared.runconfig.errors import ConfigurationError
from shared.runconfig.loading import load_run_configuration, load_run_document
from shared.runconfig.model import RunConfiguration, TestCase, validate_run_configuration
from shared.runconfig.simulator import FAULT_KINDS, SimulatorConfig, SimulatorFault
from shared.runconfig.vocabulary import CAMERAS, INSTRUMENTS, PTC_FIT_TYPES, VERIFY_NOISE_RULES, ScriptMode

__all__ = [
    "CAMERAS",
    "FAULT_KINDS",
    "INSTRUMENTS",
    "PTC_FIT_TYPES",
    "VERIFY_NOISE_RULES",
    "ConfigurationError",
    "RunConfiguration",
    "ScriptMode",
    "SimulatorConfig",
    "SimulatorFault",
    "TestCase",
    "load_run_configuration",
    "load_run_document",
    "validate_run_configuration",
]

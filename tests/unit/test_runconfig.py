"""Tests of shared.runconfig: reference defaults, submission-time checks and their messages."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from shared.runconfig import (
    ConfigurationError,
    RunConfiguration,
    SimulatorConfig,
    load_run_configuration,
    validate_run_configuration,
)


def _errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigurationError) as info:
        validate_run_configuration(data)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def test_reference_defaults() -> None:
    cfg = validate_run_configuration({"instrument": "LATISS", "script_mode": "BIAS_DARK_FLAT"})
    assert (cfg.n_bias, cfg.n_discard_bias) == (20, 1)
    assert (cfg.n_dark, cfg.n_discard_dark) == (22, 1)
    assert (cfg.n_flat, cfg.n_discard_flat) == (20, 1)
    assert cfg.exp_times_dark == [5, 5, 5, 5, 5, 15, 15] + [30] * 16
    assert cfg.exposure_times("dark") == [5.0] * 5 + [15.0] * 2 + [30.0] * 16
    assert cfg.exposure_times("FLAT") == [5.0] * 21
    assert cfg.exposure_times("BIAS") == [0.0] * 21
    assert cfg.wait_between_exposures == 0
    assert cfg.generate_calibrations is False
    assert cfg.do_verify is True
    assert cfg.threshold("BIAS") == cfg.threshold("DARK") == cfg.threshold("FLAT") == 8
    for name in ("bias", "dark", "flat", "defects", "ptc"):
        assert getattr(cfg, f"config_options_{name}") == " "
    assert (cfg.do_defects, cfg.do_ptc, cfg.do_gain_from_flat_pairs) == (False, False, True)
    assert cfg.n_processes == 8
    assert (cfg.certify_calib_begin_date, cfg.certify_calib_end_date) == ("1950-01-01", "2050-01-01")
    assert cfg.certify_timespan_bounds == (dt.datetime(1950, 1, 1), dt.datetime(2050, 1, 1))
    assert (cfg.oods_timeout, cfg.background_task_timeout) == (120, 30)
    assert cfg.program is None and cfg.reason is None and cfg.note is None and cfg.test_case is None
    assert cfg.input_collections_bias == "LATISS/calib"
    assert cfg.calib_collection == "LATISS/calib/daily"
    assert cfg.repo == "/repo/LATISS/butler+sasquatch.yaml"
    assert cfg.detector_ids == [0]
    assert cfg.physical_filter == "empty~empty"
    assert cfg.camera == "simulated"
    assert cfg.simulator == SimulatorConfig(seed=0, amp_data_shape=None, bias_level_adu=15000.0)
    assert cfg.image_types == ["BIAS", "DARK", "FLAT"]
    assert cfg.calib_types == ["bias", "dark", "flat", "gain"]


def test_scalar_exp_times_expands() -> None:
    cfg = validate_run_configuration(
        {
            "instrument": "LSSTComCam",
            "script_mode": "BIAS_DARK",
            "n_dark": 3,
            "n_discard_dark": 2,
            "exp_times_dark": 12,
        }
    )
    assert cfg.exposure_times("DARK") == [12.0] * 5
    assert cfg.n_kept("DARK") == 3 and cfg.n_discard("DARK") == 2


def test_wrong_length_exp_times_rejected() -> None:
    errors = _errors({"instrument": "LATISS", "script_mode": "DARK", "exp_times_dark": [1, 2, 3]})
    assert errors == [
        "exp_times_dark: has 3 values but n_dark + n_discard_dark = 23; give one value per exposure "
        "(23 values) or a single number"
    ]


def test_negative_exp_time_rejected() -> None:
    errors = _errors({"instrument": "LATISS", "script_mode": "BIAS_DARK_FLAT", "exp_times_flat": -1})
    assert len(errors) == 1 and errors[0].startswith("exp_times_flat:") and "≥ 0" in errors[0]


def test_null_count_rejected() -> None:
    errors = _errors({"instrument": "LATISS", "script_mode": "BIAS", "n_bias": None})
    assert errors == ["n_bias: must be an integer ≥ 1, got null"]


def test_unknown_key_suggests_the_close_one() -> None:
    errors = _errors({"instrument": "LATISS", "script_mode": "BIAS", "n_biass": 5})
    assert errors == ["unknown key 'n_biass'; did you mean 'n_bias'?"]


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    (message,) = _errors({"instrument": "LATISS", "script_mode": "BIAS", "zzz_qqq": 1})
    assert message.startswith("unknown key 'zzz_qqq'; valid keys are:")
    assert "script_mode" in message and "oods_timeout" in message
    # The per-type families are folded: every key is named, the message stays short.
    assert "n_{bias,dark,flat}" in message and "input_collections_verify_{bias,dark,flat}" in message
    assert len(message) < 800


def test_missing_required_keys() -> None:
    errors = _errors({})
    assert any(e.startswith("script_mode: required") and "BIAS_DARK_FLAT" in e for e in errors)
    assert any(e.startswith("instrument: required") and "LSSTComCam" in e for e in errors)


def test_latiss_detectors_rejected() -> None:
    (message,) = _errors({"instrument": "LATISS", "script_mode": "BIAS", "detectors": [0]})
    assert message.startswith("detectors:") and "LATISS always uses detector 0" in message


def test_comcam_invalid_detectors_rejected() -> None:
    (message,) = _errors({"instrument": "LSSTComCam", "script_mode": "BIAS", "detectors": [0, 9]})
    assert message.startswith("detectors: [9]")
    assert "0, 1, 2, 3, 4, 5, 6, 7, 8" in message


def test_duplicate_detectors_rejected() -> None:
    (message,) = _errors({"instrument": "LSSTComCam", "script_mode": "BIAS", "detectors": [1, 1]})
    assert message.startswith("detectors:") and "more than once" in message


def test_begin_not_before_end_rejected() -> None:
    (message,) = _errors(
        {
            "instrument": "LATISS",
            "script_mode": "BIAS",
            "certify_calib_begin_date": "2025-01-01",
            "certify_calib_end_date": "2025-01-01",
        }
    )
    assert message.startswith("certify_calib_begin_date:") and "before" in message


def test_unparseable_date_rejected() -> None:
    (message,) = _errors({"instrument": "LATISS", "script_mode": "BIAS", "certify_calib_end_date": "soon"})
    assert message.startswith("certify_calib_end_date:") and "ISO-8601" in message


def test_do_ptc_needs_bias_dark_flat() -> None:
    errors = _errors({"instrument": "LATISS", "script_mode": "BIAS", "do_ptc": True})
    assert len(errors) == 1
    assert errors[0].startswith("do_ptc: only used with script_mode BIAS_DARK_FLAT, got BIAS")


def test_do_gain_from_flat_pairs_outside_bias_dark_flat_is_not_an_error() -> None:
    cfg = validate_run_configuration({"instrument": "LATISS", "script_mode": "BIAS"})
    assert cfg.do_gain_from_flat_pairs is True
    assert cfg.calib_types == ["bias"]


def test_simulator_with_sal_rejected() -> None:
    (message,) = _errors(
        {"instrument": "LATISS", "script_mode": "BIAS", "camera": "sal", "simulator": {"seed": 3}}
    )
    assert message.startswith("simulator:") and "camera: simulated" in message


def test_lsstcam_science_sensors_simulated_or_with_sal() -> None:
    # All 189 science sensors at full size are more pixels than a simulated run may write.
    (message,) = _errors({"instrument": "LSSTCam", "script_mode": "BIAS"})
    assert message.startswith("simulator:") and "x 189 detector(s)" in message
    cfg = validate_run_configuration(
        {
            "instrument": "LSSTCam",
            "script_mode": "BIAS",
            "detectors": [98, 29],
            "simulator": {"amp_data_shape": [20, 16]},
        }
    )
    assert cfg.detector_ids == [29, 98]
    # The corner rafts' guider and wavefront sensors are refused by name.
    (message,) = _errors(
        {"instrument": "LSSTCam", "script_mode": "BIAS", "camera": "sal", "detectors": [90, 189, 191]}
    )
    assert message.startswith("detectors: 189 (R00_SG0, guider), 191 (R00_SW0, wavefront): corner-raft")
    assert "science sensors are 0..188" in message
    (message,) = _errors(
        {"instrument": "LSSTCam", "script_mode": "BIAS", "camera": "sal", "detectors": [205]}
    )
    assert message.startswith("detectors: [205] not detectors of LSSTCam")
    cfg = validate_run_configuration(
        {"instrument": "LSSTCam", "script_mode": "BIAS", "camera": "sal", "ignore": ["mtdome"]}
    )
    assert cfg.simulator is None
    assert cfg.input_collections("bias") == ["LSSTCam/calib"]


def test_keys_for_other_instruments_rejected() -> None:
    errors = _errors({"instrument": "LSSTComCam", "script_mode": "BIAS", "grating": "x", "ignore": []})
    assert any(e.startswith("grating:") and "LATISS" in e for e in errors)
    assert any(e.startswith("ignore:") and "LSSTCam" in e for e in errors)


def test_filter_must_be_known() -> None:
    (message,) = _errors({"instrument": "LSSTComCam", "script_mode": "BIAS", "filter": "r"})
    assert message.startswith("filter:") and "r_03" in message
    cfg = validate_run_configuration(
        {"instrument": "LATISS", "script_mode": "BIAS", "filter": "SDSSr_65mm", "grating": "holo4_003"}
    )
    assert cfg.physical_filter == "SDSSr_65mm~holo4_003"
    cfg = validate_run_configuration({"instrument": "LATISS", "script_mode": "BIAS", "filter": "SDSSg_65mm"})
    assert cfg.physical_filter == "SDSSg_65mm~empty"


def test_several_errors_reported_together() -> None:
    errors = _errors(
        {
            "instrument": "LSSTComCam",
            "script_mode": "FLATS",
            "n_bias": 0,
            "n_processes": None,
            "oods_timeout": 0,
            "n_biass": 1,
        }
    )
    keys = sorted(e.split(":")[0] for e in errors)
    assert keys == [
        "n_bias",
        "n_processes",
        "oods_timeout",
        "script_mode",
        "unknown key 'n_biass'; did you mean 'n_bias'?",
    ]


def test_valid_comcam_config() -> None:
    cfg = validate_run_configuration({"instrument": "LSSTComCam", "script_mode": "BIAS_DARK"})
    assert cfg.detector_ids == list(range(9))
    assert cfg.input_collections_bias == "LSSTComCam/calib"
    assert cfg.input_collections("dark") == ["LSSTComCam/calib"]
    assert cfg.input_collections_verify("BIAS") == ["LSSTComCam/calib"]
    assert cfg.calib_collection == "LSSTComCam/calib/daily"
    assert cfg.physical_filter == "empty"
    assert cfg.image_types == ["BIAS", "DARK"]


def test_collections_are_split_on_commas() -> None:
    cfg = validate_run_configuration(
        {"instrument": "LSSTComCam", "script_mode": "BIAS", "input_collections_verify_bias": " a/b , c,, "}
    )
    assert cfg.input_collections_verify("bias") == ["a/b", "c"]


def test_ptc_replaces_gain() -> None:
    cfg = validate_run_configuration(
        {
            "instrument": "LSSTComCam",
            "script_mode": "BIAS_DARK_FLAT",
            "do_ptc": True,
            "do_gain_from_flat_pairs": True,
            "do_defects": True,
        }
    )
    assert cfg.calib_types == ["bias", "dark", "flat", "defects", "ptc"]


def test_yaml_loading(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "instrument: LSSTComCam\n"
        "script_mode: BIAS_DARK_FLAT\n"
        "detectors: [4, 0]\n"
        "n_flat: 4\n"
        "n_discard_flat: 0\n"
        "exp_times_flat: [1, 2, 3, 4.5]\n"
        "certify_calib_begin_date: 2024-06-01\n"
        "simulator: {seed: 7, amp_data_shape: [20, 10]}\n"
    )
    cfg = load_run_configuration(path)
    assert cfg.detector_ids == [0, 4]
    assert cfg.exposure_times("FLAT") == [1.0, 2.0, 3.0, 4.5]
    assert cfg.certify_timespan_bounds[0] == dt.datetime(2024, 6, 1)
    assert cfg.simulator is not None and cfg.simulator.amp_data_shape == (20, 10) and cfg.simulator.seed == 7


def test_yaml_syntax_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("instrument: [LATISS\n")
    with pytest.raises(ConfigurationError) as info:
        load_run_configuration(path)
    assert str(path) in str(info.value) and "YAML" in str(info.value)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigurationError) as info:
        load_run_configuration(path)
    assert str(path) in str(info.value) and "mapping" in str(info.value)


def test_document_round_trip() -> None:
    for data in (
        {"instrument": "LATISS", "script_mode": "BIAS_DARK_FLAT", "filter": "SDSSr_65mm", "reason": "x"},
        {"instrument": "LSSTComCam", "script_mode": "DARK", "detectors": [3], "exp_times_dark": 2},
        {"instrument": "LSSTCam", "script_mode": "BIAS", "camera": "sal", "test_case": {"version": "1"}},
        {
            "instrument": "LATISS",
            "script_mode": "BIAS_DARK",
            "simulator": {
                "seed": 3,
                "faults": [
                    {"kind": "hot_amplifier", "image_type": "BIAS", "amplifiers": ["C10"]},
                    {"kind": "dark_ramp", "step_e_per_s": 1.0},
                    {"kind": "light_leak", "exposures": [0, 2]},
                ],
            },
        },
    ):
        cfg = validate_run_configuration(data)
        doc = cfg.to_document()
        assert validate_run_configuration(doc) == cfg
        assert doc["script_mode"] == data["script_mode"]


def test_direct_construction_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        RunConfiguration(instrument="HSC", script_mode="BIAS")
    assert info.value.errors[0].startswith("instrument: unknown instrument 'HSC'")


def test_ptc_fit_type_from_config_options() -> None:
    base = {"instrument": "LATISS", "script_mode": "BIAS_DARK_FLAT", "do_ptc": True}
    assert validate_run_configuration(base).ptc_fit_type == "EXPAPPROXIMATION"
    chosen = {**base, "config_options_ptc": "-c ptcSolve:ptcFitType=FULLCOVARIANCE"}
    assert validate_run_configuration(chosen).ptc_fit_type == "FULLCOVARIANCE"
    with pytest.raises(ConfigurationError) as info:
        validate_run_configuration({**base, "config_options_ptc": "-c ptcSolve:ptcFitType=POLYNOMIAL"})
    assert info.value.errors[0].startswith("config_options_ptc: unknown ptcFitType 'POLYNOMIAL'")
    assert "FULLCOVARIANCE_NO_B" in info.value.errors[0]


def test_shipped_example_configurations_are_valid() -> None:
    from pathlib import Path

    import cpflow

    examples = sorted(Path(cpflow.__file__).parent.glob("*.yaml"))
    assert {p.name for p in examples} >= {"demo_run.yaml", "demo_bias.yaml"}
    for path in examples:
        config = load_run_configuration(path)
        assert config.camera == "simulated" and config.generate_calibrations, path.name


def test_verify_noise_rule_defaults_to_cpflow_and_refuses_other_words() -> None:
    base = {"instrument": "LSSTComCam", "script_mode": "BIAS_DARK"}
    assert validate_run_configuration(base).verify_noise_rule == "cpflow"
    assert (
        validate_run_configuration({**base, "verify_noise_rule": "cp_verify"}).verify_noise_rule
        == "cp_verify"
    )
    (error,) = _errors({**base, "verify_noise_rule": "strict"})
    assert (
        error == "verify_noise_rule: unknown verify noise rule 'strict'; valid values are: cpflow, cp_verify"
    )


def test_obs_lsst_filter_names_are_accepted_and_impossible_ones_refused_naming_the_key() -> None:
    base = {"script_mode": "BIAS"}
    latiss = {**base, "instrument": "LATISS"}
    cfg = validate_run_configuration({**latiss, "filter": "BG40", "grating": "holo4_003"})
    assert cfg.physical_filter == "BG40~holo4_003"
    assert (
        validate_run_configuration({**latiss, "grating": "SDSSr_65mm"}).physical_filter == "empty~SDSSr_65mm"
    )
    comcam = validate_run_configuration({**base, "instrument": "LSSTComCam", "filter": "u_05"})
    assert comcam.physical_filter == "u_05"
    (message,) = _errors({**latiss, "filter": "diffuser"})
    assert (
        message.startswith("filter: physical_filter 'diffuser~empty'")
        and "never used with a grating" in message
    )
    (message,) = _errors({**latiss, "filter": "SDSSr_65mm", "grating": "SDSSg_65mm"})
    assert message.startswith("grating:") and "used only with filter empty" in message
    (message,) = _errors({**latiss, "filter": "BG40", "grating": "holo5"})
    assert message.startswith("grating:") and "'holo5' is not a LATISS grating" in message

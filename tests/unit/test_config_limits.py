"""Tests of the limits of a run configuration: stated once, enforced by the configuration and the camera."""

from __future__ import annotations

import argparse
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.acquirer.simulated_camera import SimulatedCamera
from shared.instruments import get_instrument
from shared.runconfig import (
    ConfigurationError,
    SimulatorConfig,
    load_run_configuration,
    load_run_document,
    validate_run_configuration,
)


def _errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigurationError) as info:
        validate_run_configuration(data)
    return info.value.errors


def test_camera_and_configuration_share_the_simulator_limits(tmp_path: Path) -> None:
    latiss = get_instrument("LATISS")
    for key, value in (("gain_spread", 0.3), ("hot_pixel_fraction", 0.5), ("seed", -1)):
        data = {"instrument": "LATISS", "script_mode": "BIAS", "simulator": {key: value}}
        (config_message,) = _errors(data)
        with pytest.raises(ConfigurationError) as info:
            SimulatedCamera(latiss, tmp_path, amp_data_shape=(8, 6), **{key: value})
        assert config_message == f"simulator.{info.value.errors[0]}"
        assert key in config_message and str(value) in config_message


def test_camera_from_config_takes_every_simulator_setting(tmp_path: Path) -> None:
    sim = SimulatorConfig(seed=4, amp_data_shape=(8, 6), gain_spread=0.2, cosmic_ray_rate=0.0)
    cam = SimulatedCamera.from_config(get_instrument("LATISS"), sim, tmp_path / "raw", tmp_path / "state")
    assert (cam.seed, cam.amp_data_shape, cam.gain_spread, cam.cosmic_ray_rate) == (4, (8, 6), 0.2, 0.0)
    assert cam.state_dir == tmp_path / "state"


BASE = {"instrument": "LATISS", "script_mode": "BIAS_DARK_FLAT"}


@pytest.mark.parametrize(
    ("key", "extra", "shown"),
    [
        ("wait_between_exposures", {"wait_between_exposures": 1e12}, "1000000000000"),
        ("n_bias", {"n_bias": 100000}, "100000"),
        ("n_dark", {"n_dark": 1000000}, "1000000"),
        ("simulator.amp_data_shape[0]", {"simulator": {"amp_data_shape": [100000, 100000]}}, "100000"),
        ("simulator.amp_data_shape[1]", {"simulator": {"amp_data_shape": [100000, 100000]}}, "100000"),
    ],
)
def test_attack_values_are_rejected_naming_key_value_and_range(key: str, extra: dict, shown: str) -> None:
    errors = _errors({**BASE, **extra})
    message = next(e for e in errors if e.startswith(f"{key}:"))
    assert shown in message and "maximum" in message and "between" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("n_discard_bias", 10**6),
        ("n_flat", 10**6),
        ("n_discard_flat", 10**6),
        ("exp_times_dark", 1e9),
        ("exp_times_flat", 10**7),
        ("oods_timeout", 1e9),
        ("background_task_timeout", 1e9),
        ("n_processes", 10**6),
        ("number_verification_tests_threshold_bias", 10**9),
        ("number_verification_tests_threshold_flat", 10**9),
    ],
)
def test_counts_times_and_thresholds_are_bounded(key: str, value: float) -> None:
    (message,) = _errors({**BASE, key: value})
    assert message.startswith(f"{key}:") and "maximum" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("seed", 2**32),
        ("cosmic_ray_rate", 1e12),
        ("flat_flux_e_per_s", 1e12),
        ("dark_current_e_per_s", 1e12),
        ("bias_level_adu", 1e12),
    ],
)
def test_simulator_settings_are_bounded(key: str, value: float) -> None:
    (message,) = _errors({**BASE, "simulator": {key: value}})
    assert message.startswith(f"simulator.{key}:") and "maximum" in message


def test_lists_are_bounded_before_their_items_are_checked() -> None:
    n = 100_000
    for data, key in (
        ({"exp_times_flat": [1.0] * n}, "exp_times_flat"),
        ({"simulator": {"faults": [{"kind": "light_leak"}] * n}}, "simulator.faults"),
        ({"simulator": {"faults": [{"kind": "light_leak", "exposures": list(range(n))}]}}, "exposures"),
        ({"instrument": "LSSTCam", "camera": "sal", "detectors": list(range(n))}, "detectors"),
        ({"instrument": "LSSTCam", "camera": "sal", "ignore": ["mtdome"] * n}, "ignore"),
    ):
        (message,) = _errors({**BASE, **data})  # one message, not one per item
        assert key in message.split(":")[0] and f"{n} items" in message and "maximum" in message


def test_fault_frame_indices_are_bounded() -> None:
    (message,) = _errors({**BASE, "simulator": {"faults": [{"kind": "light_leak", "exposures": [10**9]}]}})
    assert message.startswith("simulator.faults[0].exposures[0]:") and "maximum" in message


def test_free_text_is_bounded() -> None:
    for key in ("note", "reason", "program", "config_options_ptc", "repo", "filter"):
        (message,) = _errors({**BASE, key: "x" * 100_000})
        assert message.startswith(f"{key}:") and "100000 characters" in message


def test_a_simulated_run_may_not_write_without_bound() -> None:
    big = {"instrument": "LSSTComCam", "script_mode": "BIAS_DARK_FLAT", "n_bias": 1000, "n_dark": 1000}
    big["exp_times_dark"] = 1.0
    (message,) = _errors(big)
    assert message.startswith("simulator:") and "amp_data_shape" in message and "pixels" in message
    # The same run with small frames, or on the real camera, is accepted.
    validate_run_configuration({**big, "simulator": {"amp_data_shape": [20, 10]}})
    validate_run_configuration({**big, "camera": "sal"})


def test_data_taking_time_is_bounded() -> None:
    data = {**BASE, "n_dark": 1000, "exp_times_dark": 3000.0}
    (message,) = _errors(data)
    assert "exp_times" in message and "wait_between_exposures" in message and " h" in message
    (message,) = _errors({**BASE, "n_bias": 1000, "wait_between_exposures": 600})
    assert "wait_between_exposures" in message


def test_the_reference_defaults_are_within_the_limits() -> None:
    for instrument, camera in (("LATISS", "simulated"), ("LSSTComCam", "simulated"), ("LSSTCam", "sal")):
        config = validate_run_configuration(
            {"instrument": instrument, "camera": camera, "script_mode": "BIAS_DARK_FLAT"}
        )
        assert config.n_dark == 22


def test_many_problems_are_summarised() -> None:
    errors = _errors({**BASE, "exp_times_flat": ["x"] * 500, "n_flat": 499})
    assert len(errors) < 100
    assert errors[0].startswith("exp_times_flat[0]:") and "more problems" in errors[-1]


def _nested(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"note": _nested(100_000)}, "note"),
        ({"exp_times_dark": _nested(100_000)}, "exp_times_dark[0]"),
        ({"n_bias": 10**5000}, "n_bias"),
        ({10**5000: 1}, "unknown key"),
        ({"simulator": {"faults": [{"kind": "dark_ramp", 10**5000: 1}]}}, "simulator.faults[0]"),
        ({"simulator": {1: 2}}, "simulator"),
    ],
)
def test_hostile_values_in_a_mapping_are_configuration_errors(data: dict[Any, Any], key: str) -> None:
    # What the acquirer validates comes from a Kafka event, not through the YAML loader.
    with _bounded():
        errors = _errors({**BASE, **data})
    assert errors[0].startswith(key) and len(errors[0]) < 1000


# --------------------------------------------------------------------------------------------------
# The configuration file: bounded before it is parsed.

VALID_HEAD = "instrument: LATISS\nscript_mode: BIAS\n"


@contextmanager
def _bounded(megabytes: float = 50.0) -> Iterator[None]:
    """The rejection allocates little (Python allocations): bounded work, measured independently of
    how loaded the machine is (wall-clock times are for bench/, never for tests)."""
    tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < megabytes * 2**20, f"allocated {peak / 2**20:.0f} MB"


def _rejection(path: Path) -> list[str]:
    with pytest.raises(ConfigurationError) as info:
        load_run_configuration(path)
    return info.value.errors


def test_duplicate_keys_are_rejected_at_every_level_with_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(VALID_HEAD + "n_bias: 3\nsimulator:\n  seed: 1\n  seed: 2\nn_bias: 4\n")
    errors = _rejection(path)
    assert len(errors) == 2
    assert "'seed'" in errors[0] and "line 6" in errors[0] and "line 5" in errors[0]
    assert "'n_bias'" in errors[1] and "line 7" in errors[1] and "line 3" in errors[1]
    path.write_text("{instrument: LATISS, script_mode: BIAS, instrument: LSSTComCam}\n")
    (message,) = _rejection(path)
    assert "'instrument'" in message and "twice" in message
    path.write_text(VALID_HEAD + "simulator: {faults: [{kind: light_leak, level_e: 1, level_e: 2}]}\n")
    (message,) = _rejection(path)
    assert "'level_e'" in message and "line 3" in message


def test_deep_nesting_is_rejected_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(VALID_HEAD + "note: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with _bounded():
        (message,) = _rejection(path)
    assert str(path) in message and "nested" in message and "line 3" in message
    path.write_text(VALID_HEAD + "simulator: " + "{a: " * 100_000 + "1" + "}" * 100_000 + "\n")
    with _bounded():
        (message,) = _rejection(path)
    assert "nested" in message


def test_an_alias_bomb_under_a_known_key_is_rejected_fast(tmp_path: Path) -> None:
    lines = [VALID_HEAD, "reason: &a [x, x, x, x, x, x, x, x, x, x]\n"]
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"note: &{name} [{', '.join(['*' + previous] * 10)}]\n")
    lines.append("exp_times_dark: *i\n")  # 10**9 values if expanded
    path = tmp_path / "bomb.yaml"
    path.write_text("".join(lines))
    with _bounded(megabytes=5):
        (message,) = _rejection(path)
    assert "anchors and aliases" in message and "line 3" in message


def test_a_huge_file_is_rejected_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    chunk = "".join(f"unknown_key_{i:08d}: 1\n" for i in range(40_000)).encode()
    with path.open("wb") as stream:
        while stream.tell() < 50 * 2**20:
            stream.write(chunk)
    with _bounded():
        (message,) = _rejection(path)
    assert str(path) in message and "larger than" in message


def test_too_many_values_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(VALID_HEAD + "exp_times_dark: [" + ", ".join(["1"] * 300_000) + "]\n")
    with _bounded():
        (message,) = _rejection(path)
    assert "values" in message and "line 3" in message


def test_a_file_that_is_not_utf8_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(VALID_HEAD.encode() + "note: café\n".encode("latin-1"))
    (message,) = _rejection(path)
    assert str(path) in message and "UTF-8" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (VALID_HEAD + "certify_calib_begin_date: 2024-13-01\n", "cannot be read"),
        (VALID_HEAD + "n_bias: " + "9" * 5000 + "\n", "cannot be read"),
        ("instrument: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
        ("a: 1\n---\nb: 2\n", "not valid YAML"),
        ("instrument: LATISS\x00\n", "not valid YAML"),
    ],
)
def test_values_python_cannot_build_are_configuration_errors(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    (message,) = _rejection(path)
    assert str(path) in message and fragment in message


def test_load_run_document_returns_the_document_it_validated(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(VALID_HEAD + "n_bias: 3\ncertify_calib_begin_date: 2024-06-01\n")
    document, config = load_run_document(path)
    assert document["n_bias"] == 3 and config.n_bias == 3
    assert validate_run_configuration(document) == config


def test_cli_submit_rejects_a_bad_file_with_exit_2_before_any_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cpflow import cli

    path = tmp_path / "dup.yaml"
    path.write_text(VALID_HEAD + "n_bias: 3\nn_bias: 4\n")
    args = argparse.Namespace(config=str(path), wait=False, timeout=1.0, quiet=True)
    # No settings at all: a rejection must not need a broker.
    code = cli.cmd_submit(args, SimpleNamespace())  # type: ignore[arg-type]
    assert code == cli.EXIT_REJECTED == 2
    err = capsys.readouterr().err
    assert "n_bias" in err and "twice" in err

"""Deployment settings: every ``CPFLOW_*`` variable in one place, bad values named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import Settings, SettingsError, load_settings

NUMERIC = {
    "CPFLOW_KAFKA_PORT": "70000",
    "CPFLOW_KAFKA_CONTROLLER_PORT": "-1",
    "CPFLOW_PARTITIONS": "0",
    "CPFLOW_ACQUIRER_PORT": "0",
    "CPFLOW_GENERATOR_PORT": "65536",
    "CPFLOW_VERIFIER_PORT": "-5",
    "CPFLOW_CERTIFIER_PORT": "100000",
    "CPFLOW_MAX_POLL_INTERVAL_MS": "5",
    "CPFLOW_TRANSIENT_RETRIES": "0",
    "CPFLOW_MAX_MESSAGE_BYTES": "10",
    "CPFLOW_COMBINE_MEMORY_MB": "0",
}


def test_every_numeric_variable_is_known() -> None:
    numeric = {
        f"CPFLOW_{name.upper()}"
        for name, info in Settings.model_fields.items()
        if info.annotation in (int, float, "int", "float")
    }
    assert numeric == set(NUMERIC)


@pytest.mark.parametrize("variable", sorted(NUMERIC))
@pytest.mark.parametrize("kind", ["not a number", "out of range"])
def test_a_bad_value_is_rejected_naming_the_variable(
    variable: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = "twelve" if kind == "not a number" else NUMERIC[variable]
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"{variable}: must be ") and repr(value) in message


def test_defaults_derive_from_home_and_port(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CPFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("CPFLOW_KAFKA_PORT", "19092")
    monkeypatch.setenv("CPFLOW_REGISTER_NETWORKS", "0")
    settings = load_settings()
    assert settings.butler_repo == str(tmp_path / "butler")
    assert settings.kafka_bootstrap == "127.0.0.1:19092"
    assert settings.kafka_controller_port == 19093
    assert settings.register_networks is False
    # A child process given settings.environment() sees the same settings.
    for name, value in settings.environment().items():
        monkeypatch.setenv(name, value)
    assert load_settings() == settings


def test_the_cli_reports_a_bad_variable_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cpflow.cli", "status"],
        env={"PATH": "/usr/bin:/bin", "CPFLOW_HOME": str(tmp_path), "CPFLOW_PARTITIONS": "many"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 4
    assert "CPFLOW_PARTITIONS: must be an integer, got 'many'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("/repo/{instr}", "{instr}"),
        ("/repo/{instrument}/{detector}", "{detector}"),
        ("/repo/{instrument", "{instrument"),
        ("/repo/}", "}"),
    ],
)
def test_the_raw_repository_may_only_name_the_instrument(
    value: str, error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CPFLOW_RAW_REPO", value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value) == (
        f"CPFLOW_RAW_REPO: the only field it may hold is {{instrument}}, not {error}, got {value!r}"
    )
    monkeypatch.setenv("CPFLOW_RAW_REPO", "/repo/{instrument}")
    assert load_settings().raw_repo == "/repo/{instrument}"

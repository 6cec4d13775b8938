"""Tests of the limits of a run configuration: stated once, enforced by the configuration and the camera."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.acquirer.simulated_camera import SimulatedCamera
from shared.instruments import get_instrument
from shared.runconfig import ConfigurationError, SimulatorConfig, validate_run_configuration


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

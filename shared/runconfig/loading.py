"""Reading a run configuration from a YAML file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from shared.runconfig.errors import ConfigurationError
from shared.runconfig.model import RunConfiguration, validate_run_configuration

__all__ = ["load_run_configuration"]


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

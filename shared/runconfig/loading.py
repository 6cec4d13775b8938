"""Reading a run configuration from a YAML file.

No key may be given twice in a mapping, at any level: PyYAML would silently keep the last value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from shared.runconfig.errors import ConfigurationError
from shared.runconfig.model import RunConfiguration, validate_run_configuration

__all__ = ["load_run_configuration"]

if TYPE_CHECKING:
    _Loader = yaml.SafeLoader
else:  # libyaml when PyYAML has it
    _Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(_Loader):
    """A safe loader that records every key given twice in one mapping, with its lines."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                seen = first_line.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if seen is None:
                first_line[key] = line
            else:
                message = (
                    f"line {line}: key {key!r} is given twice (first on line {seen}); give each key once"
                )
                self.duplicates.append((line, message))
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _parse(text: str, path: Path) -> Any:
    loader = _UniqueKeyLoader(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigurationError([f"{path}: {message}" for _, message in sorted(loader.duplicates)])
    return data


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
        If the file cannot be read, is not valid YAML, repeats a key, has no mapping at the top
        level, or the configuration is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"{path}: cannot read the configuration file: {exc.strerror or exc}"
        ) from None
    try:
        data = _parse(text, path)
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

"""Reading a run configuration from a YAML file, bounded before it is parsed.

A configuration file comes from outside, so it is read with limits that a real one (a few kB, five
levels deep, no anchors) is far from: at most `MAX_FILE_BYTES` bytes of UTF-8, `MAX_DEPTH` levels of
nesting and `MAX_NODES` values, no anchors or aliases (so no alias bomb), and no key given twice at
any level (PyYAML would silently keep the last). The limits are checked on the event stream of
libyaml's parser, which does not recurse and stops at the first excess, before any object is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from shared.runconfig.errors import ConfigurationError
from shared.runconfig.model import RunConfiguration, validate_run_configuration

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "load_run_configuration", "load_run_document"]

MAX_FILE_BYTES = 1 << 20
"""Largest configuration file, bytes (1 MiB): a real configuration is under 5 kB."""
MAX_DEPTH = 20
"""Deepest nesting of mappings and lists: a real configuration nests 5 deep
(``simulator.faults[i].exposures``)."""
MAX_NODES = 100_000
"""Most values (scalars, mappings and lists) in the file: a real configuration has a few hundred;
the longest valid lists (``exp_times_*``, fault frame indices) have about a thousand."""

if TYPE_CHECKING:
    _Loader = yaml.SafeLoader
else:  # libyaml when PyYAML has it; PyYAML's own parser does not recurse either, it is only slower
    _Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_COLLECTION_START = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_COLLECTION_END = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
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


def _read_text(path: Path) -> str:
    """The file's text: at most `MAX_FILE_BYTES` bytes are read, and they must be UTF-8."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(
            f"{path}: cannot read the configuration file: {exc.strerror or exc}"
        ) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigurationError(
            f"{path}: the file is larger than {MAX_FILE_BYTES} bytes (1 MiB); a run configuration is "
            "a few kB of YAML"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the configuration as UTF-8"
        ) from None


def _check_shape(text: str, path: Path) -> None:
    """Reject anchors, aliases, excessive nesting and too many values, from the parser's events."""
    depth = nodes = 0
    loader = _Loader(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise ConfigurationError(
                    f"{path}: line {line}: YAML anchors and aliases (&name, *name) are not accepted in a "
                    "run configuration; write the values out"
                )
            if isinstance(event, (yaml.ScalarEvent, *_COLLECTION_START)):
                nodes += 1
                if nodes > MAX_NODES:
                    raise ConfigurationError(
                        f"{path}: line {line}: more than {MAX_NODES} values; a run configuration has a "
                        "few hundred"
                    )
            if isinstance(event, _COLLECTION_START):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigurationError(
                        f"{path}: line {line}: nested more than {MAX_DEPTH} levels deep; a run "
                        "configuration nests a few levels"
                    )
            elif isinstance(event, _COLLECTION_END):
                depth -= 1
    finally:
        loader.dispose()


def _parse(text: str, path: Path) -> Any:
    loader = _UniqueKeyLoader(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigurationError([f"{path}: {message}" for _, message in sorted(loader.duplicates)])
    return data


def load_run_document(path: str | Path) -> tuple[dict[str, Any], RunConfiguration]:
    """Read, parse (once, within the limits of this module) and validate a run configuration file.

    Parameters
    ----------
    path : `str` or `~pathlib.Path`
        The YAML file; its top level must be a mapping.

    Returns
    -------
    document : `dict` [`str`, `Any`]
        The mapping as written in the file (what ``cpflow submit`` sends).
    config : `RunConfiguration`
        The accepted configuration, every default filled in.

    Raises
    ------
    ConfigurationError
        If the file cannot be read, is too large, is not UTF-8, is not valid YAML, exceeds the
        nesting or size limits, uses anchors or aliases, repeats a key, has no mapping at the top
        level, or the configuration is invalid.
    """
    path = Path(path)
    text = _read_text(path)
    try:
        _check_shape(text, path)
        data = _parse(text, path)
    except ConfigurationError:
        raise
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML: {exc}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # A value YAML accepts but Python cannot build, e.g. a date 2024-13-01 or an int of 5000 digits.
        raise ConfigurationError(f"{path}: a value cannot be read: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigurationError(
            f"{path}: the top level must be a mapping of configuration keys to values, "
            f"got {type(data).__name__}"
        )
    document = dict(data)
    return document, validate_run_configuration(document)


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
        As `load_run_document`.
    """
    return load_run_document(path)[1]

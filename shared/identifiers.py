"""Identifiers that cross a service's door: butler collection names and run ids, and paths built from them.

Every service receives these from outside (a submitted configuration, a Kafka event, a CLI argument)
and uses them to name butler collections and directories, so each is checked here, once, before
use. The module is standard library only, so that any service (and the CLI) can call it first.

Collection names (`validate_collection_name`): 1 to `MAX_COLLECTION_NAME_LENGTH` characters (the
butler registry's column width, ``lsst.daf.butler.column_spec.COLLECTION_NAME_MAX_LENGTH``), made of
``/``-separated components of letters, digits and ``_ - . +``, each starting with a letter, a digit
or ``_``: so no control characters, spaces, ``\\``, ``..`` or ``.`` components, leading or trailing
``/`` or empty components (``a//b``). The butler itself accepts almost any string; these are the
characters Rubin's collection names use (``LATISS/calib/u/plazas/daily.2021SEP13.test1``), and they
are safe in a path, a shell command and a log line.

Run ids (`validate_run_id`): the CLI's ids, ``YYYYmmddTHHMMSS-xxxxxx`` (`CLI_RUN_ID`), and, for
tests and tools, any `IDENTIFIER` of at most `MAX_RUN_ID_LENGTH` characters, so that the longest
run collection, ``LSSTComCam/runs/<run_id>/defects``, stays within the butler's 64 characters.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

__all__ = [
    "CLI_RUN_ID",
    "IDENTIFIER",
    "MAX_COLLECTION_NAME_LENGTH",
    "MAX_IDENTIFIER_LENGTH",
    "MAX_RUN_ID_LENGTH",
    "safe_child",
    "validate_collection_name",
    "validate_identifier",
    "validate_run_id",
]

MAX_COLLECTION_NAME_LENGTH = 64
"""Longest collection name: the width of the butler registry's collection-name column."""

_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_COLLECTION_CHARACTERS = "letters, digits, '_', '-', '.', '+' and '/' between components"

MAX_IDENTIFIER_LENGTH = 64
"""Longest identifier (`validate_identifier`), e.g. a file or directory name."""

IDENTIFIER = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_IDENTIFIER_LENGTH - 1}}}")
"""A conservative identifier: a letter or digit, then letters, digits and ``_ . -`` (no ``..``)."""

CLI_RUN_ID = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9a-f]{6}")
"""The run ids ``cpflow submit`` makes (``cpflow.submission.new_run_id``), e.g. ``20261127T161503-3f9a1c``."""

# <INSTR>/runs/<run_id>/<calib_type> must fit in MAX_COLLECTION_NAME_LENGTH: "LSSTComCam/runs/" is 16
# characters and "/defects" 8.
MAX_RUN_ID_LENGTH = MAX_COLLECTION_NAME_LENGTH - len("LSSTComCam/runs/") - len("/defects")
"""Longest run id (40): the run's collections ``<INSTR>/runs/<run_id>/<calib_type>`` fit in the butler."""


def _shown(text: str) -> str:
    """``text`` for a message: quoted, escaped, at most 60 characters."""
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _unprintable(text: str) -> str | None:
    """A description of the first control or non-printable character of ``text``, if any."""
    for index, char in enumerate(text):
        if not char.isprintable() or unicodedata.category(char).startswith("C"):
            return f"U+{ord(char):04X} at position {index}"
    return None


def validate_collection_name(name: str) -> str:
    """Check a butler collection name (see the module docstring for the rules).

    Parameters
    ----------
    name : `str`
        The collection name, e.g. ``LATISS/calib/daily``.

    Returns
    -------
    name : `str`
        ``name``, unchanged.

    Raises
    ------
    ValueError
        If ``name`` is not a valid collection name; the message says why and what is valid.
    """
    if not isinstance(name, str):
        raise ValueError(f"a collection name must be a string, got {type(name).__name__}")
    if not name:
        raise ValueError("the collection name is empty; give a name such as LATISS/calib/daily")
    if len(name) > MAX_COLLECTION_NAME_LENGTH:
        raise ValueError(
            f"collection name {_shown(name)} has {len(name)} characters, more than the butler's "
            f"maximum of {MAX_COLLECTION_NAME_LENGTH}"
        )
    bad = _unprintable(name)
    if bad is not None:
        raise ValueError(
            f"collection name {_shown(name)} contains a control or non-printable character ({bad}); "
            f"use {_COLLECTION_CHARACTERS}"
        )
    if name.startswith("/"):
        raise ValueError(
            f"collection name {_shown(name)} starts with '/'; collection names are relative, "
            "e.g. LATISS/calib/daily"
        )
    for component in name.split("/"):
        if component in ("", ".", ".."):
            what = (
                "an empty component ('//' or a trailing '/')"
                if not component
                else f"a {component!r} component"
            )
            raise ValueError(f"collection name {_shown(name)} has {what}; use {_COLLECTION_CHARACTERS}")
        if not _COMPONENT.fullmatch(component):
            raise ValueError(
                f"collection name {_shown(name)} has an invalid component {_shown(component)}; each "
                f"component starts with a letter, a digit or '_' and uses {_COLLECTION_CHARACTERS}"
            )
    return name


def validate_identifier(identifier: str) -> str:
    """Check a conservative identifier (`IDENTIFIER`, at most 64 characters, no ``..``).

    Parameters
    ----------
    identifier : `str`
        E.g. a run id or a file name component.

    Returns
    -------
    identifier : `str`
        ``identifier``, unchanged.

    Raises
    ------
    ValueError
        If it is not one.
    """
    if not isinstance(identifier, str):
        raise ValueError(f"an identifier must be a string, got {type(identifier).__name__}")
    if not IDENTIFIER.fullmatch(identifier) or ".." in identifier:
        raise ValueError(
            f"{_shown(identifier)} is not a valid identifier; give 1 to {MAX_IDENTIFIER_LENGTH} letters, "
            "digits, '_', '.' or '-', starting with a letter or digit, without '..'"
        )
    return identifier


def validate_run_id(run_id: str) -> str:
    """Check a run id.

    Accepted: the CLI's ids (`CLI_RUN_ID`, ``YYYYmmddTHHMMSS-xxxxxx``) and, for tests and tools,
    any `validate_identifier` identifier of at most `MAX_RUN_ID_LENGTH` (40) characters.

    Parameters
    ----------
    run_id : `str`
        The run id.

    Returns
    -------
    run_id : `str`
        ``run_id``, unchanged.

    Raises
    ------
    ValueError
        If it is not a valid run id.
    """
    if isinstance(run_id, str) and CLI_RUN_ID.fullmatch(run_id):
        return run_id
    try:
        validate_identifier(run_id)
    except ValueError:
        raise ValueError(
            f"{_shown(str(run_id))} is not a valid run id; give an id such as 20261127T161503-3f9a1c "
            f"(as cpflow submit makes) or 1 to {MAX_RUN_ID_LENGTH} letters, digits, '_', '.' or '-', "
            "starting with a letter or digit, without '..'"
        ) from None
    if len(run_id) > MAX_RUN_ID_LENGTH:
        raise ValueError(
            f"run id {_shown(run_id)} has {len(run_id)} characters, more than {MAX_RUN_ID_LENGTH} (its "
            "collections <INSTR>/runs/<run_id>/<type> must fit in the butler's 64 characters)"
        )
    return run_id


def safe_child(base: Path, identifier: str) -> Path:
    """The path ``base / identifier``, built only from a valid identifier and checked to stay in ``base``.

    Parameters
    ----------
    base : `~pathlib.Path`
        The directory the path must stay in.
    identifier : `str`
        One path component, checked with `validate_identifier`.

    Returns
    -------
    path : `~pathlib.Path`
        ``base / identifier`` (not resolved).

    Raises
    ------
    ValueError
        If ``identifier`` is not a valid identifier, or the path would leave ``base`` (for example
        through a symbolic link already there).
    """
    child = Path(base) / validate_identifier(identifier)
    root = Path(base).resolve()
    resolved = child.resolve()
    if resolved.parent != root or not resolved.is_relative_to(root):
        raise ValueError(f"{_shown(identifier)} would lead outside {str(base)!r} (to {str(resolved)!r})")
    return child

"""Tests of shared.identifiers and of the collection names a run configuration accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
from lsst.daf.butler.column_spec import COLLECTION_NAME_MAX_LENGTH

from cpflow.submission import new_run_id
from shared.butler.collections import calib_chain, raw_collection, run_collection
from shared.identifiers import (
    MAX_COLLECTION_NAME_LENGTH,
    safe_child,
    validate_collection_name,
    validate_identifier,
    validate_run_id,
)
from shared.runconfig import ConfigurationError, validate_run_configuration

ATTACKS = ["../x", "/etc/passwd", "a\tb", "a\x00b", "x" * 100000, "a//b", "a/", "a\\b", "a b", "x/./y", "-rf"]
VALID = [
    "LATISS/calib/daily",
    "LATISS/calib/u/plazas/daily.2021SEP13.test1",
    "LATISS/calib/daily/calib.2022NOV04.1",
    "LSSTComCam/calib/u/integrationtester/daily.20240101.defects",
    "u/ocps/329cb5f2f9ab4e1ebacf1577435d2eed/run",
    "LSSTCam/calib/DM-12345+test_1",
]
BASE = {"instrument": "LATISS", "script_mode": "BIAS"}


@pytest.mark.parametrize("name", ATTACKS)
def test_bad_collection_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_collection_name(name)
    assert len(str(info.value)) < 300  # the message does not echo a huge name


@pytest.mark.parametrize("name", VALID)
def test_rubin_collection_names_are_accepted(name: str) -> None:
    assert validate_collection_name(name) == name


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize(
    "key", ["calib_collection", "input_collections_bias", "input_collections_verify_flat"]
)
def test_configuration_rejects_bad_collection_names_naming_the_key(name: str, key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        validate_run_configuration({**BASE, key: name})
    (message,) = info.value.errors
    assert message.startswith(f"{key}:")


def test_one_bad_entry_of_a_collection_list_is_rejected() -> None:
    with pytest.raises(ConfigurationError) as info:
        validate_run_configuration({**BASE, "input_collections_dark": "LATISS/calib, ../../etc"})
    (message,) = info.value.errors
    assert message.startswith("input_collections_dark:") and "'../../etc'" in message


@pytest.mark.parametrize(
    "name",
    [
        "LATISS/calib",
        "LATISS/raw/all",
        calib_chain("LSSTComCam"),
        raw_collection("LSSTComCam"),
        run_collection("LATISS", "20261127T161503-3f9a1c"),
        run_collection("LATISS", "20261127T161503-3f9a1c", "bias"),
    ],
)
def test_calib_collection_may_not_be_a_reserved_collection(name: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        validate_run_configuration({**BASE, "calib_collection": name})
    (message,) = info.value.errors
    assert message.startswith("calib_collection:") and "reserved" in message
    # Reading from them is what they are for.
    validate_run_configuration({**BASE, "input_collections_bias": name})


def test_collection_length_limit_is_the_butlers() -> None:
    assert MAX_COLLECTION_NAME_LENGTH == COLLECTION_NAME_MAX_LENGTH
    validate_collection_name("a" * COLLECTION_NAME_MAX_LENGTH)
    with pytest.raises(ValueError, match="characters"):
        validate_collection_name("a" * (COLLECTION_NAME_MAX_LENGTH + 1))


def test_cli_run_ids_and_tool_ids_are_accepted() -> None:
    for run_id in (new_run_id(), "injected-bad-config", "cachetest-verify", "garbage-2", "r1"):
        assert validate_run_id(run_id) == run_id


@pytest.mark.parametrize(
    "run_id", ["", "../x", "a/b", "/abs", ".hidden", "a..b", "-x", "x\n", "a b", "ü", "a" * 41, None, 7]
)
def test_bad_run_ids_are_rejected(run_id: object) -> None:
    with pytest.raises(ValueError, match="run id"):
        validate_run_id(run_id)  # type: ignore[arg-type]


def test_every_collection_of_the_longest_run_id_is_a_valid_collection_name() -> None:
    longest = "a" * 40
    validate_run_id(longest)
    for calib_type in (None, "bias", "dark", "flat", "defects", "ptc", "gain"):
        validate_collection_name(run_collection("LSSTComCam", longest, calib_type))


def test_safe_child_stays_in_its_base(tmp_path: Path) -> None:
    assert safe_child(tmp_path, "20261127T161503-3f9a1c") == tmp_path / "20261127T161503-3f9a1c"
    for bad in ("..", "../x", "a/b", "/etc", "", ".", "a\x00"):
        with pytest.raises(ValueError):
            safe_child(tmp_path, bad)
    outside = tmp_path / "outside"
    outside.mkdir()
    base = tmp_path / "base"
    base.mkdir()
    (base / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        safe_child(base, "link")


def test_identifier_rules() -> None:
    assert validate_identifier("a" * 64) == "a" * 64
    for bad in ("a" * 65, "a..b", "_x", "a:b"):
        with pytest.raises(ValueError):
            validate_identifier(bad)

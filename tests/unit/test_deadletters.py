"""A dead letter is input from the wire too: only what can be trusted is redriven."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

import pytest

from cpflow.deadletters import Letter, RedriveError, letter_payload, redrive, select
from shared.events import DeadLetter
from shared.settings import Settings


def letter(body: bytes, **fields: object) -> DeadLetter:
    values: dict[str, object] = {
        "producer": "certifier",
        "run_id": "r1",
        "origin_topic": "cpflow.calib.verified",
        "origin_partition": 0,
        "origin_offset": 7,
        "key": "r1",
        "payload_size": len(body),
        "payload_sha256": hashlib.sha256(body).hexdigest(),
        "payload_base64": base64.b64encode(body).decode(),
        "error_type": "TypeError",
        "error": "boom",
    }
    values.update(fields)
    return DeadLetter.model_validate(values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path)


def test_an_inline_payload_is_returned_when_it_matches_its_digest(settings: Settings) -> None:
    assert letter_payload(letter(b'{"a": 1}'), settings) == b'{"a": 1}'
    with pytest.raises(RedriveError, match="does not match"):
        letter_payload(letter(b'{"a": 1}', payload_sha256="0" * 64), settings)


def test_a_payload_by_reference_is_read_only_from_the_state_directory(
    settings: Settings, tmp_path: Path
) -> None:
    body = b"x" * 1000
    digest = hashlib.sha256(body).hexdigest()
    store = settings.home / "deadletters"
    store.mkdir()
    (store / f"{digest}.bin").write_bytes(body)
    kept = letter(body, payload_base64=None, payload_ref=str(store / f"{digest}.bin"))
    assert letter_payload(kept, settings) == body
    secret = tmp_path / "secret.bin"
    secret.write_bytes(body)
    for ref in (str(secret), str(store / ".." / "secret.bin")):
        with pytest.raises(RedriveError, match="not under"):
            letter_payload(letter(body, payload_base64=None, payload_ref=ref), settings)
    (store / f"{digest}.bin").unlink()
    with pytest.raises(RedriveError, match="gone"):
        letter_payload(kept, settings)
    with pytest.raises(RedriveError, match="not kept"):
        letter_payload(letter(body, payload_base64=None), settings)


def test_a_letter_is_redriven_only_to_a_topic_a_service_consumes(settings: Settings) -> None:
    good = Letter(letter(b"{}"), offset=0, partition=0)
    bad = Letter(
        letter(b"{}", origin_topic="cpflow.calib.certified", event_id="bad-one"), offset=1, partition=0
    )
    with pytest.raises(RedriveError, match=r"bad-one.*not one a cpflow service consumes"):
        # One bad letter redrives nothing: it is refused before any connection is made.
        asyncio.run(redrive("127.0.0.1:1", settings, [good, bad]))


def test_letters_are_chosen_by_id_and_run() -> None:
    letters = [
        Letter(letter(b"{}", event_id="a", run_id="r1"), offset=0, partition=0),
        Letter(letter(b"{}", event_id="b", run_id="r2"), offset=1, partition=0),
    ]
    assert [x.letter.event_id for x in select(letters, ids=["b"])] == ["b"]
    assert [x.letter.event_id for x in select(letters, run_id="r1")] == ["a"]
    assert [x.letter.event_id for x in select(letters)] == ["a", "b"]


def test_a_forged_digest_cannot_name_a_path(settings: Settings) -> None:
    with pytest.raises(RedriveError, match="64 hex digits"):
        letter_payload(
            letter(b"{}", payload_base64=None, payload_sha256="../../etc/x", payload_ref="/etc/x.bin"),
            settings,
        )

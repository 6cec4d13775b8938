"""Dead letters from the operator's side: list them, and redrive chosen ones to their origin topic.

A dead letter (`shared.events.DeadLetter`) holds a message a service could not decode or process,
with its origin and the error. Once the cause is fixed, ``cpflow deadletters redrive`` publishes
the original bytes again to the topic they came from, with their original key, so the service
that failed handles them again. The handlers are idempotent (each re-derives what is done from
the butler), so a redriven event does no work twice; if it fails again it is dead-lettered again:
a new letter with the same ``payload_sha256``, which ``cpflow deadletters`` shows beside the first.
A redriven message carries a ``cpflow-redrive-of`` header naming the letter it came from.

A dead letter is itself input from the wire, so nothing in it is trusted: the origin topic must be
one that a cpflow service consumes, a payload kept by reference is read only from the state
directory's ``deadletters/`` and only if its SHA-256 matches, and an inline payload must match its
digest too.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpflow.access import principals
from cpflow.topics_reader import Connection, publish_messages, read_events
from shared.events import DeadLetter
from shared.settings import Settings
from shared.topics import Topics

__all__ = ["REDRIVE_HEADER", "Letter", "RedriveError", "letter_payload", "read_letters", "redrive"]

REDRIVE_HEADER = "cpflow-redrive-of"
"""Kafka header on a redriven message: the event id of the dead letter it came from."""


class RedriveError(ValueError):
    """A dead letter that cannot be redriven, and why."""


@dataclass(frozen=True)
class Letter:
    """A dead letter as read from its topic."""

    letter: DeadLetter
    offset: int
    partition: int

    def summary(self) -> dict[str, Any]:
        """What ``cpflow deadletters`` shows of it."""
        dead = self.letter
        return {
            "id": dead.event_id,
            "time": dead.time.isoformat(),
            "run_id": dead.run_id,
            "service": dead.producer,
            "origin": f"{dead.origin_topic}[{dead.origin_partition}]@{dead.origin_offset}",
            "size": dead.payload_size,
            "sha256": dead.payload_sha256,
            "kept": "inline" if dead.payload_base64 is not None else (dead.payload_ref or "lost"),
            "error": f"{dead.error_type}: {dead.error}",
        }


def consumed_topics(settings: Settings) -> set[str]:
    """The topics some cpflow service consumes: the only ones a dead letter may be redriven to."""
    return {topic for principal in principals(settings) if principal.group for topic in principal.reads}


async def read_letters(connection: Connection, settings: Settings, run_id: str | None = None) -> list[Letter]:
    """The dead letters on the dead-letter topic (of ``run_id`` if given), oldest first."""
    topic = Topics(settings.topic_prefix).deadletter
    events = await read_events(connection, [topic], run_id=run_id)
    letters = []
    for event in events:
        fields = {key: value for key, value in event.items() if not key.startswith("_")}
        letters.append(
            Letter(DeadLetter.model_validate(fields), offset=event["_offset"], partition=event["_partition"])
        )
    return letters


def letter_payload(letter: DeadLetter, settings: Settings) -> bytes:
    """The original bytes of ``letter``, checked against its digest.

    Raises
    ------
    RedriveError
        If the payload is lost, kept outside the state directory, or does not match its digest.
    """
    if re.fullmatch("[0-9a-f]{64}", letter.payload_sha256) is None:
        raise RedriveError(f"dead letter {letter.event_id}: its SHA-256 is not 64 hex digits")
    if letter.payload_base64 is not None:
        try:
            body = base64.b64decode(letter.payload_base64, validate=True)
        except ValueError as exc:
            raise RedriveError(f"dead letter {letter.event_id}: its payload is not base64 ({exc})") from exc
    elif letter.payload_ref is not None:
        store = settings.home / "deadletters"
        # The service keeps a large payload as <sha256>.bin in the state directory; nothing else.
        path = store / f"{letter.payload_sha256}.bin"
        if Path(letter.payload_ref).resolve() != path.resolve():
            raise RedriveError(
                f"dead letter {letter.event_id}: its payload reference {letter.payload_ref!r} is not "
                f"under {store} as {path.name}"
            )
        if not path.is_file():
            raise RedriveError(f"dead letter {letter.event_id}: its payload file {path} is gone")
        body = path.read_bytes()
    else:
        raise RedriveError(f"dead letter {letter.event_id}: its payload was not kept")
    if len(body) != letter.payload_size or hashlib.sha256(body).hexdigest() != letter.payload_sha256:
        raise RedriveError(f"dead letter {letter.event_id}: its payload does not match its size and SHA-256")
    return body


def select(letters: Sequence[Letter], ids: Iterable[str] = (), run_id: str | None = None) -> list[Letter]:
    """The letters with one of ``ids`` (all if none given) of ``run_id`` (any if `None`)."""
    wanted = set(ids)
    return [
        letter
        for letter in letters
        if (not wanted or letter.letter.event_id in wanted)
        and (run_id is None or letter.letter.run_id == run_id)
    ]


async def redrive(connection: Connection, settings: Settings, letters: Sequence[Letter]) -> list[str]:
    """Publish each letter's original bytes to its origin topic with its key; the redriven ids.

    Every letter is checked before anything is published, so one bad letter redrives nothing.

    Raises
    ------
    RedriveError
        If a letter's origin is not a topic a service consumes or its payload cannot be trusted.
    """
    allowed = consumed_topics(settings)
    messages = []
    for item in letters:
        letter = item.letter
        if letter.origin_topic not in allowed:
            raise RedriveError(
                f"dead letter {letter.event_id}: origin topic {letter.origin_topic!r} is not one a "
                f"cpflow service consumes ({', '.join(sorted(allowed))})"
            )
        key = letter.key.encode() if letter.key is not None else None
        messages.append((letter, key, letter_payload(letter, settings)))
    await publish_messages(
        connection,
        [
            (letter.origin_topic, body, key, [(REDRIVE_HEADER, letter.event_id.encode())])
            for letter, key, body in messages
        ],
    )
    return [letter.event_id for letter, _, _ in messages]

"""What a service does with what arrives on the wire, without a broker: the door's checks."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from shared.events import DEAD_LETTER_INLINE_BYTES, FramesAcquired, RunStatus, parse_event
from shared.service import ConsumerProgress, create_service, genuine_event
from shared.settings import Settings


def status_bytes(run_id: str) -> bytes:
    return (
        RunStatus(run_id=run_id, producer="certifier", state="RUNNING", stage="run")
        .model_dump_json()
        .encode()
    )


def test_only_a_valid_event_keyed_by_its_own_run_is_genuine() -> None:
    assert genuine_event("cpflow.run.status", b"r1", status_bytes("r1")) is not None
    assert genuine_event("cpflow.run.status", b"r2", status_bytes("r1")) is None  # a key naming another run
    assert genuine_event("cpflow.run.status", None, status_bytes("r1")) is None
    assert genuine_event("cpflow.run.status", b"r1", b'{"run_id":"r1","type":"run.status"}') is None
    assert genuine_event("cpflow.run.status", b"r1", b"[" * 100_000) is None
    assert genuine_event("cpflow.run.status", b"r1", b"\xff\xfe") is None
    assert genuine_event("elsewhere", b"r1", status_bytes("r1")) is None


@pytest.mark.parametrize("run_id", ["/tmp/evil", "../../x", "a/../b", "a\x00b", "x" * 41, "", ".hidden"])
def test_path_like_run_ids_are_refused_at_the_door(run_id: str) -> None:
    body = json.dumps(
        {"type": "run.status", "run_id": run_id, "producer": "x", "state": "RUNNING", "stage": "run"}
    )
    assert parse_event("run.status", body.encode()) is None
    with pytest.raises(ValidationError, match="run id"):
        RunStatus(run_id=run_id, producer="x", state="RUNNING", stage="run")


def test_events_name_only_valid_collections_instruments_and_detectors() -> None:
    base = {"run_id": "r1", "producer": "acquirer", "image_type": "BIAS"}
    with pytest.raises(ValidationError, match="not detectors of LATISS"):
        FramesAcquired(**base, instrument="LATISS", detectors=[0, 4])
    with pytest.raises(ValidationError, match="instrument"):
        FramesAcquired(**base, instrument="HSC", detectors=[0])
    for collection in ("../x", "/etc/passwd", "a\tb", "x" * 100):
        with pytest.raises(ValidationError, match="collection name"):
            FramesAcquired(**base, instrument="LATISS", detectors=[0], raw_collection=collection)
    assert FramesAcquired(
        **base, instrument="LSSTComCam", detectors=[0, 8], raw_collection="LSSTComCam/raw/all"
    )


def _raw(topic: str = "cpflow.frames.acquired", key: bytes | None = b"r1") -> SimpleNamespace:
    return SimpleNamespace(topic=topic, key=key, partition=1, offset=42)


def test_a_dead_letter_carries_the_payload_once_and_bounded(tmp_path: Path) -> None:
    _app, ctx = create_service("verifier", lambda router, ctx: None, Settings(home=tmp_path))
    small = b'{"run_id": "r1"}'
    letter = ctx.letter_for(_raw(), small, ValueError("bad"))
    assert letter.payload() == small and letter.payload_ref is None
    assert letter.payload_text == small.decode() and letter.payload_size == len(small)
    large = b"z" * (DEAD_LETTER_INLINE_BYTES + 1)
    letter = ctx.letter_for(_raw(), large, ValueError("bad"))
    assert letter.payload_base64 is None and letter.payload_sha256 == hashlib.sha256(large).hexdigest()
    assert letter.payload_ref is not None and Path(letter.payload_ref).read_bytes() == large
    assert Path(letter.payload_ref).is_relative_to(tmp_path)
    assert len(letter.payload_text or "") <= 4096
    # The whole letter fits the broker's 1 MiB limit whatever came in.
    assert len(letter.model_dump_json()) < 1024 * 1024
    assert ctx.letter_for(_raw(), b"\xff" * 10, ValueError("x")).payload_text is None


def test_readiness_reports_a_consumer_stuck_on_a_message() -> None:
    progress = ConsumerProgress()
    progress.started(("cpflow.calib.generated", 0, 7))
    assert progress.problems(stuck_after_s=60) == []
    progress.since = time.monotonic() - 120
    assert progress.problems(stuck_after_s=60) == [
        "consumer: on cpflow.calib.generated[0] offset 7 for 120 s (more than 60 s)"
    ]
    progress.finished()
    for _ in range(4):
        progress.started(("cpflow.calib.generated", 0, 8))
        progress.finished()
    assert progress.problems(stuck_after_s=60) == [
        "consumer: cpflow.calib.generated[0] offset 8 delivered 4 times"
    ]

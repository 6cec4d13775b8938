"""Event replay on the real broker and butler: a finished run redone from a stage in a sandbox
reproduces its verdicts, and production (topics, the run's collections, calibration collections and
the calibration chain) is left exactly as it was."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.butler.certify import find_certified
from shared.butler.repo import open_butler
from shared.butler.runrecords import read_record
from shared.records import RunReplay, VerificationRecord
from shared.settings import Settings
from shared.topics import Topics
from tests.e2e.common import admin, cpflow, events_of

pytestmark = pytest.mark.broker

PREFIX = "replaytest"
COLLECTION = "LATISS/calib/replayed"


def end_offsets(settings: Settings, topics: list[str]) -> dict[str, int]:
    async def read() -> dict[str, int]:
        consumer = AIOKafkaConsumer(**admin(settings).aiokafka_options(), group_id=None)
        try:
            await consumer.start()
            await consumer.topics()  # the cluster's metadata, for partitions_for_topic
            parts = [
                TopicPartition(topic, p)
                for topic in topics
                for p in consumer.partitions_for_topic(topic) or []
            ]
            ends = await consumer.end_offsets(parts)
        finally:
            await consumer.stop()
        return {topic: sum(v for tp, v in ends.items() if tp.topic == topic) for topic in topics}

    return asyncio.run(read())


def production(settings: Settings, run_id: str) -> dict[str, Any]:
    """What must not change: the run's collections, the calibration collections, the chain, the topics."""
    with open_butler(settings.butler_repo, writeable=False) as butler:
        collections = sorted(butler.collections.query(f"LATISS/runs/{run_id}*"))
        counts = {
            c: len(set(butler.registry.queryDatasets(..., collections=[c], findFirst=False)))
            for c in collections
        }
        chain = list(butler.collections.get_info("LATISS/calib").children)
        certified = {
            t: sorted(str(ref.id) for ref, _ in find_certified(butler, t, "LATISS", 0, COLLECTION))
            for t in ("bias", "dark")
        }
    return {
        "datasets": counts,
        "chain": chain,
        "certified": certified,
        "topics": end_offsets(settings, Topics(settings.topic_prefix).all()),
    }


def verdicts(settings: Settings, run_id: str) -> dict[str, tuple[str, dict[str, int]]]:
    with open_butler(settings.butler_repo, writeable=False) as butler:
        found = {}
        for calib_type in ("bias", "dark"):
            record = read_record(butler, VerificationRecord, "LATISS", run_id, calib_type)
            assert record is not None, calib_type
            found[calib_type] = (record.verdict, record.summary.failed_tests() if record.summary else {})
        return found


@pytest.fixture(scope="module")
def finished_run(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = tmp_path_factory.mktemp("replay") / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "instrument": "LATISS",
                "script_mode": "BIAS_DARK",
                "n_bias": 4,
                "n_dark": 3,
                "exp_times_dark": 5.0,
                "generate_calibrations": True,
                "calib_collection": COLLECTION,
                "certify_calib_begin_date": "2026-05-01",
                "certify_calib_end_date": "2026-06-01",
                "simulator": {"seed": 31, "amp_data_shape": [40, 30], "compress": False},
            }
        )
    )
    result = cpflow(stack, "submit", str(config), "--wait", "--timeout", "400")
    assert result.returncode == 0, result.stdout + result.stderr
    up = cpflow(stack, "sandbox", "up", PREFIX)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield result.stdout.strip().splitlines()[0]
    finally:
        assert cpflow(stack, "sandbox", "down", PREFIX).returncode == 0


def replay(stack: Settings, run_id: str, stage: str, *extra: str) -> str:
    result = cpflow(
        stack, "replay", run_id, "--from", stage, "--prefix", PREFIX, "--wait", "--timeout", "300", *extra
    )
    assert result.returncode == 0, result.stdout + result.stderr
    new_id = result.stdout.strip().splitlines()[0]
    assert f"run {new_id}: SUCCEEDED" in result.stdout
    return new_id


def test_a_replay_from_verify_reproduces_the_verdicts_and_leaves_production_untouched(
    stack: Settings, finished_run: str
) -> None:
    before = production(stack, finished_run)
    new_id = replay(stack, finished_run, "verify")
    assert verdicts(stack, new_id) == verdicts(stack, finished_run)
    assert production(stack, finished_run) == before
    with open_butler(stack.butler_repo, writeable=False) as butler:
        record = read_record(butler, RunReplay, "LATISS", new_id, None)
        assert record is not None and (record.original_run_id, record.from_stage) == (finished_run, "verify")
        own = f"LATISS/calib/replay/{new_id}"
        assert [len(find_certified(butler, t, "LATISS", 0, own)) for t in ("bias", "dark")] == [1, 1]
        assert own not in butler.collections.get_info("LATISS/calib").children
    # The replayed events are on the sandbox's topics, each caused by an original event.
    sandbox = Topics(PREFIX)
    originals = {
        e["event_id"] for e in events_of(stack, finished_run, [Topics(stack.topic_prefix).calib_generated])
    }
    replayed = events_of(stack, new_id, [sandbox.calib_generated])
    assert replayed and {e["causation_id"] for e in replayed} <= originals
    assert events_of(stack, new_id, Topics(stack.topic_prefix).run_topics()) == []


def test_a_replay_from_generate_without_certification_certifies_nothing(
    stack: Settings, finished_run: str
) -> None:
    before = production(stack, finished_run)
    new_id = replay(stack, finished_run, "generate", "--no-certify")
    assert verdicts(stack, new_id) == verdicts(stack, finished_run)
    with open_butler(stack.butler_repo, writeable=False) as butler:
        # Rebuilt in the replayed run's own collections; nothing certified anywhere.
        assert butler.query_datasets("bias", collections=f"LATISS/runs/{new_id}/bias", explain=False)
        assert f"LATISS/calib/replay/{new_id}" not in butler.collections.query("LATISS/calib/*")
    closing = [s for s in events_of(stack, new_id, [Topics(PREFIX).run_status]) if s["stage"] == "run"]
    assert [s["state"] for s in closing] == ["SUCCEEDED"]
    summaries = [t["summary"] for t in closing[0]["details"]["types"].values()]
    assert summaries and all("not certified (replay --no-certify)" in text for text in summaries)
    assert production(stack, finished_run) == before


def test_a_replay_is_refused_for_an_unknown_run_or_production_s_prefix(
    stack: Settings, finished_run: str
) -> None:
    unknown = cpflow(stack, "replay", "no-such-run", "--from", "verify", "--prefix", PREFIX)
    assert unknown.returncode == 1 and "no calib.generated event" in unknown.stderr
    same = cpflow(stack, "replay", finished_run, "--from", "verify", "--prefix", stack.topic_prefix)
    assert same.returncode == 4 and "production's topic prefix" in same.stderr

"""Trust nothing on the wire: each attack a hostile local user made succeed, tried again on the real
broker and butler, and shown to fail now.

The attacks connect as the broker's super user (the worst case: a stolen admin credential) unless
the test is about who may connect at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from cpflow.kafka_local import LocalKafka
from cpflow.stack import start_service
from cpflow.topics_reader import publish_raw, read_events
from shared.butler.certify import find_certified
from shared.butler.repo import open_butler
from shared.kafka_access import KafkaConnection
from shared.settings import Settings
from shared.topics import Topics
from tests.conftest import settings_env
from tests.e2e.common import admin, assert_every_service_ready, cpflow, events_of, wait_until

pytestmark = pytest.mark.broker

AMP_SHAPE = (60, 40)


def config_file(directory: Path, **config: Any) -> Path:
    base: dict[str, Any] = {
        "instrument": "LATISS",
        "script_mode": "BIAS",
        "n_bias": 5,
        "generate_calibrations": True,
        "calib_collection": "LATISS/calib/hostile",
        "certify_calib_begin_date": "2026-01-01",
        "certify_calib_end_date": "2026-02-01",
        "simulator": {"seed": 5, "amp_data_shape": list(AMP_SHAPE), "compress": False},
    }
    base.update(config)
    path = directory / f"run-{len(list(directory.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def submit(settings: Settings, config: Path, expect: int = 0, timeout: float = 400) -> tuple[str, dict]:
    result = cpflow(
        settings, "submit", str(config), "--wait", "--timeout", str(timeout), timeout=timeout + 60
    )
    assert result.returncode == expect, result.stdout + result.stderr
    run_id = result.stdout.strip().splitlines()[0]
    status = cpflow(settings, "status", run_id, "--json")
    assert status.returncode == 0, status.stderr
    return run_id, json.loads(status.stdout)


def metric(settings: Settings, service: str, prefix: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{settings.http_ports[service]}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def credentials(settings: Settings, role: str) -> KafkaConnection:
    stored = LocalKafka(settings.home, settings.kafka_port, settings.kafka_controller_port).credentials(role)
    assert stored is not None
    return KafkaConnection(
        bootstrap=stored["bootstrap"],
        security_protocol=stored["security_protocol"],
        mechanism=stored["mechanism"],
        username=stored["username"],
        password=stored["password"],
    )


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile-configs")


# ---------------------------------------------------------------------- 1. large messages


def test_large_messages_on_every_consumed_topic_stop_nothing(stack: Settings, configs: Path) -> None:
    topics = Topics(stack.topic_prefix)
    consumed = [topics.run_requested, topics.frames_acquired, topics.calib_generated, topics.calib_verified]
    payloads = {
        "json-460k": json.dumps({"run_id": "big", "padding": "x" * 460_000}).encode(),
        "binary-790k": os.urandom(790_000),
        "text-1m": b"y" * 1_000_000,
    }

    async def flood() -> None:
        for topic in consumed:
            for name, payload in payloads.items():
                await publish_raw(admin(stack), topic, payload, f"big-{name}".encode())

    asyncio.run(flood())

    def letters() -> list[dict]:
        found = [
            e for e in events_of(stack, None, [topics.deadletter]) if str(e.get("key", "")).startswith("big-")
        ]
        # Each consumed topic has one consumer service except frames.acquired... every consumer letters each.
        return found if len(found) >= len(consumed) * len(payloads) else []

    found = wait_until(letters, timeout=120)
    for letter in found:
        assert letter["payload_size"] in {len(p) for p in payloads.values()}
        if letter["payload_size"] > 256 * 1024:
            assert letter["payload_base64"] is None and letter["payload_ref"]
            assert Path(letter["payload_ref"]).stat().st_size == letter["payload_size"]
    # Nothing of it touched a run, and every service still answers and works.
    assert events_of(stack, "big", [topics.run_status]) == []
    assert_every_service_ready(stack)
    _run_id, view = submit(stack, config_file(configs, calib_collection="LATISS/calib/hostile/big"))
    assert view["state"] == "SUCCEEDED"


def test_a_message_over_the_size_limit_is_refused_unread(stack: Settings) -> None:
    """A message larger than CPFLOW_MAX_MESSAGE_BYTES is dead-lettered by reference without decoding."""
    topics = Topics(stack.topic_prefix)

    async def raise_topic_limit_and_send() -> None:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        client = AIOKafkaAdminClient(**admin(stack).aiokafka_options())
        await client.start()
        try:
            await client.alter_configs(
                [
                    ConfigResource(
                        ConfigResourceType.TOPIC, topics.calib_generated, {"max.message.bytes": "3000000"}
                    )
                ]
            )
        finally:
            await client.close()
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(**admin(stack).aiokafka_options(), max_request_size=3_000_000)
        await producer.start()
        try:
            await producer.send_and_wait(topics.calib_generated, b"[" * 2_000_000, key=b"huge-1")
        finally:
            await producer.stop()

    asyncio.run(raise_topic_limit_and_send())
    letter = wait_until(
        lambda: next(
            (e for e in events_of(stack, None, [topics.deadletter]) if e.get("key") == "huge-1"), None
        ),
        timeout=60,
    )
    assert letter["error_type"] == "MessageTooLarge" and "CPFLOW_MAX_MESSAGE_BYTES" in letter["error"]
    assert letter["payload_size"] == 2_000_000 and letter["payload_ref"]


# ---------------------------------------------------------------------- 2. forged verdicts


def test_a_forged_passed_verdict_certifies_nothing(stack: Settings, configs: Path) -> None:
    collection = "LATISS/calib/hostile/forged"
    leak = {"kind": "light_leak", "image_type": "BIAS", "level_e": 300.0}
    config = config_file(
        configs,
        calib_collection=collection,
        simulator={"seed": 6, "amp_data_shape": list(AMP_SHAPE), "compress": False, "faults": [leak]},
    )
    run_id, view = submit(stack, config, expect=1)
    assert view["types"]["bias"]["verification"]["verdict"] == "FAILED"
    topics = Topics(stack.topic_prefix)
    verified = [e for e in events_of(stack, run_id, [topics.calib_verified])]
    assert len(verified) == 1
    forged = {k: v for k, v in verified[0].items() if not k.startswith("_")}
    forged.update(verdict="PASSED", reason=None, event_id="00000000-0000-4000-8000-000000000001")
    before = metric(stack, "certifier", 'cpflow_untrusted_events_total{reason="disagrees"')
    asyncio.run(
        publish_raw(admin(stack), topics.calib_verified, json.dumps(forged).encode(), run_id.encode())
    )
    wait_until(
        lambda: metric(stack, "certifier", 'cpflow_untrusted_events_total{reason="disagrees"') > before,
        timeout=60,
    )
    butler = open_butler(stack.butler_repo, writeable=False)
    if collection in butler.collections.query("LATISS/calib/*"):  # never made when nothing was certified
        assert find_certified(butler, "bias", "LATISS", 0, collection) == []
    assert cpflow(stack, "status", run_id, "--json").stdout.count('"FAILED"') >= 1


def test_an_event_with_no_record_behind_it_is_ignored(stack: Settings) -> None:
    """A well-formed calib.generated for a run and type the butler knows nothing of does nothing."""
    topics = Topics(stack.topic_prefix)
    ghost = {
        "type": "calib.generated",
        "run_id": "ghost-run",
        "producer": "generator",
        "instrument": "LATISS",
        "calib_type": "bias",
        "detectors": [0],
        "generated": True,
        "collection": "LATISS/runs/ghost-run/bias",
    }
    before = metric(stack, "verifier", 'cpflow_untrusted_events_total{reason="no-record"')
    asyncio.run(publish_raw(admin(stack), topics.calib_generated, json.dumps(ghost).encode(), b"ghost-run"))
    wait_until(
        lambda: metric(stack, "verifier", 'cpflow_untrusted_events_total{reason="no-record"') > before,
        timeout=60,
    )
    assert events_of(stack, "ghost-run", [topics.calib_verified, topics.run_status]) == []


# ---------------------------------------------------------------------- 3. who may talk


def test_only_authenticated_principals_may_talk_each_within_its_rights(stack: Settings) -> None:
    topics = Topics(stack.topic_prefix)

    async def attempt(connection: KafkaConnection | str, topic: str) -> str:
        try:
            await asyncio.wait_for(publish_raw(connection, topic, b"{}", b"acl-test"), 30)
        except (KafkaConnectionError, TopicAuthorizationFailedError, TimeoutError) as exc:
            return type(exc).__name__
        return "written"

    async def read(connection: KafkaConnection, topic: str) -> str:
        try:
            await read_events(connection, [topic], run_id="acl-test", timeout=5)
        except Exception as exc:
            return type(exc).__name__
        return "read"

    verifier, operator = credentials(stack, "verifier"), credentials(stack, "operator")
    assert asyncio.run(attempt(stack.kafka_bootstrap, topics.run_requested)) == "KafkaConnectionError"
    wrong = KafkaConnection(
        stack.kafka_bootstrap, "SASL_PLAINTEXT", "SCRAM-SHA-512", verifier.username, "nope"
    )
    assert asyncio.run(attempt(wrong, topics.run_requested)) != "written"
    assert asyncio.run(attempt(verifier, topics.run_requested)) == "TopicAuthorizationFailedError"
    assert asyncio.run(attempt(verifier, topics.calib_certified)) == "TopicAuthorizationFailedError"
    assert asyncio.run(attempt(operator, topics.calib_verified)) == "TopicAuthorizationFailedError"
    assert asyncio.run(attempt(operator, topics.run_status)) == "TopicAuthorizationFailedError"
    assert asyncio.run(read(verifier, topics.run_requested)) != "read"
    assert asyncio.run(read(operator, topics.run_status)) == "read"
    # The credentials are the owner's only, and `stack credentials` prints what a client needs.
    for path in (stack.home / "credentials").iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    shown = cpflow(stack, "stack", "credentials", "operator", "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["username"] == operator.username


# ---------------------------------------------------------------------- 5. identifiers never become paths


def test_path_like_run_ids_and_collections_write_nothing_outside(stack: Settings, tmp_path: Path) -> None:
    topics = Topics(stack.topic_prefix)
    outside = tmp_path / "outside"
    config = {
        "instrument": "LATISS",
        "script_mode": "BIAS",
        "n_bias": 2,
        "generate_calibrations": True,
        "simulator": {"seed": 1, "amp_data_shape": [20, 20], "compress": False},
    }
    attacks = [str(outside / "abs"), "../../escape-run", "a/../../b"]
    for run_id in attacks:
        request = {"type": "run.requested", "run_id": run_id, "producer": "cli", "config": config}
        asyncio.run(
            publish_raw(admin(stack), topics.run_requested, json.dumps(request).encode(), run_id.encode())
        )
    bad_collections = [
        "../x",
        "/etc/passwd",
        "a\tb",
        "a\x00b",
        "x" * 100_000,
        "LATISS/calib",
        "LATISS/raw/all",
    ]
    for index, collection in enumerate(bad_collections):
        request = {
            "type": "run.requested",
            "run_id": f"badcoll-{index}",
            "producer": "cli",
            "config": {**config, "calib_collection": collection},
        }
        asyncio.run(
            publish_raw(
                admin(stack), topics.run_requested, json.dumps(request).encode(), f"badcoll-{index}".encode()
            )
        )

    def rejected() -> list[dict]:
        states = [
            next(
                (
                    s
                    for s in events_of(stack, f"badcoll-{i}", [topics.run_status])
                    if s["state"] == "REJECTED"
                ),
                None,
            )
            for i in range(len(bad_collections))
        ]
        return states if all(states) else []

    for status in wait_until(rejected, timeout=90):
        assert any("calib_collection" in error for error in status["errors"]), status["errors"]
    letters = wait_until(
        lambda: [e for e in events_of(stack, None, [topics.deadletter]) if e.get("key") in attacks],
        timeout=60,
    )
    assert {e["key"] for e in letters} == set(attacks)
    assert not outside.exists()
    for escaped in (stack.home.parent / "escape-run", stack.home.parent.parent / "escape-run"):
        assert not escaped.exists()
    butler = open_butler(stack.butler_repo, writeable=False)
    chained = (
        list(butler.registry.getCollectionChain("LATISS/calib"))
        if "LATISS/calib" in butler.collections.query("LATISS/*")
        else []
    )
    assert not any(".." in c or c.startswith("/") or "\t" in c for c in chained)


# ---------------------------------------------------------------------- 6./7. one authority, a robust CLI


def test_junk_keyed_by_a_live_run_never_fails_it(stack: Settings, configs: Path) -> None:
    topics = Topics(stack.topic_prefix)
    config = config_file(configs, calib_collection="LATISS/calib/hostile/junk", wait_between_exposures=1.0)
    process = subprocess.Popen(
        [sys.executable, "-m", "cpflow.cli", "submit", str(config), "--wait", "--timeout", "400"],
        env=settings_env(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    run_id = process.stdout.readline().strip()

    async def junk() -> None:
        for topic in (
            topics.frames_acquired,
            topics.calib_generated,
            topics.calib_verified,
            topics.run_requested,
        ):
            await publish_raw(admin(stack), topic, b"\xff\xfe junk", run_id.encode())
            await publish_raw(
                admin(stack),
                topic,
                json.dumps({"run_id": "x", "type": "calib.certified"}).encode(),
                run_id.encode(),
            )

    asyncio.run(junk())
    out, err = process.communicate(timeout=460)
    assert process.returncode == 0, out + err
    assert f"run {run_id}: SUCCEEDED" in out
    status = json.loads(cpflow(stack, "status", run_id, "--json").stdout)
    assert status["state"] == "SUCCEEDED"
    assert f"run {run_id}: SUCCEEDED" in cpflow(stack, "events", run_id).stdout


def test_the_cli_survives_bad_messages_on_the_topics(stack: Settings) -> None:
    topics = Topics(stack.topic_prefix)

    async def poison() -> None:
        await publish_raw(
            admin(stack), topics.calib_certified, b'{"run_id":"x","type":"calib.certified"}', b"x"
        )
        await publish_raw(admin(stack), topics.run_status, b"[" * 100_000 + b"]" * 100_000, b"x")
        await publish_raw(admin(stack), topics.run_status, b'{"run_id": "x", "type": "run.status"}', b"x")

    asyncio.run(poison())
    for args in (("status",), ("status", "x"), ("events", "x"), ("status", "--json")):
        result = cpflow(stack, *args)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode in (0, 1), result.stderr
    assert "not valid events" in cpflow(stack, "status").stderr


def test_a_broker_that_is_down_is_one_line_and_its_own_exit_code(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CPFLOW_HOME": str(tmp_path),
        "CPFLOW_KAFKA_PORT": "1",
        "CPFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }
    for args in (("status",), ("events", "r1")):
        result = subprocess.run(
            [sys.executable, "-m", "cpflow.cli", *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 5, result.stderr
        assert result.stderr.strip().count("\n") == 0 and "cannot reach the Kafka broker" in result.stderr


# ---------------------------------------------------------------------- 4. one run never blocks another


def test_a_long_run_does_not_delay_another_and_can_be_cancelled(stack: Settings, configs: Path) -> None:
    slow = config_file(
        configs, calib_collection="LATISS/calib/hostile/slow", n_bias=6, wait_between_exposures=60.0
    )
    submitted = cpflow(stack, "submit", str(slow))
    assert submitted.returncode == 0, submitted.stderr
    slow_id = submitted.stdout.strip()
    wait_until(
        lambda: any(
            "exposures taken" in s["message"]
            for s in events_of(stack, slow_id, [Topics(stack.topic_prefix).run_status])
        ),
        timeout=60,
    )
    _fast_id, fast = submit(
        stack, config_file(configs, calib_collection="LATISS/calib/hostile/fast"), timeout=300
    )
    assert fast["state"] == "SUCCEEDED"
    assert json.loads(cpflow(stack, "status", slow_id, "--json").stdout)["state"] == "RUNNING"
    assert cpflow(stack, "cancel", slow_id, "--reason", "test over").returncode == 0

    def closed() -> dict | None:
        view = json.loads(cpflow(stack, "status", slow_id, "--json").stdout)
        return view if view["state"] in ("FAILED", "SUCCEEDED") else None

    view = wait_until(closed, timeout=120)
    assert view["state"] == "FAILED"
    assert any("cancelled" in error and "test over" in error for error in view["errors"]), view["errors"]


# ---------------------------------------------------------------------- 9. cheap probes


def test_probes_under_a_crowd_of_pollers_stay_cheap(stack: Settings, configs: Path) -> None:
    port = stack.http_ports["generator"]
    stop = threading.Event()
    answers: list[tuple[int, str]] = []

    def poll() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.get(f"http://127.0.0.1:{port}/readyz")
                answers.append((response.status_code, response.text))

    before = metric(stack, "generator", "cpflow_readiness_checks_total")
    pollers = [threading.Thread(target=poll, daemon=True) for _ in range(48)]
    for thread in pollers:
        thread.start()
    try:
        _run_id, view = submit(stack, config_file(configs, calib_collection="LATISS/calib/hostile/polled"))
    finally:
        stop.set()
        for thread in pollers:
            thread.join(timeout=60)
    assert view["state"] == "SUCCEEDED"
    checks = metric(stack, "generator", "cpflow_readiness_checks_total") - before
    assert len(answers) > 100
    assert all(code == 200 and '"ready"' in text for code, text in answers)
    assert checks * 20 < len(answers), (checks, len(answers))  # answered from the cache


# ---------------------------------------------------------------------- crash safety kept


def _pid(settings: Settings, name: str) -> int:
    return int((settings.run_dir / f"{name}.pid").read_text())


def _restart(settings: Settings, name: str) -> None:
    stored = LocalKafka(settings.home, settings.kafka_port, settings.kafka_controller_port).credentials(name)
    assert stored is not None
    start_service(settings, name, stored)

    def ready() -> bool:
        try:
            url = f"http://127.0.0.1:{settings.http_ports[name]}/readyz"
            return httpx.get(url, timeout=10).status_code == 200
        except httpx.TransportError:  # not listening yet
            return False

    wait_until(ready, timeout=120)


@pytest.mark.parametrize("service", ["generator", "acquirer"])
def test_a_service_killed_mid_run_ends_with_one_certification(
    stack: Settings, configs: Path, service: str
) -> None:
    collection = f"LATISS/calib/hostile/kill-{service}"
    config = config_file(
        configs,
        calib_collection=collection,
        n_bias=12,
        wait_between_exposures=0.5 if service == "acquirer" else 0.0,
        simulator={"seed": 8, "amp_data_shape": [400, 256], "compress": False},
    )
    submitted = cpflow(stack, "submit", str(config))
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    trigger = "bias: generating" if service == "generator" else "BIAS: 4/13 exposures taken"
    wait_until(
        lambda: any(
            trigger in s["message"] for s in events_of(stack, run_id, [Topics(stack.topic_prefix).run_status])
        ),
        timeout=120,
        interval=0.2,
    )
    if service == "generator":
        time.sleep(1.0)  # into the ISR and combine of the 12 inputs
    os.killpg(_pid(stack, service), signal.SIGKILL)
    time.sleep(1.0)
    _restart(stack, service)

    def final() -> dict | None:
        view = json.loads(cpflow(stack, "status", run_id, "--json").stdout)
        return view if view["state"] in ("SUCCEEDED", "FAILED") else None

    view = wait_until(final, timeout=300)
    assert view["state"] == "SUCCEEDED", view
    butler = open_butler(stack.butler_repo, writeable=False)
    certified = find_certified(butler, "bias", "LATISS", 0, collection)
    assert len(certified) == 1
    refs = butler.query_datasets("bias", collections=[f"LATISS/runs/{run_id}/bias"], instrument="LATISS")
    assert [ref.id for ref in refs] == [certified[0][0].id]
    raws = butler.query_datasets(
        "raw",
        collections=["LATISS/raw/all"],
        where="exposure.group = g",
        bind={"g": f"{run_id}_bias"},
        instrument="LATISS",
    )
    assert len(raws) == 13  # 12 kept + 1 discarded, each once

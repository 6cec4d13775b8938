"""The dashboards and alerts on a real Prometheus that scraped the real services during a faulty run.

Debian's ``prometheus`` (installed by ``make setup``) is started on loopback, scraping the four
services of the ``stack`` fixture every second with ``monitoring/alerts.yml`` loaded. A run with an
injected fault (a light leak in the biases: verification fails, the run ends FAILED) and a
malformed message (dead-lettered) go through the stack; then every panel query of every dashboard
and every alert expression is evaluated: each must parse, and each panel must return data.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cpflow.dashboards import dashboards, panel_expressions
from cpflow.kafka_local import LocalKafka
from cpflow.stack import start_service, stop_service
from cpflow.topics_reader import publish_raw
from shared.settings import Settings
from shared.topics import Topics
from tests.conftest import free_port
from tests.e2e.common import admin, cpflow, wait_until

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
WINDOWS = {"$__rate_interval": "5m", "$__range": "1h"}
"""What Grafana substitutes; windows that cover the whole test."""


@pytest.fixture(scope="module")
def prometheus(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus is not installed: run `make setup`"
    directory = tmp_path_factory.mktemp("prometheus")
    shutil.copy(ROOT / "monitoring" / "alerts.yml", directory / "alerts.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(directory / "alerts.yml")],
        "scrape_configs": [
            {"job_name": f"cpflow-{name}", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for name, port in stack.http_ports.items()
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    with open(directory / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--web.listen-address={url.removeprefix('http://')}",
                f"--storage.tsdb.path={directory / 'data'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_until(lambda: _ready(url), timeout=60, interval=0.5)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def query(url: str, expr: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=30)
    body: dict[str, Any] = response.json()
    return body


def test_every_panel_and_alert_on_a_real_prometheus(stack: Settings, prometheus: str, tmp_path: Path) -> None:
    targets = wait_until(lambda: _all_up(prometheus), timeout=60)
    assert sorted(targets) == ["cpflow-acquirer", "cpflow-certifier", "cpflow-generator", "cpflow-verifier"]

    # The fault: biases with a light leak fail verification, so the run ends FAILED (exit 1).
    config = {
        "instrument": "LATISS",
        "script_mode": "BIAS",
        "n_bias": 5,
        "generate_calibrations": True,
        "calib_collection": "LATISS/calib/monitoring",
        "simulator": {
            "seed": 21,
            "amp_data_shape": [60, 40],
            "compress": False,
            "faults": [{"kind": "light_leak", "image_type": "BIAS", "level_e": 300}],
        },
    }
    path = tmp_path / "faulty.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cpflow(stack, "submit", str(path), "--wait", "--timeout", "500", timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    # And a message no service can read: dead-lettered.
    topics = Topics(stack.topic_prefix)
    asyncio.run(publish_raw(admin(stack), topics.frames_acquired, b"\x00junk", b"monitoring-junk"))

    # Prometheus has scraped the outcome and the dead letter.
    wait_until(
        lambda: _value(prometheus, 'sum(cpflow_runs_finished_total{outcome="FAILED"})') >= 1, timeout=60
    )
    wait_until(lambda: _value(prometheus, "sum(cpflow_dead_letters_total)") >= 1, timeout=60)

    results: dict[str, str] = {}
    for uid, board in dashboards().items():
        for title, expr in panel_expressions(board):
            for variable, value in WINDOWS.items():
                expr = expr.replace(variable, value)
            body = query(prometheus, expr)
            if body["status"] != "success":
                results[f"{uid} / {title}"] = f"error: {body.get('error')}"
            else:
                results[f"{uid} / {title}"] = f"{len(body['data']['result'])} series"
    rules = yaml.safe_load((ROOT / "monitoring" / "alerts.yml").read_text())["groups"][0]["rules"]
    for rule in rules:
        body = query(prometheus, rule["expr"])
        results[f"alert {rule['alert']}"] = (
            f"{len(body['data']['result'])} series"
            if body["status"] == "success"
            else f"error: {body.get('error')}"
        )
    print(json.dumps(results, indent=1))  # the list of expressions and what they returned (pytest -s)
    errors = {k: v for k, v in results.items() if v.startswith("error")}
    empty_panels = {k: v for k, v in results.items() if not k.startswith("alert ") and v == "0 series"}
    assert errors == {}
    assert empty_panels == {}, "panels whose series never exist"

    # The alerts without a `for` fire on what happened: a dead letter and a rejected bias.
    def firing() -> set[str]:
        alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        names = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
        return names if {"CpflowDeadLetters", "CpflowCalibrationRejected"} <= names else set()

    fired = wait_until(firing, timeout=30)
    assert "CpflowServiceDown" not in fired
    rejected = query(prometheus, 'ALERTS{alertname="CpflowCalibrationRejected", alertstate="firing"}')
    assert {r["metric"]["calib_type"] for r in rejected["data"]["result"]} == {"bias"}


def test_a_stopped_service_raises_the_service_down_alert(stack: Settings, prometheus: str) -> None:
    """Stopped by pid, the certifier's target goes down and CpflowServiceDown is pending (it fires
    after its 2 minutes); started again, it is ready for the tests that follow."""
    stop_service(stack, "certifier")
    try:

        def pending() -> list[dict[str, Any]]:
            body = query(prometheus, 'ALERTS{alertname="CpflowServiceDown", alertstate="pending"}')
            result: list[dict[str, Any]] = body["data"]["result"]
            return result

        alerts = wait_until(pending, timeout=60)
        assert {a["metric"]["job"] for a in alerts} == {"cpflow-certifier"}
        assert _value(prometheus, 'up{job="cpflow-certifier"}') == 0
    finally:
        kafka = LocalKafka(stack.home, stack.kafka_port, stack.kafka_controller_port)
        start_service(stack, "certifier", kafka.credentials("certifier") or {})
        url = f"http://127.0.0.1:{stack.http_ports['certifier']}/readyz"
        wait_until(lambda: _answers(url), timeout=120)
    wait_until(lambda: _value(prometheus, 'up{job="cpflow-certifier"}') == 1, timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _all_up(url: str) -> list[str]:
    body = query(url, 'up{job=~"cpflow-.*"} == 1')
    jobs = [r["metric"]["job"] for r in body.get("data", {}).get("result", [])]
    return jobs if len(jobs) == 4 else []


def _value(url: str, expr: str) -> float:
    result = query(url, expr)["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0

"""docker-compose.yml is a valid compose file and runs the stack the code and k8s/base describe."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cpflow.manifests import RETENTION_MS
from shared.service import GRACEFUL_TIMEOUT_S
from shared.settings import SERVICE_NAMES, Settings, load_settings
from shared.topics import Topics
from tests.ops.common import ROOT, named, render, tool
from tests.ops.test_manifests import container, settings_env

COMPOSE = ROOT / "docker-compose.yml"
DIFFERENT_FROM_KUBERNETES = {
    "CPFLOW_KAFKA_BOOTSTRAP": "the broker's address in each network",
    "CPFLOW_REGISTRY_DB": "the registry's host name in each network",
    "CPFLOW_KAFKA_SECURITY_PROTOCOL": "compose's broker is PLAINTEXT on one host; Kubernetes' SCRAM",
    "CPFLOW_KAFKA_SASL_MECHANISM": "idem",
    "PGPASSWORD": "a Secret in Kubernetes, the operator's environment here",
    "CPFLOW_RAW_REPO": "the summit overlay reads its cameras' repositories; compose keeps raws in its own",
}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the <<: merges
    return data


def check_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load(path: Path) -> subprocess.CompletedProcess[str]:
    """compose-go's loader (what docker compose runs) on ``path``."""
    return subprocess.run(
        [tool("compose-load"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "CPFLOW_REGISTRY_PASSWORD": "only-for-the-test"},
        cwd=ROOT,
    )


def test_the_compose_file_matches_the_compose_spec_and_loads() -> None:
    result = check_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    loaded = load(COMPOSE)
    assert loaded.returncode == 0, loaded.stderr
    project = yaml.safe_load(loaded.stdout)
    # What `docker compose up` starts; the CLI only with `docker compose run` (profile tools).
    infrastructure = {"kafka", "topics", "registry", "butler-init", "prometheus", "grafana"}
    assert set(project["services"]) == {*SERVICE_NAMES, *infrastructure}
    assert compose()["services"]["cli"]["profiles"] == ["tools"]


@pytest.mark.parametrize(
    ("old", "new", "validator", "message"),
    [
        ('    ports: ["127.0.0.1:8183:8183"]', '    port: ["127.0.0.1:8183:8183"]',
         "schema", "'port' was unexpected"),
        ("      interval: 15s\n", "      interval: ten\n", "loader", 'invalid duration "ten"'),
        ("    registry:\n      condition: service_healthy\n    topics:",
         "    registri:\n      condition: service_healthy\n    topics:",
         "loader", 'depends on undefined service "registri"'),
    ],
)  # fmt: skip
def test_a_broken_compose_file_is_rejected(
    old: str, new: str, validator: str, message: str, tmp_path: Path
) -> None:
    text = COMPOSE.read_text()
    assert old in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    for directory in ("monitoring",):
        (tmp_path / directory).symlink_to(ROOT / directory)
    result = check_schema(broken) if validator == "schema" else load(broken)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_services_agree_with_the_settings_and_the_kubernetes_base(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    kubernetes = render("summit")
    k8s_env = settings_env(kubernetes)
    for name in SERVICE_NAMES:
        service = services[name]
        env = {k: str(v) for k, v in service["environment"].items()}
        # The same variables as the Kubernetes ConfigMap, with the same values where one host and a
        # cluster do not differ.
        assert set(env) - {"PGPASSWORD"} == set(k8s_env) - {"CPFLOW_KAFKA_SASL_MECHANISM", "CPFLOW_RAW_REPO"}
        assert {k: v for k, v in env.items() if k not in DIFFERENT_FROM_KUBERNETES} == {
            k: v for k, v in k8s_env.items() if k not in DIFFERENT_FROM_KUBERNETES
        }
        for variable, value in env.items():
            if variable.startswith("CPFLOW_"):
                assert variable.removeprefix("CPFLOW_").lower() in Settings.model_fields, variable
                monkeypatch.setenv(
                    variable, value.replace("${CPFLOW_REGISTRY_PASSWORD:?set CPFLOW_REGISTRY_PASSWORD}", "x")
                )
        settings = load_settings()
        port = settings.http_ports[name]
        assert port == Settings().http_ports[name]
        assert (
            service["command"]
            == [f"services.{name}"]
            == container(named(kubernetes, "Deployment", f"cpflow-{name}"))["args"]
        )
        assert service["ports"] == [f"127.0.0.1:{port}:{port}"]
        probe = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in probe
        assert service["user"] == "10001:10001" and service["read_only"] is True
        assert re.fullmatch(r"(\d+)s", service["stop_grace_period"])
        assert int(service["stop_grace_period"][:-1]) > 2 * GRACEFUL_TIMEOUT_S
        # Writable where the code writes: the same mount points as the Deployment's writable ones
        # (the summit's read-only /repo and /data are its cameras' repositories).
        targets = {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in service["volumes"]}
        deployment_mounts = {
            m["mountPath"]
            for m in container(named(kubernetes, "Deployment", f"cpflow-{name}"))["volumeMounts"]
            if not m.get("readOnly")
        }
        assert targets == deployment_mounts
        # The broker and the registry it names are services of this file.
        assert settings.kafka_bootstrap.split(":")[0] in services
        assert "@registry:5432/" in str(settings.registry_db)
    generator_limit = services["generator"]["mem_limit"]
    limit = container(named(kubernetes, "Deployment", "cpflow-generator"))["resources"]["limits"]["memory"]
    assert generator_limit == limit.lower().replace("mi", "m")


def test_the_topics_are_those_of_the_code() -> None:
    script = compose()["services"]["topics"]["command"][0]
    lines = [line for line in script.splitlines() if "kafka-topics.sh" in line]
    created = {}
    for line in lines:
        topic = re.search(r"--topic (\S+)", line).group(1)  # type: ignore[union-attr]
        partitions = int(re.search(r"--partitions (\d+)", line).group(1))  # type: ignore[union-attr]
        retention = int(re.search(r"retention\.ms=(\d+)", line).group(1))  # type: ignore[union-attr]
        created[topic] = (partitions, retention)
    settings = Settings()
    assert created == {
        t: (settings.partitions, RETENTION_MS.get(Topics.suffix(t), RETENTION_MS["default"]))
        for t in Topics(settings.topic_prefix).all()
    }


def test_prometheus_scrapes_every_service_with_the_alert_rules() -> None:
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert jobs == {f"cpflow-{n}": [f"{n}:{p}"] for n, p in Settings().http_ports.items()}
    result = subprocess.run(
        [tool("promtool"), "check", "config", "monitoring/prometheus.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and "SUCCESS: 10 rules found" in result.stdout, (
        result.stdout + result.stderr
    )
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert "./monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    grafana = compose()["services"]["grafana"]["volumes"]
    assert "./monitoring/dashboards:/var/lib/grafana/dashboards:ro" in grafana
    assert sorted(p.name for p in (ROOT / "monitoring" / "dashboards").glob("*.json")) == [
        "cpflow-messaging.json",
        "cpflow-runs.json",
    ]

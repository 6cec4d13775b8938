"""The Kubernetes manifests render, validate strictly, and agree with the code they deploy."""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cpflow.access import Acl, acls, principals
from cpflow.manifests import generated_files
from shared.service import GRACEFUL_TIMEOUT_S, _health_routes
from shared.settings import SERVICE_NAMES, Settings, load_settings
from shared.topics import Topics
from tests.ops.common import CRDS, OVERLAYS, ROOT, errors, named, of_kind, render

SECRETS_THE_OPERATOR_CREATES = {"cpflow-registry-credentials", "cpflow-summit-repo-credentials"}
"""Secrets a person creates before applying (README: Operations); all others are Strimzi's."""


def settings_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    (config,) = [
        c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("cpflow-settings")
    ]
    return dict(config["data"])


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return main


def quantity_mib(value: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    number, unit = re.fullmatch(r"([0-9.]+)([KMGT]i)", value).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


# -- the generated files, the vendored CRDs


def test_generated_manifests_are_current() -> None:
    stale = [str(path) for path, content in generated_files().items() if (ROOT / path).read_text() != content]
    assert not stale, f"run `python -m cpflow.manifests` and commit: {stale}"


def test_vendored_crds_are_the_published_files() -> None:
    for line in (CRDS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((CRDS / name).read_bytes()).hexdigest() == digest, name


# -- schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_strictly(overlay: str) -> None:
    objects = render(overlay)
    assert {o["kind"] for o in objects} >= {
        "Namespace",
        "Deployment",
        "Service",
        "ConfigMap",
        "PersistentVolumeClaim",
        "StatefulSet",
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "KafkaUser",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
    }
    found = {f"{o['kind']}/{o['metadata']['name']}": errors(o) for o in objects}
    assert {k: v for k, v in found.items() if v} == {}
    assert not of_kind(objects, "Secret"), "no Secret is committed: they are created in the cluster"


BREAKAGES = [
    ("Deployment", "cpflow-generator", ["spec", "template", "spec", "containers", 0, "imagePullPolicyy"],
     "Always", "imagePullPolicyy"),
    ("Deployment", "cpflow-verifier", ["spec", "replicas"], "two", "replicas"),
    ("Service", "cpflow-certifier", ["spec", "ports", 0, "port"], "http", "port"),
    ("KafkaTopic", "cpflow-run-requested", ["spec", "partitions"], -1, "minimum"),
    ("KafkaTopic", "cpflow-run-requested", ["spec", "replica"], 3, "replica"),
    ("KafkaUser", "cpflow-verifier", ["spec", "authorization", "acls", 0, "operations", 0], "Reed", "Reed"),
    ("KafkaUser", "cpflow-verifier", ["spec", "authentication", "type"], "scram-sha-256", "scram-sha-256"),
    ("KafkaNodePool", "dual-role", ["spec", "roles", 1], "brokerr", "brokerr"),
    ("Kafka", "cpflow", ["spec", "kafka", "listeners", 0, "tls"], "no", "tls"),
    ("ServiceMonitor", "cpflow-generator", ["spec", "endpoints", 0, "intervall"], "30s", "intervall"),
    ("PrometheusRule", "cpflow", ["spec", "groups", 0, "rules", 0, "for"], 5, "for"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "name", "path", "value", "named_in_error"), BREAKAGES)
def test_a_broken_field_is_rejected(
    kind: str, name: str, path: list[Any], value: Any, named_in_error: str
) -> None:
    broken = copy.deepcopy(named(render("summit"), kind, name))
    assert errors(broken) == []
    node = broken
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    found = errors(broken)
    assert found, f"{kind} {name} with {path} = {value!r} was accepted"
    assert any(named_in_error in e for e in found), found


# -- topics and users against the code


def topic_check(objects: list[dict[str, Any]]) -> list[str]:
    """How the KafkaTopics differ from the topics the code uses (empty: they agree)."""
    env = settings_env(objects)
    settings = load_settings(
        topic_prefix=env["CPFLOW_TOPIC_PREFIX"], partitions=int(env["CPFLOW_PARTITIONS"])
    )
    rendered = {t["spec"]["topicName"]: t for t in of_kind(objects, "KafkaTopic")}
    wanted = set(Topics(settings.topic_prefix).all())
    problems = [f"missing topic {t}" for t in sorted(wanted - set(rendered))]
    problems += [f"topic the code does not use: {t}" for t in sorted(set(rendered) - wanted)]
    for name, topic in rendered.items():
        if topic["spec"]["partitions"] != settings.partitions:
            problems.append(
                f"{name}: {topic['spec']['partitions']} partitions, CPFLOW_PARTITIONS={settings.partitions}"
            )
        if (
            topic["metadata"]["labels"].get("strimzi.io/cluster")
            != named(objects, "Kafka", "cpflow")["metadata"]["name"]
        ):
            problems.append(f"{name}: not labelled for the cpflow cluster")
    return problems


def user_check(objects: list[dict[str, Any]]) -> list[str]:
    """How the KafkaUsers' ACLs differ from `cpflow.access` (empty: exactly the same rules)."""
    env = settings_env(objects)
    expected = {
        p.username: set(acls(p)) for p in principals(Settings(topic_prefix=env["CPFLOW_TOPIC_PREFIX"]))
    }
    rendered: dict[str, set[Acl]] = {}
    problems = []
    for user in of_kind(objects, "KafkaUser"):
        if user["spec"]["authentication"]["type"] != "scram-sha-512":
            problems.append(f"{user['metadata']['name']}: not a SCRAM-SHA-512 user")
        rules = set()
        for rule in user["spec"]["authorization"]["acls"]:
            if rule.get("type", "allow") != "allow" or rule.get("host", "*") != "*":
                problems.append(f"{user['metadata']['name']}: unexpected rule {rule}")
            resource = rule["resource"]
            pattern = "PREFIXED" if resource.get("patternType") == "prefix" else "LITERAL"
            for operation in rule["operations"]:
                rules.add(Acl(resource["type"].upper(), pattern, resource.get("name", ""), operation.upper()))
        rendered[user["metadata"]["name"]] = rules
    for username in sorted(set(expected) | set(rendered)):
        have, want = rendered.get(username), expected.get(username)
        if have is None:
            problems.append(f"no KafkaUser {username}")
        elif want is None:
            problems.append(f"KafkaUser {username} is no principal of cpflow.access")
        else:
            problems += [f"{username}: too broad: {a}" for a in sorted(have - want)]
            problems += [f"{username}: missing: {a}" for a in sorted(want - have)]
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_topics_are_the_topics_of_the_code(overlay: str) -> None:
    assert topic_check(render(overlay)) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_kafka_user_may_do_exactly_what_cpflow_access_says(overlay: str) -> None:
    objects = render(overlay)
    assert user_check(objects) == []
    # Least privilege, spelled out for one service: the verifier reads calib.generated with its own
    # group and writes calib.verified, run.status and deadletter; nothing else.
    verifier = named(objects, "KafkaUser", "cpflow-verifier")["spec"]["authorization"]["acls"]
    assert sorted(
        (r["resource"]["type"], r["resource"]["name"], tuple(r["operations"])) for r in verifier
    ) == [
        ("group", "cpflow-verifier", ("Read",)),
        ("topic", "cpflow.calib.generated", ("Read", "Describe")),
        ("topic", "cpflow.calib.verified", ("Write", "Describe")),
        ("topic", "cpflow.deadletter", ("Write", "Describe")),
        ("topic", "cpflow.run.status", ("Write", "Describe")),
    ]


def test_a_missing_topic_or_a_too_broad_acl_is_caught() -> None:
    objects = render("summit")
    without = [
        o
        for o in objects
        if not (o["kind"] == "KafkaTopic" and o["spec"]["topicName"] == "cpflow.calib.verified")
    ]
    assert topic_check(without) == ["missing topic cpflow.calib.verified"]

    broad = copy.deepcopy(objects)
    verifier = named(broad, "KafkaUser", "cpflow-verifier")
    verifier["spec"]["authorization"]["acls"].append(
        {"resource": {"type": "topic", "name": "cpflow.", "patternType": "prefix"}, "operations": ["Write"]}
    )
    assert user_check(broad) == [
        "cpflow-verifier: too broad: "
        "Acl(resource='TOPIC', pattern='PREFIXED', name='cpflow.', operation='WRITE')"
    ]

    other_group = copy.deepcopy(objects)
    certifier = named(other_group, "KafkaUser", "cpflow-certifier")
    for rule in certifier["spec"]["authorization"]["acls"]:
        if rule["resource"]["type"] == "group":
            rule["resource"]["name"] = "cpflow-verifier"
    assert sorted(user_check(other_group)) == [
        "cpflow-certifier: missing: Acl(resource='GROUP', pattern='LITERAL', name='cpflow-certifier', "
        "operation='READ')",
        "cpflow-certifier: too broad: Acl(resource='GROUP', pattern='LITERAL', name='cpflow-verifier', "
        "operation='READ')",
    ]


# -- Deployments against the settings the code reads


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_settings_configmap_is_settings_the_code_reads(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = settings_env(render(overlay))
    unknown = [
        k
        for k in env
        if k.startswith("CPFLOW_") and k.removeprefix("CPFLOW_").lower() not in Settings.model_fields
    ]
    assert unknown == [], "variables no setting reads"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()  # valid: a bad value would raise SettingsError naming it
    assert settings.http_host == "0.0.0.0"  # probes reach the pod's address, not only loopback
    assert settings.kafka_security_protocol == "SASL_PLAINTEXT"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_services_point_at_what_the_services_serve(overlay: str) -> None:
    objects = render(overlay)
    env = settings_env(objects)
    served = {path for path, _ in _health_routes([])}
    assert served == {"/healthz", "/readyz"}
    for name in SERVICE_NAMES:
        deployment = named(objects, "Deployment", f"cpflow-{name}")
        main = container(deployment)
        port = int(env[f"CPFLOW_{name.upper()}_PORT"])
        assert port == Settings().http_ports[name]
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        assert ports == {"http": port}
        assert main["args"] == [f"services.{name}"]
        assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert main["startupProbe"]["httpGet"]["path"] in served
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        # The Service selects these pods and forwards to the named port.
        service = named(objects, "Service", f"cpflow-{name}")
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
            ("http", port, "http")
        ]
        # No other Deployment's pods match this Service.
        for other in of_kind(objects, "Deployment"):
            if other is not deployment:
                labels = other["spec"]["template"]["metadata"]["labels"]
                assert not service["spec"]["selector"].items() <= labels.items()
        # The ServiceMonitor selects this Service and scrapes /metrics on its named port.
        monitor = named(objects, "ServiceMonitor", f"cpflow-{name}")
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("http", "/metrics")]
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        # Its Kafka user is its KafkaUser, with the password of the Secret Strimzi makes for it.
        environment = {e["name"]: e for e in main["env"]}
        username = environment["CPFLOW_KAFKA_USERNAME"]["value"]
        assert username == f"cpflow-{name}"
        named(objects, "KafkaUser", username)
        assert environment["CPFLOW_KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": username,
            "key": "password",
        }
    registry = named(objects, "Service", "cpflow-registry")
    statefulset = named(objects, "StatefulSet", "cpflow-registry")
    assert (
        registry["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    )
    assert (
        f"@{registry['metadata']['name']}:{registry['spec']['ports'][0]['port']}/"
        in env["CPFLOW_REGISTRY_DB"]
    )
    assert (
        env["CPFLOW_KAFKA_BOOTSTRAP"]
        == f"{named(objects, 'Kafka', 'cpflow')['metadata']['name']}-kafka-bootstrap:9092"
    )


def _secret_names(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["secretKeyRef"]["name"]} if "secretKeyRef" in node else set()
        return found.union(*(_secret_names(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_secret_names(v) for v in node))
    return set()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_committed(overlay: str) -> None:
    objects = render(overlay)
    users = {u["metadata"]["name"] for u in of_kind(objects, "KafkaUser")}
    assert _secret_names(objects) <= users | SECRETS_THE_OPERATOR_CREATES
    text = yaml.safe_dump_all(objects)
    assert "password:" not in text.replace("key: password", "")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged_with_writable_volumes_where_the_code_writes(overlay: str) -> None:
    objects = render(overlay)
    env = settings_env(objects)
    for deployment in [*of_kind(objects, "Deployment"), *of_kind(objects, "StatefulSet")]:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            security = c["securityContext"]
            assert (
                security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
            )
            assert security["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"]
    for name in SERVICE_NAMES:
        deployment = named(objects, "Deployment", f"cpflow-{name}")
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > 2 * GRACEFUL_TIMEOUT_S
        mounts = [m for m in container(deployment)["volumeMounts"] if not m.get("readOnly")]
        for variable in (
            "CPFLOW_HOME",
            "CPFLOW_BUTLER_REPO",
            "CPFLOW_NETWORK_DIR",
            "NUMBA_CACHE_DIR",
            "TMPDIR",
            "HOME",
        ):
            path = Path(env[variable])
            assert any(path.is_relative_to(m["mountPath"]) for m in mounts), (
                f"{name}: {variable}={path} is read-only"
            )
        volumes = {v["name"]: v for v in pod["volumes"]}
        cache = next(m for m in mounts if Path(env["CPFLOW_NETWORK_DIR"]).is_relative_to(m["mountPath"]))
        assert "persistentVolumeClaim" in volumes[cache["name"]], "the sorting-network cache is persistent"
    assert named(objects, "PersistentVolumeClaim", "cpflow-data")["spec"]["accessModes"] == (
        ["ReadWriteMany"] if overlay == "summit" else ["ReadWriteOnce"]
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_generators_memory_covers_its_combine_budget(overlay: str) -> None:
    """bench/README.md: peak anonymous RSS is the budget plus at most 1532 MiB (full-size LATISS)."""
    objects = render(overlay)
    budget = float(settings_env(objects)["CPFLOW_COMBINE_MEMORY_MB"])
    resources = container(named(objects, "Deployment", "cpflow-generator"))["resources"]
    assert quantity_mib(resources["requests"]["memory"]) >= budget + 1532
    assert quantity_mib(resources["limits"]["memory"]) >= quantity_mib(resources["requests"]["memory"]) + 1024


def test_the_prometheus_rule_is_the_alert_file() -> None:
    rule = named(render("summit"), "PrometheusRule", "cpflow")
    assert rule["spec"] == yaml.safe_load((ROOT / "monitoring" / "alerts.yml").read_text())


def test_the_summit_is_replicated() -> None:
    objects = render("summit")
    assert named(objects, "KafkaNodePool", "dual-role")["spec"]["replicas"] == 3
    for topic in of_kind(objects, "KafkaTopic"):
        assert topic["spec"]["replicas"] == 3 and topic["spec"]["config"]["min.insync.replicas"] == 2
        assert topic["spec"]["config"]["retention.ms"] >= 30 * 24 * 3600 * 1000  # a month can be replayed
    partitions = int(settings_env(objects)["CPFLOW_PARTITIONS"])
    for name in ("generator", "verifier"):
        assert 1 < named(objects, "Deployment", f"cpflow-{name}")["spec"]["replicas"] <= partitions


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_inside_the_render_resolves(overlay: str) -> None:
    objects = render(overlay)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    missing = []
    for workload in [*of_kind(objects, "Deployment"), *of_kind(objects, "StatefulSet")]:
        pod = workload["spec"]["template"]["spec"]
        wanted = [("ServiceAccount", pod["serviceAccountName"])] if "serviceAccountName" in pod else []
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            wanted += [("ConfigMap", e["configMapRef"]["name"]) for e in c.get("envFrom", [])]
            declared = {v["name"] for v in pod.get("volumes", [])} | {
                t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])
            }
            undeclared = [m["name"] for m in c.get("volumeMounts", []) if m["name"] not in declared]
            missing += [f"{workload['metadata']['name']}: volume {name}" for name in undeclared]
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                wanted.append(("ConfigMap", volume["configMap"]["name"]))
            if "persistentVolumeClaim" in volume:
                wanted.append(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
        missing += [f"{workload['metadata']['name']}: {k} {n}" for k, n in wanted if (k, n) not in names]
    for user in of_kind(objects, "KafkaUser"):
        if ("Kafka", user["metadata"]["labels"]["strimzi.io/cluster"]) not in names:
            missing.append(f"KafkaUser {user['metadata']['name']}: no Kafka cluster")
    for pool in of_kind(objects, "KafkaNodePool"):
        if ("Kafka", pool["metadata"]["labels"]["strimzi.io/cluster"]) not in names:
            missing.append(f"KafkaNodePool {pool['metadata']['name']}: no Kafka cluster")
    assert missing == []
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    assert namespaces == {
        named(objects, "Namespace", f"cpflow{'-dev' if overlay == 'dev' else ''}")["metadata"]["name"]
    }


def test_the_summit_reads_each_cameras_raws_from_its_repository_read_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CPFLOW_RAW_REPO=/repo/{instrument}: every stage that reads raws sees each camera's repository
    on a read-only mount (the raw files' directory too), with the registries' credentials; the
    certifier reads no raws and mounts neither."""
    objects = render("summit")
    env = settings_env(objects)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    template = load_settings().raw_repo
    assert "{instrument}" in template
    for name in SERVICE_NAMES:
        deployment = named(objects, "Deployment", f"cpflow-{name}")
        main = container(deployment)
        read_only = {m["mountPath"] for m in main["volumeMounts"] if m.get("readOnly")}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        environment = {e["name"]: e for e in main["env"]}
        if name == "certifier":
            assert "/repo" not in read_only and "LSST_DB_AUTH_CREDENTIALS" not in environment
            continue
        for instrument in ("LATISS", "LSSTComCam", "LSSTCam"):
            repo = Path(template.replace("{instrument}", instrument))
            assert any(repo.is_relative_to(path) for path in read_only), f"{name}: {repo} not mounted"
        assert {"/repo", "/data"} <= read_only
        for mount in main["volumeMounts"]:
            if mount["mountPath"] in ("/repo", "/data"):
                claim = volumes[mount["name"]]["persistentVolumeClaim"]
                assert claim["readOnly"] is True
                pvc = named(objects, "PersistentVolumeClaim", claim["claimName"])
                assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
        secret = environment["LSST_DB_AUTH_CREDENTIALS"]["valueFrom"]["secretKeyRef"]
        assert secret["name"] in SECRETS_THE_OPERATOR_CREATES
    assert "CPFLOW_RAW_REPO" not in settings_env(render("dev"))  # a laptop: raws in cpflow's repository

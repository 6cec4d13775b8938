"""The deployment files made from the code: ``python -m cpflow.manifests [--check]``.

- ``k8s/base/generated/kafka-topics.yaml``: one Strimzi KafkaTopic per topic of `shared.topics`
  (``spec.topicName`` carries the dotted name), partitions from `shared.settings.Settings`;
- ``k8s/base/generated/kafka-users.yaml``: one KafkaUser per principal of `cpflow.access`
  (SCRAM-SHA-512), its ACLs exactly `cpflow.access.acls`, the rules the local broker gets too;
- ``k8s/base/generated/prometheus-rule.yaml``: ``monitoring/alerts.yml`` as a PrometheusRule;
- ``k8s/base/generated/grafana-dashboards.yaml`` and ``monitoring/dashboards/<uid>.json``: the
  dashboards of `cpflow.dashboards` (ConfigMaps with the Grafana sidecar's label).

``--check`` writes nothing and exits 1 if a file is not what the code makes (a test runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from cpflow.access import acls, principals
from shared.settings import Settings
from shared.topics import Topics

__all__ = ["CLUSTER", "RETENTION_MS", "generated_files", "main"]

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = "cpflow"
"""The Strimzi Kafka cluster's name (``k8s/base/kafka.yaml``)."""

DAY_MS = 24 * 3600 * 1000
RETENTION_MS = {"deadletter": 90 * DAY_MS, "default": 30 * DAY_MS}
"""How long the topics keep events: a month of runs can be replayed (`cpflow events`, replays), dead
letters stay a season for a redrive after the fix."""

HEADER = "# Made by `python -m cpflow.manifests` from the code; do not edit (a test checks it is current).\n"


def _dump(documents: list[dict[str, Any]]) -> str:
    return HEADER + "---\n".join(yaml.safe_dump(d, sort_keys=False, width=120) for d in documents)


def kafka_topics(settings: Settings) -> list[dict[str, Any]]:
    topics = Topics(settings.topic_prefix)
    found = []
    for name in topics.all():
        suffix = Topics.suffix(name)
        retention = RETENTION_MS.get(suffix, RETENTION_MS["default"])
        found.append(
            {
                "apiVersion": "kafka.strimzi.io/v1",
                "kind": "KafkaTopic",
                "metadata": {"name": name.replace(".", "-"), "labels": {"strimzi.io/cluster": CLUSTER}},
                "spec": {
                    "topicName": name,
                    "partitions": settings.partitions,
                    "replicas": 1,
                    "config": {
                        "retention.ms": retention,
                        "cleanup.policy": "delete",
                        "min.insync.replicas": 1,
                    },
                },
            }
        )
    return found


def kafka_users(settings: Settings) -> list[dict[str, Any]]:
    found = []
    for principal in principals(settings):
        grouped: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        for acl in acls(principal):
            grouped[(acl.resource, acl.pattern, acl.name)].append(acl.operation)
        rules = [
            {
                "resource": {
                    "type": resource.lower(),
                    "name": name,
                    "patternType": "prefix" if pattern == "PREFIXED" else "literal",
                },
                "operations": [op.capitalize() for op in operations],
                "host": "*",
            }
            for (resource, pattern, name), operations in grouped.items()
        ]
        found.append(
            {
                "apiVersion": "kafka.strimzi.io/v1",
                "kind": "KafkaUser",
                "metadata": {
                    "name": principal.username,
                    "labels": {"strimzi.io/cluster": CLUSTER, "app.kubernetes.io/component": principal.name},
                },
                "spec": {
                    "authentication": {"type": "scram-sha-512"},
                    "authorization": {"type": "simple", "acls": rules},
                },
            }
        )
    return found


def prometheus_rule(rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "cpflow", "labels": {"release": "kube-prometheus-stack"}},
        "spec": rules,
    }


def butler_configmap() -> dict[str, Any]:
    """The butler's seed configuration (storage classes, formatters, datastore) as a ConfigMap."""
    from shared.butler.repo import SEED_CONFIG

    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cpflow-butler-config"},
        "data": {"seed.yaml": SEED_CONFIG.read_text()},
    }


def dashboard_configmaps(boards: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{uid}-dashboard", "labels": {"grafana_dashboard": "1"}},
            "data": {f"{uid}.json": json.dumps(board, indent=1, sort_keys=True) + "\n"},
        }
        for uid, board in sorted(boards.items())
    ]


def generated_files(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file (relative to ``root``) and its content."""
    from cpflow.dashboards import dashboards

    settings = Settings(topic_prefix="cpflow")
    rules = yaml.safe_load((root / "monitoring" / "alerts.yml").read_text())
    boards = dashboards()
    base = Path("k8s/base/generated")
    files = {
        base / "kafka-topics.yaml": _dump(kafka_topics(settings)),
        base / "kafka-users.yaml": _dump(kafka_users(settings)),
        base / "prometheus-rule.yaml": _dump([prometheus_rule(rules)]),
        base / "grafana-dashboards.yaml": _dump(dashboard_configmaps(boards)),
        base / "butler-config.yaml": _dump([butler_configmap()]),
    }
    for uid, board in boards.items():
        files[Path("monitoring/dashboards") / f"{uid}.json"] = (
            json.dumps(board, indent=1, sort_keys=True) + "\n"
        )
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cpflow.manifests", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is not current")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this checkout)")
    args = parser.parse_args(argv)
    stale = []
    for relative, content in generated_files(args.root).items():
        path = args.root / relative
        current = path.read_text() if path.exists() else None
        if current == content:
            continue
        stale.append(str(relative))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    if args.check and stale:
        print("not current (run `python -m cpflow.manifests`): " + ", ".join(stale), file=sys.stderr)
        return 1
    for name in stale:
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

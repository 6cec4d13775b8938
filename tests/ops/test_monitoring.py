"""Alert rules behave as their promtool unit tests say; dashboards are valid and query real metrics."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml
from faststream.prometheus.container import MetricsContainer
from grafana_foundation_sdk.models.dashboard import Dashboard
from prometheus_client import CollectorRegistry

from cpflow.dashboards import dashboards, panel_expressions
from shared.metrics import Metrics
from tests.ops.common import ROOT, tool

MONITORING = ROOT / "monitoring"


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_every_alert_fires_and_stays_silent_as_its_unit_tests_say() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    alerts = {
        r["alert"]
        for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    fired = {c["alertname"] for t in tests for c in t["alert_rule_test"] if c["exp_alerts"]}
    silent = {c["alertname"] for t in tests for c in t["alert_rule_test"] if not c["exp_alerts"]}
    # Each alert has a case where it fires, and one where it does not: either an eval with no
    # alert, or series in a firing case that must not be among the alerts.
    assert fired == alerts
    multi_series = {
        c["alertname"]
        for t in tests
        for c in t["alert_rule_test"]
        if c["exp_alerts"] and len(t["input_series"]) > 1
    }
    assert silent | multi_series == alerts


def test_a_wrong_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    (tmp_path / "alerts.yml").write_text((MONITORING / "alerts.yml").read_text())
    text = (MONITORING / "alerts_test.yml").read_text()
    broken = text.replace("values: '1 1 0 0 0 0 0 0'", "values: '1 1 1 1 1 1 1 1'", 1)
    assert broken != text
    (tmp_path / "alerts_test.yml").write_text(broken)
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode == 1
    assert "alertname: CpflowServiceDown" in result.stdout + result.stderr


def test_a_broken_rule_is_rejected(tmp_path: Path) -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    rules["groups"][0]["rules"][0]["expr"] = "sum by (job (up)"
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", "bad.yml", cwd=tmp_path)
    assert result.returncode == 1 and "parse error" in result.stdout + result.stderr


# -- dashboards


def test_dashboards_are_grafana_11_dashboards() -> None:
    boards = dashboards()
    assert set(boards) == {"cpflow-runs", "cpflow-messaging"}
    for uid, board in boards.items():
        assert board["schemaVersion"] == 41  # Grafana 11.6's (the 10.1 build of the SDK writes 36)
        # The committed JSON round-trips through Grafana's typed model without losing anything.
        committed = json.loads((MONITORING / "dashboards" / f"{uid}.json").read_text())
        assert committed == board
        model = Dashboard.from_json(committed)
        assert model.uid == uid and len(model.panels or []) == len(board["panels"])
        ids = [t["refId"] for p in board["panels"] for t in p.get("targets", [])]
        assert all(ids), "every query has a refId"


TYPECHECK = MONITORING / "typecheck"
DASHBOARD_TYPE = "@grafana/schema/dist/esm/raw/dashboard/x/Dashboard_types.gen"


def typescript_errors(boards: dict[str, dict[str, Any]]) -> str:
    """tsc's complaints about ``boards`` declared as Grafana's own ``Dashboard`` type (empty: none)."""
    tsc = TYPECHECK / "node_modules" / ".bin" / "tsc"
    assert tsc.exists(), "Grafana's types are not installed: run `make setup`"
    lines = [f'import type {{ Dashboard }} from "{DASHBOARD_TYPE}";']
    lines += [
        f"export const {uid.replace('-', '_')}: Dashboard = {json.dumps(b)};" for uid, b in boards.items()
    ]
    with tempfile.TemporaryDirectory(prefix="check-", dir=TYPECHECK) as directory:
        (Path(directory) / "dashboards.ts").write_text("\n".join(lines) + "\n")
        (Path(directory) / "tsconfig.json").write_text('{"extends": "../tsconfig.json", "include": ["*.ts"]}')
        result = subprocess.run(
            [str(tsc), "-p", directory], capture_output=True, text=True, timeout=120, check=False
        )
    return "" if result.returncode == 0 else result.stdout + result.stderr


def test_dashboards_type_check_against_grafanas_own_types() -> None:
    assert typescript_errors(dashboards()) == ""


def test_the_type_check_catches_a_wrong_field() -> None:
    boards = copy.deepcopy(dashboards())
    boards["cpflow-runs"]["refresh"] = 30
    boards["cpflow-messaging"]["panels"][0]["gridPoss"] = {"h": 8}
    found = typescript_errors(boards)
    assert "TS2322" in found  # refresh: number where Grafana has a string
    assert "gridPoss" in found


def test_every_panel_query_parses(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": uid,
                "rules": [
                    {
                        "record": f"panel:{i}",
                        "expr": expr.replace("$__rate_interval", "5m").replace("$__range", "1h"),
                    }
                    for i, (_title, expr) in enumerate(panel_expressions(board))
                ],
            }
            for uid, board in dashboards().items()
        ]
    }
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", "panels.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _exported_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    MetricsContainer(registry, metrics_prefix="faststream", custom_label_names=[])
    return set(registry._names_to_collectors)


def test_dashboards_and_alerts_use_only_metrics_the_code_exports() -> None:
    exported = _exported_names()
    pattern = re.compile(r"\b((?:cpflow|faststream)_[a-z_]+)")
    expressions = [e for board in dashboards().values() for _t, e in panel_expressions(board)]
    alerts = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"][0]["rules"]
    expressions += [r["expr"] for r in alerts]
    used = {name for expr in expressions for name in pattern.findall(expr)}
    assert used, "the expressions name metrics"
    assert sorted(used - exported) == []
    # Every domain metric is on a dashboard or in an alert (nothing exported goes unwatched).
    suffixes = ("_created", "_bucket", "_count", "_sum", "_total")
    domain = {n for n in exported if n.startswith("cpflow_") and not n.endswith(suffixes)}
    watched = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
    assert sorted(domain - watched) == ["cpflow_readiness_checks"]  # an internal counter

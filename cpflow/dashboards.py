"""cpflow's Grafana dashboards, built with Grafana's typed builders (grafana-foundation-sdk, Grafana 11.6).

`dashboards` gives each dashboard as JSON-ready dicts: ``monitoring/dashboards/<uid>.json`` (what
docker-compose's Grafana provisions) and the Kubernetes ConfigMaps with the sidecar label are
written from them by ``python -m cpflow.manifests``; a test checks both are current. Every panel's
queries are Prometheus expressions on the metrics of `shared.metrics` and faststream's
``faststream_*`` metrics. A development dependency (the ``dev`` extra): the services never import it.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

__all__ = ["dashboards", "panel_expressions"]

_DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def _query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(_DATASOURCE)


def _series(title: str, unit: str, *queries: tuple[str, str], width: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(_DATASOURCE).height(8).span(width)
    for ref, (expr, legend) in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(_query(expr, legend, ref))
    return panel


def _stat(title: str, expr: str, legend: str) -> stat.Panel:
    return (
        stat.Panel().title(title).datasource(_DATASOURCE).height(4).span(6).with_target(_query(expr, legend))
    )


def _base(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["cpflow"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("utc")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )


def run_overview() -> dashboard.Dashboard:
    """Runs, frames, verification, certification, stage durations, dead letters and retries."""
    window = "$__rate_interval"
    return (
        _base("cpflow-runs", "cpflow: runs", "Calibration runs from frames to certified products.")
        .with_row(dashboard.Row("Runs"))
        .with_panel(_stat("Runs finished (range)", "sum by (outcome) (increase(cpflow_runs_finished_total[$__range]))", "{{outcome}}"))
        .with_panel(_stat("Runs started (range)", "sum by (instrument) (increase(cpflow_runs_started_total[$__range]))", "{{instrument}}"))
        .with_panel(_stat("Dead letters (range)", "sum by (topic) (increase(cpflow_dead_letters_total[$__range]))", "{{topic}}"))
        .with_panel(_stat("Certification failures (range)", "sum by (calib_type) (increase(cpflow_certifications_total{outcome=\"failed\"}[$__range]))", "{{calib_type}}"))
        .with_panel(_series("Runs finished by outcome", "short", (f"sum by (outcome) (increase(cpflow_runs_finished_total[{window}]))", "{{outcome}}")))
        .with_panel(_series("Frames acquired by instrument and image type", "short", (f"sum by (instrument, image_type) (increase(cpflow_frames_acquired_total[{window}]))", "{{instrument}} {{image_type}}")))
        .with_row(dashboard.Row("Verification and certification"))
        .with_panel(_series("Verification outcomes by type and test", "short", (f"sum by (calib_type, test, outcome) (increase(cpflow_verification_tests_total[{window}]))", "{{calib_type}} {{test}} {{outcome}}")))
        .with_panel(_series("Failed verification tests (fraction) by type", "percentunit", (f"sum by (calib_type) (rate(cpflow_verification_tests_total{{outcome=\"fail\"}}[{window}])) / sum by (calib_type) (rate(cpflow_verification_tests_total[{window}]))", "{{calib_type}}")))
        .with_panel(_series("Verification decisions", "short", (f"sum by (calib_type, verdict) (increase(cpflow_verification_decisions_total[{window}]))", "{{calib_type}} {{verdict}}")))
        .with_panel(_series("Certifications", "short", (f"sum by (calib_type, outcome) (increase(cpflow_certifications_total[{window}]))", "{{calib_type}} {{outcome}}")))
        .with_row(dashboard.Row("Stages"))
        .with_panel(_series(
            "Stage duration p50 / p95",
            "s",
            (f"histogram_quantile(0.5, sum by (le, stage) (rate(cpflow_stage_duration_seconds_bucket[{window}])))", "p50 {{stage}}"),
            (f"histogram_quantile(0.95, sum by (le, stage) (rate(cpflow_stage_duration_seconds_bucket[{window}])))", "p95 {{stage}}"),
            width=24,
        ))
        .with_panel(_series("Stage failures", "short", (f"sum by (stage, calib_type) (increase(cpflow_stage_failures_total[{window}]))", "{{stage}} {{calib_type}}")))
        .with_panel(_series("Transient retries", "short", (f"sum by (stage) (increase(cpflow_transient_retries_total[{window}]))", "{{stage}}")))
        .with_panel(_series("Dead letters by origin topic", "short", (f"sum by (topic) (increase(cpflow_dead_letters_total[{window}]))", "{{topic}}")))
        .with_panel(_series("Untrusted events (butler disagrees)", "short", (f"sum by (topic, reason) (increase(cpflow_untrusted_events_total[{window}]))", "{{topic}} {{reason}}")))
    )  # fmt: skip


def messaging() -> dashboard.Dashboard:
    """faststream's metrics: messages in and out per service and topic, handler time, errors."""
    window = "$__rate_interval"
    return (
        _base("cpflow-messaging", "cpflow: messaging", "Kafka messages per service (faststream's metrics).")
        .with_panel(_series("Services up", "short", ('up{job=~"cpflow-.*"}', "{{job}}")))
        .with_panel(_series("Messages received per second", "ops", (f"sum by (app_name, handler) (rate(faststream_received_messages_total[{window}]))", "{{app_name}} {{handler}}")))
        .with_panel(_series("Messages processed by status", "ops", (f"sum by (app_name, status) (rate(faststream_received_processed_messages_total[{window}]))", "{{app_name}} {{status}}")))
        .with_panel(_series("Messages in process", "short", ("sum by (app_name, handler) (faststream_received_messages_in_process)", "{{app_name}} {{handler}}")))
        .with_panel(_series(
            "Handler duration p95",
            "s",
            (f"histogram_quantile(0.95, sum by (le, app_name, handler) (rate(faststream_received_processed_messages_duration_seconds_bucket[{window}])))", "{{app_name}} {{handler}}"),
        ))
        .with_panel(_series("Messages published per second", "ops", (f"sum by (app_name, destination) (rate(faststream_published_messages_total[{window}]))", "{{app_name}} {{destination}}")))
        .with_panel(_series("Received message size p95", "bytes", (f"histogram_quantile(0.95, sum by (le, app_name) (rate(faststream_received_messages_size_bytes_bucket[{window}])))", "{{app_name}}")))
        .with_panel(_series("Publish duration p95", "s", (f"histogram_quantile(0.95, sum by (le, app_name) (rate(faststream_published_messages_duration_seconds_bucket[{window}])))", "{{app_name}}")))
    )  # fmt: skip


def _to_dict(board: dashboard.Dashboard) -> dict[str, Any]:
    encoded: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    # The 11.6 SDK writes an interval variable's auto, auto_min and auto_count on every variable;
    # Grafana's own types (@grafana/schema 13.2.3, the type check of tests/ops) know them on none.
    for variable in encoded.get("templating", {}).get("list", []):
        if variable.get("type") != "interval":
            for key in ("auto", "auto_min", "auto_count"):
                variable.pop(key, None)
    return encoded


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard as Grafana JSON, by uid."""
    found = {}
    for board in (run_overview(), messaging()):
        encoded = _to_dict(board)
        found[str(encoded["uid"])] = encoded
    return found


def panel_expressions(board: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expression)`` of every query of ``board``'s panels."""
    return [
        (str(panel.get("title", "")), str(target["expr"]))
        for panel in board.get("panels", [])
        for target in panel.get("targets", []) or []
        if "expr" in target
    ]

"""A run's state per stage and per calibration type, folded from its events.

One rule decides a run's state, for ``cpflow status``, ``cpflow events`` and ``submit --wait``
alike (`deciding_status`): the run's closing status (the certifier's final state, stage ``run``,
or the acquirer's REJECTED) if there is one; else the first FAILED a service published because it
could not process a genuine event of the run (the run cannot finish without it); else the latest
progress.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.events import FINAL_STATES

__all__ = ["RunView", "build_views", "deciding_status", "is_closing"]


def is_closing(status: dict[str, Any]) -> bool:
    """Whether ``status`` closes its run: the certifier's final state, or a rejection."""
    state = status.get("state")
    return state == "REJECTED" or (state in ("SUCCEEDED", "FAILED") and status.get("stage") == "run")


def deciding_status(statuses: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The status that decides a run's state (see the module docstring), from its statuses in order."""
    closing = [s for s in statuses if is_closing(s)]
    if closing:
        return closing[-1]
    failed = [s for s in statuses if s.get("state") == "FAILED"]
    if failed:
        return failed[0]
    return statuses[-1] if statuses else None


@dataclass
class RunView:
    run_id: str
    state: str = "UNKNOWN"
    message: str = ""
    errors: list[str] = field(default_factory=list)
    submitted: str = ""
    updated: str = ""
    types: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def _type(self, name: str) -> dict[str, Any]:
        return self.types.setdefault(name.lower(), {})

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        time = str(event.get("time", ""))
        self.updated = max(self.updated, time)
        if kind == "run.status":
            self.statuses.append(event)
            deciding = deciding_status(self.statuses)
            assert deciding is not None
            self.state = str(deciding.get("state"))
            self.message = str(deciding.get("message", ""))
            errors = deciding.get("errors") or ([] if deciding.get("state") in FINAL_STATES else self.errors)
            self.errors = list(errors)
        elif kind == "run.requested":
            self.submitted = self.submitted or time
        elif kind == "frames.acquired":
            t = self._type(event["image_type"])
            t["frames"] = {
                "outcome": event.get("outcome"),
                "kept": len(event.get("exposures", [])),
                "discarded": len(event.get("discarded", [])),
                "exposures": event.get("exposures", []),
                "detectors": event.get("detectors", []),
                "reason": event.get("reason"),
            }
        elif kind == "calib.generated":
            t = self._type(event["calib_type"])
            t["generation"] = {
                "outcome": event.get("outcome"),
                "generated": event.get("generated"),
                "collection": event.get("collection"),
                "reference_collections": event.get("reference_collections"),
                # Where each prerequisite came from: its collections, as the view always showed them.
                "sources": {
                    t: source.get("collections", []) if isinstance(source, dict) else source
                    for t, source in (event.get("sources") or {}).items()
                },
                "products": event.get("products", {}),
                "reason": event.get("reason"),
                "duration_s": event.get("duration_s"),
            }
        elif kind == "calib.verified":
            t = self._type(event["calib_type"])
            summary = event.get("summary") or {}
            failed: dict[str, int] = {}
            for per_test in (summary.get("counts") or {}).values():
                for test, n in per_test.items():
                    failed[test] = failed.get(test, 0) + int(n)
            t["verification"] = {
                "outcome": event.get("outcome"),
                "verdict": event.get("verdict"),
                "failed_exposures": summary.get("failed_exposures", []),
                "failed_tests": failed,
                "thresholds": summary.get("thresholds", {}),
                "n_exposures": summary.get("n_exposures"),
                "reason": event.get("reason"),
                "summary": summary.get("text"),
                "tests": summary.get("tests", {}),
                "noise_rule": summary.get("noise_rule"),
                "noise_rules": summary.get("noise_rules", {}),
            }
        elif kind == "calib.certified":
            t = self._type(event["calib_type"])
            t["certification"] = {
                "outcome": event.get("outcome"),
                "certified": event.get("certified"),
                "calib_collection": event.get("calib_collection"),
                "begin": event.get("begin"),
                "end": event.get("end"),
                "dataset_ids": event.get("dataset_ids", {}),
                "reason": event.get("reason"),
            }

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "state": self.state,
            "message": self.message,
            "errors": self.errors,
            "submitted": self.submitted,
            "updated": self.updated,
            "types": self.types,
        }

    def one_line(self) -> str:
        types = ", ".join(self.types) or "-"
        return f"{self.run_id}  {self.state:9s}  {self.submitted[:19]}  types: {types}  {self.message}"

    def render(self) -> str:
        lines = [f"run {self.run_id}: {self.state}  ({self.message})"]
        for error in self.errors:
            lines.append(f"  ! {error}")
        for name, t in self.types.items():
            lines.append(f"  {name}:")
            frames = t.get("frames")
            if frames:
                lines.append(
                    f"    frames:        {frames['kept']} kept, {frames['discarded']} discarded"
                    f" ({frames['outcome']}{': ' + frames['reason'] if frames.get('reason') else ''})"
                )
            gen = t.get("generation")
            if gen:
                what = (
                    gen["collection"]
                    if gen.get("generated")
                    else (
                        "not generated: external verification against "
                        + ", ".join(gen.get("reference_collections") or [])
                        if gen.get("outcome") == "ok"
                        else gen.get("reason")
                    )
                )
                lines.append(f"    generation:    {gen['outcome']}  {what}")
                for detector, values in sorted((gen.get("products") or {}).items()):
                    lines.append(f"                   detector {detector}: {_describe_products(values)}")
            ver = t.get("verification")
            if ver:
                failed = ", ".join(f"{k} ×{v}" for k, v in sorted(ver["failed_tests"].items())) or "none"
                lines.append(f"    verification:  {ver['verdict']}  failed tests: {failed}")
                for test, n in sorted((ver.get("tests") or {}).items()):
                    lines.append(f"                   {test:22s} {n['pass']:5d} passed {n['fail']:5d} failed")
                for rule, verdict in (ver.get("noise_rules") or {}).items():
                    role = "decides" if rule == ver.get("noise_rule") else "reported"
                    outcome = "certify" if verdict.get("certify") else "reject"
                    lines.append(
                        f"                   NOISE rule {rule} ({role}): {outcome}, "
                        f"{verdict.get('noise_failures', 0)} NOISE failures"
                    )
                if ver.get("failed_exposures"):
                    lines.append(f"                   failed exposures: {ver['failed_exposures']}")
                if ver.get("thresholds"):
                    lines.append(f"                   thresholds: {ver['thresholds']}")
                if ver.get("reason") and ver.get("verdict") == "NOT_RUN":
                    lines.append(f"                   {ver['reason']}")
            cert = t.get("certification")
            if cert:
                if cert.get("certified"):
                    lines.append(
                        f"    certification: certified into {cert['calib_collection']} "
                        f"valid [{cert['begin']}, {cert['end']})"
                    )
                else:
                    lines.append(f"    certification: not certified ({cert.get('reason')})")
        return "\n".join(lines)


def _describe_products(values: Any) -> str:
    """One line for a detector's reported products (gains per amplifier, PTC fits, defect counts)."""
    if not isinstance(values, dict):
        return str(values)
    parts = []
    for key, value in values.items():
        if isinstance(value, dict):
            inner = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
            parts.append(f"{key}[{inner}]")
        elif isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def build_views(events: list[dict[str, Any]]) -> dict[str, RunView]:
    views: dict[str, RunView] = {}
    for event in events:
        run_id = event.get("run_id")
        if not run_id:
            continue
        views.setdefault(run_id, RunView(run_id)).apply(event)
    return views

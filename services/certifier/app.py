"""Certifier: ``calib.verified`` → certification → ``calib.certified``; closes runs in ``run.status``.

Every calibration type of a run reaches the certifier, passed, failed or skipped, so it is the
one place that knows when a run is over: once every type has an outcome it publishes the run's
final state (SUCCEEDED, or FAILED with the reasons per stage).
"""

from __future__ import annotations

import time
from collections import Counter

from faststream.kafka import KafkaRouter
from lsst.daf.butler import Butler

from services.certifier.certification import (
    CertificationConflict,
    TypeOutcome,
    certify_type,
    record_outcome,
    run_outcome,
)
from shared.butler import datasets
from shared.butler.repo import open_butler
from shared.events import CalibCertified, CalibVerified, RunState
from shared.runstate import expected_calib_types, load_run_config
from shared.service import ServiceContext, create_service

NAME = "certifier"


def _failed_tests(event: CalibVerified) -> dict[str, int]:
    counts: Counter[str] = Counter()
    if event.summary is not None:
        for per_test in event.summary.counts.values():
            counts.update(per_test)
    return dict(counts)


def register(router: KafkaRouter, ctx: ServiceContext) -> None:
    router.publisher(
        ctx.topics.calib_certified,
        schema=CalibCertified,
        title=f"{ctx.name} publishes calib.certified",
        description="Certification of one calibration type: certified, not wanted, or failed.",
    )
    router.publisher(
        ctx.topics.run_status,
        title=f"{ctx.name} publishes run.status",
        description="Run progress and final states.",
    )

    def butler() -> Butler:
        return open_butler(ctx.settings.butler_repo, writeable=True)

    @router.subscriber(
        ctx.topics.calib_verified,
        title=f"{ctx.name} consumes calib.verified",
        description="A verification verdict (or a failure upstream).",
        **ctx.subscriber_options(),
    )
    async def on_calib_verified(event: CalibVerified) -> None:
        config = await ctx.run_blocking(
            "certify", lambda: load_run_config(butler(), event.instrument, event.run_id), run_id=event.run_id
        )
        calib_type = event.calib_type
        base = {**event.caused(producer=NAME), "instrument": event.instrument, "calib_type": calib_type}
        outcome = TypeOutcome(
            calib_type=calib_type,
            success=False,
            stage="verify",
            summary="",
            generated=event.generated,
            verdict=event.verdict,
            failed_tests=_failed_tests(event),
        )
        certified_event: CalibCertified
        if event.outcome != "ok":
            outcome.stage = "generate" if event.outcome == "skipped" else "verify"
            outcome.summary = event.reason or f"{calib_type}: {event.outcome}"
            certified_event = CalibCertified(
                **base, certified=False, outcome="skipped", reason=outcome.summary
            )
        elif event.verdict == "FAILED":
            failed = ", ".join(f"{test} ×{n}" for test, n in sorted(outcome.failed_tests.items()))
            outcome.summary = f"{calib_type} failed verification ({failed}); not certified"
            certified_event = CalibCertified(
                **base, certified=False, outcome="skipped", reason=outcome.summary
            )
        elif not event.generated:
            outcome.success = True
            outcome.stage = "verify"
            outcome.summary = (
                f"{calib_type} frames passed external verification; nothing to certify"
                if event.verdict == "PASSED"
                else f"{calib_type}: nothing generated or verified"
            )
            certified_event = CalibCertified(**base, certified=False, reason="external verification")
        elif calib_type == "gain":
            outcome.success = True
            outcome.stage = "generate"
            outcome.summary = "gains from flat pairs reported per amplifier; gains are never certified"
            certified_event = CalibCertified(
                **base, certified=False, reason="gains are reported, not certified"
            )
        else:
            outcome.stage = "certify"
            begin, end = config.certify_timespan_bounds
            started = time.monotonic()
            try:
                result = await ctx.run_blocking(
                    "certify",
                    lambda: certify_type(
                        butler(),
                        event.instrument,
                        event.run_id,
                        calib_type,
                        config.calib_collection,
                        begin,
                        end,
                    ),
                    run_id=event.run_id,
                )
            except (CertificationConflict, LookupError) as exc:
                outcome.summary = f"certification of {calib_type} failed: {exc}"
                ctx.metrics.certifications.labels(calib_type=calib_type, outcome="failed").inc()
                certified_event = CalibCertified(
                    **base,
                    certified=False,
                    calib_collection=config.calib_collection,
                    outcome="failed",
                    reason=outcome.summary,
                )
            else:
                ctx.metrics.stage_duration.labels(stage="certify", calib_type=calib_type).observe(
                    time.monotonic() - started
                )
                outcome.success = True
                outcome.certified = True
                outcome.calib_collection = config.calib_collection
                outcome.begin, outcome.end = result.begin, result.end
                outcome.dataset_ids = result.dataset_ids
                validity = f"[{result.begin}, {result.end})"
                outcome.summary = f"{calib_type} certified into {config.calib_collection} for {validity}"
                if result.status == "certified":
                    ctx.metrics.certifications.labels(calib_type=calib_type, outcome="certified").inc()
                certified_event = CalibCertified(
                    **base,
                    certified=True,
                    calib_collection=config.calib_collection,
                    begin=result.begin,
                    end=result.end,
                    dataset_ids=result.dataset_ids,
                )
        await ctx.run_blocking(
            "certify",
            lambda: record_outcome(butler(), event.instrument, event.run_id, outcome),
            run_id=event.run_id,
        )
        await ctx.publish(certified_event, ctx.topics.calib_certified)
        ctx.log.info(
            "calibration outcome",
            extra={"run_id": event.run_id, "calib_type": calib_type, "summary": outcome.summary},
        )

        outcomes = await ctx.run_blocking(
            "certify",
            lambda: run_outcome(butler(), event.instrument, event.run_id, expected_calib_types(config)),
            run_id=event.run_id,
        )
        if outcomes is None:
            return
        failures = [f"{o.stage}: {o.summary}" for o in outcomes if not o.success]
        state: RunState = "FAILED" if failures else "SUCCEEDED"
        await ctx.status(
            event,
            state,
            "run failed" if failures else "run succeeded",
            errors=failures,
            details={"types": {o.calib_type: o.to_dict() for o in outcomes}},
            stage="run",
        )
        ctx.metrics.runs_finished.labels(outcome=state).inc()

    async def butler_reachable() -> None:
        await ctx.run_blocking("readyz", lambda: butler().registry.getDatasetType(datasets.BIAS))

    ctx.ready_checks.append(butler_reachable)


def create_app():  # type: ignore[no-untyped-def]
    return create_service(NAME, register)

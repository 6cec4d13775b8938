"""Certifier: ``calib.verified`` → certification → ``calib.certified``; closes runs in ``run.status``.

What a verdict means and the run's final state are decided in `services.certifier.certification`;
this module reads the run's configuration, calls it, records each type's outcome and publishes.
"""

from __future__ import annotations

import time

from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaRouter
from lsst.daf.butler import Butler

from services.certifier.certification import (
    CertificationConflict,
    certify_type,
    final_state,
    outcome_of_certification,
    outcome_without_certification,
    run_outcomes,
)
from shared.butler import datasets
from shared.butler.runrecords import expected_calib_types, load_run_config, read_record, write_record
from shared.events import CalibCertified, CalibVerified
from shared.records import RunReplay, VerificationRecord
from shared.service import ServiceContext, create_service
from shared.settings import Settings

NAME = "certifier"


def register(router: KafkaRouter, ctx: ServiceContext) -> None:
    ctx.publisher(
        router,
        ctx.topics.calib_certified,
        CalibCertified,
        "Certification of one calibration type: certified, not wanted, or failed.",
    )

    @ctx.subscriber(
        router,
        ctx.topics.calib_verified,
        description="A verification verdict (or a failure upstream).",
    )
    async def on_calib_verified(event: CalibVerified) -> None:
        run_id, calib_type, instrument = event.run_id, event.calib_type, event.instrument
        # The verdict is the verifier's record, whatever the event says (a forged PASSED certifies nothing).
        verification = await ctx.recorded(
            "certify",
            event,
            ctx.topics.calib_verified,
            lambda butler: read_record(butler, VerificationRecord, instrument, run_id, calib_type),
            claim=event.record(),
        )
        if verification is None:
            return
        config = await ctx.with_butler("certify", load_run_config, instrument, run_id, run_id=run_id)
        replay = await ctx.with_butler(
            "certify", read_record, RunReplay, instrument, run_id, None, run_id=run_id
        )
        decided = outcome_without_certification(verification, replay)
        if decided is None:
            begin, end = config.certify_timespan_bounds
            started = time.monotonic()
            try:
                result = await ctx.with_butler(
                    "certify",
                    certify_type,
                    instrument,
                    run_id,
                    calib_type,
                    config.calib_collection,
                    begin,
                    end,
                    dataset_ids=set(verification.dataset_ids.values()),
                    collection=verification.collection,
                    chain=replay is None,
                    run_id=run_id,
                )
            except (CertificationConflict, LookupError) as exc:
                ctx.metrics.certifications.labels(calib_type=calib_type, outcome="failed").inc()
                decided = outcome_of_certification(verification, config.calib_collection, exc)
            else:
                ctx.metrics.stage_duration.labels(stage="certify", calib_type=calib_type).observe(
                    time.monotonic() - started
                )
                if result.status == "certified":
                    ctx.metrics.certifications.labels(calib_type=calib_type, outcome="certified").inc()
                decided = outcome_of_certification(verification, config.calib_collection, result)
        outcome, report = decided
        await ctx.with_butler("certify", write_record, outcome, instrument, run_id, calib_type, run_id=run_id)
        await ctx.publish(CalibCertified.announce(event, NAME, report), ctx.topics.calib_certified)
        ctx.log.info(
            "calibration outcome",
            extra={"run_id": run_id, "calib_type": calib_type, "summary": outcome.summary},
        )

        outcomes = await ctx.with_butler(
            "certify", run_outcomes, instrument, run_id, expected_calib_types(config), run_id=run_id
        )
        if outcomes is None:
            return
        state, failures = final_state(outcomes)
        await ctx.status(
            event,
            state,
            "run failed" if failures else "run succeeded",
            errors=failures,
            details={"types": {o.calib_type: o.model_dump(mode="json") for o in outcomes}},
            stage="run",
        )
        ctx.metrics.runs_finished.labels(outcome=state).inc()

    ctx.ready_checks.append(calibration_dataset_types_registered)


def calibration_dataset_types_registered(butler: Butler) -> None:
    """Readiness: the repository answers and knows the calibration dataset types."""
    butler.get_dataset_type(datasets.BIAS)


def create_app(settings: Settings | None = None) -> tuple[AsgiFastStream, ServiceContext]:
    """The service's ASGI app and its context (settings from the environment by default)."""
    return create_service(NAME, register, settings)

"""Verifier: ``calib.generated`` → DMTN-101 tests → decision → ``calib.verified``.

What to verify, against what, and the verdict are decided in `services.verifier.verification`;
this module reads the run's configuration, calls it, and records and publishes the verdict.
"""

from __future__ import annotations

import time

from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaRouter
from lsst.daf.butler import Butler

from services.verifier.verification import (
    request_for,
    verdict_of,
    verdict_without_tests,
    verification_base,
    verify_calibration,
)
from shared.butler import datasets
from shared.butler.runrecords import load_run_config, wait_for_record, write_record
from shared.events import CalibGenerated, CalibVerified
from shared.instruments import get_instrument
from shared.records import GenerationRecord, VerificationRecord
from shared.service import ServiceContext, create_service
from shared.settings import Settings

NAME = "verifier"


def register(router: KafkaRouter, ctx: ServiceContext) -> None:
    ctx.publisher(
        router,
        ctx.topics.calib_verified,
        CalibVerified,
        "The verification verdict of one calibration type, with the reference's summary.",
    )

    async def finish(cause: CalibGenerated, record: VerificationRecord) -> None:
        """Record the verdict, then publish it.

        The generator reads the record when the event makes it look for newly ready dependants,
        so the record must exist first; a crash in between only repeats the event.
        """
        await ctx.with_butler(
            "verify",
            write_record,
            record,
            cause.instrument,
            cause.run_id,
            cause.calib_type,
            run_id=cause.run_id,
        )
        await ctx.publish(CalibVerified.announce(cause, NAME, record), ctx.topics.calib_verified)

    @ctx.subscriber(
        router,
        ctx.topics.calib_generated,
        description="A calibration to verify (or a generation failure to pass on).",
    )
    async def on_calib_generated(event: CalibGenerated) -> None:
        run_id, calib_type = event.run_id, event.calib_type
        # What was generated is what the generator recorded (it records just after announcing).
        generation = await ctx.recorded(
            "verify",
            event,
            ctx.topics.calib_generated,
            lambda butler: wait_for_record(butler, GenerationRecord, event.instrument, run_id, calib_type),
            claim=event.record(),
        )
        if generation is None:
            return
        config = await ctx.with_butler("verify", load_run_config, event.instrument, run_id, run_id=run_id)
        untested = verdict_without_tests(generation, config.do_verify)
        if untested is not None:
            await finish(event, untested)
            return
        await ctx.status(event, "RUNNING", f"{calib_type}: verifying", stage="verify")
        request = request_for(generation, config, get_instrument(event.instrument), run_id)
        start = time.monotonic()
        try:
            outcome = await ctx.with_butler("verify", verify_calibration, request, run_id=run_id)
        except Exception as exc:
            reason = f"verification of {calib_type} failed: {type(exc).__name__}: {exc}"
            ctx.log.exception("verification failed", extra={"run_id": run_id, "calib_type": calib_type})
            ctx.metrics.stage_failures.labels(stage="verify", calib_type=calib_type).inc()
            failed = VerificationRecord(
                **verification_base(generation), verdict="NOT_RUN", outcome="failed", reason=reason
            )
            await finish(event, failed)
            return
        duration = time.monotonic() - start
        record = verdict_of(generation, outcome, duration)
        ctx.metrics.stage_duration.labels(stage="verify", calib_type=calib_type).observe(duration)
        for (test, passed), count in outcome.test_counts.items():
            # Both outcomes of a test exist once it has run (the other at 0), so the failed fraction
            # of a type is a number from then on, not "no data".
            ctx.metrics.verification_tests.labels(
                calib_type=calib_type, test=test, outcome="fail" if passed else "pass"
            )
            ctx.metrics.verification_tests.labels(
                calib_type=calib_type, test=test, outcome="pass" if passed else "fail"
            ).inc(count)
        ctx.metrics.verification_decisions.labels(calib_type=calib_type, verdict=record.verdict).inc()
        ctx.log.info(
            "verification decided",
            extra={"run_id": run_id, "calib_type": calib_type, "verdict": record.verdict},
        )
        await finish(event, record)

    ctx.ready_checks.append(calibration_dataset_types_registered)


def calibration_dataset_types_registered(butler: Butler) -> None:
    """Readiness: the repository answers and knows the calibration dataset types."""
    butler.get_dataset_type(datasets.BIAS)


def create_app(settings: Settings | None = None) -> tuple[AsgiFastStream, ServiceContext]:
    """The service's ASGI app and its context (settings from the environment by default)."""
    return create_service(NAME, register, settings)

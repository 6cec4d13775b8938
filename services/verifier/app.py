"""Verifier: ``calib.generated`` → DMTN-101 tests → decision → ``calib.verified``."""

from __future__ import annotations

import time

from faststream.kafka import KafkaRouter
from lsst.daf.butler import Butler

from services.verifier.verification import (
    VERIFIED_TYPES,
    VerificationOutcome,
    VerificationRequest,
    sources_for,
    verify_calibration,
)
from shared.butler import datasets
from shared.butler.repo import open_butler
from shared.events import CalibGenerated, CalibVerified, VerificationSummary
from shared.instruments import get_instrument
from shared.runstate import load_run_config, put_record, type_collection
from shared.service import ServiceContext, create_service

NAME = "verifier"


def summary_of(outcome: VerificationOutcome) -> VerificationSummary:
    decision = outcome.decision
    failures = {
        str(exp): list(entry.get("FAILURES", []))
        for exp, entry in outcome.run_stats.items()
        if exp != "SUCCESS" and isinstance(entry, dict) and entry.get("FAILURES")
    }
    tests: dict[str, dict[str, int]] = {}
    for (test, passed), count in outcome.test_counts.items():
        tests.setdefault(test, {"pass": 0, "fail": 0})["pass" if passed else "fail"] += count
    return VerificationSummary(
        tests=tests,
        certify=decision.certify,
        n_exposures=decision.n_exposures,
        failed_exposures=list(decision.failed_exposures),
        counts={str(k): dict(v) for k, v in decision.counts.items()},
        thresholds=dict(decision.thresholds),
        failures=failures,
        text=decision.summary(),
    )


def register(router: KafkaRouter, ctx: ServiceContext) -> None:
    router.publisher(
        ctx.topics.calib_verified,
        schema=CalibVerified,
        title=f"{ctx.name} publishes calib.verified",
        description="The verification verdict of one calibration type, with the reference's summary.",
    )

    def butler() -> Butler:
        return open_butler(ctx.settings.butler_repo, writeable=True)

    async def finish(cause: CalibGenerated, verified: CalibVerified) -> None:
        """Record the verdict, then publish it.

        The generator reads the record when the event makes it look for newly ready dependants,
        so the record must exist first; a crash in between only repeats the event.
        """
        record = {"verdict": verified.verdict, "outcome": verified.outcome, "reason": verified.reason}
        await ctx.run_blocking(
            "verify",
            lambda: put_record(
                butler(),
                record,
                datasets.VERIFICATION_RECORD,
                cause.instrument,
                type_collection(cause.instrument, cause.run_id, cause.calib_type),
            ),
            run_id=cause.run_id,
        )
        await ctx.publish(verified, ctx.topics.calib_verified)

    @router.subscriber(
        ctx.topics.calib_generated,
        title=f"{ctx.name} consumes calib.generated",
        description="A calibration to verify (or a generation failure to pass on).",
        **ctx.subscriber_options(),
    )
    async def on_calib_generated(event: CalibGenerated) -> None:
        base = {
            **event.caused(producer=NAME),
            "instrument": event.instrument,
            "calib_type": event.calib_type,
            "detectors": event.detectors,
            "exposures": event.exposures,
            "generated": event.generated,
            "collection": event.collection,
        }
        if event.outcome != "ok":
            await finish(
                event, CalibVerified(**base, verdict="NOT_RUN", outcome="skipped", reason=event.reason)
            )
            return
        config = await ctx.run_blocking(
            "verify", lambda: load_run_config(butler(), event.instrument, event.run_id), run_id=event.run_id
        )
        if not config.do_verify:
            await ctx.publish(
                CalibVerified(**base, verdict="NOT_RUN", reason="do_verify is false"),
                ctx.topics.calib_verified,
            )
            return
        if event.calib_type not in VERIFIED_TYPES:
            # As in the reference, defects and PTC are certified without verification; gains are reported.
            await finish(
                event,
                CalibVerified(
                    **base,
                    verdict="NOT_RUN",
                    reason=f"{event.calib_type} is not verified (as in the reference)",
                ),
            )
            return
        await ctx.status(event, "RUNNING", f"{event.calib_type}: verifying", stage="verify")
        start = time.monotonic()
        request = VerificationRequest(
            instrument=get_instrument(event.instrument),
            run_id=event.run_id,
            calib_type=event.calib_type,
            exposures=tuple(event.exposures),
            detectors=tuple(event.detectors),
            threshold=config.threshold(event.calib_type),
            physical_filter=config.physical_filter,
            sources=sources_for(
                event.calib_type,
                generated_collection=event.collection if event.generated else None,
                prerequisite_sources=event.sources,
                reference_collections=event.reference_collections,
            ),
            ptc_collections=tuple(
                event.reference_collections
                if not event.generated
                else [config.calib_collection, *config.input_collections_verify(event.calib_type)]
            ),
        )
        try:
            outcome = await ctx.run_blocking(
                "verify", lambda: verify_calibration(butler(), request), run_id=event.run_id
            )
        except Exception as exc:
            reason = f"verification of {event.calib_type} failed: {type(exc).__name__}: {exc}"
            ctx.log.exception(
                "verification failed", extra={"run_id": event.run_id, "calib_type": event.calib_type}
            )
            ctx.metrics.stage_failures.labels(stage="verify", calib_type=event.calib_type).inc()
            await finish(event, CalibVerified(**base, verdict="NOT_RUN", outcome="failed", reason=reason))
            return
        duration = time.monotonic() - start
        ctx.metrics.stage_duration.labels(stage="verify", calib_type=event.calib_type).observe(duration)
        for (test, passed), count in outcome.test_counts.items():
            ctx.metrics.verification_tests.labels(
                calib_type=event.calib_type, test=test, outcome="pass" if passed else "fail"
            ).inc(count)
        verdict = "PASSED" if outcome.decision.certify else "FAILED"
        ctx.metrics.verification_decisions.labels(calib_type=event.calib_type, verdict=verdict).inc()
        summary = summary_of(outcome)
        ctx.log.info(
            "verification decided",
            extra={"run_id": event.run_id, "calib_type": event.calib_type, "verdict": verdict},
        )
        await finish(
            event,
            CalibVerified(
                **base,
                verdict=verdict,
                summary=summary,
                stats_collection=outcome.stats_collection,
                reason=None if verdict == "PASSED" else f"{event.calib_type} failed verification",
                duration_s=duration,
            ),
        )

    async def butler_reachable() -> None:
        await ctx.run_blocking("readyz", lambda: butler().registry.getDatasetType(datasets.BIAS))

    ctx.ready_checks.append(butler_reachable)


def create_app():  # type: ignore[no-untyped-def]
    return create_service(NAME, register)

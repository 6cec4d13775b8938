"""Generator: ``frames.acquired`` → combined calibration → ``calib.generated``.

With ``generate_calibrations: false`` nothing is built: the event says so and names the
collections the verifier must use (external verification). A failure or skip upstream is passed
on, so the run can still be closed with the reason.
"""

from __future__ import annotations

import time

from faststream.kafka import KafkaRouter
from lsst.daf.butler import Butler

from services.generator.generation import generate_bias
from shared.butler import datasets
from shared.butler.repo import open_butler
from shared.events import CalibGenerated, FramesAcquired
from shared.instruments import get_instrument
from shared.runstate import load_run_config, type_collection
from shared.service import ServiceContext, create_service

NAME = "generator"

# Calibration types this version can build; the others are reported as failed with the reason.
BUILDERS = {"bias": generate_bias}


def register(router: KafkaRouter, ctx: ServiceContext) -> None:
    router.publisher(
        ctx.topics.calib_generated,
        schema=CalibGenerated,
        title=f"{ctx.name} publishes calib.generated",
        description="A combined calibration was built, not built (external verification), or failed.",
    )

    def butler() -> Butler:
        return open_butler(ctx.settings.butler_repo, writeable=True)

    @router.subscriber(
        ctx.topics.frames_acquired,
        title=f"{ctx.name} consumes frames.acquired",
        description="Frames of one image type are in the butler.",
        **ctx.subscriber_options(),
    )
    async def on_frames_acquired(event: FramesAcquired) -> None:
        calib_type = event.image_type.lower()
        base = {
            **event.caused(producer=NAME),
            "instrument": event.instrument,
            "calib_type": calib_type,
            "image_type": event.image_type,
            "detectors": event.detectors,
            "exposures": event.exposures,
        }
        if event.outcome != "ok":
            await ctx.publish(
                CalibGenerated(**base, generated=False, outcome="skipped", reason=event.reason),
                ctx.topics.calib_generated,
            )
            return
        config = await ctx.run_blocking(
            "generate", lambda: load_run_config(butler(), event.instrument, event.run_id), run_id=event.run_id
        )
        if not config.generate_calibrations:
            await ctx.publish(
                CalibGenerated(
                    **base, generated=False, reference_collections=config.input_collections_verify(calib_type)
                ),
                ctx.topics.calib_generated,
            )
            return
        builder = BUILDERS.get(calib_type)
        if builder is None:
            reason = f"generation of {calib_type} is not available in this version of cpflow"
            ctx.metrics.stage_failures.labels(stage="generate", calib_type=calib_type).inc()
            await ctx.publish(
                CalibGenerated(**base, generated=False, outcome="failed", reason=reason),
                ctx.topics.calib_generated,
            )
            return
        await ctx.status(
            event,
            "RUNNING",
            f"{calib_type}: generating from {len(event.exposures)} exposures",
            stage="generate",
        )
        start = time.monotonic()
        instrument = get_instrument(event.instrument)
        try:
            ids = await ctx.run_blocking(
                "generate",
                lambda: builder(butler(), instrument, event.run_id, event.exposures, event.detectors),
                run_id=event.run_id,
            )
        except Exception as exc:
            reason = f"generation of {calib_type} failed: {type(exc).__name__}: {exc}"
            ctx.log.exception("generation failed", extra={"run_id": event.run_id, "calib_type": calib_type})
            ctx.metrics.stage_failures.labels(stage="generate", calib_type=calib_type).inc()
            await ctx.publish(
                CalibGenerated(**base, generated=False, outcome="failed", reason=reason),
                ctx.topics.calib_generated,
            )
            return
        duration = time.monotonic() - start
        ctx.metrics.stage_duration.labels(stage="generate", calib_type=calib_type).observe(duration)
        ctx.log.info(
            "calibration generated",
            extra={"run_id": event.run_id, "calib_type": calib_type, "seconds": round(duration, 3)},
        )
        await ctx.publish(
            CalibGenerated(
                **base,
                generated=True,
                collection=type_collection(event.instrument, event.run_id, calib_type),
                dataset_ids={str(k): v for k, v in ids.items()},
                duration_s=duration,
            ),
            ctx.topics.calib_generated,
        )

    async def butler_reachable() -> None:
        await ctx.run_blocking("readyz", lambda: butler().registry.getDatasetType(datasets.BIAS))

    ctx.ready_checks.append(butler_reachable)


def create_app():  # type: ignore[no-untyped-def]
    return create_service(NAME, register)

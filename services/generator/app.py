"""Generator: ``frames.acquired`` / ``calib.verified`` → build what became ready → ``calib.generated``.

"Build type T for run R" is one idempotent step, triggered by any event that may have made it
ready: its frames arrived (``frames.acquired``) or a prerequisite became usable
(``calib.verified``; or, with ``do_verify: false``, the prerequisite's own generation). It checks
readiness in the butler and acts only if ready and not yet done. A prerequisite that failed
stops its dependants, which are reported skipped with the reason. With
``generate_calibrations: false`` nothing is built: the event names the collections the verifier
must use (external verification).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from faststream.kafka import KafkaRouter
from lsst.daf.butler import Butler
from pydantic import Field

from services.generator.generation import BUILDERS, BuildRequest
from services.generator.readiness import (
    FRAMES_OF,
    dependants,
    generation_record,
    readiness,
)
from shared.butler import datasets
from shared.butler.repo import open_butler
from shared.events import CalibGenerated, CalibVerified, Event, FramesAcquired
from shared.instruments import get_instrument
from shared.runconfig import RunConfiguration
from shared.runstate import expected_calib_types, find_record, load_run_config, put_record, type_collection
from shared.service import ServiceContext, create_service

NAME = "generator"

Trigger = Annotated[FramesAcquired | CalibVerified, Field(discriminator="type")]


def _manifest(butler: Butler, config: RunConfiguration, run_id: str, calib_type: str) -> dict[str, Any]:
    instrument = config.instrument
    ref = find_record(
        butler,
        datasets.ACQUISITION_MANIFEST,
        instrument,
        type_collection(instrument, run_id, FRAMES_OF[calib_type]),
    )
    assert ref is not None
    return dict(butler.get(ref))


def register(router: KafkaRouter, ctx: ServiceContext) -> None:
    router.publisher(
        ctx.topics.calib_generated,
        schema=CalibGenerated,
        title=f"{ctx.name} publishes calib.generated",
        description="A calibration was built, not built (external verification), skipped or failed.",
    )

    def butler() -> Butler:
        return open_butler(ctx.settings.butler_repo, writeable=True)

    async def blocking(func: Any, *args: Any, run_id: str) -> Any:
        return await ctx.run_blocking("generate", func, *args, run_id=run_id)

    async def publish_record(cause: Event, record: dict[str, Any]) -> None:
        await ctx.publish(CalibGenerated(**cause.caused(producer=NAME), **record), ctx.topics.calib_generated)

    async def finish(cause: Event, config: RunConfiguration, record: dict[str, Any]) -> None:
        """Publish first, then record: a crash in between repeats the event, never loses it."""
        await publish_record(cause, record)
        calib_type = record["calib_type"]
        await blocking(
            lambda: put_record(
                butler(),
                record,
                datasets.GENERATION_RECORD,
                config.instrument,
                type_collection(config.instrument, cause.run_id, calib_type),
            ),
            run_id=cause.run_id,
        )

    async def process(cause: Event, config: RunConfiguration, calib_type: str, *, republish: bool) -> None:
        run_id = cause.run_id
        instrument = get_instrument(config.instrument)
        existing = await blocking(
            lambda: generation_record(butler(), config.instrument, run_id, calib_type), run_id=run_id
        )
        if existing is not None:
            if republish:  # a redelivered trigger gets the same answer again, without work
                await publish_record(cause, existing)
            return
        ready = await blocking(lambda: readiness(butler(), config, run_id, calib_type), run_id=run_id)
        if ready.state in ("no-frames", "pending"):
            ctx.log.info("not ready", extra={"run_id": run_id, "calib_type": calib_type, "why": ready.reason})
            return
        manifest = await blocking(lambda: _manifest(butler(), config, run_id, calib_type), run_id=run_id)
        base: dict[str, Any] = {
            "instrument": config.instrument,
            "calib_type": calib_type,
            "image_type": FRAMES_OF[calib_type] if calib_type in ("bias", "dark", "flat") else None,
            "detectors": list(manifest["detectors"]),
            "exposures": list(manifest["exposures"]),
        }
        if ready.state == "blocked":
            ctx.log.warning(
                "dependant skipped", extra={"run_id": run_id, "calib_type": calib_type, "why": ready.reason}
            )
            await finish(
                cause, config, {**base, "generated": False, "outcome": "skipped", "reason": ready.reason}
            )
            await advance(cause, config, calib_type)
            return
        await ctx.status(
            cause,
            "RUNNING",
            f"{calib_type}: generating from {len(base['exposures'])} exposures",
            stage="generate",
        )
        request = BuildRequest(
            instrument=instrument,
            config=config,
            run_id=run_id,
            exposures=tuple(base["exposures"]),
            detectors=tuple(base["detectors"]),
            physical_filter=str(manifest["physical_filter"]),
            sources=ready.sources,
        )
        start = time.monotonic()
        sources = {k: list(v.collections) for k, v in ready.sources.items()}
        try:
            built = await blocking(lambda: BUILDERS[calib_type](butler(), request), run_id=run_id)
        except Exception as exc:
            reason = f"generation of {calib_type} failed: {type(exc).__name__}: {exc}"
            ctx.log.exception("generation failed", extra={"run_id": run_id, "calib_type": calib_type})
            ctx.metrics.stage_failures.labels(stage="generate", calib_type=calib_type).inc()
            await finish(
                cause,
                config,
                {**base, "generated": False, "outcome": "failed", "reason": reason, "sources": sources},
            )
            await advance(cause, config, calib_type)
            return
        duration = time.monotonic() - start
        ctx.metrics.stage_duration.labels(stage="generate", calib_type=calib_type).observe(duration)
        ctx.log.info(
            "calibration generated",
            extra={"run_id": run_id, "calib_type": calib_type, "seconds": round(duration, 3)},
        )
        if built.products:
            await ctx.status(
                cause,
                "RUNNING",
                f"{calib_type}: results per detector and amplifier",
                details={calib_type: built.products},
                stage="generate",
            )
        await finish(
            cause,
            config,
            {
                **base,
                "generated": True,
                "outcome": "ok",
                "collection": type_collection(config.instrument, run_id, calib_type),
                "dataset_ids": {str(k): v for k, v in built.dataset_ids.items()},
                "sources": sources,
                "products": built.products,
                "duration_s": duration,
            },
        )
        if not config.do_verify:
            await advance(cause, config, calib_type)

    async def advance(cause: Event, config: RunConfiguration, calib_type: str) -> None:
        """Try the run's types that depend on ``calib_type``."""
        for dependant in dependants(calib_type, config):
            await process(cause, config, dependant, republish=False)

    @router.subscriber(
        ctx.topics.frames_acquired,
        ctx.topics.calib_verified,
        title=f"{ctx.name} consumes frames.acquired and calib.verified",
        description="Frames of one image type are in; or a prerequisite calibration was verified.",
        **ctx.subscriber_options(),
    )
    async def on_trigger(event: Trigger) -> None:
        config = await blocking(
            lambda: load_run_config(butler(), event.instrument, event.run_id), run_id=event.run_id
        )
        if isinstance(event, CalibVerified):
            await advance(event, config, event.calib_type)
            return
        calib_type = event.image_type.lower()
        if event.outcome != "ok":
            # Every type built from these frames is skipped with the acquisition's reason.
            for skipped in [t for t in expected_calib_types(config) if FRAMES_OF[t] == event.image_type]:
                await finish(
                    event,
                    config,
                    {
                        "instrument": event.instrument,
                        "calib_type": skipped,
                        "image_type": event.image_type if skipped == calib_type else None,
                        "detectors": event.detectors,
                        "exposures": event.exposures,
                        "generated": False,
                        "outcome": "skipped",
                        "reason": event.reason,
                    },
                )
                await advance(event, config, skipped)
            return
        if not config.generate_calibrations:
            await publish_record(
                event,
                {
                    "instrument": event.instrument,
                    "calib_type": calib_type,
                    "image_type": event.image_type,
                    "detectors": event.detectors,
                    "exposures": event.exposures,
                    "generated": False,
                    "reference_collections": config.input_collections_verify(calib_type),
                },
            )
            return
        await process(event, config, calib_type, republish=True)
        # Defects, PTC and gains are built from the flats (after their prerequisites).
        if calib_type == "flat":
            for extra in expected_calib_types(config):
                if extra in ("defects", "ptc", "gain"):
                    await process(event, config, extra, republish=False)

    async def butler_reachable() -> None:
        await ctx.run_blocking("readyz", lambda: butler().registry.getDatasetType(datasets.BIAS))

    ctx.ready_checks.append(butler_reachable)


def create_app():  # type: ignore[no-untyped-def]
    return create_service(NAME, register)

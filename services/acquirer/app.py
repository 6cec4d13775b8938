"""Acquirer: ``run.requested`` → camera → ingest → ``frames.acquired`` (one event per image type).

Re-validates the configuration (a request injected straight into the topic is checked as
strictly as one from ``cpflow submit``), stores it in the butler, drives the camera through the
image types in order and publishes each type's frames as soon as they are in, so processing of
the biases starts while the darks are being taken.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaRouter
from lsst.daf.butler import Butler

from services.acquirer.acquisition import acquire_image_type
from services.acquirer.camera import CameraDriver
from services.acquirer.simulated_camera import SimulatedCamera
from shared.butler import datasets
from shared.butler.runrecords import store_run_config
from shared.events import FramesAcquired, RunRequested
from shared.instruments import get_instrument
from shared.runconfig import ConfigurationError, RunConfiguration, SimulatorConfig, validate_run_configuration
from shared.service import ServiceContext, StageFailure, create_service
from shared.settings import Settings

NAME = "acquirer"


def make_camera(ctx: ServiceContext, config: RunConfiguration, run_id: str) -> CameraDriver:
    """The camera driver the configuration asks for."""
    if config.camera != "simulated":
        raise StageFailure(
            f"camera {config.camera!r}: this deployment has no SAL camera driver; use camera: simulated"
        )
    return SimulatedCamera.from_config(
        get_instrument(config.instrument),
        config.simulator or SimulatorConfig(),
        Path(ctx.settings.camera_dir) / run_id,
        Path(ctx.settings.camera_dir) / ".state",
    )


def register(router: KafkaRouter, ctx: ServiceContext) -> None:
    ctx.publisher(
        router,
        ctx.topics.frames_acquired,
        FramesAcquired,
        "One event per image type: its frames are in the butler as raw (or acquisition failed).",
    )

    @ctx.subscriber(
        router,
        ctx.topics.run_requested,
        description="A submitted run configuration; validated again here.",
    )
    async def on_run_requested(event: RunRequested) -> None:
        try:
            config = validate_run_configuration(event.config)
        except ConfigurationError as exc:
            ctx.log.warning("run rejected", extra={"run_id": event.run_id, "errors": "; ".join(exc.errors)})
            await ctx.status(event, "REJECTED", "configuration rejected", errors=exc.errors, stage="acquire")
            ctx.metrics.runs_finished.labels(outcome="REJECTED").inc()
            return
        await ctx.with_butler("acquire", store_run_config, config, event.run_id, run_id=event.run_id)
        await ctx.status(
            event, "RUNNING", f"accepted: {config.script_mode} on {config.instrument}", stage="acquire"
        )
        await acquire_run(ctx, event, config)

    ctx.ready_checks.append(raw_dataset_type_registered)


def raw_dataset_type_registered(butler: Butler) -> None:
    """Readiness: the repository answers and knows the raw dataset type."""
    butler.get_dataset_type(datasets.RAW)


async def acquire_run(ctx: ServiceContext, event: RunRequested, config: RunConfiguration) -> None:
    """Take the run's image types in order; publish each one's frames as soon as they are in."""
    instrument = get_instrument(config.instrument)
    run_id = event.run_id

    def frames_event(image_type: str, **fields: Any) -> FramesAcquired:
        return FramesAcquired(
            **event.caused(producer=NAME), instrument=instrument.name, image_type=image_type, **fields
        )

    async def with_butler(func: Any, *args: Any, **kwargs: Any) -> Any:
        return await ctx.with_butler("acquire", func, *args, run_id=run_id, **kwargs)

    failed_reason: str | None = None
    camera: CameraDriver | None = None
    for image_type in config.image_types:
        if failed_reason is not None:
            skipped = frames_event(
                image_type, detectors=config.detector_ids, outcome="skipped", reason=failed_reason
            )
            await ctx.publish(skipped, ctx.topics.frames_acquired)
            continue

        async def progress(done: int, total: int, image_type: str = image_type) -> None:
            await ctx.status(
                event,
                "RUNNING",
                f"{image_type}: {done}/{total} exposures taken",
                progress={"done": done, "total": total},
                details={"image_type": image_type},
                stage="acquire",
            )

        started = time.monotonic()
        try:
            if camera is None:
                camera = make_camera(ctx, config, run_id)
                await camera.setup_instrument(config.physical_filter)
            manifest = await acquire_image_type(
                with_butler=with_butler,
                camera=camera,
                instrument=instrument,
                config=config,
                run_id=run_id,
                image_type=image_type,
                progress=progress,
                on_frames=ctx.metrics.frames_acquired.labels(
                    instrument=instrument.name, image_type=image_type
                ).inc,
            )
            if isinstance(camera, SimulatedCamera):
                await ctx.run_blocking("acquire", camera.write_truth, config.detector_ids)
        except Exception as exc:
            failed_reason = f"acquisition of {image_type} failed: {exc}"
            ctx.log.exception("acquisition failed", extra={"run_id": run_id, "image_type": image_type})
            ctx.metrics.stage_failures.labels(stage="acquire", calib_type=image_type.lower()).inc()
            await ctx.status(event, "RUNNING", failed_reason, errors=[failed_reason], stage="acquire")
            failed = frames_event(
                image_type, detectors=config.detector_ids, outcome="failed", reason=failed_reason
            )
            await ctx.publish(failed, ctx.topics.frames_acquired)
            continue
        ctx.metrics.stage_duration.labels(stage="acquire", calib_type=image_type.lower()).observe(
            time.monotonic() - started
        )
        await ctx.publish(
            frames_event(image_type, **manifest.model_dump(exclude={"image_type"})),
            ctx.topics.frames_acquired,
        )
        ctx.log.info(
            "frames acquired",
            extra={"run_id": run_id, "image_type": image_type, "n_exposures": len(manifest.exposures)},
        )
    if camera is not None:
        await camera.close()


def create_app(settings: Settings | None = None) -> tuple[AsgiFastStream, ServiceContext]:
    """The service's ASGI app and its context (settings from the environment by default)."""
    return create_service(NAME, register, settings)

"""Acquirer: ``run.requested`` → camera → ingest → ``frames.acquired`` (one event per image type).

Re-validates the configuration (a request injected straight into the topic is checked as
strictly as one from ``cpflow submit``), stores it in the butler, drives the camera through the
image types in order and publishes each type's frames as soon as they are in, so processing of
the biases starts while the darks are being taken.
"""

from __future__ import annotations

import time
from pathlib import Path

from faststream.kafka import KafkaRouter
from lsst.daf.butler import Butler

from services.acquirer.acquisition import acquire_image_type
from services.acquirer.camera import CameraDriver
from services.acquirer.simulated_camera import SimulatedCamera
from shared.butler import datasets
from shared.butler.repo import open_butler, run_collection
from shared.events import FramesAcquired, RunRequested
from shared.instruments import get_instrument
from shared.runconfig import ConfigurationError, RunConfiguration, SimulatorConfig, validate_run_configuration
from shared.runstate import put_record
from shared.service import ServiceContext, StageFailure, create_service

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
    router.publisher(
        ctx.topics.frames_acquired,
        schema=FramesAcquired,
        title=f"{ctx.name} publishes frames.acquired",
        description="One event per image type: its frames are in the butler as raw (or acquisition failed).",
    )
    router.publisher(
        ctx.topics.run_status,
        title=f"{ctx.name} publishes run.status",
        description="Run progress and final states.",
    )

    def butler() -> Butler:
        return open_butler(ctx.settings.butler_repo, writeable=True)

    @router.subscriber(
        ctx.topics.run_requested,
        title=f"{ctx.name} consumes run.requested",
        description="A submitted run configuration; validated again here.",
        **ctx.subscriber_options(),
    )
    async def on_run_requested(event: RunRequested) -> None:
        log_extra = {"run_id": event.run_id}
        try:
            config = validate_run_configuration(event.config)
        except ConfigurationError as exc:
            ctx.log.warning("run rejected", extra={**log_extra, "errors": "; ".join(exc.errors)})
            await ctx.status(event, "REJECTED", "configuration rejected", errors=exc.errors, stage="acquire")
            ctx.metrics.runs_finished.labels(outcome="REJECTED").inc()
            return
        instrument = get_instrument(config.instrument)
        await ctx.run_blocking(
            "acquire",
            lambda: put_record(
                butler(),
                config.to_document(),
                datasets.RUN_CONFIG,
                instrument.name,
                run_collection(instrument.name, event.run_id),
            ),
            run_id=event.run_id,
        )
        await ctx.status(
            event, "RUNNING", f"accepted: {config.script_mode} on {instrument.name}", stage="acquire"
        )

        async def blocking(func: object, *args: object, **kwargs: object) -> object:
            return await ctx.run_blocking("acquire", func, *args, run_id=event.run_id, **kwargs)  # type: ignore[arg-type]

        image_types = config.image_types
        failed_reason: str | None = None
        camera: CameraDriver | None = None
        for image_type in image_types:
            if failed_reason is not None:
                await ctx.publish(
                    FramesAcquired(
                        **event.caused(producer=NAME),
                        instrument=instrument.name,
                        image_type=image_type,  # type: ignore[arg-type]
                        detectors=config.detector_ids,
                        outcome="skipped",
                        reason=failed_reason,
                    ),
                    ctx.topics.frames_acquired,
                )
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
                    camera = make_camera(ctx, config, event.run_id)
                    await camera.setup_instrument(config.physical_filter)
                result = await acquire_image_type(
                    butler_factory=butler,
                    blocking=blocking,
                    camera=camera,
                    instrument=instrument,
                    config=config,
                    run_id=event.run_id,
                    image_type=image_type,
                    raw_dir=Path(ctx.settings.camera_dir) / event.run_id,
                    progress=progress,
                    on_frames=ctx.metrics.frames_acquired.labels(
                        instrument=instrument.name, image_type=image_type
                    ).inc,
                )
                if isinstance(camera, SimulatedCamera):
                    await ctx.run_blocking("acquire", camera.write_truth, config.detector_ids)
            except Exception as exc:
                failed_reason = f"acquisition of {image_type} failed: {exc}"
                ctx.log.exception("acquisition failed", extra={**log_extra, "image_type": image_type})
                ctx.metrics.stage_failures.labels(stage="acquire", calib_type=image_type.lower()).inc()
                await ctx.status(event, "RUNNING", failed_reason, errors=[failed_reason], stage="acquire")
                await ctx.publish(
                    FramesAcquired(
                        **event.caused(producer=NAME),
                        instrument=instrument.name,
                        image_type=image_type,  # type: ignore[arg-type]
                        detectors=config.detector_ids,
                        outcome="failed",
                        reason=failed_reason,
                    ),
                    ctx.topics.frames_acquired,
                )
                continue
            ctx.metrics.stage_duration.labels(stage="acquire", calib_type=image_type.lower()).observe(
                time.monotonic() - started
            )
            await ctx.publish(
                FramesAcquired(
                    **event.caused(producer=NAME),
                    instrument=instrument.name,
                    image_type=image_type,  # type: ignore[arg-type]
                    detectors=result.detectors,
                    exposures=result.exposures,
                    discarded=result.discarded,
                    physical_filter=result.physical_filter,
                    raw_collection=result.raw_collection,
                ),
                ctx.topics.frames_acquired,
            )
            ctx.log.info(
                "frames acquired",
                extra={**log_extra, "image_type": image_type, "n_exposures": len(result.exposures)},
            )
        if camera is not None:
            await camera.close()

    async def butler_reachable() -> None:
        await ctx.run_blocking("readyz", lambda: butler().registry.getDatasetType(datasets.RAW))

    ctx.ready_checks.append(butler_reachable)


def create_app():  # type: ignore[no-untyped-def]
    return create_service(NAME, register)

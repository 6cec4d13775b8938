"""Acquirer: ``run.requested`` → camera → ingest → ``frames.acquired`` (one event per image type).

With ``camera: none`` it takes no images: it waits for the run's listed frames to be in the raw
collection (`services.acquirer.listed_frames`).

Re-validates the configuration (a request injected straight into the topic is checked as
strictly as one from ``cpflow submit``), stores it in the butler, drives the camera through the
image types in order and publishes each type's frames as soon as they are in, so processing of
the biases starts while the darks are being taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaRouter
from lsst.daf.butler import Butler

from services.acquirer.acquisition import acquire_image_type
from services.acquirer.camera import CameraDriver
from services.acquirer.listed_frames import acquire_listed_frames
from services.acquirer.runs import acceptance, missing_image_types, runs_to_resume, unacquired_manifest
from services.acquirer.simulated_camera import SimulatedCamera
from shared.butler import datasets
from shared.butler.runrecords import load_run_config, read_record, store_run_config, write_record
from shared.events import Event, FramesAcquired, RunCancelRequested, RunRequest, RunRequested
from shared.identifiers import safe_child, validate_run_id
from shared.instruments import get_instrument
from shared.records import AcquisitionManifest, RunAccepted, RunCancelled
from shared.runconfig import (
    INSTRUMENTS,
    ConfigurationError,
    RunConfiguration,
    SimulatorConfig,
    validate_run_configuration,
)
from shared.service import ServiceContext, StageFailure, create_service
from shared.settings import Settings

NAME = "acquirer"


def make_camera(ctx: ServiceContext, config: RunConfiguration, run_id: str) -> CameraDriver:
    """The camera driver the configuration asks for."""
    if config.camera != "simulated":
        raise StageFailure(
            f"camera {config.camera!r}: this deployment has no SAL camera driver; use camera: simulated"
        )
    camera_dir = Path(ctx.settings.camera_dir)
    return SimulatedCamera.from_config(
        get_instrument(config.instrument),
        config.simulator or SimulatorConfig(),
        safe_child(camera_dir, validate_run_id(run_id)),  # never a path from the wire
        camera_dir / ".state",
    )


def register(router: KafkaRouter, ctx: ServiceContext) -> None:
    ctx.publisher(
        router,
        ctx.topics.frames_acquired,
        FramesAcquired,
        "One event per image type: its frames are in the butler as raw (or acquisition failed).",
    )
    runs = RunTasks(ctx)

    @ctx.subscriber(
        router,
        ctx.topics.run_requested,
        description="A submitted run configuration (validated again here), or a request to cancel a run.",
    )
    async def on_run_requested(event: RunRequest) -> None:
        if isinstance(event, RunCancelRequested):
            await runs.cancel(event)
            return
        try:
            config = validate_run_configuration(event.config)
        except ConfigurationError as exc:
            ctx.log.warning("run rejected", extra={"run_id": event.run_id, "errors": "; ".join(exc.errors)})
            await ctx.status(event, "REJECTED", "configuration rejected", errors=exc.errors, stage="acquire")
            ctx.metrics.runs_finished.labels(outcome="REJECTED").inc()
            return
        # Durable before the request is committed: a restart resumes the run from these records.
        await ctx.with_butler(
            "acquire", accept_run, config, event, ctx.settings.topic_prefix, run_id=event.run_id
        )
        ctx.metrics.runs_started.labels(instrument=config.instrument).inc()
        await ctx.status(
            event, "RUNNING", f"accepted: {config.script_mode} on {config.instrument}", stage="acquire"
        )
        runs.start(event, config)

    ctx.ready_checks.append(raw_dataset_type_registered)
    ctx.on_startup.append(runs.resume)
    ctx.on_shutdown.append(runs.stop)


def accept_run(butler: Butler, config: RunConfiguration, event: RunRequested, topic_prefix: str) -> None:
    """Record the accepted configuration and when the run may be resumed until (once)."""
    store_run_config(butler, config, event.run_id)
    accepted = acceptance(config, event.submitted_by, topic_prefix)
    write_record(butler, accepted, config.instrument, event.run_id, None)


def raw_dataset_type_registered(butler: Butler) -> None:
    """Readiness: the repository answers and knows the raw dataset type."""
    butler.get_dataset_type(datasets.RAW)


class RunTasks:
    """The runs being acquired, each in a task of its own (one long run never blocks another)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, cause: Event, config: RunConfiguration) -> None:
        """Acquire the run of ``cause`` in the background, unless it is being acquired already."""
        run_id = cause.run_id
        if run_id in self.tasks and not self.tasks[run_id].done():
            return
        task = asyncio.create_task(self._acquire(cause, config), name=f"acquire-{run_id}")
        self.tasks[run_id] = task
        task.add_done_callback(
            lambda done: self.tasks.pop(run_id, None) if self.tasks.get(run_id) is done else None
        )

    async def _acquire(self, cause: Event, config: RunConfiguration) -> None:
        try:
            await acquire_run(self.ctx, cause, config)
        except asyncio.CancelledError:
            raise
        except Exception:  # every step reports its own failure; this is the last resort
            self.ctx.log.exception("acquisition task failed", extra={"run_id": cause.run_id})

    async def cancel(self, event: RunCancelRequested) -> None:
        """Stop taking frames for the run, record why, and close its remaining image types."""
        ctx, run_id = self.ctx, event.run_id
        found = await ctx.with_butler("acquire", _accepted_run, run_id, run_id=run_id)
        if found is None:
            ctx.log.warning("cancel: no such accepted run", extra={"run_id": run_id})
            return
        config, _accepted = found
        cancelled = RunCancelled(
            cancelled_at=datetime.now(UTC), cancelled_by=event.requested_by, reason=event.reason
        )
        await ctx.with_butler(
            "acquire", write_record, cancelled, config.instrument, run_id, None, run_id=run_id
        )
        task = self.tasks.get(run_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await close_unacquired(
            ctx, event, config, "failed", f"run cancelled by {event.requested_by}: {event.reason}"
        )

    async def resume(self) -> None:
        """After a restart: resume the accepted, unfinished runs; close the expired ones."""
        ctx = self.ctx
        try:
            pending = await ctx.with_butler("acquire", runs_to_resume, ctx.settings.topic_prefix)
        except Exception:
            ctx.log.exception("cannot look for runs to resume")
            return
        now = datetime.now(UTC)
        for run in pending:
            cause = RunRequested(run_id=run.run_id, producer=NAME, config=run.config.to_document())
            if run.expired(now):
                ctx.log.warning("run expired before its frames were in", extra={"run_id": run.run_id})
                reason = (
                    f"run expired at {run.accepted.expires_at.isoformat()} before its frames were all taken"
                )
                await close_unacquired(ctx, cause, run.config, "failed", reason)
                continue
            ctx.log.info("resuming run", extra={"run_id": run.run_id, "missing": ",".join(run.missing)})
            self.start(cause, run.config)

    async def stop(self) -> None:
        """The service stops: the runs' tasks end here and resume on the next start."""
        for task in list(self.tasks.values()):
            task.cancel()
        for task in list(self.tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _accepted_run(butler: Butler, run_id: str) -> tuple[RunConfiguration, RunAccepted] | None:
    """The configuration and acceptance of an accepted run, looked up by run id alone."""
    for instrument in INSTRUMENTS:
        accepted = read_record(butler, RunAccepted, instrument, run_id, None)
        if accepted is not None:
            return load_run_config(butler, instrument, run_id), accepted
    return None


async def close_unacquired(
    ctx: ServiceContext, cause: Event, config: RunConfiguration, outcome: str, reason: str
) -> None:
    """Record and announce every image type of the run whose frames are not in (so the run ends)."""
    run_id = cause.run_id
    missing = await ctx.with_butler("acquire", missing_image_types, config, run_id, run_id=run_id)
    for image_type in missing:
        manifest = unacquired_manifest(config, image_type, outcome, reason)
        await ctx.with_butler(
            "acquire", write_record, manifest, config.instrument, run_id, image_type, run_id=run_id
        )
        await ctx.publish(frames_event(cause, config, manifest), ctx.topics.frames_acquired)


def frames_event(cause: Event, config: RunConfiguration, manifest: AcquisitionManifest) -> FramesAcquired:
    """The ``frames.acquired`` event that announces ``manifest``."""
    return FramesAcquired(
        **cause.caused(producer=NAME), instrument=config.instrument, **manifest.model_dump()
    )


async def acquire_run(ctx: ServiceContext, event: Event, config: RunConfiguration) -> None:
    """Take the run's image types in order; record and publish each one's frames as soon as they are in.

    An image type that fails ends in a failed manifest and the later ones in skipped manifests,
    so every type of the run reaches an outcome.
    """
    instrument = get_instrument(config.instrument)
    run_id = event.run_id

    async def with_butler(func: Any, *args: Any, **kwargs: Any) -> Any:
        return await ctx.with_butler("acquire", func, *args, run_id=run_id, **kwargs)

    async def cancelled() -> bool:
        return await with_butler(read_record, RunCancelled, config.instrument, run_id, None) is not None

    failed_reason: str | None = None
    camera: CameraDriver | None = None
    try:
        for image_type in config.image_types:
            if await cancelled():
                return  # the cancellation closes the remaining types
            manifest: AcquisitionManifest
            if failed_reason is not None:
                manifest = unacquired_manifest(config, image_type, "skipped", failed_reason)
                await with_butler(write_record, manifest, config.instrument, run_id, image_type)
                await ctx.publish(frames_event(event, config, manifest), ctx.topics.frames_acquired)
                continue

            async def progress(done: int, total: int, image_type: str = image_type) -> None:
                where = "frames in the raw collection" if config.camera == "none" else "exposures taken"
                await ctx.status(
                    event,
                    "RUNNING",
                    f"{image_type}: {done}/{total} {where}",
                    progress={"done": done, "total": total},
                    details={"image_type": image_type},
                    stage="acquire",
                )

            started = time.monotonic()
            try:
                if config.camera == "none":  # frames the OODS ingests (or did): wait for them
                    manifest = await acquire_listed_frames(
                        with_butler=with_butler,
                        config=config,
                        run_id=run_id,
                        image_type=image_type,
                        progress=progress,
                    )
                else:
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
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed_reason = f"acquisition of {image_type} failed: {exc}"
                ctx.log.exception("acquisition failed", extra={"run_id": run_id, "image_type": image_type})
                ctx.metrics.stage_failures.labels(stage="acquire", calib_type=image_type.lower()).inc()
                await ctx.status(event, "RUNNING", failed_reason, errors=[failed_reason], stage="acquire")
                manifest = unacquired_manifest(config, image_type, "failed", failed_reason)
                await with_butler(write_record, manifest, config.instrument, run_id, image_type)
                await ctx.publish(frames_event(event, config, manifest), ctx.topics.frames_acquired)
                continue
            if manifest.outcome != "ok":  # recorded earlier (a redelivered or resumed run)
                failed_reason = manifest.reason or f"acquisition of {image_type} did not complete"
            else:
                ctx.metrics.stage_duration.labels(stage="acquire", calib_type=image_type.lower()).observe(
                    time.monotonic() - started
                )
            await ctx.publish(frames_event(event, config, manifest), ctx.topics.frames_acquired)
            ctx.log.info(
                "frames acquired",
                extra={"run_id": run_id, "image_type": image_type, "n_exposures": len(manifest.exposures)},
            )
    finally:
        if camera is not None:
            await camera.close()


def create_app(settings: Settings | None = None) -> tuple[AsgiFastStream, ServiceContext]:
    """The service's ASGI app and its context (settings from the environment by default)."""
    return create_service(NAME, register, settings)

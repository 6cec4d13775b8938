"""Generator: ``frames.acquired`` / ``calib.verified`` → build what became ready → ``calib.generated``.

"Build type T for run R" is one idempotent step, triggered by any event that may have made it
ready: its frames arrived (``frames.acquired``) or a prerequisite became usable
(``calib.verified``; or, with ``do_verify: false``, the prerequisite's own generation). What to do
is decided by `services.generator.readiness` from the butler's records; this module only reads
them, calls the builders of `services.generator.generation` and publishes. With
``generate_calibrations: false`` nothing is built: the event names the collections the verifier
must use (external verification).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Annotated

from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaRouter
from lsst.daf.butler import Butler
from pydantic import Field

from services.generator.generation import BUILDERS, BuildRequest
from services.generator.readiness import (
    Step,
    dependants,
    follow_ups,
    load_snapshot,
    next_step,
    skipped_record,
    triggered_by_frames,
    types_from_frames,
)
from shared.butler import datasets
from shared.butler.collections import type_collection
from shared.butler.runrecords import load_run_config, read_record, write_record
from shared.calibtypes import image_type_of
from shared.events import CalibGenerated, CalibVerified, Event, FramesAcquired
from shared.instruments import get_instrument
from shared.records import AcquisitionManifest, GenerationRecord
from shared.runconfig import RunConfiguration
from shared.service import ServiceContext, create_service
from shared.settings import Settings

NAME = "generator"

Trigger = Annotated[FramesAcquired | CalibVerified, Field(discriminator="type")]


def register(router: KafkaRouter, ctx: ServiceContext) -> None:
    ctx.publisher(
        router,
        ctx.topics.calib_generated,
        CalibGenerated,
        "A calibration was built, not built (external verification), skipped or failed.",
    )

    @ctx.subscriber(
        router,
        ctx.topics.frames_acquired,
        ctx.topics.calib_verified,
        description="Frames of one image type are in; or a prerequisite calibration was verified.",
    )
    async def on_trigger(event: Trigger) -> None:
        run_id = event.run_id
        config = await ctx.with_butler("generate", load_run_config, event.instrument, run_id, run_id=run_id)
        chain = Chain(ctx, event, config)
        if isinstance(event, CalibVerified):
            # The chain reads the verdicts from the butler: a forged verdict only makes it look.
            await chain.walk(dependants(event.calib_type, config))
            return
        manifest = await ctx.recorded(
            "generate",
            event,
            ctx.topics.frames_acquired,
            lambda butler: read_record(
                butler, AcquisitionManifest, config.instrument, run_id, event.image_type
            ),
        )
        if manifest is None:
            return
        if manifest.outcome != "ok":
            # Every type built from these frames is skipped with the acquisition's reason.
            await chain.walk(types_from_frames(config, event.image_type))
        elif not config.generate_calibrations:
            await chain.finish(chain.external_record(manifest))
        else:
            await chain.walk(triggered_by_frames(config, event.image_type), republish_first=True)

    ctx.ready_checks.append(calibration_dataset_types_registered)


def calibration_dataset_types_registered(butler: Butler) -> None:
    """Readiness: the repository answers and knows the calibration dataset types."""
    butler.get_dataset_type(datasets.BIAS)


@dataclass
class Chain:
    """Walks the dependency chain of one run for one triggering event."""

    ctx: ServiceContext
    cause: Event
    config: RunConfiguration

    @property
    def run_id(self) -> str:
        return self.cause.run_id

    async def walk(self, calib_types: list[str], *, republish_first: bool = False) -> None:
        """Try ``calib_types`` in order, and whatever each outcome makes ready next."""
        todo = deque((t, republish_first and i == 0) for i, t in enumerate(calib_types))
        while todo:
            calib_type, republish = todo.popleft()
            record = await self.step(calib_type, republish=republish)
            if record is not None:
                todo.extend((t, False) for t in follow_ups(self.config, record))

    async def step(self, calib_type: str, *, republish: bool) -> GenerationRecord | None:
        """Do what `next_step` says for ``calib_type``; the new record, if one was written."""
        snapshot = await self.ctx.with_butler(
            "generate", load_snapshot, self.config, self.run_id, [calib_type], run_id=self.run_id
        )
        step = next_step(self.config, self.run_id, snapshot, calib_type)
        log_extra = {"run_id": self.run_id, "calib_type": calib_type, "why": step.reason}
        if step.action == "done":
            if republish and step.record is not None:  # a redelivered trigger gets the same answer again
                await self.announce(step.record)
            return None
        if step.action == "wait":
            self.ctx.log.info("not ready", extra=log_extra)
            return None
        assert step.manifest is not None
        if step.action == "skip":
            self.ctx.log.warning("dependant skipped", extra=log_extra)
            record = skipped_record(
                self.config,
                calib_type,
                step.reason,
                detectors=step.manifest.detectors,
                exposures=step.manifest.exposures,
                image_type=image_type_of(calib_type),
            )
        else:
            record = await self.build(step)
        await self.finish(record)
        return record

    async def build(self, step: Step) -> GenerationRecord:
        """Build ``step.calib_type`` and return its generation record (ok or failed)."""
        ctx, calib_type, manifest = self.ctx, step.calib_type, step.manifest
        assert manifest is not None
        base = GenerationRecord(
            instrument=self.config.instrument,
            calib_type=calib_type,
            image_type=image_type_of(calib_type),
            detectors=manifest.detectors,
            exposures=manifest.exposures,
            generated=False,
            sources=step.sources,
        )
        await ctx.status(
            self.cause,
            "RUNNING",
            f"{calib_type}: generating from {len(manifest.exposures)} exposures",
            stage="generate",
        )
        request = BuildRequest(
            instrument=get_instrument(self.config.instrument),
            config=self.config,
            run_id=self.run_id,
            exposures=tuple(manifest.exposures),
            detectors=tuple(manifest.detectors),
            physical_filter=manifest.physical_filter,
            sources=step.sources,
        )
        start = time.monotonic()
        try:
            built = await ctx.with_butler("generate", BUILDERS[calib_type], request, run_id=self.run_id)
        except Exception as exc:
            ctx.log.exception("generation failed", extra={"run_id": self.run_id, "calib_type": calib_type})
            ctx.metrics.stage_failures.labels(stage="generate", calib_type=calib_type).inc()
            reason = f"generation of {calib_type} failed: {type(exc).__name__}: {exc}"
            return base.model_copy(update={"outcome": "failed", "reason": reason})
        duration = time.monotonic() - start
        ctx.metrics.stage_duration.labels(stage="generate", calib_type=calib_type).observe(duration)
        ctx.log.info(
            "generated",
            extra={"run_id": self.run_id, "calib_type": calib_type, "seconds": round(duration, 3)},
        )
        if built.products:
            await ctx.status(
                self.cause,
                "RUNNING",
                f"{calib_type}: results per detector and amplifier",
                details={calib_type: built.products},
                stage="generate",
            )
        return base.model_copy(
            update={
                "generated": True,
                "collection": type_collection(self.config.instrument, self.run_id, calib_type),
                "dataset_ids": {str(k): v for k, v in built.dataset_ids.items()},
                "products": built.products,
                "duration_s": duration,
            }
        )

    def external_record(self, manifest: AcquisitionManifest) -> GenerationRecord:
        """External verification: nothing is built; the verifier checks the frames against these."""
        calib_type = manifest.image_type.lower()
        return GenerationRecord(
            instrument=self.config.instrument,
            calib_type=calib_type,
            image_type=manifest.image_type,
            detectors=manifest.detectors,
            exposures=manifest.exposures,
            generated=False,
            reference_collections=self.config.input_collections_verify(calib_type),
        )

    async def announce(self, record: GenerationRecord) -> None:
        await self.ctx.publish(
            CalibGenerated.announce(self.cause, NAME, record), self.ctx.topics.calib_generated
        )

    async def finish(self, record: GenerationRecord) -> None:
        """Publish first, then record: a crash in between repeats the event, never loses it."""
        await self.announce(record)
        await self.ctx.with_butler(
            "generate",
            write_record,
            record,
            self.config.instrument,
            self.run_id,
            record.calib_type,
            run_id=self.run_id,
        )


def create_app(settings: Settings | None = None) -> tuple[AsgiFastStream, ServiceContext]:
    """The service's ASGI app and its context (settings from the environment by default)."""
    return create_service(NAME, register, settings)

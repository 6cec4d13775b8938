"""The Kafka app factory every cpflow service is built with.

A service is a faststream `KafkaBroker` plus a `KafkaRouter` of handlers, served as an ASGI app
with ``/metrics``, ``/healthz`` and ``/readyz``. The factory fixes the delivery semantics that
DESIGN.md §1 asks for, so that no service gets them wrong on its own:

- one consumer group per service, offsets committed after the handler finished
  (``AckPolicy.NACK_ON_ERROR``: a message whose dead-lettering failed is redelivered);
- ``auto_offset_reset="earliest"`` so a new group sees what was produced before it joined;
- ``max_poll_interval_ms`` of an hour (configurable), and domain work runs in a worker thread,
  so a long combine neither blocks heartbeats nor triggers a rebalance loop;
- idempotent producers (``enable_idempotence=True`` implies ``acks=all``);
- every event keyed by its run id;
- any message that cannot be decoded or processed goes to the dead-letter topic with its bytes,
  origin and error, and the service keeps consuming.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from faststream import AckPolicy
from faststream._internal.middlewares import BaseMiddleware
from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker, KafkaRouter
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.specification import AsyncAPI
from prometheus_client import CollectorRegistry, make_asgi_app

from shared.events import DeadLetter, Event, RunState, RunStatus
from shared.logs import get_logger
from shared.metrics import Metrics
from shared.settings import Settings
from shared.topics import Topics

__all__ = [
    "ServiceContext",
    "StageFailure",
    "TransientError",
    "build_contract_app",
    "create_service",
    "is_transient",
]

T = TypeVar("T")
VERSION = "0.1.0"


class TransientError(RuntimeError):
    """A failure worth retrying (a locked database, an unreachable broker, a busy camera)."""


class StageFailure(RuntimeError):
    """A stage failed for good: retries are exhausted or the input cannot be processed."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a transient failure: retried with backoff before it is reported."""
    if isinstance(exc, TransientError | TimeoutError | ConnectionError):
        return True
    try:
        from sqlalchemy.exc import OperationalError
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, OperationalError):
        text = str(exc).lower()
        return any(word in text for word in ("locked", "busy", "could not connect", "connection"))
    return False


@dataclass
class ServiceContext:
    """What a service's handlers need: settings, topics, metrics, the broker, a logger."""

    name: str
    settings: Settings
    topics: Topics
    metrics: Metrics
    broker: KafkaBroker
    log: logging.Logger
    ready_checks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def group_id(self) -> str:
        return f"cpflow-{self.name}"

    def subscriber_options(self) -> dict[str, Any]:
        """Keyword arguments for every ``@router.subscriber`` of a cpflow service."""
        return {
            "group_id": self.group_id,
            "ack_policy": AckPolicy.NACK_ON_ERROR,
            "auto_offset_reset": "earliest",
            "max_poll_interval_ms": self.settings.max_poll_interval_ms,
            "max_poll_records": 1,
        }

    async def publish(self, event: Event, topic: str) -> None:
        """Publish ``event`` to ``topic``, keyed by its run id, and wait for the broker's ack."""
        await self.broker.publish(
            event.model_dump(mode="json"),
            topic,
            key=event.run_id.encode(),
            headers={"type": getattr(event, "type", "event"), "producer": event.producer},
        )

    async def status(
        self,
        cause: Event,
        state: RunState,
        message: str,
        *,
        errors: list[str] | None = None,
        progress: dict[str, int] | None = None,
        details: dict[str, Any] | None = None,
        stage: str | None = None,
    ) -> RunStatus:
        """Publish a `RunStatus` for the run of ``cause``."""
        status = RunStatus(
            **cause.caused(producer=self.name),
            state=state,
            stage=stage or self.name,
            message=message,
            errors=errors or [],
            progress=progress,
            details=details or {},
        )
        await self.publish(status, self.topics.run_status)
        return status

    async def run_blocking(
        self, stage: str, func: Callable[..., T], *args: Any, run_id: str | None = None, **kwargs: Any
    ) -> T:
        """Run blocking domain work in a worker thread, retrying transient failures with backoff.

        Raises `StageFailure` when the retries are exhausted. Non-transient exceptions pass
        through unchanged, for the handler to report.
        """
        attempts = max(1, self.settings.transient_retries)
        delay = 0.5
        for attempt in range(1, attempts + 1):
            try:
                return await asyncio.to_thread(func, *args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if attempt == attempts:
                    raise StageFailure(f"{stage}: gave up after {attempts} attempts: {exc}") from exc
                self.metrics.transient_retries.labels(stage=stage).inc()
                self.log.warning(
                    "transient failure, retrying",
                    extra={"run_id": run_id, "stage": stage, "attempt": attempt, "error": str(exc)},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def dead_letter(self, raw: Any, body: bytes, exc: BaseException) -> None:
        """Send an undecodable or unprocessable message to the dead-letter topic."""
        topic = getattr(raw, "topic", "unknown")
        key_bytes = getattr(raw, "key", None)
        key = key_bytes.decode(errors="replace") if isinstance(key_bytes, bytes) else None
        try:
            text: str | None = body.decode()
        except UnicodeDecodeError:
            text = None
        letter = DeadLetter(
            producer=self.name,
            run_id=key,
            origin_topic=topic,
            origin_partition=int(getattr(raw, "partition", -1)),
            origin_offset=int(getattr(raw, "offset", -1)),
            key=key,
            payload_base64=base64.b64encode(body).decode(),
            payload_text=text,
            error_type=type(exc).__name__,
            error=str(exc)[:20_000],
        )
        await self.broker.publish(
            letter.model_dump(mode="json"),
            self.topics.deadletter,
            key=key_bytes if isinstance(key_bytes, bytes) else None,
            headers={"type": "deadletter", "producer": self.name},
        )
        self.metrics.dead_letters.labels(topic=topic).inc()
        if key and topic not in (self.topics.run_status, self.topics.deadletter):
            # The run cannot finish without this event: say so in its status, so that nobody waits
            # for it forever. The dead letter keeps the payload for a replay after a fix.
            await self.publish(
                RunStatus(
                    run_id=key,
                    producer=self.name,
                    state="FAILED",
                    stage=self.name,
                    message=f"{self.name} could not process a {topic} event (see {self.topics.deadletter})",
                    errors=[f"{self.name}: {type(exc).__name__}: {str(exc)[:2000]}"],
                    details={"origin_topic": topic, "origin_offset": letter.origin_offset},
                ),
                self.topics.run_status,
            )
        self.log.error(
            "message dead-lettered",
            extra={
                "run_id": key,
                "topic": topic,
                "partition": letter.origin_partition,
                "offset": letter.origin_offset,
                "error_type": letter.error_type,
                "error": letter.error[:500],
            },
        )


def _dead_letter_middleware(get_ctx: Callable[[], ServiceContext]) -> type[BaseMiddleware]:
    class DeadLetterMiddleware(BaseMiddleware):  # type: ignore[type-arg]
        """Catch whatever a handler (or the decoder before it) raised, and dead-letter it."""

        async def consume_scope(self, call_next: Any, msg: Any) -> Any:
            try:
                return await call_next(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # If dead-lettering itself fails, the exception propagates and the message is
                # not committed (NACK_ON_ERROR): it will be delivered again, never lost.
                await get_ctx().dead_letter(msg.raw_message, bytes(msg.body), exc)
                return None

    return DeadLetterMiddleware


def _json_response(status: int, payload: dict[str, Any]) -> Callable[..., Awaitable[None]]:
    body = json.dumps(payload).encode()

    async def send_it(send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return send_it


def _health_routes(ctx_ref: list[ServiceContext]) -> list[tuple[str, Any]]:
    async def healthz(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _json_response(200, {"status": "ok", "service": ctx_ref[0].name})(send)

    async def readyz(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ctx = ctx_ref[0]
        problems: list[str] = []
        try:
            if not await ctx.broker.ping(timeout=3.0):
                problems.append("broker: not reachable")
        except Exception as exc:
            problems.append(f"broker: {exc}")
        for check in ctx.ready_checks:
            try:
                await asyncio.wait_for(check(), timeout=10.0)
            except Exception as exc:
                problems.append(f"{getattr(check, '__name__', 'check')}: {exc}")
        if problems:
            await _json_response(503, {"status": "not ready", "problems": problems})(send)
        else:
            await _json_response(200, {"status": "ready", "service": ctx.name})(send)

    return [("/healthz", healthz), ("/readyz", readyz)]


Register = Callable[[KafkaRouter, ServiceContext], None]


def _make_broker(
    name: str, settings: Settings, registry: CollectorRegistry, ctx_ref: list[ServiceContext]
) -> KafkaBroker:
    return KafkaBroker(
        settings.kafka_bootstrap,
        client_id=f"cpflow-{name}-{socket.gethostname()}",
        enable_idempotence=True,
        graceful_timeout=60.0,
        middlewares=(
            KafkaPrometheusMiddleware(registry=registry, app_name=name, metrics_prefix="faststream"),
            _dead_letter_middleware(lambda: ctx_ref[0]),
        ),
        logger=get_logger(f"cpflow.{name}.kafka"),
    )


def create_service(
    name: str, register: Register, settings: Settings | None = None
) -> tuple[AsgiFastStream, ServiceContext]:
    """Build service ``name``: broker, router with the handlers of ``register``, ASGI routes."""
    settings = settings or Settings.from_env()
    registry = CollectorRegistry()
    ctx_ref: list[ServiceContext] = []
    broker = _make_broker(name, settings, registry, ctx_ref)
    ctx = ServiceContext(
        name=name,
        settings=settings,
        topics=Topics(settings.topic_prefix),
        metrics=Metrics(registry),
        broker=broker,
        log=get_logger(f"cpflow.{name}"),
    )
    ctx_ref.append(ctx)
    router = KafkaRouter()
    register(router, ctx)
    broker.include_router(router)
    app = AsgiFastStream(
        broker,
        asgi_routes=[("/metrics", make_asgi_app(registry)), *_health_routes(ctx_ref)],
        specification=_specification(),
        logger=get_logger(f"cpflow.{name}.app"),
    )
    return app, ctx


def _specification() -> AsyncAPI:
    return AsyncAPI(
        title="cpflow",
        version=VERSION,
        description=(
            "Calibration products on Kafka: acquirer → generator → verifier → certifier. "
            "Every event is JSON with the envelope event_id, schema_version, run_id, causation_id, "
            "producer, time; keyed by run_id."
        ),
    )


def build_contract_app(registers: dict[str, Register], settings: Settings | None = None) -> AsgiFastStream:
    """One app with every service's handlers and publishers: the source of the AsyncAPI document."""
    settings = settings or Settings.from_env()
    registry = CollectorRegistry()
    ctx_ref: list[ServiceContext] = []
    broker = _make_broker("contract", settings, registry, ctx_ref)
    for name, register in registers.items():
        ctx = ServiceContext(
            name=name,
            settings=settings,
            topics=Topics(settings.topic_prefix),
            metrics=Metrics(CollectorRegistry()),
            broker=broker,
            log=get_logger(f"cpflow.{name}"),
        )
        ctx_ref[:] = [ctx]
        router = KafkaRouter()
        register(router, ctx)
        broker.include_router(router)
    return AsgiFastStream(broker, specification=_specification())


def monotonic() -> float:
    return time.monotonic()

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
  origin and error, and the service keeps consuming;
- one butler per process (`shared.butler.factory.ButlerFactory`), cloned for each unit of work
  and closed when the app stops; transient failures retried by the one policy of `shared.retry`.

Every service declares the topics it consumes and publishes through `ServiceContext.subscriber`
and `ServiceContext.publisher`; `service_topics` reads that table back (for the contract, and
for the brokers' access rules).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from faststream import AckPolicy, BaseMiddleware
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.kafka import KafkaBroker, KafkaRouter
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.specification import AsyncAPI
from lsst.daf.butler import Butler
from prometheus_client import CollectorRegistry, make_asgi_app
from pydantic import BaseModel
from tenacity import AsyncRetrying, stop_after_attempt, wait_fixed

from shared.butler.datasets import DatasetTypeConflict, check_dataset_types
from shared.butler.factory import ButlerFactory
from shared.butler.raws import use_raw_repository
from shared.butler.runrecords import differences
from shared.events import (
    DEAD_LETTER_EXCERPT_CHARS,
    DEAD_LETTER_INLINE_BYTES,
    DeadLetter,
    Event,
    RunState,
    RunStatus,
    parse_event,
)
from shared.kafka_access import connection_for
from shared.logs import get_logger
from shared.metrics import Metrics
from shared.retry import is_transient, retrying
from shared.settings import Settings
from shared.topics import Topics

__all__ = [
    "Register",
    "ServiceContext",
    "StageFailure",
    "build_contract_app",
    "create_service",
    "service_topics",
]

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)
VERSION = "0.1.0"

GRACEFUL_TIMEOUT_S = 60.0
"""On SIGTERM: how long the broker lets in-flight handlers finish, and then how long uvicorn waits for
open HTTP connections (each; a pod's termination grace period must exceed both together). A handler
still running after that is abandoned uncommitted and redelivered to another consumer."""

READY_CACHE_SECONDS = 5.0
"""How long a readiness answer is reused: probes never queue work behind the handlers."""


class StageFailure(RuntimeError):
    """A stage failed for good: retries are exhausted or the input cannot be processed."""


@dataclass
class ServiceContext:
    """What a service's handlers need: settings, topics, metrics, the broker, the butler, a logger."""

    name: str
    settings: Settings
    topics: Topics
    metrics: Metrics
    broker: KafkaBroker
    log: logging.Logger
    butlers: ButlerFactory
    ready_checks: list[Callable[[Butler], object]] = field(default_factory=list)
    consumes: list[str] = field(default_factory=list)
    publishes: list[str] = field(default_factory=list)
    on_startup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Run once the broker is connected (e.g. resume work recorded in the butler)."""
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Run when the app stops, before the broker closes."""
    consumer: ConsumerProgress = field(default_factory=lambda: ConsumerProgress(), init=False, repr=False)
    _ready_cache: tuple[float, list[str]] | None = field(default=None, init=False, repr=False)
    _ready_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    _probe_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpflow-probe"),
        init=False,
        repr=False,
    )

    @property
    def group_id(self) -> str:
        return self.settings.group_id(self.name)

    # -- the contract: what this service consumes and publishes

    def subscriber(self, router: KafkaRouter, *topics: str, description: str) -> Any:
        """``@router.subscriber`` for ``topics`` with cpflow's delivery semantics."""
        self.consumes.extend(t for t in topics if t not in self.consumes)
        suffixes = " and ".join(Topics.suffix(t) for t in topics)
        return router.subscriber(
            *topics,
            title=f"{self.name} consumes {suffixes}",
            description=description,
            group_id=self.group_id,
            ack_policy=AckPolicy.NACK_ON_ERROR,
            auto_offset_reset="earliest",
            max_poll_interval_ms=self.settings.max_poll_interval_ms,
            max_poll_records=1,
        )

    def publisher(self, router: KafkaRouter, topic: str, schema: type[BaseModel], description: str) -> None:
        """Declare that this service publishes ``schema`` events to ``topic``."""
        if topic in self.publishes:
            return
        self.publishes.append(topic)
        router.publisher(
            topic,
            schema=schema,
            title=f"{self.name} publishes {Topics.suffix(topic)}",
            description=description,
        )

    # -- publishing

    async def publish(self, event: Event, topic: str) -> None:
        """Publish ``event`` to ``topic``, keyed by its run id, and wait for the broker's ack."""
        if topic not in self.publishes:
            raise RuntimeError(f"{self.name} does not declare {topic} among the topics it publishes")
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

    # -- blocking work

    async def run_blocking(
        self, stage: str, func: Callable[..., T], *args: Any, run_id: str | None = None, **kwargs: Any
    ) -> T:
        """Run blocking domain work in a worker thread, retrying transient failures.

        Raises `StageFailure` when the retries are exhausted. Non-transient exceptions pass
        through unchanged, for the handler to report.
        """
        attempts = self.settings.transient_retries

        def on_retry(error: BaseException, attempt: int) -> None:
            self.metrics.transient_retries.labels(stage=stage).inc()
            self.log.warning(
                "transient failure, retrying",
                extra={"run_id": run_id, "stage": stage, "attempt": attempt, "error": str(error)[:500]},
            )

        def call() -> T:
            try:
                return retrying(attempts, on_retry=on_retry)(func, *args, **kwargs)
            except Exception as exc:
                if is_transient(exc):
                    raise StageFailure(f"{stage}: gave up after {attempts} attempts: {exc}") from exc
                raise

        return await asyncio.to_thread(call)

    async def with_butler(
        self, stage: str, func: Callable[..., T], *args: Any, run_id: str | None = None, **kwargs: Any
    ) -> T:
        """`run_blocking` of ``func(butler, *args, **kwargs)`` with a butler of its own."""

        def call(*inner: Any, **named: Any) -> T:
            with self.butlers.butler() as butler:
                return func(butler, *inner, **named)

        return await self.run_blocking(stage, call, *args, run_id=run_id, **kwargs)

    # -- the butler is the authority, events are hints

    async def recorded(
        self,
        stage: str,
        event: Event,
        topic: str,
        read: Callable[[Butler], R | None],
        claim: BaseModel | None = None,
    ) -> R | None:
        """What the butler records for the claim of ``event``, read with ``read(butler)``.

        An event only says "look": the handler acts on the record this returns. When the butler
        holds none (a forged or stray event), or one that disagrees with ``claim``, that is
        reported (WARNING log, ``cpflow_untrusted_events_total``); `None` means: nothing to do.
        """
        record = await self.with_butler(stage, read, run_id=event.run_id)
        extra = {"run_id": event.run_id, "topic": topic, "event_id": event.event_id}
        if record is None:
            self.metrics.untrusted_events.labels(topic=topic, reason="no-record").inc()
            self.log.warning("event ignored: the butler holds no record of what it claims", extra=extra)
            return None
        if claim is not None:
            disagree = differences(claim, record)  # type: ignore[arg-type]
            if disagree:
                self.metrics.untrusted_events.labels(topic=topic, reason="disagrees").inc()
                self.log.warning(
                    "event disagrees with the butler's record; acting on the record",
                    extra={**extra, "fields": ",".join(disagree)},
                )
        return record

    # -- dead letters

    def letter_for(self, raw: Any, body: bytes, exc: BaseException) -> DeadLetter:
        """The dead letter of a message: its origin, the error, and the payload once (bounded)."""
        topic = getattr(raw, "topic", "unknown")
        key_bytes = getattr(raw, "key", None)
        key = key_bytes.decode(errors="replace")[:256] if isinstance(key_bytes, bytes) else None
        digest = hashlib.sha256(body).hexdigest()
        inline = len(body) <= DEAD_LETTER_INLINE_BYTES
        ref = None if inline else self._keep_payload(body, digest)
        try:
            text: str | None = body[: 4 * DEAD_LETTER_EXCERPT_CHARS].decode()[:DEAD_LETTER_EXCERPT_CHARS]
        except UnicodeDecodeError:
            text = None
        return DeadLetter(
            producer=self.name,
            run_id=key,
            origin_topic=topic,
            origin_partition=int(getattr(raw, "partition", -1)),
            origin_offset=int(getattr(raw, "offset", -1)),
            key=key,
            payload_size=len(body),
            payload_sha256=digest,
            payload_base64=base64.b64encode(body).decode() if inline else None,
            payload_ref=ref,
            payload_text=text,
            error_type=type(exc).__name__,
            error=str(exc)[:4000],
        )

    def _keep_payload(self, body: bytes, digest: str) -> str | None:
        """Keep a payload too large to carry inline under the state directory; its path, or `None`."""
        directory = self.settings.home / "deadletters"
        path = directory / f"{digest}.bin"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                partial = path.with_suffix(f".{os.getpid()}.tmp")
                partial.write_bytes(body)
                partial.replace(path)
        except OSError as error:
            self.log.error(
                "cannot keep a dead letter's payload", extra={"path": str(path), "error": str(error)}
            )
            return None
        return str(path)

    async def dead_letter(self, raw: Any, body: bytes, exc: BaseException) -> None:
        """Send a message that cannot be decoded or processed to the dead-letter topic, and say so.

        The dead letter is published with a few retries; if that still fails, the message is
        given up (committed) with an ERROR log and a metric, so one message never stops the
        consumer. A genuine event of a run (it decodes as its topic's event and its key is its run
        id) also fails that run with the reason; anything else (junk, a forgery that does not
        decode, a key naming another run) never touches a run's state.
        """
        letter = self.letter_for(raw, body, exc)
        topic, key_bytes = letter.origin_topic, getattr(raw, "key", None)
        event = genuine_event(topic, key_bytes, body)
        log_extra = {
            "run_id": event.run_id if event is not None else None,
            "key": (letter.key or "")[:80],
            "topic": topic,
            "partition": letter.origin_partition,
            "offset": letter.origin_offset,
            "error_type": letter.error_type,
            "error": letter.error[:500],
        }
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(3), wait=wait_fixed(0.5), reraise=True
            ):
                with attempt:
                    await self.broker.publish(
                        letter.model_dump(mode="json"),
                        self.topics.deadletter,
                        key=key_bytes if isinstance(key_bytes, bytes) else None,
                        headers={"type": "deadletter", "producer": self.name},
                    )
        except Exception as error:
            self.metrics.dead_letter_failures.labels(topic=topic).inc()
            self.log.error(
                "message given up: it could not be dead-lettered",
                extra={**log_extra, "dead_letter_error": f"{type(error).__name__}: {error}"[:500]},
            )
        else:
            self.metrics.dead_letters.labels(topic=topic).inc()
            self.log.error("message dead-lettered", extra=log_extra)
        if event is not None and topic not in (self.topics.run_status, self.topics.deadletter):
            # The run cannot finish without this event: say so in its status, so that nobody waits
            # for it forever. The dead letter keeps the payload for a redrive after a fix.
            with contextlib.suppress(Exception):  # best effort: the log and the metric are there
                await self.publish(
                    RunStatus(
                        run_id=event.run_id,
                        producer=self.name,
                        state="FAILED",
                        stage=self.name,
                        message=f"{self.name} could not process a {Topics.suffix(topic)} event "
                        f"(see {self.topics.deadletter})",
                        errors=[f"{self.name}: {type(exc).__name__}: {str(exc)[:2000]}"],
                        details={"origin_topic": topic, "origin_offset": letter.origin_offset},
                    ),
                    self.topics.run_status,
                )

    # -- readiness

    async def readiness(self) -> list[str]:
        """What keeps the service from being ready (empty: ready); answers at most every few seconds."""
        now = time.monotonic()
        cached = self._ready_cache
        if cached is not None and now - cached[0] < READY_CACHE_SECONDS:
            return cached[1]
        async with self._ready_lock:
            cached = self._ready_cache
            if cached is not None and time.monotonic() - cached[0] < READY_CACHE_SECONDS:
                return cached[1]
            problems = await self._check_readiness()
            self._ready_cache = (time.monotonic(), problems)
            return problems

    async def _check_readiness(self) -> list[str]:
        self.metrics.readiness_checks.inc()
        problems = self.consumer.problems(self.settings.max_poll_interval_ms / 1000)
        try:
            if not await self.broker.ping(timeout=3.0):
                problems.append("broker: not reachable")
        except Exception as exc:
            problems.append(f"broker: {type(exc).__name__}: {exc}")

        def butler_checks() -> list[str]:
            found: list[str] = []
            try:
                with self.butlers.butler() as butler:
                    for check in self.ready_checks:
                        try:
                            check(butler)
                        except Exception as exc:
                            name = getattr(check, "__name__", "check")
                            found.append(f"{name}: {type(exc).__name__}: {exc}")
            except Exception as exc:
                found.append(f"butler: {type(exc).__name__}: {exc}")
            return found

        try:
            # A thread of its own: never queued behind the handlers' blocking work.
            loop = asyncio.get_running_loop()
            problems += await asyncio.wait_for(
                loop.run_in_executor(self._probe_executor, butler_checks), 10.0
            )
        except TimeoutError:
            problems.append("butler: no answer within 10 s")
        return problems

    async def check_repository(self) -> None:
        """Refuse to start on a repository that defines cpflow's dataset types otherwise.

        Runs before the broker connects, so no event is consumed by a service that could only fail it.
        """

        def check() -> None:
            with self.butlers.butler() as butler:
                check_dataset_types(butler)

        try:
            await asyncio.get_running_loop().run_in_executor(self._probe_executor, check)
        except DatasetTypeConflict as exc:
            self.log.error("refusing to start: %s", exc)
            raise

    async def started(self) -> None:
        for hook in self.on_startup:
            await hook()

    async def stopping(self) -> None:
        for hook in self.on_shutdown:
            await hook()

    def close(self) -> None:
        """Release the butler and the probe thread (the app is stopping)."""
        self._probe_executor.shutdown(wait=False, cancel_futures=True)
        self.butlers.close()


def genuine_event(topic: str, key: bytes | None, body: bytes) -> Event | None:
    """The event ``body`` is, if it is a valid event of ``topic`` whose run id is the message key."""
    try:
        suffix = Topics.suffix(topic)
    except ValueError:
        return None
    event = parse_event(suffix, body)
    if event is None or key is None or event.run_id.encode() != key:
        return None
    return event


def _dead_letter_middleware(get_ctx: Callable[[], ServiceContext]) -> type[BaseMiddleware]:
    class DeadLetterMiddleware(BaseMiddleware):
        """Refuse oversize messages, and dead-letter whatever a handler (or the decoder) raised."""

        async def consume_scope(self, call_next: Any, msg: Any) -> Any:
            ctx = get_ctx()
            raw = msg.raw_message
            body = bytes(msg.body)
            position = (
                getattr(raw, "topic", "?"),
                int(getattr(raw, "partition", -1)),
                int(getattr(raw, "offset", -1)),
            )
            limit = ctx.settings.max_message_bytes
            if len(body) > limit:
                await ctx.dead_letter(
                    raw,
                    body,
                    MessageTooLarge(
                        f"the message has {len(body)} bytes, more than CPFLOW_MAX_MESSAGE_BYTES={limit}"
                    ),
                )
                return None
            ctx.consumer.started(position)
            try:
                return await call_next(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await ctx.dead_letter(raw, body, exc)
                return None
            finally:
                ctx.consumer.finished()

    return DeadLetterMiddleware


class MessageTooLarge(ValueError):
    """A message larger than the service accepts (``CPFLOW_MAX_MESSAGE_BYTES``)."""


@dataclass
class ConsumerProgress:
    """Which message the service is working on, and since when: readiness reports a stuck consumer."""

    current: tuple[str, int, int] | None = None
    since: float = 0.0
    deliveries: dict[tuple[str, int, int], int] = field(default_factory=dict)

    def started(self, position: tuple[str, int, int]) -> None:
        self.current, self.since = position, time.monotonic()
        self.deliveries[position] = self.deliveries.get(position, 0) + 1
        if len(self.deliveries) > 1000:  # only recent positions matter
            for old in list(self.deliveries)[:500]:
                del self.deliveries[old]

    def finished(self) -> None:
        self.current = None

    def problems(self, stuck_after_s: float) -> list[str]:
        found = []
        if self.current is not None and time.monotonic() - self.since > stuck_after_s:
            topic, partition, offset = self.current
            found.append(
                f"consumer: on {topic}[{partition}] offset {offset} for "
                f"{time.monotonic() - self.since:.0f} s (more than {stuck_after_s:.0f} s)"
            )
        for (topic, partition, offset), count in self.deliveries.items():
            if count > 3:
                found.append(f"consumer: {topic}[{partition}] offset {offset} delivered {count} times")
        return found


def _json(status: int, payload: dict[str, Any]) -> AsgiResponse:
    return AsgiResponse(json.dumps(payload).encode(), status, headers={"content-type": "application/json"})


def _health_routes(ctx_ref: list[ServiceContext]) -> list[tuple[str, Any]]:
    @get(include_in_schema=False)
    async def healthz(scope: Any) -> AsgiResponse:
        """Liveness: the process answers; touches neither the broker nor the butler."""
        return _json(200, {"status": "ok", "service": ctx_ref[0].name})

    @get(include_in_schema=False)
    async def readyz(scope: Any) -> AsgiResponse:
        """Readiness: the broker and the butler are reachable (answer cached a few seconds)."""
        ctx = ctx_ref[0]
        problems = await ctx.readiness()
        if problems:
            return _json(503, {"status": "not ready", "service": ctx.name, "problems": problems})
        return _json(200, {"status": "ready", "service": ctx.name})

    return [("/healthz", healthz), ("/readyz", readyz)]


Register = Callable[[KafkaRouter, ServiceContext], None]


def _make_broker(
    name: str, settings: Settings, registry: CollectorRegistry, ctx_ref: list[ServiceContext]
) -> KafkaBroker:
    return KafkaBroker(
        settings.kafka_bootstrap,
        security=connection_for(settings, name).faststream_security(),
        client_id=f"cpflow-{name}-{socket.gethostname()}",
        enable_idempotence=True,
        graceful_timeout=GRACEFUL_TIMEOUT_S,
        middlewares=(
            KafkaPrometheusMiddleware(registry=registry, app_name=name, metrics_prefix="faststream"),
            _dead_letter_middleware(lambda: ctx_ref[0]),
        ),
        logger=get_logger(f"cpflow.{name}.kafka"),
    )


def _context(
    name: str, settings: Settings, broker: KafkaBroker, registry: CollectorRegistry, router: KafkaRouter
) -> ServiceContext:
    ctx = ServiceContext(
        name=name,
        settings=settings,
        topics=Topics(settings.topic_prefix),
        metrics=Metrics(registry),
        broker=broker,
        log=get_logger(f"cpflow.{name}"),
        butlers=ButlerFactory(settings.butler_repo, writeable=True),
    )
    use_raw_repository(settings.raw_repo)
    # Every service reports run progress and dead-letters what it cannot process.
    ctx.publisher(router, ctx.topics.run_status, RunStatus, "Run progress and final states.")
    ctx.publisher(
        router,
        ctx.topics.deadletter,
        DeadLetter,
        "A message this service could not decode or process, with its bytes, origin and error.",
    )
    return ctx


def create_service(
    name: str, register: Register, settings: Settings | None = None
) -> tuple[AsgiFastStream, ServiceContext]:
    """Build service ``name``: broker, router with the handlers of ``register``, ASGI routes."""
    settings = settings or Settings.from_env()
    registry = CollectorRegistry()
    ctx_ref: list[ServiceContext] = []
    broker = _make_broker(name, settings, registry, ctx_ref)
    router = KafkaRouter()
    ctx = _context(name, settings, broker, registry, router)
    ctx_ref.append(ctx)
    register(router, ctx)
    ctx.metrics.initialise(name, ctx.consumes)
    broker.include_router(router)
    app = AsgiFastStream(
        broker,
        asgi_routes=[("/metrics", make_asgi_app(registry)), *_health_routes(ctx_ref)],
        specification=_specification(),
        on_startup=[ctx.check_repository],
        after_startup=[ctx.started],
        on_shutdown=[ctx.stopping],
        after_shutdown=[ctx.close],
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
    ctx_ref: list[ServiceContext] = []
    broker = _make_broker("contract", settings, CollectorRegistry(), ctx_ref)
    for name, register in registers.items():
        router = KafkaRouter()
        ctx = _context(name, settings, broker, CollectorRegistry(), router)
        ctx_ref[:] = [ctx]
        register(router, ctx)
        broker.include_router(router)
    return AsgiFastStream(broker, specification=_specification())


def service_topics(
    name: str, register: Register, settings: Settings | None = None
) -> tuple[list[str], list[str]]:
    """The topics service ``name`` consumes and publishes, read from its ``register``."""
    settings = settings or Settings.from_env()
    router = KafkaRouter()
    broker = _make_broker(name, settings, CollectorRegistry(), [])
    ctx = _context(name, settings, broker, CollectorRegistry(), router)
    register(router, ctx)
    return list(ctx.consumes), list(ctx.publishes)

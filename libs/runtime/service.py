"""The common life of every service process: bootstrap, heartbeat, graceful stop.

`run_service(component, setup)` wires settings, logging, tracing, the bus (streams declared),
optionally Postgres (migrated) and Valkey, starts the 1 s heartbeat, calls the service's `setup`
(which registers its consumers and tasks), marks the component READY and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as redis

from libs import cache, db
from libs import logging as bulwark_logging
from libs.bus import Bus, cancel_and_wait
from libs.logging import Logger, get_logger
from libs.metrics import MetricsServer, ServiceMetrics
from libs.retry import recoverable_until_reachable
from libs.settings import Settings
from libs.telemetry import setup_tracing
from proto import subjects
from proto.enums import ComponentState
from proto.messages import Heartbeat
from proto.permissions import may_update_streams


@dataclass
class ServiceContext:
    """Everything a service's handlers need, built once in `run_service`."""

    component: str
    settings: Settings
    log: Logger
    bus: Bus
    pool: asyncpg.Pool | None = None
    cache: redis.Redis | None = None
    state: ComponentState = ComponentState.STARTING
    started_ns: int = field(default_factory=time.time_ns)
    details: Callable[[], dict[str, Any]] = dict
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    startup_phases: dict[str, float] = field(default_factory=dict)
    """Milliseconds spent in each start-up phase (logged with `service_ready`); `setup` may add its own."""
    metrics: ServiceMetrics = field(default_factory=lambda: ServiceMetrics("unnamed"))
    """This process's Prometheus metrics (`libs.metrics`): handlers observe through it."""
    metrics_url: str | None = None
    """Where Prometheus scrapes them (carried in every heartbeat; None without an endpoint)."""

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a background task for the life of the service; a crash is logged, not silent."""
        task = asyncio.create_task(coro, name=name)

        def done(t: asyncio.Task[Any]) -> None:
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                assert exc is not None
                self.log.exception("task_crashed", exc, task=name, action_taken="service stops for a restart")
                self.stopping.set()

        task.add_done_callback(done)
        self._tasks.append(task)
        return task

    def set_state(self, state: ComponentState) -> None:
        if state != self.state:
            self.log.info("component_state_changed", previous=self.state.value, current=state.value)
            self.state = state


Setup = Callable[[ServiceContext], Coroutine[Any, Any, None]]


def ms_since(mark: float) -> float:
    """Milliseconds since `mark` (a `time.perf_counter()` reading): one start-up phase's length."""
    return (time.perf_counter() - mark) * 1000


def _process_age_ms() -> float | None:
    """Milliseconds since this process was started (interpreter start-up and imports), from /proc."""
    try:
        started_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round((uptime_s - started_ticks / os.sysconf("SC_CLK_TCK")) * 1000, 1)


async def _heartbeat_loop(ctx: ServiceContext) -> None:
    alive = Path(ctx.settings.alive_file) if ctx.settings.alive_file else None
    pid = os.getpid()
    while True:
        heartbeat = Heartbeat(
            component=ctx.component,
            pid=pid,
            state=ctx.state,
            started_ns=ctx.started_ns,
            details=ctx.details(),
            metrics_url=ctx.metrics_url,
        )
        try:
            await ctx.bus.publish_core(subjects.heartbeat(ctx.component), heartbeat)
        except Exception as exc:  # noqa: BLE001 - a missed beat is the signal; never stop beating
            ctx.log.debug("heartbeat_failed", error=str(exc))
        if alive is not None:
            with contextlib.suppress(OSError):
                alive.touch()
        await asyncio.sleep(ctx.settings.heartbeat_interval_s)


async def _connect_pool(ctx: ServiceContext) -> asyncpg.Pool:
    async for attempt in recoverable_until_reachable((OSError, asyncpg.PostgresError, asyncio.TimeoutError), 120):
        with attempt:
            pool = await db.create_pool(ctx.settings.pg_dsn)
            await db.migrate(pool)
            return pool
    raise RuntimeError("unreachable")  # pragma: no cover


def _start_metrics_server(ctx: ServiceContext) -> MetricsServer | None:
    """The process's Prometheus endpoint (`BULWARK_METRICS_PORT`; -1: none). A port that cannot be
    bound costs the metrics, never the service: it is logged and the heartbeat carries no URL."""
    settings = ctx.settings
    if settings.metrics_port < 0:
        return None
    try:
        server = MetricsServer.start(ctx.metrics.registry, settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        ctx.log.error(
            "metrics_endpoint_failed",
            host=settings.metrics_host,
            port=settings.metrics_port,
            error=str(exc),
            action_taken="service runs without a metrics endpoint",
        )
        return None
    ctx.metrics_url = server.url()
    ctx.log.info("metrics_endpoint_started", url=ctx.metrics_url)
    return server


async def run_service(
    component: str,
    setup: Setup,
    *,
    needs_db: bool = False,
    needs_cache: bool = False,
    settings: Settings | None = None,
) -> None:
    """Run one service until SIGTERM/SIGINT (or until a background task crashes)."""
    settings = settings or Settings.from_env()
    bulwark_logging.configure(settings.log_level)
    log = get_logger(component)
    setup_tracing(component, settings.otel_exporter, endpoint=settings.otel_endpoint, protocol=settings.otel_protocol)
    metrics = ServiceMetrics(component)
    bus = Bus(component, log, replicas=settings.stream_replicas)
    bus.metrics = metrics
    metrics.watch_bus(bus.status)
    ctx = ServiceContext(component=component, settings=settings, log=log, bus=bus, metrics=metrics)
    metrics_server = _start_metrics_server(ctx)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ctx.stopping.set)

    log.info("service_starting", pid=os.getpid(), since_exec_ms=_process_age_ms())

    degraded_by_bus = False

    def on_bus_connection(connected: bool) -> None:
        # FM-C6: a service that lost the bus is DEGRADED (its heartbeats say so once they reach the
        # watchdog again); services that must halt read `ctx.bus.connected` or add their own listener.
        nonlocal degraded_by_bus
        if not connected and ctx.state == ComponentState.READY:
            degraded_by_bus = True
            ctx.set_state(ComponentState.DEGRADED)
        elif connected and degraded_by_bus:
            degraded_by_bus = False
            if ctx.state == ComponentState.DEGRADED:
                ctx.set_state(ComponentState.READY)

    bus.add_connection_listener(on_bus_connection)
    phases = ctx.startup_phases
    mark = time.perf_counter()
    await bus.connect(settings.nats_url, user=settings.nats_user, password=settings.nats_password)
    phases["bus_connect_ms"] = ms_since(mark)
    mark = time.perf_counter()
    # Every service creates a stream still missing; only a provisioner may change an existing one.
    bus.may_update_streams = may_update_streams(settings.nats_user)
    await bus.ensure_streams()
    phases["ensure_streams_ms"] = ms_since(mark)
    ctx.spawn(_heartbeat_loop(ctx), "heartbeat")
    if needs_db:
        mark = time.perf_counter()
        ctx.pool = await _connect_pool(ctx)
        phases["db_connect_ms"] = ms_since(mark)
    if needs_cache:
        ctx.cache = cache.create_client(
            settings.redis_url, username=settings.valkey_user, password=settings.valkey_password
        )
    setup_started = time.perf_counter()
    try:
        # Set-up may wait on dependencies (venue reconciliation, a first snapshot): a stop request
        # must still be honoured promptly, so it runs beside the wait for SIGTERM.
        setup_task: asyncio.Task[None] = asyncio.create_task(setup(ctx), name="setup")
        stop_task = asyncio.create_task(ctx.stopping.wait(), name="stop-wait")
        await asyncio.wait({setup_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if setup_task.done():
            setup_task.result()
            phases["setup_ms"] = ms_since(setup_started)
            if ctx.state == ComponentState.STARTING:
                ctx.set_state(ComponentState.READY)
            log.info("service_ready", pid=os.getpid(), startup_ms={k: round(v, 1) for k, v in phases.items()})
            await stop_task
        else:
            setup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await setup_task
    finally:
        ctx.set_state(ComponentState.STOPPING)
        log.info("service_stopping")
        # Background tasks first: a task still running during the cleanups could find its client
        # closed (a crash logged at a clean stop) or write after its lease was released.
        await cancel_and_wait(ctx._tasks)
        for cleanup in reversed(ctx.cleanups):
            with contextlib.suppress(Exception):
                await cleanup()
        await bus.close()
        if ctx.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ctx.pool.close(), 5)
        if ctx.cache is not None:
            with contextlib.suppress(Exception):
                await ctx.cache.aclose()
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.stop)
        log.info("service_stopped")


def main(component: str, setup: Setup, **kwargs: Any) -> None:
    """Entry point helper for `services/<name>/main.py`."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_service(component, setup, **kwargs))

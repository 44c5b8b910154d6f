"""watchdog process: `python -m services.watchdog.main`.

Tracks heartbeats on `hb.>`, observes hot state, links, resources and latency, evaluates health
and the degradation level every second (see `domain`), delivers alerts to the sinks, and runs the
audit writer (streams ORDERS, SIGNALS, CONTROL -> `audit_events`) and the DLQ writer (-> `dead_letters`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import DeliverPolicy
from nats.js.errors import NoKeysError

from libs.errors import DependencyUnavailable
from libs.heartbeat import HeartbeatTracker
from libs.runtime.service import ServiceContext, main
from libs.settings import Settings
from proto import subjects
from proto.codec import decode_as
from proto.enums import DegradationLevel, Health, HotStateStatus
from proto.messages import Heartbeat, HotStateRecord, LinkStateChanged
from services.watchdog import adapters, handlers
from services.watchdog.domain import (
    LatencyObservation,
    LatencyWindow,
    LinkObservation,
    SymbolObservation,
    Thresholds,
    WatchdogEvaluator,
    latencies_from_views,
    symbols_from_reply,
)

EVALUATION_PERIOD_S = 1.0
SYMBOLS_TIMEOUT_S = 0.5
STALE_AFTER_MS = 1000
EVT_ALERT_PREFIX = "evt.alert."
OPEN_ALERTS_ERRORS: tuple[type[BaseException], ...] = (*adapters.PG_ERRORS, DependencyUnavailable, msgspec.DecodeError)
RETENTION_PERIOD_S = 3600.0
# A Postgres outage must not push audit rows into the DLQ: retry (every <= 5 s) until it is back.
AUDIT_MAX_DELIVER = 1_000_000


def expected_components(settings: Settings) -> tuple[str, ...]:
    """Every component that should be heartbeating in this deployment."""
    return (*subjects.CORE_COMPONENTS, *(subjects.strategy_component(name) for name in settings.strategies))


async def _read_kv_value(ctx: ServiceContext, key: str, field: str) -> tuple[str | None, int | None]:
    """(value[field], revision) of a JSON KV entry; (None, None) when never set."""
    entry = await ctx.bus.kv_get(key)
    if entry is None:
        return None, None
    raw, revision = entry
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        ctx.log.warning("kv_value_unreadable", key=key)
        return None, revision
    found = value.get(field) if isinstance(value, dict) else None
    return (found if isinstance(found, str) else None), revision


def thresholds_from(settings: Settings) -> Thresholds:
    """The evaluator's thresholds with the operator-tunable ones taken from settings."""
    return Thresholds(
        memory_max_pct=settings.watchdog_memory_max_pct,
        cpu_max_pct=settings.watchdog_cpu_max_pct,
        latency_floor_ms=settings.watchdog_latency_floor_ms,
        recovery_hold_ns=int(settings.watchdog_recovery_hold_s * 1e9),
    )


class Observer:
    """Collects what the rules look at, once per evaluation: hot state per symbol (asked from the
    state-builder, the KV bucket when it does not answer), link states (KV at start, then
    `evt.link.>`), machine resources and the state-builder's answer latency."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self.links: dict[str, str] = {}
        self.latency = LatencyWindow(size=60)

    async def start(self) -> None:
        try:
            kv = await self._ctx.bus.kv()
            for key in await kv.keys():
                if key.startswith("link."):
                    state, _ = await _read_kv_value(self._ctx, key, "state")
                    if state is not None:
                        self.links[key.removeprefix("link.")] = state
        except NoKeysError:
            pass

        async def on_link(msg: Msg) -> None:
            try:
                event = decode_as(msg.data, LinkStateChanged)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._ctx.log.warning("link_event_invalid", subject=msg.subject, error=str(exc)[:200])
                return
            self.links[f"{event.venue}.{event.link}"] = event.current.value

        await self._ctx.bus.subscribe_core("evt.link.>", on_link)

    async def symbols(self) -> list[SymbolObservation]:
        started = time.monotonic()
        try:
            reply = await self._ctx.bus.request(
                subjects.service_query(subjects.STATE_BUILDER, "symbols"), b"{}", timeout_s=SYMBOLS_TIMEOUT_S
            )
            found = symbols_from_reply(msgspec.json.decode(reply))
        except (NatsError, TimeoutError, msgspec.DecodeError) as exc:
            self._ctx.log.debug("symbols_query_failed", error=type(exc).__name__, action_taken="hot state from KV")
        else:
            self.latency.add((time.monotonic() - started) * 1000.0)
            if found:
                return found
        return await self._symbols_from_kv()

    async def _symbols_from_kv(self) -> list[SymbolObservation]:
        found = []
        now = time.time_ns()
        for symbol in self._ctx.settings.symbols:
            entry = await self._ctx.bus.kv_get(subjects.key_hot_state(symbol))
            if entry is None:
                continue
            try:
                record = msgspec.json.decode(entry[0], type=HotStateRecord)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self._ctx.log.warning("kv_value_unreadable", key=subjects.key_hot_state(symbol))
                continue
            age_ms = None
            if record.status == HotStateStatus.STALE and record.ts_ns:
                # STALE is declared 1 s after the last update (FM-D1): the data is that much older.
                age_ms = (now - record.ts_ns) // 1_000_000 + STALE_AFTER_MS
            found.append(SymbolObservation(symbol, record.status.value, age_ms))
        return found

    def link_observations(self) -> list[LinkObservation]:
        return [LinkObservation(name, state) for name, state in sorted(self.links.items())]

    def latencies(self, views: dict[str, Any]) -> list[LatencyObservation]:
        own = self.latency.observation(f"{subjects.STATE_BUILDER}-query")
        return [*latencies_from_views(views), *([own] if own is not None else [])]


async def setup(ctx: ServiceContext) -> None:
    """Start heartbeat tracking, the evaluation loop, the alert sinks, the audit and DLQ writers."""
    settings = ctx.settings
    tracker = HeartbeatTracker(
        timeout_ns=int(settings.heartbeat_timeout_s * 1e9), expected=expected_components(settings)
    )

    async def on_heartbeat(msg: Msg) -> None:
        try:
            heartbeat = decode_as(msg.data, Heartbeat)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            ctx.log.warning("heartbeat_invalid", subject=msg.subject, error=str(exc)[:200])
            return
        tracker.record(heartbeat, time.time_ns())

    await ctx.bus.subscribe_core(subjects.HEARTBEAT_ALL, on_heartbeat)
    observer = Observer(ctx)
    await observer.start()

    level, _ = await _read_kv_value(ctx, subjects.KEY_DEGRADATION_LEVEL, "level")
    health, _ = await _read_kv_value(ctx, subjects.KEY_HEALTH, "health")
    evaluator = WatchdogEvaluator(
        time.time_ns,
        grace_ns=int(settings.heartbeat_timeout_s * 1e9),
        initial_level=DegradationLevel(level) if level is not None and level in DegradationLevel.__members__ else None,
        initial_health=Health(health) if health is not None and health in Health.__members__ else None,
        thresholds=thresholds_from(settings),
    )
    if evaluator.level == DegradationLevel.HARD_SHUTDOWN:
        ctx.log.warning("hard_shutdown_kept", action_taken="degradation level stays HARD_SHUTDOWN")
    adapters.measure_resources(settings.watchdog_disk_path)  # primes the CPU average

    async def evaluation_loop() -> None:
        last_checks: dict[str, bool] = {}
        while True:
            await asyncio.sleep(EVALUATION_PERIOD_S)
            try:
                persisted, revision = await _read_kv_value(ctx, subjects.KEY_DEGRADATION_LEVEL, "level")
                if persisted is not None and persisted in DegradationLevel.__members__:
                    evaluator.adopt_level(DegradationLevel(persisted))
                views = tracker.view(time.time_ns())
                evaluation = evaluator.evaluate(
                    views,
                    symbols=await observer.symbols(),
                    links=observer.link_observations(),
                    resources=adapters.measure_resources(settings.watchdog_disk_path),
                    latencies=observer.latencies(views),
                )
                await handlers.apply_evaluation(
                    ctx, evaluation, level_revision=revision, checks_changed=evaluation.checks != last_checks
                )
                last_checks = evaluation.checks
            except asyncio.CancelledError:
                raise
            except handlers.LevelWriteConflict as exc:
                ctx.log.warning("degradation_level_conflict", error=str(exc)[:200], action_taken="re-evaluate")
                evaluator.forget_level()
            except Exception as exc:
                ctx.log.exception("evaluation_failed", exc, action_taken="retry next period")

    ctx.spawn(evaluation_loop(), "evaluation")

    async def dead_letter_retention_loop() -> None:
        while True:
            try:
                removed = await adapters.purge_old_dead_letters(ctx.pool, time.time_ns())
                if removed:
                    ctx.log.info("dead_letters_purged", removed=removed, older_than_days=30)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Postgres may be down; try again next period
                ctx.log.warning("dead_letter_purge_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            await asyncio.sleep(RETENTION_PERIOD_S)

    ctx.spawn(dead_letter_retention_loop(), "dlq-retention")

    dispatcher = handlers.AlertDispatcher(
        ctx, adapters.webhook_sinks(settings), timeout_s=settings.alert_webhook_timeout_s
    )
    ctx.cleanups.append(dispatcher.close)
    try:
        for notice in await adapters.open_alerts(ctx.pool):
            dispatcher.router.raised(notice)  # already delivered before a restart: keep de-duplicating
    except OPEN_ALERTS_ERRORS as exc:
        ctx.log.warning("open_alerts_unknown", error=f"{type(exc).__name__}: {exc}"[:300], action_taken="start empty")
    await ctx.bus.consume(
        stream=subjects.STREAM_CONTROL.name,
        durable=handlers.ALERTS_CONSUMER,
        filter_subjects=[f"{EVT_ALERT_PREFIX}>"],
        handler=dispatcher.handle,
        max_deliver=AUDIT_MAX_DELIVER,
        deliver_policy=DeliverPolicy.NEW,  # a new deployment does not page for history
    )

    for spec, durable in handlers.AUDIT_CONSUMERS:
        await ctx.bus.consume(
            stream=spec.name,
            durable=durable,
            filter_subjects=list(spec.subjects),
            handler=handlers.audit_handler(ctx, spec.name),
            max_deliver=AUDIT_MAX_DELIVER,
        )
    await ctx.bus.consume(
        stream=subjects.STREAM_DLQ.name,
        durable=handlers.DLQ_CONSUMER,
        filter_subjects=list(subjects.STREAM_DLQ.subjects),
        handler=handlers.dead_letter_handler(ctx),
        max_deliver=AUDIT_MAX_DELIVER,
    )


if __name__ == "__main__":
    main(subjects.WATCHDOG, setup, needs_db=True)

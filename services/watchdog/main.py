"""watchdog process: `python -m services.watchdog.main`.

Tracks heartbeats on `hb.>`, evaluates health every second (see `domain`), and runs the audit
writer (streams ORDERS, SIGNALS, CONTROL -> `audit_events`) and the DLQ writer (-> `dead_letters`).
"""

from __future__ import annotations

import asyncio
import time

import msgspec
from nats.aio.msg import Msg

from libs.heartbeat import HeartbeatTracker
from libs.runtime.service import ServiceContext, main
from libs.settings import Settings
from proto import subjects
from proto.codec import decode_as
from proto.enums import DegradationLevel, Health
from proto.messages import Heartbeat
from services.watchdog import adapters, handlers
from services.watchdog.domain import WatchdogEvaluator

EVALUATION_PERIOD_S = 1.0
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


async def setup(ctx: ServiceContext) -> None:
    """Start heartbeat tracking, the evaluation loop, the audit writer and the DLQ writer."""
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

    level, _ = await _read_kv_value(ctx, subjects.KEY_DEGRADATION_LEVEL, "level")
    health, _ = await _read_kv_value(ctx, subjects.KEY_HEALTH, "health")
    evaluator = WatchdogEvaluator(
        time.time_ns,
        grace_ns=int(settings.heartbeat_timeout_s * 1e9),
        initial_level=DegradationLevel(level) if level is not None and level in DegradationLevel.__members__ else None,
        initial_health=Health(health) if health is not None and health in Health.__members__ else None,
    )
    if evaluator.level == DegradationLevel.HARD_SHUTDOWN:
        ctx.log.warning("hard_shutdown_kept", action_taken="degradation level stays HARD_SHUTDOWN")

    async def evaluation_loop() -> None:
        while True:
            await asyncio.sleep(EVALUATION_PERIOD_S)
            try:
                persisted, revision = await _read_kv_value(ctx, subjects.KEY_DEGRADATION_LEVEL, "level")
                if persisted is not None and persisted in DegradationLevel.__members__:
                    evaluator.adopt_level(DegradationLevel(persisted))
                evaluation = evaluator.evaluate(tracker.view(time.time_ns()))
                await handlers.apply_evaluation(ctx, evaluation, level_revision=revision)
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

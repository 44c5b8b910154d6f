"""Message -> effect for the watchdog: audit writer, dead-letter writer, and the effects of an
evaluation (events on the bus, values in the KV bucket)."""

from __future__ import annotations

import msgspec
from nats.js.errors import KeyWrongLastSequenceError

from libs.bus import Delivery, Handler
from libs.errors import PermanentError
from libs.runtime.service import ServiceContext
from proto import subjects
from proto.envelope import Message, now_ns
from proto.messages import (
    AlertRaised,
    AlertResolved,
    ComponentStatusChanged,
    DeadLettered,
    DegradationLevelChanged,
    HealthChanged,
)
from services.watchdog import adapters
from services.watchdog.domain import Evaluation

AUDIT_CONSUMERS: tuple[tuple[subjects.StreamSpec, str], ...] = (
    (subjects.STREAM_ORDERS, "watchdog-audit-orders"),
    (subjects.STREAM_SIGNALS, "watchdog-audit-signals"),
    (subjects.STREAM_CONTROL, "watchdog-audit-control"),
)
DLQ_CONSUMER = "watchdog-dlq"


def audit_handler(ctx: ServiceContext, stream: str) -> Handler:
    """A bus handler that writes every message of `stream` into `audit_events`."""

    async def handle(message: Message, delivery: Delivery) -> None:
        await adapters.write_audit_event(ctx.pool, stream, message, delivery)

    return handle


def dead_letter_handler(ctx: ServiceContext) -> Handler:
    """A bus handler that writes `DeadLettered` messages into `dead_letters`."""

    async def handle(message: Message, delivery: Delivery) -> None:
        if not isinstance(message, DeadLettered):
            raise PermanentError(f"unexpected {type(message).__name__} on the DLQ stream")
        await adapters.write_dead_letter(ctx.pool, message, delivery)

    return handle


class LevelWriteConflict(Exception):
    """Someone else wrote the degradation level since it was read (e.g. an emergency stop)."""


async def apply_evaluation(ctx: ServiceContext, evaluation: Evaluation, *, level_revision: int | None = None) -> None:
    """Publish the transitions of one evaluation and persist health / degradation level.

    The level is written only if the KV entry is still at `level_revision` (None: never set), so
    a HARD_SHUTDOWN written meanwhile by someone else is never overwritten.

    Raises:
        LevelWriteConflict: the level changed under us; evaluate again.
    """
    for change in evaluation.components:
        await ctx.bus.publish(
            subjects.evt_component(change.component),
            ComponentStatusChanged(
                component=change.component,
                previous=change.previous,
                current=change.current,
                reason=change.reason,
                pid=change.pid,
            ),
        )
        ctx.log.info(
            "component_state_changed",
            component=change.component,
            previous=change.previous.value if change.previous else None,
            current=change.current.value,
        )
    for alert in evaluation.alerts:
        if alert.raised:
            await ctx.bus.publish(
                subjects.EVT_ALERT_RAISED,
                AlertRaised(
                    key=alert.key,
                    severity=alert.severity,
                    component=alert.component,
                    title=alert.title,
                    details={"reason": "no heartbeat"},
                ),
            )
            ctx.log.warning("alert_raised", key=alert.key, severity=alert.severity.value)
        else:
            await ctx.bus.publish(
                subjects.EVT_ALERT_RESOLVED, AlertResolved(key=alert.key, component=alert.component, reason=alert.title)
            )
            ctx.log.info("alert_resolved", key=alert.key)
    if evaluation.health_change is not None:
        health = evaluation.health_change
        value = {"health": health.current.value, "reasons": list(health.reasons), "ts_ns": now_ns()}
        await ctx.bus.kv_put(subjects.KEY_HEALTH, msgspec.json.encode(value))
        await ctx.bus.publish(
            subjects.EVT_HEALTH,
            HealthChanged(previous=health.previous, current=health.current, reasons=list(health.reasons)),
        )
        ctx.log.info("health_changed", previous=health.previous, current=health.current.value, reasons=health.reasons)
    if evaluation.level_change is not None:
        change_level = evaluation.level_change
        value = {"level": change_level.current.value, "reason": change_level.reason, "ts_ns": now_ns()}
        kv = await ctx.bus.kv()
        encoded = msgspec.json.encode(value)
        try:
            if level_revision is None:
                await kv.create(subjects.KEY_DEGRADATION_LEVEL, encoded)
            else:
                await kv.update(subjects.KEY_DEGRADATION_LEVEL, encoded, last=level_revision)
        except KeyWrongLastSequenceError as exc:
            raise LevelWriteConflict(str(exc)) from exc
        await ctx.bus.publish(
            subjects.EVT_DEGRADATION,
            DegradationLevelChanged(
                previous=change_level.previous, current=change_level.current, reason=change_level.reason
            ),
        )
        ctx.log.warning(
            "degradation_level_changed",
            previous=change_level.previous,
            current=change_level.current.value,
            reason=change_level.reason,
        )

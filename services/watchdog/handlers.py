"""Message -> effect for the watchdog: audit writer, dead-letter writer (and its retention), the
effects of an evaluation (events on the bus, values in the KV bucket), alerts the watchdog raises
itself, and the alert dispatcher that delivers `evt.alert.>` to the sinks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import msgspec
from nats.js.errors import KeyWrongLastSequenceError

from libs.bus import Delivery, Handler
from libs.clock import Clock
from libs.errors import PermanentError
from libs.runbooks import runbook_url
from libs.runtime.service import ServiceContext
from proto import subjects
from proto.envelope import Message, now_ns
from proto.kv import DegradationLevelValue, HealthValue, encode_value
from proto.messages import (
    AlertRaised,
    AlertResolved,
    ComponentStatusChanged,
    DeadLettered,
    DegradationLevelChanged,
    HealthChanged,
)
from services.watchdog import adapters, alert_lifecycle, alerts
from services.watchdog.alert_lifecycle import AlertCloser, Conditions, Resolution
from services.watchdog.alerts import AlertNotice, AlertRouter
from services.watchdog.evaluator import Evaluation, WatchdogEvaluator


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


RETENTION_PERIOD_S = 3600.0


async def dead_letter_retention_loop(ctx: ServiceContext) -> None:
    """Every hour, delete dead letters older than 30 days (SPEC §6); Postgres down: next hour."""
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


DLQ_DEPTH_PERIOD_S = 15.0
"""How often the DLQ depth metric is refreshed (a Prometheus scrape interval)."""


async def dlq_depth_loop(ctx: ServiceContext, period_s: float = DLQ_DEPTH_PERIOD_S) -> None:
    """Keep `bulwark_dlq_messages` (dead letters not retried, by consumer) current; Postgres down: next period."""
    while True:
        try:
            ctx.metrics.set_dlq_depth(await adapters.dead_letters_waiting(ctx.pool))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - Postgres may be down; the gauge keeps its last value
            ctx.log.debug("dlq_depth_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        await asyncio.sleep(period_s)


async def publish_alert(ctx: ServiceContext, message: AlertRaised | AlertResolved) -> bool:
    """Publish an alert the watchdog raises (or resolves) itself, with its runbook; a failure is
    logged, never raised (False then)."""
    if isinstance(message, AlertRaised) and not message.runbook_url:
        message = msgspec.structs.replace(
            message, runbook_url=runbook_url(message.key, ctx.settings.alert_runbook_base_url)
        )
    try:
        await ctx.bus.publish(
            subjects.EVT_ALERT_RAISED if isinstance(message, AlertRaised) else subjects.EVT_ALERT_RESOLVED, message
        )
    except Exception as exc:  # noqa: BLE001 - logged; the next verification or start tries again
        ctx.log.warning("alert_publish_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        return False
    return True


ALERT_LIFECYCLE_PERIOD_S = 1.0


async def close_alerts(
    ctx: ServiceContext, closer: AlertCloser, router: AlertRouter, evaluator: WatchdogEvaluator, now_ns: int
) -> list[Resolution]:
    """Resolve the open alerts whose condition cleared or that expired (`alert_lifecycle`): publish
    `AlertResolved`, which the alerts consumer delivers to the sinks and the audit log records (so
    the alert leaves `/v1/alerts`). Returns what was resolved."""
    open_now = dict(router.open)  # the alerts consumer changes it meanwhile
    wanted = alert_lifecycle.wanted(open_now.values(), ctx.settings.venue)
    observed = await adapters.read_alert_conditions(ctx.bus, ctx.log, wanted)
    conditions = Conditions(now_ns, evaluator.level, evaluator.condition_keys, **observed)
    resolved = []
    for resolution in closer.resolutions(open_now, conditions):
        message = AlertResolved(key=resolution.key, component=resolution.component, reason=resolution.reason)
        if await publish_alert(ctx, message):
            ctx.log.info("alert_closed", key=resolution.key, reason=resolution.reason)
            resolved.append(resolution)
        else:
            closer.retry(resolution.key)
    return resolved


async def alert_lifecycle_loop(
    ctx: ServiceContext, closer: AlertCloser, router: AlertRouter, evaluator: WatchdogEvaluator, clock: Clock
) -> None:
    """`close_alerts` every `ALERT_LIFECYCLE_PERIOD_S`; a failed round is logged and retried."""
    while True:
        await asyncio.sleep(ALERT_LIFECYCLE_PERIOD_S)
        try:
            await close_alerts(ctx, closer, router, evaluator, clock())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - bus hiccup: the alerts stay open, next round tries again
            ctx.log.warning("alert_close_failed", error=f"{type(exc).__name__}: {exc}"[:300])


class LevelWriteConflict(Exception):
    """Someone else wrote the degradation level since it was read (e.g. an emergency stop)."""


async def apply_evaluation(
    ctx: ServiceContext, evaluation: Evaluation, *, level_revision: int | None = None, checks_changed: bool = False
) -> None:
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
                    details=alert.details,
                    runbook_url=runbook_url(alert.key, ctx.settings.alert_runbook_base_url),
                ),
            )
            ctx.log.warning("alert_raised", key=alert.key, severity=alert.severity.value)
        else:
            await ctx.bus.publish(
                subjects.EVT_ALERT_RESOLVED, AlertResolved(key=alert.key, component=alert.component, reason=alert.title)
            )
            ctx.log.info("alert_resolved", key=alert.key)
    if evaluation.health_change is not None or checks_changed:
        value = HealthValue(
            health=evaluation.health, reasons=list(evaluation.reasons), checks=dict(evaluation.checks), ts_ns=now_ns()
        )
        await ctx.bus.kv_put(subjects.KEY_HEALTH, encode_value(value))
    if evaluation.health_change is not None:
        health = evaluation.health_change
        await ctx.bus.publish(
            subjects.EVT_HEALTH,
            HealthChanged(previous=health.previous, current=health.current, reasons=list(health.reasons)),
        )
        ctx.log.info("health_changed", previous=health.previous, current=health.current.value, reasons=health.reasons)
    if evaluation.level_change is not None:
        change_level = evaluation.level_change
        record = DegradationLevelValue(
            level=change_level.current, reason=change_level.reason, previous=change_level.previous, ts_ns=now_ns()
        )
        kv = await ctx.bus.kv()
        encoded = encode_value(record)
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


# --------------------------------------------------------------------------- alert sinks (§9)


class AlertDispatcher:
    """Delivers every alert on `evt.alert.>` (raised by any service) to the sinks: the log always,
    webhooks when configured; de-duplicated while the alert stays open. A sink that fails or is
    slow is logged and skipped, never retried into a crash loop."""

    def __init__(
        self,
        ctx: ServiceContext,
        sinks: list[adapters.WebhookSink],
        router: AlertRouter | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self._ctx = ctx
        self._sinks = sinks
        self._timeout_s = timeout_s
        self.router = router or AlertRouter(runbook_base_url=ctx.settings.alert_runbook_base_url)
        self._session: aiohttp.ClientSession | None = None
        self.on_applied: Callable[[int], None] | None = None
        """Called with the CONTROL sequence of every alert event handled live (snapshot policy)."""
        self.delivered: list[AlertNotice] = []
        """The last notices delivered (bounded), for tests and diagnostics."""

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def handle(self, message: Message, delivery: Delivery) -> None:
        """Bus handler for the `watchdog-alerts` consumer; never raises for a sink failure."""
        notice = alerts.apply(self.router, message)
        if notice is not None:
            await self.deliver(notice)
        elif isinstance(message, AlertRaised):
            self._ctx.log.debug("alert_deduplicated", key=message.key)
        if self.on_applied is not None:
            self.on_applied(delivery.stream_sequence)

    async def deliver(self, notice: AlertNotice) -> None:
        """Log the alert, then POST it to every webhook sink that wants it."""
        self.delivered = [*self.delivered[-99:], notice]
        log = self._ctx.log.info if notice.resolved else self._ctx.log.warning
        log(
            "alert_resolved_notice" if notice.resolved else "alert_notice",
            key=notice.key,
            severity=str(notice.severity),
            component=notice.component,
            title=notice.title,
            details=notice.details,
            runbook_url=notice.runbook_url,
        )
        for sink in self._sinks:
            if not sink.wants(notice):
                continue
            if self._session is None:
                self._session = aiohttp.ClientSession()
            try:
                status = await adapters.post_alert(self._session, sink, notice, self._timeout_s)
            except adapters.SINK_ERRORS as exc:
                # The URL carries a secret (Slack) and is never logged; the sink name is enough.
                self._ctx.log.warning(
                    "alert_sink_failed",
                    sink=sink.name,
                    key=notice.key,
                    error_type=type(exc).__name__,
                    action_taken="skipped; the alert stays in the log and the audit trail",
                )
                continue
            if status >= 300:
                self._ctx.log.warning("alert_sink_rejected", sink=sink.name, key=notice.key, status=status)

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
from nats.js.errors import NoKeysError

from libs.heartbeat import HeartbeatTracker, expected_components
from libs.runtime.service import ServiceContext, main
from libs.service_snapshots import RecoveryReport, SnapshotKeeper, StreamLog
from libs.settings import Settings
from libs.snapshot import SnapshotPolicy
from proto import subjects
from proto.codec import decode_as
from proto.enums import AlertSeverity, DegradationLevel, Health, HotStateStatus
from proto.envelope import Message
from proto.messages import (
    AlertRaised,
    AlertResolved,
    Heartbeat,
    HotStateRecord,
    LinkStateChanged,
    ProjectionsVerified,
)
from services.watchdog import adapters, handlers, snapshot
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
RETENTION_PERIOD_S = 3600.0
# A Postgres outage must not push audit rows into the DLQ: retry (every <= 5 s) until it is back.
AUDIT_MAX_DELIVER = 1_000_000


async def _read_kv_record(ctx: ServiceContext, key: str) -> tuple[dict[str, Any], int | None]:
    """(the JSON object, revision) of a KV entry; ({}, None) when never set, {} when unreadable."""
    entry = await ctx.bus.kv_get(key)
    if entry is None:
        return {}, None
    raw, revision = entry
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        ctx.log.warning("kv_value_unreadable", key=key)
        return {}, revision
    return (value if isinstance(value, dict) else {}), revision


async def _read_kv_value(ctx: ServiceContext, key: str, field: str) -> tuple[str | None, int | None]:
    """(value[field], revision) of a JSON KV entry; (None, None) when never set."""
    record, revision = await _read_kv_record(ctx, key)
    found = record.get(field)
    return (found if isinstance(found, str) else None), revision


def link_observation(name: str, state: str, reason: Any, causes: Any) -> LinkObservation:
    """A link's state as the evaluator sees it, from an event or a KV record (fields may be missing)."""
    return LinkObservation(
        name,
        state,
        reason if isinstance(reason, str) else "",
        frozenset(str(cause) for cause in causes) if isinstance(causes, list) else frozenset(),
    )


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
        self.links: dict[str, LinkObservation] = {}
        """`<venue>.<link>` -> its last known state."""
        self.latency = LatencyWindow(size=60)

    async def start(self) -> None:
        try:
            kv = await self._ctx.bus.kv()
            for key in await kv.keys():
                if key.startswith("link."):
                    record, _ = await _read_kv_record(self._ctx, key)
                    name = key.removeprefix("link.")
                    if isinstance(record.get("state"), str):
                        self.links[name] = link_observation(
                            name, record["state"], record.get("reason"), record.get("causes")
                        )
        except NoKeysError:
            pass

        async def on_link(msg: Msg) -> None:
            try:
                event = decode_as(msg.data, LinkStateChanged)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._ctx.log.warning("link_event_invalid", subject=msg.subject, error=str(exc)[:200])
                return
            name = f"{event.venue}.{event.link}"
            self.links[name] = link_observation(name, event.current.value, event.reason, event.causes)

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
            found.append(SymbolObservation(symbol, record.status.value, age_ms, record.stale_since_ns))
        return found

    def link_observations(self) -> list[LinkObservation]:
        return [self.links[name] for name in sorted(self.links)]

    def latencies(self, views: dict[str, Any]) -> list[LatencyObservation]:
        own = self.latency.observation(f"{subjects.STATE_BUILDER}-query")
        return [*latencies_from_views(views), *([own] if own is not None else [])]


class WatchdogMemory:
    """The watchdog's snapshot (SPEC §8): recovery at start, captures while running, and the periodic
    full-replay verification of the projections.

    Args:
        ctx: the service context.
        evaluator: rule timers and open alerts to restore and capture.
        dispatcher: its router holds the sinks' open alerts (rebuilt from CONTROL `evt.alert.>`).
        observer: its latency baseline survives a restart.
        keeper: the snapshot store.
    """

    def __init__(
        self,
        ctx: ServiceContext,
        evaluator: WatchdogEvaluator,
        dispatcher: handlers.AlertDispatcher,
        observer: Observer,
        keeper: SnapshotKeeper[snapshot.WatchdogSnapshot],
    ) -> None:
        self._ctx = ctx
        self._evaluator = evaluator
        self._dispatcher = dispatcher
        self._observer = observer
        self._keeper = keeper
        self._policy = SnapshotPolicy(
            clock=time.time_ns,
            interval_ns=int(ctx.settings.snapshot_interval_s * 1e9),
            every_events=ctx.settings.snapshot_every_events,
        )
        self.control_seq = 0
        """CONTROL sequence the open alerts reflect (replay, then the live alerts consumer)."""
        self.consumer_created = False
        self.last_verification: dict[str, Any] | None = None
        self.verifications = 0

    def details(self) -> dict[str, Any]:
        return {
            "control_seq": self.control_seq,
            "open_alerts": len(self._dispatcher.router.open),
            "open_keys": sorted(self._dispatcher.router.open)[:50],
            "delivered": [notice.key for notice in self._dispatcher.delivered[-20:]],
            "last_verification": self.last_verification,
        }

    async def recover(self, control: StreamLog[snapshot.WatchdogSnapshot]) -> RecoveryReport:
        """Latest valid snapshot, then the alerts after it up to what the alerts consumer acknowledged.

        Without a snapshot (none, corrupt, Postgres down) every alert on the CONTROL stream is
        replayed: the log is the source of truth; rule timers then start over.
        """
        log = self._ctx.log
        loaded = await control.load_snapshot()
        if loaded.corrupt:
            await self._publish_alert(
                AlertRaised(
                    key=f"snapshot-corrupt.{subjects.WATCHDOG}",
                    severity=AlertSeverity.P1,
                    component=subjects.WATCHDOG,
                    title="corrupt watchdog snapshot skipped (FM-C3); recovered from an older one or a full replay",
                    details={"snapshots": list(loaded.corrupt[:10])},
                )
            )
        if not loaded.available:
            log.warning("snapshot_store_unavailable_at_start", action_taken="full replay of the alerts on CONTROL")
        first, last = await control.bounds()
        processed = await control.processed_through()
        self.consumer_created = processed is None
        end = last if processed is None else min(processed, last)
        state = loaded.state
        mode, start = "full-replay", max(first, 1)
        if state is not None and first - 1 <= state.control_seq <= last:
            self._evaluator.restore_state(state.evaluator)
            self._dispatcher.router.open = {notice.key: notice for notice in state.open_alerts}
            if state.latency_baseline_ms is not None:
                self._observer.latency.baseline_ms = state.latency_baseline_ms
            self.last_verification = state.last_verification
            mode, start = "snapshot", state.control_seq + 1
        elif state is not None:
            log.warning(
                "recovery_snapshot_outside_stream",
                snapshot_seq=state.control_seq,
                stream_first_seq=first,
                stream_last_seq=last,
                action_taken="full replay",
            )

        def apply(message: Message, stream_seq: int) -> None:
            self._dispatcher.apply(message)  # rebuild only: these were delivered before

        replayed = await control.replay(start, end, apply) if last and end >= start else 0
        self.control_seq = end
        report = RecoveryReport(
            mode=mode,
            snapshot_seq=state.control_seq if mode == "snapshot" and state is not None else None,
            replayed=replayed,
            live_from=end + 1,
            corrupt_snapshots=len(loaded.corrupt),
            snapshot_store="available" if loaded.available else "unavailable",
        )
        log.info(
            "recovery_replayed",
            **report.as_dict(),
            open_alerts=sorted(self._dispatcher.router.open),
            consumer_processed_through=processed,
        )
        return report

    def capture(self) -> snapshot.WatchdogSnapshot:
        return snapshot.WatchdogSnapshot(
            control_seq=self.control_seq,
            taken_ns=time.time_ns(),
            evaluator=self._evaluator.export_state(),
            open_alerts=list(self._dispatcher.router.open.values()),
            latency_baseline_ms=self._observer.latency.baseline_ms,
            last_verification=self.last_verification,
        )

    def _record(self) -> None:
        if self._policy.record():
            self._policy.taken()
            self._keeper.submit(self.control_seq, self.capture())

    def alert_applied(self, stream_seq: int) -> None:
        """The alerts consumer handled CONTROL message `stream_seq`."""
        self.control_seq = max(self.control_seq, stream_seq)
        self._record()

    def evaluated(self) -> None:
        """One evaluation ran (rule timers moved): counts towards the next snapshot."""
        self._record()

    async def _publish_alert(self, message: Message) -> None:
        try:
            await self._ctx.bus.publish(
                subjects.EVT_ALERT_RAISED if isinstance(message, AlertRaised) else subjects.EVT_ALERT_RESOLVED, message
            )
        except Exception as exc:  # noqa: BLE001 - logged; the next verification or start tries again
            self._ctx.log.warning("alert_publish_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    async def _background_paused(self) -> bool:
        """CB-4: risk paused background work (KV `background_work`)."""
        entry = await self._ctx.bus.kv_get(subjects.KEY_BACKGROUND_WORK)
        if entry is None:
            return False
        try:
            value = msgspec.json.decode(entry[0])
        except msgspec.DecodeError:
            return False
        return bool(value.get("paused")) if isinstance(value, dict) else False

    async def verify_once(self) -> ProjectionsVerified:
        """Rebuild the projections from the ORDERS stream and compare (`libs.projections.verify`); publish
        the outcome, raise `projections-diverged` on a difference, resolve it once consistent again."""
        ctx = self._ctx
        result = await snapshot.verify_projections(ctx.bus, ctx.settings.pg_dsn)
        self.verifications += 1
        self.last_verification = {
            "outcome": result.outcome,
            "ts_ns": result.ts_event_ns,
            "events": result.events,
            "differences": dict(result.differences),
        }
        await ctx.bus.publish(subjects.EVT_PROJECTIONS_VERIFIED, result)
        match result.outcome:
            case "diverged":
                ctx.log.error(
                    "projections_diverged",
                    differences=dict(result.differences),
                    sample=result.sample,
                    action_taken="alert raised; `bulwark projections rebuild --apply` after a review",
                )
                await self._publish_alert(
                    AlertRaised(
                        key=snapshot.PROJECTIONS_ALERT,
                        severity=AlertSeverity.P1,
                        component=subjects.WATCHDOG,
                        title="projections differ from what the ORDERS log rebuilds (FM-C3)",
                        details={"differences": dict(result.differences), "sample": result.sample},
                    )
                )
            case "consistent":
                ctx.log.info("projections_verified", events=result.events, duration_ms=result.duration_ms)
                if snapshot.PROJECTIONS_ALERT in self._dispatcher.router.open:
                    await self._publish_alert(
                        AlertResolved(
                            key=snapshot.PROJECTIONS_ALERT,
                            component=subjects.WATCHDOG,
                            reason="projections rebuilt from the log equal the live tables again",
                        )
                    )
            case _:
                ctx.log.warning("projections_verification_failed", error=result.error, action_taken="retry next period")
        return result

    async def verification_loop(self, interval_s: float) -> None:
        """SPEC §8 "a periodic full replay verifies that the log rebuilds the same state" (0: off)."""
        if interval_s <= 0:
            return
        while True:
            await asyncio.sleep(interval_s)
            try:
                if await self._background_paused():
                    self._ctx.log.info("projections_verification_skipped", reason="background work paused (CB-4)")
                    continue
                await self.verify_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - bus hiccup: logged, next period tries again
                self._ctx.log.warning("projections_verification_failed", error=f"{type(exc).__name__}: {exc}"[:300])


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
                memory.evaluated()
            except asyncio.CancelledError:
                raise
            except handlers.LevelWriteConflict as exc:
                ctx.log.warning("degradation_level_conflict", error=str(exc)[:200], action_taken="re-evaluate")
                evaluator.forget_level()
            except Exception as exc:
                ctx.log.exception("evaluation_failed", exc, action_taken="retry next period")

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

    keeper = snapshot.snapshot_keeper(settings.pg_dsn, ctx.log)
    ctx.cleanups.append(keeper.close)
    memory = WatchdogMemory(ctx, evaluator, dispatcher, observer, keeper)
    control = snapshot.control_log(ctx.bus, keeper, handlers.ALERTS_CONSUMER)
    report = await memory.recover(control)
    dispatcher.on_applied = memory.alert_applied
    ctx.details = lambda: {"recovery": report.as_dict(), "snapshots": keeper.stats(), **memory.details()}
    # Alerts already delivered before a restart are open in the rebuilt router: not paged again.
    await ctx.bus.consume(
        stream=subjects.STREAM_CONTROL.name,
        durable=handlers.ALERTS_CONSUMER,
        filter_subjects=[f"{EVT_ALERT_PREFIX}>"],
        handler=dispatcher.handle,
        max_deliver=AUDIT_MAX_DELIVER,
        # First start: from the end of what was replayed (a new deployment does not page for history).
        start_sequence=report.live_from if memory.consumer_created else None,
    )
    # Evaluations start only now: on the restored rule timers and open alerts (SPEC §8).
    ctx.spawn(evaluation_loop(), "evaluation")
    ctx.spawn(memory.verification_loop(settings.watchdog_verify_interval_s), "projections-verification")

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

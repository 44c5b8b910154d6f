"""What every part of the position service shares: its dependencies, the ledger, the order lock,
the service's modes (reconciled, order link, lease, user stream, HARD_SHUTDOWN, flatten mode) and
the effects all parts use: publish on ORDERS, the projection writes (deferred while Postgres is
down, FM-C3), the order state-machine decide step (`allows`) and its record (publish, `Ledger.apply`,
project), alerts, the lease guard before a venue write and the
order link state (FM-N5, FM-N6).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from libs.binance.preflight import PreflightReport
from libs.bus import Bus
from libs.clock import Clock
from libs.lease import Lease, LeaseLost
from libs.logging import Logger
from libs.orders_model import IllegalOrderTransition, OrderRecord, OrderTrigger, next_order_status
from libs.projections import Projections
from libs.snapshot import SnapshotPolicy
from libs.stamping import IdSource, Stamper
from proto import subjects
from proto.enums import AlertSeverity, ConnectionState, DegradationLevel, OrderStatus
from proto.envelope import Message, new_message_id
from proto.kv import DegradationLevelValue, LinkValue, decode_value, encode_value
from proto.messages import AlertRaised, AlertResolved, LinkStateChanged

from .domain import CountdownPlanner, Retention
from .ledger import Ledger
from .preflight_gate import PreflightGate
from .projection_writes import ProjectionWrites
from .trigger_watch import TriggerWatch
from .venue_port import VenuePort

FLATTEN_LEVELS = frozenset({DegradationLevel.EMERGENCY_MODE, DegradationLevel.HARD_SHUTDOWN})


class Core:
    """The shared state and effects of one position process (see the module docstring).

    Args:
        bus: the message bus.
        log: structured logger.
        projections: Postgres projections.
        client: the venue port (a `VenueLink`, or a fake with the same methods).
        venue: venue name used in subjects; only this venue's orders are this service's.
        clock: wall clock in ns.
        component: this process's component name (`subjects.position_component`).
        symbols: traded symbols (reconciliation scope).
        countdown: the FM-N8 auto-cancel countdown planner.
        lease: the single-writer lease (SPEC §8); checked right before every venue write (None: no check).
        on_lease_lost: called once when a venue write finds the lease gone.
        snapshot_policy: counts the ORDERS events this service publishes (None: no snapshots).
        retention: how many finished orders stay in memory and in snapshots.
        message_ids: the id source of the messages it builds (`stamp`); tests pass `sequential_ids`.
    """

    def __init__(
        self,
        bus: Bus,
        log: Logger,
        projections: Projections,
        client: VenuePort,
        venue: str,
        clock: Clock,
        *,
        component: str,
        symbols: Sequence[str],
        countdown: CountdownPlanner,
        lease: Lease | None,
        on_lease_lost: Callable[[], None] | None,
        snapshot_policy: SnapshotPolicy | None,
        retention: Retention,
        message_ids: IdSource = new_message_id,
    ) -> None:
        self.bus = bus
        self.log = log
        self.projections = projections
        self.client = client
        self.venue = venue
        self.clock = clock
        self.stamp = Stamper(clock, message_ids)
        """Builds the messages this service publishes: ids and times from `clock` and `message_ids`."""
        self.component = component
        self.symbols = tuple(symbols)
        self.countdown = countdown
        self.lease = lease
        self.on_lease_lost = on_lease_lost
        self.snapshot_policy = snapshot_policy
        self.retention = retention
        self.ledger = Ledger(venue)
        self.lock = asyncio.Lock()
        """All order work runs under it, so a poll never races a submission of the same order."""
        self.wake = asyncio.Event()
        """Set to run the supervision round at once (a user-stream (re)connect)."""
        self.reconciled = False
        self.link_state = ConnectionState.CONNECTED
        self.link_announced = False
        """Has this process published its order link state yet? The first reconciliation does, even
        when the state did not change: KV may hold a previous process's DISCONNECTED, and risk routes
        by it (FM-N6)."""
        self.hard_shutdown = False
        self.user_stream_up = False
        self.lease_lost = False
        self.degradation: DegradationLevel | None = None
        self.flatten_since: int | None = None
        self.flatten_key = ""
        self.protect_dirty: set[str] = set()
        """Symbols whose protective orders must be checked against their position again."""
        self.preflight_gate = PreflightGate()
        """Entries wait for the venue preflight of each connection of the order link (issue 18)."""
        self.triggers = TriggerWatch()
        """Conditional orders seen triggered at the venue without their MARKET order (`stuck_triggers`)."""
        self.projection_writes = ProjectionWrites(bus, log, component, self._projection_row)
        """Projection writes that failed, in order (FM-C3); refused rows go to the DLQ."""

    # ------------------------------------------------------------------ modes

    def may_submit(self) -> bool:
        """Orders go to the venue only when the link is up, reconciled, and the lease is held.

        In EMERGENCY_MODE / HARD_SHUTDOWN (`flattening`) only reduce-only orders are sent.
        """
        return self.reconciled and self.link_state == ConnectionState.CONNECTED and not self.lease_lost

    def preflight_settled(self, report: PreflightReport) -> None:
        """A venue preflight finished: the gate takes its verdict for the current connection (one that
        went down meanwhile is checked again at its reconnect), and the poll runs at once."""
        if self.link_state != ConnectionState.CONNECTED:
            return
        self.preflight_gate.settle(report.ok, report.reachable, report.reason())
        self.log.info("preflight_gate", **self.preflight_gate.fields())
        self.wake.set()

    def flattening(self) -> bool:
        """SPEC §5 EMERGENCY_MODE or HARD_SHUTDOWN (operator's or our own invariant violation):
        close every position, no new entries."""
        return self.flatten_since is not None

    async def read_level(self) -> tuple[DegradationLevel | None, int]:
        """(level, ts_ns) of KV `degradation_level` (None when absent or unreadable)."""
        entry = await self.bus.kv_get(subjects.KEY_DEGRADATION_LEVEL)
        value = decode_value(DegradationLevelValue, entry[0] if entry is not None else None)
        if value is None:
            return None, 0
        return value.level, value.ts_ns

    async def refresh_degradation(self) -> None:
        """Follow the degradation level: entering EMERGENCY_MODE/HARD_SHUTDOWN starts flattening."""
        level, ts_ns = await self.read_level()
        self.degradation = level
        flatten = level in FLATTEN_LEVELS or self.hard_shutdown
        if flatten and self.flatten_since is None:
            self.flatten_since = self.clock()
            self.flatten_key = str(ts_ns or self.flatten_since)
            self.log.error(
                "flatten_mode_entered",
                level=level.value if level else None,
                hard_shutdown=self.hard_shutdown,
                action_taken="cancel entries, flatten at market (reduce-only), stops kept until flat",
            )
        elif not flatten and self.flatten_since is not None:
            self.flatten_since = None
            self.log.warning("flatten_mode_left", level=level.value if level else None)

    # ------------------------------------------------------------------ effects

    async def guard(self) -> None:
        """Right before a venue write: do we still hold the single-writer lease? (SPEC §8)

        Raises:
            LeaseLost: another instance holds it; nothing may be written any more.
        """
        if self.lease is None:
            return
        try:
            await self.lease.ensure_held()
        except LeaseLost:
            if not self.lease_lost:
                self.lease_lost = True
                self.log.error("lease_lost", lease=self.lease.name, action_taken="stop writing to the venue, stop")
                if self.on_lease_lost is not None:
                    self.on_lease_lost()
            raise

    async def publish(self, subject: str, message: Message, msg_id: str, coid: str | None = None) -> int:
        """Publish on the bus (de-duplicated by `msg_id`); an event about order `coid` is noted in the ledger."""
        seq = await self.bus.publish(subject, message, msg_id=msg_id)
        if coid is not None:
            self.ledger.published(coid, seq)
        if self.snapshot_policy is not None:
            self.snapshot_policy.record()
        return seq

    async def publish_status(
        self, order: OrderRecord, event: str, kind: type[Message], reason: str | None = None, **fields: Any
    ) -> int:
        """Record a status change no other event records (a cancel requested, an order queued, an
        order open again after a cancel that did not take, a resend) as the replay folds it:
        published, applied by `Ledger.apply` (`libs.orders_model.event_trigger`), projected
        (`record`). De-duplicated per order and per newest event of it: a retry publishes once, a
        later change of the same kind again."""
        coid = order.client_order_id
        named = {"reason": reason} if reason is not None else {}
        message = self.stamp(kind, client_order_id=coid, symbol=order.symbol, **named, **fields)
        msg_id = f"{event}:{coid}:{self.ledger.order_seq.get(coid, 0)}"
        return await self.record(self.order_subject(event, order), message, msg_id, order)

    def order_subject(self, event: str, order: OrderRecord) -> str:
        """`evt.order.<event>.<venue>.<symbol>` of an order."""
        return subjects.evt_order(event, order.venue, order.symbol)

    async def save(self, order: OrderRecord) -> None:
        """Write the order's projection row; with Postgres down the write is deferred (FM-C3).

        The event log is the source of truth and the order is already on it: a projection outage
        must not keep an order from the venue. Deferred rows are written by `flush_projections`;
        a row Postgres refuses is dead-lettered (`projection_writes`).
        """
        coid = order.client_order_id
        self.ledger.changed.add(coid)

        async def write_now() -> None:
            await self.projections.upsert_order(order, self.ledger.order_seq.get(coid, 0))

        await self.projection_writes.write(f"order:{coid}", write_now, self._save_later(coid))

    def _save_later(self, coid: str) -> Callable[[], Awaitable[None]]:
        async def write_row() -> None:
            order = self.ledger.orders.get(coid)  # the newest state; an evicted order was final when it left
            if order is not None:
                await self.projections.upsert_order(order, self.ledger.order_seq.get(coid, 0))

        return write_row

    def _projection_row(self, key: str) -> OrderRecord | None:
        """The in-memory order behind a projection row key (`order:<coid>`, `fill:<coid>:<trade id>`)."""
        parts = key.split(":")
        return self.ledger.orders.get(parts[1]) if len(parts) > 1 else None

    def defer(self, key: str, write_row: Callable[[], Awaitable[None]], exc: BaseException) -> None:
        """Keep a projection write that failed for `flush_projections` (one per key, oldest first)."""
        self.projection_writes.defer(key, write_row, exc)

    async def flush_projections(self) -> int:
        """Write the deferred projection rows, oldest first; a refused row is dead-lettered, an
        outage stops the round (0: none written)."""
        return await self.projection_writes.flush()

    def allows(self, order: OrderRecord, trigger: OrderTrigger) -> OrderStatus | None:
        """The status `trigger` would move the order to now, or None when it is illegal (logged with
        the evidence; the order is left as is). The decide step: nothing changes here."""
        try:
            return next_order_status(order.status, trigger)
        except IllegalOrderTransition as exc:
            self.log.error(
                "illegal_order_transition",
                client_order_id=order.client_order_id,
                status=order.status.value,
                trigger=trigger.value,
                error=str(exc),
                action_taken="order state kept",
            )
            return None

    async def record(self, subject: str, event: Message, msg_id: str, order: OrderRecord) -> int:
        """Publish an event about `order`, then fold it into the ledger with `Ledger.apply` (what a
        replay of the log does with it), then write the order's projection row.

        Returns:
            The event's ORDERS stream sequence.
        """
        previous = order.status
        seq = await self.publish(subject, event, msg_id, order.client_order_id)
        self.ledger.apply(event, seq)
        self._status_changed(order, previous)
        await self.save(order)
        return seq

    def _status_changed(self, order: OrderRecord, previous: OrderStatus) -> None:
        if order.status != previous:
            self.log.info(
                "order_status_changed",
                client_order_id=order.client_order_id,
                previous=previous.value,
                current=order.status.value,
            )

    async def alert(self, key: str, severity: AlertSeverity, title: str, **details: Any) -> None:
        """Raise an alert of this component."""
        self.log.warning("alert_raised", key=key, severity=severity.value, title=title, **details)
        alert = self.stamp(
            AlertRaised, key=key, severity=severity, component=self.component, title=title, details=details
        )
        await self.bus.publish(subjects.EVT_ALERT_RAISED, alert)

    async def resolve_alert(self, key: str, reason: str) -> None:
        """Resolve an alert of this component."""
        self.log.info("alert_resolved", key=key, reason=reason)
        await self.bus.publish(
            subjects.EVT_ALERT_RESOLVED, self.stamp(AlertResolved, key=key, component=self.component, reason=reason)
        )

    def scoped(self, key: str) -> str:
        """An alert key of this process: as it always was on the main venue, `<key>@<venue>` on a
        backup venue (two venues' alerts about one symbol are two alerts)."""
        return key if self.component == subjects.POSITION else f"{key}@{self.venue}"

    async def set_link(self, state: ConnectionState, reason: str) -> None:
        """Publish the order link's state (event and KV, FM-N6); any state but CONNECTED unreconciles."""
        if state == self.link_state and self.link_announced:
            return
        self.link_announced = True
        previous, self.link_state = self.link_state, state
        if state != ConnectionState.CONNECTED:
            # Whatever happened at the venue meanwhile is unknown until reconciled (SPEC §6).
            self.reconciled = False
            self.countdown.forget()
            self.preflight_gate.link_down()
        event = self.stamp(
            LinkStateChanged,
            venue=self.venue,
            link=subjects.ORDER_LINK,
            previous=previous,
            current=state,
            reason=reason,
            symbols=[],
        )
        if previous == state:
            self.log.info("link_state_announced", link=subjects.ORDER_LINK, current=state.value, reason=reason)
        else:
            self.log.warning(
                "link_state_changed", link=subjects.ORDER_LINK, previous=previous.value, current=state.value
            )
        await self.bus.publish(subjects.evt_link(self.venue, subjects.ORDER_LINK), event)
        value = LinkValue(state=state, reason=reason, ts_ns=event.ts_event_ns)
        await self.bus.kv_put(subjects.key_link(self.venue, subjects.ORDER_LINK), encode_value(value))
        key = f"venue-order-link:{self.venue}"
        if state == ConnectionState.CONNECTED:
            await self.resolve_alert(key, "venue reachable and reconciled")
        else:
            await self.alert(
                key, AlertSeverity.P1, "venue order link down: orders are queued, nothing is sent", reason=reason
            )

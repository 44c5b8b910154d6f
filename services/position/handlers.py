"""position's handlers: approved orders to the venue, denials, cancels, the user-data stream,
polling, reconciliation, the venue link and the dead-man's switch.

All order work runs under one lock, so a poll never races a submission of the same order.
Every state change is published on the ORDERS stream before (or together with) its projection
write; the venue is only called after the `OrderSubmitted` event is durable. While the venue link
is down (breaker open) or not reconciled, orders wait as PENDING_SUBMISSION and nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, NotFoundError

from libs.binance.classify import classify
from libs.binance.endpoints import EndpointRotation
from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from libs.breaker import BreakerOpen, BreakerState, BreakerTransition
from libs.bus import Bus, Delivery
from libs.errors import TransientError
from libs.ids import client_order_id_for
from libs.lease import Lease, LeaseLost
from libs.logging import Logger
from libs.orders_model import (
    IllegalOrderTransition,
    OrderRecord,
    OrderTrigger,
    Position,
    apply_fill,
    is_terminal,
    record_from_command,
    venue_trigger,
)
from libs.projections import Folded, Projections, fold_events, read_orders_stream, write
from libs.reconnect import reconnect_delay_s
from libs.service_snapshots import PG_ERRORS
from libs.snapshot import SnapshotPolicy, SnapshotStore
from proto import subjects
from proto.codec import encode
from proto.enums import (
    AlertSeverity,
    ConnectionState,
    DegradationLevel,
    ErrorClass,
    OrderSource,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from proto.envelope import Message
from proto.messages import (
    AlertRaised,
    AlertResolved,
    CancelOrder,
    DeadLettered,
    DegradationLevelChanged,
    LinkStateChanged,
    OrderAccepted,
    OrderApproved,
    OrderCanceled,
    OrderDenied,
    OrderFilled,
    OrderRejected,
    OrderStatusUnknown,
    OrderSubmitted,
    PositionChanged,
    SubmitOrder,
)

from .adapters import VENUE_FAILURES, covered_sequence, submit_is_ambiguous
from .domain import (
    IMMEDIATE_TRIGGER_REASON,
    PROTECT_CLOSE_PREFIX,
    PROTECT_PREFIX,
    SNAPSHOT_VERSION,
    CountdownPlanner,
    PositionCheckpoint,
    Protection,
    ProtectiveOrder,
    Retention,
    checkpoint_problem,
    decode_checkpoint,
    evictable_orders,
    flatten_stem,
    fold_evicted,
    is_protective,
    of_venue,
    order_invariant_violations,
    pinned_orders,
    plan_protection,
    plan_reconciliation,
    position_baselines,
    position_invariant_violations,
    protective_orders,
)

Clock = Callable[[], int]

ORDER_NOT_FOUND = -2013
UNKNOWN_ORDER_ON_CANCEL = -2011
DUPLICATE_CLIENT_ORDER_ID = -4116
QUEUE_HOLD_S = 2.0
"""A poll sends queued orders while the request budget holds them back no longer than this (the
client's own wait for the budget); a longer hold (a Retry-After, a ban) waits for a later poll."""
WOULD_TRIGGER_IMMEDIATELY = -2021
"""Binance: a STOP_MARKET / TAKE_PROFIT_MARKET whose stop price the mark price has already passed."""
APPROVAL_CLOCK_MARGIN_NS = 5_000_000_000
"""Clock difference tolerated between risk (stamps approvals) and this service (stamps orders) when
deciding from memory alone that an approval was never handled (SPEC FM-D3 alerts above 1 s)."""
QUERY_BACKOFF_S: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0)
VENUE_LIVE = frozenset({OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED, OrderStatus.PENDING_CANCEL})
MAYBE_AT_VENUE = VENUE_LIVE | {OrderStatus.SUBMITTED, OrderStatus.UNKNOWN}
ORDER_LINK = "orders"
"""Link name of the position service's REST link to the venue (`evt.link.<venue>.orders`)."""
ORDERS_DURABLE = "position-orders"
"""The main venue's approvals consumer (`orders_durable(subjects.POSITION)`)."""
DENIALS_DURABLE = "position-denials"
CANCEL_WAIT_S = 30.0
"""How long a cancel of an order not known here waits for this venue's approvals consumer to get
past it (its approval may still be pending there) before it is taken as another venue's."""
CANCEL_DELIVERIES = 12
"""Deliveries of a cancel before it is dead-lettered (or, waiting for approvals, decided): the bus's
nak delays (0.2 s doubling, at most 5 s) add up to about `CANCEL_WAIT_S` over them."""
FLATTEN_LEVELS = frozenset({DegradationLevel.EMERGENCY_MODE, DegradationLevel.HARD_SHUTDOWN})
FLATTEN_GRACE_NS = 3_000_000_000
"""Risk's own flatten goes first; after this, positions the venue still shows are closed here."""
LISTEN_KEY_KEEPALIVE_NS = 30 * 60 * 1_000_000_000
ALL_SYMBOLS_OPEN_ORDERS_WEIGHT = 40
"""Weight of `GET /fapi/v1/openOrders` without a symbol; one symbol's costs 1."""


def orders_durable(component: str) -> str:
    """Durable consumer of the approvals of a position process (`position-orders` on the main venue)."""
    return f"{component}-orders"


def denials_durable(component: str) -> str:
    """Durable consumer of the denials of a position process (`position-denials` on the main venue)."""
    return f"{component}-denials"


def cancels_durable(component: str) -> str:
    """Durable consumer of the cancels of a position process (`position-cancels` on the main venue)."""
    return f"{component}-cancels"


def countdown_symbols(orders: Iterable[OrderRecord]) -> set[str]:
    """Symbols whose venue auto-cancel countdown (FM-N8) should be armed.

    countdownCancelAll cancels *every* open order of a symbol, protective stops included. Stops
    must outlive this service (FM-C2), so a symbol with a live protective order is never armed
    (and is disarmed): its other open orders then survive a dead service (they are reconciled at
    restart) rather than leaving the position without its stop. Symbols with only non-protective
    live orders are armed.
    """
    entries: set[str] = set()
    protected: set[str] = set()
    for order in orders:
        if order.status in MAYBE_AT_VENUE:
            (protected if is_protective(order) else entries).add(order.symbol)
    return entries - protected


class RecoveryReport(msgspec.Struct, frozen=True):
    """How the position service rebuilt its state at start (heartbeat `recovery`, log `position_recovered`)."""

    mode: str
    """`snapshot` (latest valid snapshot + tail), `replay` (the whole ORDERS stream) or `projections`."""
    snapshot_seq: int | None
    replayed: int
    """ORDERS messages folded after the snapshot (all of them in `replay` mode): bounded by the policy."""
    corrupt_snapshots: int
    covered_seq: int
    positions: dict[str, str] = {}
    """Positions as recovered, before reconciliation with the venue corrected anything."""
    orders_loaded: int = 0
    """Orders kept in memory after recovery: live ones plus finished ones within the retention (bounded)."""
    orders_evicted: int = 0
    """Finished orders the recovery found beyond the retention and left out of memory."""


def order_params(order: OrderRecord) -> dict[str, str]:
    """Binance `POST /fapi/v1/order` parameters of an order (client order id included)."""
    params = {
        "symbol": order.symbol,
        "side": order.side.value,
        "type": order.order_type.value,
        "quantity": str(order.quantity),
        "newClientOrderId": order.client_order_id,
        "newOrderRespType": "RESULT",
    }
    if order.price is not None:
        params["price"] = str(order.price)
    if order.stop_price is not None:
        params["stopPrice"] = str(order.stop_price)
    if order.order_type == OrderType.LIMIT:
        params["timeInForce"] = order.time_in_force or "GTC"
    if order.reduce_only:
        params["reduceOnly"] = "true"
    return params


def command_from_record(order: OrderRecord) -> SubmitOrder:
    """The `SubmitOrder` an order came from (for dead letters an operator can inspect and retry)."""
    return SubmitOrder(
        client_order_id=order.client_order_id,
        idempotency_key=order.idempotency_key,
        source=order.source,
        symbol=order.symbol,
        side=order.side,
        order_type=order.order_type,
        quantity=order.quantity,
        venue=order.venue,
        price=order.price,
        stop_price=order.stop_price,
        reduce_only=order.reduce_only,
        time_in_force=TimeInForce(order.time_in_force)
        if order.time_in_force is not None and order.time_in_force in TimeInForce.__members__
        else None,
        strategy=order.strategy,
    )


def trade_from_user_event(update: dict) -> dict:
    """An `ORDER_TRADE_UPDATE` execution (`o` object) as a `userTrades` row."""
    return {
        "id": update["t"],
        "orderId": update["i"],
        "qty": update["l"],
        "price": update["L"],
        "commission": update.get("n", "0"),
        "realizedPnl": update.get("rp", "0"),
        "time": update.get("T", 0),
    }


class PositionService:
    """Orders, fills and positions of one venue; the only component that writes to it.

    Args:
        bus: the message bus.
        log: structured logger.
        projections: Postgres projections.
        client: the venue (a `VenueLink`, or a fake with the same methods).
        venue: venue name used in subjects; only this venue's orders are this service's.
        clock: wall clock in ns (handlers only; domain code gets times passed in).
        component: this process's component name (`subjects.position_component`): it names the
            durable consumers, the snapshots, alerts and the keys of the orders it names itself.
        symbols: traded symbols (reconciliation scope).
        countdown_ms: venue auto-cancel countdown kept armed per symbol with live orders (0: off).
        countdown_refresh_s: re-arm period of that countdown.
        safety_poll_s: period of the live-order poll while the user-data stream delivers updates.
        lease: the single-writer lease (SPEC §8); checked right before every venue write (None: no check).
        on_lease_lost: called once when a venue write finds the lease gone (the service stops writing).
        snapshots: where snapshots go (None: never snapshot, recover by folding the whole log).
        snapshot_policy: when to snapshot (counted in ORDERS events this service publishes; the
            stream growing by `every_events` messages from any writer also makes one due).
        retention: how many finished orders stay in memory and in snapshots (default `Retention()`).
    """

    def __init__(
        self,
        bus: Bus,
        log: Logger,
        projections: Projections,
        client: Any,
        venue: str,
        clock: Clock,
        *,
        component: str = subjects.POSITION,
        symbols: Sequence[str] = (),
        countdown_ms: int = 0,
        countdown_refresh_s: float = 20.0,
        safety_poll_s: float = 5.0,
        lease: Lease | None = None,
        on_lease_lost: Callable[[], None] | None = None,
        snapshots: SnapshotStore | None = None,
        snapshot_policy: SnapshotPolicy | None = None,
        retention: Retention | None = None,
    ) -> None:
        self.bus = bus
        self.log = log
        self.projections = projections
        self.client = client
        self.venue = venue
        self.clock = clock
        self.component = component
        self.orders_durable = orders_durable(component)
        self.denials_durable = denials_durable(component)
        self.symbols = tuple(symbols)
        self.orders: dict[str, OrderRecord] = {}
        self.positions: dict[str, Position] = {}
        self.baselines: dict[str, Decimal] = {}
        self.reconciled = False
        self.link_state = ConnectionState.CONNECTED
        self._link_announced = False
        """Has this process published its order link state yet? The first reconciliation does, even
        when the state did not change: KV may hold a previous process's DISCONNECTED, and risk routes
        by it (FM-N6)."""
        self.hard_shutdown = False
        self.user_stream_up = False
        self.reconciliations = 0
        self.query_backoff_s: Sequence[float] = QUERY_BACKOFF_S
        self.countdown = CountdownPlanner(countdown_ms, int(countdown_refresh_s * 1e9))
        self.safety_poll_ns = int(safety_poll_s * 1e9)
        self._last_follow_ns = 0
        self._last_keepalive_ns = 0
        self._seq: dict[str, int] = {}
        self._position_seq = 0
        self._lock = asyncio.Lock()
        self.lease = lease
        self.on_lease_lost = on_lease_lost
        self.lease_lost = False
        self.protections: dict[str, Protection] = {}
        self._protect_dirty: set[str] = set()
        self._protect_given_up: set[str] = set()
        self._position_seqs: dict[str, int] = {}
        self.degradation: DegradationLevel | None = None
        self._flatten_since: int | None = None
        self._flatten_key = ""
        self.snapshots = snapshots
        self.snapshot_policy = snapshot_policy
        self.snapshots_saved = 0
        self.snapshots_failed = 0
        self.last_snapshot_seq: int | None = None
        self.recovery: RecoveryReport | None = None
        self.retention = retention or Retention()
        self.evicted_until_ns = 0
        """Newest `updated_ns` of an order that left memory: approvals newer than this are decided from memory."""
        self.orders_evicted = 0
        self._changed: set[str] = set()
        self._deferred: dict[str, Callable[[], Awaitable[None]]] = {}
        """Projection writes that failed while Postgres was down, in order (FM-C3)."""
        self._snapshot_stream_mark = 0
        self._snapshot_lowered = False
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ helpers

    def details(self) -> dict[str, Any]:
        """Heartbeat details."""
        open_count = sum(1 for order in self.orders.values() if not is_terminal(order.status))
        queued = sum(1 for order in self.orders.values() if order.status == OrderStatus.PENDING_SUBMISSION)
        return {
            "orders_open": open_count,
            "orders_queued": queued,
            "reconciled": self.reconciled,
            "order_link": self.link_state.value,
            "user_stream": self.user_stream_up,
            "hard_shutdown": self.hard_shutdown,
            "flattening": self.flattening(),
            "protective_orders": sum(1 for o in self.orders.values() if is_protective(o) and not is_terminal(o.status)),
            "recovery": msgspec.structs.asdict(self.recovery) if self.recovery is not None else None,
            "orders_in_memory": len(self.orders),
            "orders_evicted": self.orders_evicted,
            "snapshots": {
                "saved": self.snapshots_saved,
                "failed": self.snapshots_failed,
                "last_seq": self.last_snapshot_seq,
            },
        }

    def may_submit(self) -> bool:
        """Orders go to the venue only when the link is up, reconciled, and the lease is held.

        In EMERGENCY_MODE / HARD_SHUTDOWN (`flattening`) only reduce-only orders are sent; see `_submit`.
        """
        return self.reconciled and self.link_state == ConnectionState.CONNECTED and not self.lease_lost

    def flattening(self) -> bool:
        """SPEC §5 EMERGENCY_MODE or HARD_SHUTDOWN (operator's or our own invariant violation):
        close every position, no new entries."""
        return self._flatten_since is not None

    async def _read_level(self) -> tuple[DegradationLevel | None, int]:
        """(level, ts_ns) of KV `degradation_level` (None when absent or unreadable)."""
        entry = await self.bus.kv_get(subjects.KEY_DEGRADATION_LEVEL)
        if entry is None:
            return None, 0
        try:
            raw = msgspec.json.decode(entry[0])
            level, ts_ns = raw.get("level"), int(raw.get("ts_ns") or 0)
        except (msgspec.DecodeError, AttributeError, TypeError, ValueError):
            return None, 0
        return (DegradationLevel(level) if level in DegradationLevel.__members__ else None), ts_ns

    async def refresh_degradation(self) -> None:
        """Follow the degradation level: entering EMERGENCY_MODE/HARD_SHUTDOWN starts flattening."""
        level, ts_ns = await self._read_level()
        self.degradation = level
        flatten = level in FLATTEN_LEVELS or self.hard_shutdown
        if flatten and self._flatten_since is None:
            self._flatten_since = self.clock()
            self._flatten_key = str(ts_ns or self._flatten_since)
            self.log.error(
                "flatten_mode_entered",
                level=level.value if level else None,
                hard_shutdown=self.hard_shutdown,
                action_taken="cancel entries, flatten at market (reduce-only), stops kept until flat",
            )
        elif not flatten and self._flatten_since is not None:
            self._flatten_since = None
            self.log.warning("flatten_mode_left", level=level.value if level else None)

    async def enforce_flatten(self) -> None:
        """SPEC §5 in EMERGENCY_MODE / HARD_SHUTDOWN: no entry order stays open, every position closes.

        Entries (non-reduce-only orders, queued or live) are cancelled at once. Risk flattens through
        this service (reduce-only MARKET orders it approves); as a backstop, a symbol the venue still
        shows a position for `FLATTEN_GRACE_NS` later, with no reduce-only order in flight, gets a
        reduce-only MARKET order for the venue's quantity. Reduce-only: it can never open or flip a
        position, whatever risk sent meanwhile. Protective stops stay until the position is flat
        (`maintain_protection` cancels them then).
        """
        if not self.flattening() or not self.may_submit():
            return
        async with self._lock:
            for order in list(self.orders.values()):
                if is_terminal(order.status) or order.reduce_only or is_protective(order):
                    continue
                try:
                    await self._cancel(order, "flatten: no entries in EMERGENCY_MODE/HARD_SHUTDOWN")
                except (*VENUE_FAILURES, TransientError) as exc:
                    self.log.warning("flatten_cancel_failed", client_order_id=order.client_order_id, error=str(exc))
            since = self._flatten_since
            if since is not None and self.clock() - since >= FLATTEN_GRACE_NS:
                for row in await self.client.position_risk():
                    symbol = str(row.get("symbol"))
                    quantity = Decimal(str(row.get("positionAmt", "0")))
                    if quantity == 0 or symbol not in self.symbols:
                        continue
                    in_flight = any(
                        o.symbol == symbol and o.reduce_only and not is_protective(o) and not is_terminal(o.status)
                        for o in self.orders.values()
                    )
                    if not in_flight:
                        await self._place_flatten(symbol, quantity)
            await self.check_invariants()
            await self.maintain_protection(all_symbols=True)

    async def _place_flatten(self, symbol: str, venue_quantity: Decimal) -> None:
        key = await self._fresh_key(f"{flatten_stem(self.component, self._flatten_key)}{symbol}")
        order = await self._approve_own(self._market_close(key, symbol, venue_quantity, correlation_id=key))
        self.log.error(
            "flatten_backstop", symbol=symbol, quantity=str(venue_quantity), client_order_id=order.client_order_id
        )
        await self._submit(order)

    def _market_close(self, key: str, symbol: str, position: Decimal, *, correlation_id: str) -> SubmitOrder:
        """A reduce-only MARKET order closing `position` of `symbol` (flatten backstop, protect-close)."""
        return SubmitOrder(
            client_order_id=client_order_id_for(key),
            idempotency_key=key,
            source=OrderSource.RISK,
            symbol=symbol,
            side=Side.SELL if position > 0 else Side.BUY,
            order_type=OrderType.MARKET,
            quantity=abs(position),
            venue=self.venue,
            reduce_only=True,
            correlation_id=correlation_id,
        )

    async def _approve_own(self, command: SubmitOrder) -> OrderRecord:
        """Take an order this service issues itself into memory and approve it on the ORDERS stream
        like any order (projection rebuilds see where it came from); the caller sends it."""
        coid = command.client_order_id
        order = record_from_command(command, self.clock())
        self.orders[coid] = order
        approved = OrderApproved(order=command)
        await self._publish(self._order_subject("approved", order), approved, f"approved:{coid}", coid)
        return order

    async def _guard(self) -> None:
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

    async def _publish(self, subject: str, message: Message, msg_id: str, coid: str | None = None) -> int:
        seq = await self.bus.publish(subject, message, msg_id=msg_id)
        if coid is not None:
            self._seq[coid] = max(seq, self._seq.get(coid, 0))
            self._changed.add(coid)
        if self.snapshot_policy is not None:
            self.snapshot_policy.record()
        return seq

    async def _save(self, order: OrderRecord) -> None:
        """Write the order's projection row; with Postgres down the write is deferred (FM-C3).

        The event log is the source of truth and the order is already on it: a projection outage
        must not keep an order from the venue. Deferred rows are written by `flush_projections`.
        """
        self._changed.add(order.client_order_id)
        try:
            await self.projections.upsert_order(order, self._seq.get(order.client_order_id, 0))
        except PG_ERRORS as exc:
            self._defer(f"order:{order.client_order_id}", self._save_later(order.client_order_id), exc)

    def _save_later(self, coid: str) -> Callable[[], Awaitable[None]]:
        async def write_row() -> None:
            order = self.orders.get(coid)  # the newest state; an evicted order was final when it left
            if order is not None:
                await self.projections.upsert_order(order, self._seq.get(coid, 0))

        return write_row

    def _defer(self, key: str, write_row: Callable[[], Awaitable[None]], exc: BaseException) -> None:
        if not self._deferred:
            self.log.warning(
                "projection_write_deferred",
                key=key,
                error=f"{type(exc).__name__}: {exc}"[:200],
                action_taken="trading continues on the event log; rows written when Postgres is back",
            )
        self._deferred.setdefault(key, write_row)

    async def flush_projections(self) -> int:
        """Write the projection rows deferred while Postgres was down, oldest first (0: none pending)."""
        written = 0
        for key in list(self._deferred):
            try:
                await self._deferred[key]()
            except PG_ERRORS:
                return written  # still down: the next round tries again
            del self._deferred[key]
            written += 1
        if written:
            self.log.info("projection_writes_caught_up", rows=written)
        return written

    def _transition(self, order: OrderRecord, trigger: OrderTrigger) -> bool:
        """Apply a trigger; an illegal one is logged (with the evidence) and leaves the order as is."""
        previous = order.status
        try:
            order.apply(trigger, self.clock())
        except IllegalOrderTransition as exc:
            self.log.error(
                "illegal_order_transition",
                client_order_id=order.client_order_id,
                status=previous.value,
                trigger=trigger.value,
                error=str(exc),
                action_taken="order state kept",
            )
            return False
        if order.status != previous:
            self.log.info(
                "order_status_changed",
                client_order_id=order.client_order_id,
                previous=previous.value,
                current=order.status.value,
            )
        return True

    async def _alert(self, key: str, severity: AlertSeverity, title: str, **details: Any) -> None:
        self.log.warning("alert_raised", key=key, severity=severity.value, title=title, **details)
        alert = AlertRaised(key=key, severity=severity, component=self.component, title=title, details=details)
        await self.bus.publish(subjects.EVT_ALERT_RAISED, alert)

    async def _resolve_alert(self, key: str, reason: str) -> None:
        self.log.info("alert_resolved", key=key, reason=reason)
        await self.bus.publish(
            subjects.EVT_ALERT_RESOLVED, AlertResolved(key=key, component=self.component, reason=reason)
        )

    def _scoped(self, key: str) -> str:
        """An alert key of this process: as it always was on the main venue, `<key>@<venue>` on a
        backup venue (two venues' alerts about one symbol are two alerts)."""
        return key if self.component == subjects.POSITION else f"{key}@{self.venue}"

    def _order_subject(self, event: str, order: OrderRecord) -> str:
        return subjects.evt_order(event, order.venue, order.symbol)

    # ------------------------------------------------------------------ integrity (SPEC §6 invariants)

    def rebase(self) -> None:
        """Take the current positions as explained (after loading or an audited correction)."""
        self.baselines = position_baselines(self.orders, self.positions)

    async def check_invariants(self, *, full: bool = False) -> list[str]:
        """Check SPEC §6's invariants; a violation starts the HARD_SHUTDOWN path.

        The per-order checks run on the orders changed since the last check (`full`: on every order
        in memory, done once per supervision round); position = baseline + sum of fills is checked
        every time. Memory is bounded (`Retention`), so even the full check does not grow with history.
        """
        if full:
            changed: Iterable[OrderRecord] = list(self.orders.values())
        else:
            changed = [self.orders[coid] for coid in self._changed if coid in self.orders]
        self._changed.clear()
        problems = [problem for order in changed for problem in order_invariant_violations(order)]
        problems += position_invariant_violations(self.orders, self.positions, self.baselines)
        if problems and not self.hard_shutdown:
            await self._hard_shutdown(problems)
        return problems

    async def _hard_shutdown(self, problems: list[str]) -> None:
        """Integrity is compromised: HARD_SHUTDOWN (as the emergency stop does), P0; from now on only
        reduce-only orders are sent, positions are flattened (SPEC §5)."""
        self.hard_shutdown = True
        reason = f"position invariant violated: {'; '.join(problems)[:500]}"
        self.log.error("invariant_violated", problems=problems[:20], action_taken="HARD_SHUTDOWN, halt, P0 alert")
        title = "order/position invariant violated"
        await self._alert(self._scoped("invariant-violation"), AlertSeverity.P0, title, problems=problems)
        previous: DegradationLevel | None = None
        entry = await self.bus.kv_get(subjects.KEY_DEGRADATION_LEVEL)
        if entry is not None:
            try:
                level = msgspec.json.decode(entry[0]).get("level")
            except (msgspec.DecodeError, AttributeError):
                level = None
            previous = DegradationLevel(level) if level in DegradationLevel.__members__ else None
        event = DegradationLevelChanged(previous=previous, current=DegradationLevel.HARD_SHUTDOWN, reason=reason)
        await self.bus.publish(subjects.EVT_DEGRADATION, event)
        record = {"level": DegradationLevel.HARD_SHUTDOWN.value, "reason": reason, "ts_ns": event.ts_event_ns}
        await self.bus.kv_put(subjects.KEY_DEGRADATION_LEVEL, msgspec.json.encode(record))
        await self.refresh_degradation()  # flatten mode now: entries refused, positions closed (SPEC §5)
        request = msgspec.json.encode({"operator": self.component, "reason": reason})
        try:
            await self.bus.request(subjects.service_query(subjects.RISK, "halt"), request, timeout_s=3.0)
        except Exception as exc:  # noqa: BLE001 - the level is persisted; risk halts when it reads it
            self.log.warning("hard_shutdown_halt_failed", error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ bounded memory (issue 4)

    def trim(self) -> int:
        """Let finished orders beyond the retention leave memory (and so the next snapshot).

        Their fills move into the position baselines (`fold_evicted`), so §6's position = baseline +
        sum of fills stays exact. Live orders, and finished ones the protection / flatten logic still
        numbers its attempts from (`pinned_orders`), stay. Returns how many left.
        """
        flatten_key = self._flatten_key if self.flattening() else None
        pinned = pinned_orders(self.orders, list(self.protections.values()), flatten_key, component=self.component)
        coids = evictable_orders(self.orders, self.clock(), self.retention, pinned)
        if not coids:
            return 0
        evicted = [self.orders.pop(coid) for coid in coids]
        for coid in coids:
            self._seq.pop(coid, None)
            self._changed.discard(coid)
        self.baselines = fold_evicted(self.baselines, evicted)
        self.evicted_until_ns = max(self.evicted_until_ns, max(order.updated_ns for order in evicted))
        self.orders_evicted += len(evicted)
        self.log.info("orders_evicted", evicted=len(evicted), kept=len(self.orders))
        return len(evicted)

    async def _known_elsewhere(self, coid: str) -> OrderRecord | None:
        """The projection's record of an order not in memory (None: no such order).

        Raises:
            asyncpg.PostgresError, OSError: Postgres could not be asked.
        """
        found: OrderRecord | None = await self.projections.find_order(coid)
        if found is not None:
            self.log.info(
                "order_found_in_projection", client_order_id=coid, status=found.status.value, venue=found.venue
            )
        return found

    async def _approval_seen_before(self, coid: str, approved_ns: int) -> OrderRecord | None:
        """Was this approval, whose order is not in memory, handled before? (never send twice, §6, FM-C7)

        The projection answers (indexed lookup). If Postgres is down, memory answers alone when it
        can: an approval newer than every order that ever left memory (plus a clock margin) would
        have its order in memory had it been handled, so it was not. Otherwise nothing is decided:
        the approval is retried later (nak), never sent blind.

        Raises:
            TransientError: Postgres is down and memory cannot tell.
        """
        try:
            return await self._known_elsewhere(coid)
        except (asyncpg.PostgresError, OSError) as exc:
            if approved_ns > self.evicted_until_ns + APPROVAL_CLOCK_MARGIN_NS:
                self.log.warning(
                    "order_lookup_unavailable",
                    client_order_id=coid,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    action_taken="newer than every evicted order: never handled, handled now",
                )
                return None
            raise TransientError(
                f"{coid}: not in memory and Postgres is unavailable ({type(exc).__name__}); "
                "whether it was already sent is unknown, retried later"
            ) from exc

    async def _fresh_key(self, stem: str) -> str:
        """`<stem>:<n>` for the first n whose client order id is neither in memory nor in the
        projection (orders found there are taken back into memory), for orders this service names
        itself (protective, protect-close, flatten backstop). Postgres down: memory alone decides;
        the attempts of a current protection or flatten are never evicted (`pinned_orders`)."""
        attempt = 0
        while True:
            key = f"{stem}:{attempt}"
            coid = client_order_id_for(key)
            if coid not in self.orders:
                try:
                    found = await self._known_elsewhere(coid)
                except (asyncpg.PostgresError, OSError) as exc:
                    self.log.warning("order_lookup_unavailable", client_order_id=coid, error=repr(exc)[:300])
                    return key
                if found is None:
                    return key
                if found.venue == self.venue:  # another venue's order stays that process's: the id is taken
                    self.orders[coid] = found
            attempt += 1

    # ------------------------------------------------------------------ venue link (FM-N5, FM-N6)

    async def on_breaker(self, transition: BreakerTransition) -> None:
        """Publish a venue breaker transition; OPEN takes the order link down."""
        self.log.warning("breaker_state_changed", **transition.fields())
        event = transition.event()
        await self.bus.publish(subjects.evt_breaker(transition.name), event)
        await self.bus.kv_put(
            subjects.key_breaker(transition.name), msgspec.json.encode(transition.record(event.ts_event_ns))
        )
        if transition.current == BreakerState.OPEN:
            await self._set_link(ConnectionState.DISCONNECTED, f"venue breaker open: {transition.reason}")

    async def _set_link(self, state: ConnectionState, reason: str) -> None:
        if state == self.link_state and self._link_announced:
            return
        self._link_announced = True
        previous, self.link_state = self.link_state, state
        if state != ConnectionState.CONNECTED:
            # Whatever happened at the venue meanwhile is unknown until reconciled (SPEC §6).
            self.reconciled = False
            self.countdown.forget()
        event = LinkStateChanged(
            venue=self.venue, link=ORDER_LINK, previous=previous, current=state, reason=reason, symbols=[]
        )
        if previous == state:
            self.log.info("link_state_announced", link=ORDER_LINK, current=state.value, reason=reason)
        else:
            self.log.warning("link_state_changed", link=ORDER_LINK, previous=previous.value, current=state.value)
        await self.bus.publish(subjects.evt_link(self.venue, ORDER_LINK), event)
        value = {"state": state.value, "reason": reason, "ts_ns": event.ts_event_ns}
        await self.bus.kv_put(subjects.key_link(self.venue, ORDER_LINK), msgspec.json.encode(value))
        key = f"venue-order-link:{self.venue}"
        if state == ConnectionState.CONNECTED:
            await self._resolve_alert(key, "venue reachable and reconciled")
        else:
            await self._alert(
                key, AlertSeverity.P1, "venue order link down: orders are queued, nothing is sent", reason=reason
            )

    # ------------------------------------------------------------------ consumers

    async def on_approved(self, message: Message, delivery: Delivery) -> None:
        """Durable `position-orders`: send an approved order to the venue exactly once."""
        if not isinstance(message, OrderApproved):
            return
        command = message.order
        async with self._lock:
            known = self.orders.get(command.client_order_id)
            if known is None:
                # Not in memory: finished orders leave it after the retention. Handled before? (§6)
                earlier = await self._approval_seen_before(command.client_order_id, message.ts_event_ns)
                if earlier is not None and earlier.venue != self.venue:
                    # A client order id is one order system-wide (the projection's key): never a second.
                    self.log.error(
                        "order_known_on_other_venue",
                        client_order_id=command.client_order_id,
                        other_venue=earlier.venue,
                        status=earlier.status.value,
                        action_taken="not sent",
                    )
                    return
                if earlier is not None and is_terminal(earlier.status):
                    self.log.info("order_already_known", client_order_id=command.client_order_id, via="projection")
                    return
                if earlier is not None:
                    # Live in the projection only (a handler that failed half-way): take it back.
                    self.orders[earlier.client_order_id] = earlier
                    if earlier.status == OrderStatus.SUBMITTED:
                        # It may have reached the venue: query by client order id before any resend (FM-N7).
                        await self._mark_unknown(earlier, "found SUBMITTED in the projection, not in memory")
                    known = earlier
            # Known but never sent and no protection recorded: folded from the log at recovery before
            # this (unacknowledged) approval was handled; handle it now.
            if known is not None and not (
                known.status == OrderStatus.PENDING_SUBMISSION
                and known.venue_order_id is None
                and (command.stop_loss or command.take_profit)
                and getattr(self.protections.get(command.symbol), "entry", None) != command.client_order_id
            ):
                self.log.info("order_already_known", client_order_id=command.client_order_id)
                return
            order = known or record_from_command(command, self.clock())
            if (command.stop_loss is not None or command.take_profit is not None) and not command.reduce_only:
                await self._set_protection(
                    Protection(command.client_order_id, command.symbol, command.stop_loss, command.take_profit)
                )
            self.orders[order.client_order_id] = order
            try:
                backlog = self._backlog(order) if known is None else None
                if backlog is not None:
                    await self._queue(order, backlog)
                else:
                    await self._submit(order)
            except Exception:
                if order.status in (OrderStatus.PENDING_SUBMISSION, OrderStatus.SUBMITTED) and not order.resend_used:
                    # Nothing reached the venue (or the queue write failed): forget it so the redelivery starts over.
                    self.orders.pop(order.client_order_id, None)
                raise
            await self.check_invariants()
            await self.maintain_protection()

    async def on_denied(self, message: Message, delivery: Delivery) -> None:
        """Durable `position-denials`: record a risk refusal in the projection."""
        if not isinstance(message, OrderDenied):
            return
        async with self._lock:
            if message.order.client_order_id in self.orders:
                return
            order = record_from_command(message.order, self.clock())
            order.reason = message.reason
            self._transition(order, OrderTrigger.DENY)
            self._seq[order.client_order_id] = delivery.stream_sequence
            await self._save(order)
            self.orders[order.client_order_id] = order

    async def on_cancel(self, message: Message, delivery: Delivery) -> None:
        """Durable `position-cancels`: cancel at the venue (idempotent: terminal orders are left alone).

        A cancel names no venue: every position process sees it and the one holding the order
        cancels it. An order not known here may still be an approval this venue's consumer has
        not handled yet (it lags, or this process was down): the cancel then waits for it (raised
        and redelivered) before it is taken as another venue's order and left alone.
        """
        if not isinstance(message, CancelOrder):
            return
        async with self._lock:
            order = self.orders.get(message.client_order_id)
            if order is None:
                await self._cancel_not_held(message, delivery)
                return
            if is_terminal(order.status):
                self.log.info("cancel_ignored_terminal", client_order_id=order.client_order_id, status=order.status)
                return
            await self._cancel(order, message.reason)
            await self.check_invariants()
            await self.maintain_protection()

    async def _cancel_not_held(self, message: CancelOrder, delivery: Delivery) -> None:
        """A cancel of an order not in memory: wait for this venue's approvals, else leave it alone.

        Raises:
            TransientError: an approval before the cancel is not handled yet; try again later.
        """
        coid = message.client_order_id
        covered = await covered_sequence(
            self.bus.js, subjects.STREAM_ORDERS.name, (self.orders_durable,), delivery.stream_sequence
        )
        waiting = covered < delivery.stream_sequence
        age_ns = self.clock() - (delivery.stored_ns or self.clock())
        if waiting and delivery.num_delivered < CANCEL_DELIVERIES and age_ns < CANCEL_WAIT_S * 1e9:
            raise TransientError(f"cancel {coid}: approvals before it not handled yet (up to {covered}); retried")
        if waiting:
            self.log.warning(
                "cancel_undecided",
                client_order_id=coid,
                approvals_handled_up_to=covered,
                cancel_seq=delivery.stream_sequence,
                action_taken="ignored: this venue's approvals did not catch up in time",
            )
            return
        try:
            found = await self.projections.find_order(coid)
        except PG_ERRORS:
            found = None
        if found is not None and found.venue != self.venue:
            self.log.debug("cancel_for_other_venue", client_order_id=coid, venue=found.venue)
            return
        self.log.info(
            "cancel_not_held",
            client_order_id=coid,
            status=found.status.value if found is not None else None,
            action_taken="ignored: no order of this venue in flight",
        )

    async def _cancel(self, order: OrderRecord, reason: str) -> None:
        """Cancel one live order at the venue (before submission: locally).

        Raises:
            TransientError: the venue could not be asked; try again.
            LeaseLost: this instance is not the writer any more.
        """
        if order.status == OrderStatus.PENDING_SUBMISSION:
            self._transition(order, OrderTrigger.CANCEL)
            await self._emit_canceled(order, reason or "canceled before submission")
            return
        await self._guard()
        if order.status != OrderStatus.PENDING_CANCEL:
            self._transition(order, OrderTrigger.REQUEST_CANCEL)
            await self._save(order)
        try:
            answer = await self.client.cancel_order(order.symbol, orig_client_order_id=order.client_order_id)
        except VenueError as exc:
            if exc.code in (UNKNOWN_ORDER_ON_CANCEL, ORDER_NOT_FOUND) or exc.status < 500:
                self.log.info("cancel_refused", client_order_id=order.client_order_id, code=exc.code, msg=exc.msg)
                await self._query_and_apply(order)
                return
            raise TransientError(f"cancel {order.client_order_id}: {exc}") from exc
        except (VenueTimeout, VenueUnreachable, BreakerOpen) as exc:
            raise TransientError(f"cancel {order.client_order_id}: {exc}") from exc
        await self._apply_venue_order(order, answer, reason=reason)

    # ------------------------------------------------------------------ submission

    async def _queue(self, order: OrderRecord, reason: str) -> None:
        """Keep an order PENDING_SUBMISSION (durable in the projection) until it may be sent."""
        if order.status in (OrderStatus.SUBMITTED, OrderStatus.UNKNOWN):
            self._transition(order, OrderTrigger.NOT_SENT)
        order.reason = reason
        await self._save(order)
        self.log.warning("order_queued", client_order_id=order.client_order_id, reason=reason)

    def _backlog(self, order: OrderRecord) -> str | None:
        """Why a new order should wait in the queue instead of going out inline, or None.

        Orders go out oldest first: a new one waits behind queued ones. And while the request budget
        holds order placements back (a 429 halved the rate, FM-N2), sending inline would keep the
        approvals consumer, and every later approval behind it, waiting. Queued, the order is in the
        projection at once (visible, cancelable) and the poll sends it when its turn comes.
        """
        if not self.may_submit():
            return None  # `_submit` queues it with the link's reason
        ahead = sum(
            1
            for other in self.orders.values()
            if other.status == OrderStatus.PENDING_SUBMISSION and other.client_order_id != order.client_order_id
        )
        if ahead:
            return f"queued: behind {ahead} earlier order(s)"
        hold = self.client.order_hold()
        if not hold.allowed:
            return f"queued: request budget ({hold.reason}) holds orders for {hold.wait_s:.1f}s"
        return None

    async def _submit(self, order: OrderRecord) -> None:
        """Publish `OrderSubmitted`, write the projection, then place the order (never twice blind)."""
        coid = order.client_order_id
        if self.flattening() and order.status == OrderStatus.PENDING_SUBMISSION and not order.reduce_only:
            # Risk approved this entry under the level it read; ours is up to one tick old (the
            # level may just have gone back to NORMAL): read it again before cancelling.
            await self.refresh_degradation()
        if self.flattening() and order.status == OrderStatus.PENDING_SUBMISSION:
            if not order.reduce_only:
                self._transition(order, OrderTrigger.CANCEL)
                await self._emit_canceled(order, "flatten: no new entries in EMERGENCY_MODE/HARD_SHUTDOWN")
                return
            if not is_protective(order) and self.positions.get(order.symbol, Position()).quantity == 0:
                # Risk's flatten after ours (or after a stop): nothing left to reduce.
                self._transition(order, OrderTrigger.CANCEL)
                await self._emit_canceled(order, "flatten: position already flat")
                return
        if not self.may_submit():
            if self.link_state != ConnectionState.CONNECTED:
                reason = f"queued: venue order link {self.link_state.value}"
            else:
                reason = "queued: reconciliation with the venue pending"
            await self._queue(order, reason)
            return
        await self._guard()
        self._transition(order, OrderTrigger.SUBMIT)
        submitted = OrderSubmitted(client_order_id=coid, symbol=order.symbol, venue=order.venue)
        await self._publish(self._order_subject("submitted", order), submitted, f"submitted:{coid}", coid)
        await self._save(order)
        try:
            answer = await self.client.place_order(**order_params(order))
        except (VenueUnreachable, BreakerOpen) as exc:
            # Surely not sent: back to the queue, sent again once the venue is back.
            await self._queue(order, f"venue unreachable, queued: {exc}")
            return
        except VenueTimeout as exc:
            await self._mark_unknown(order, f"timeout: {exc}")
            await self._resolve_unknown(order)
            return
        except VenueError as exc:
            await self._on_place_error(order, exc)
            return
        await self._apply_venue_order(order, answer)

    async def _on_place_error(self, order: OrderRecord, exc: VenueError) -> None:
        coid = order.client_order_id
        if exc.code == DUPLICATE_CLIENT_ORDER_ID:
            # Our id is already at the venue (an earlier attempt landed): its state is the truth.
            self.log.warning("order_duplicate_at_venue", client_order_id=coid, action_taken="query")
            await self._query_and_apply(order)
            return
        if exc.code == WOULD_TRIGGER_IMMEDIATELY and is_protective(order):
            await self._triggered_at_placement(order, exc)
            return
        if submit_is_ambiguous(exc):
            await self._mark_unknown(order, f"HTTP {exc.status} code={exc.code}: {exc.msg}")
            await self._resolve_unknown(order)
            return
        found = classify(exc)
        if found.error_class in (ErrorClass.TRANSIENT, ErrorClass.RECOVERABLE):
            # A definite "not accepted, not now" that outlived its retries: keep it queued.
            await self._queue(order, f"{found.reason} (HTTP {exc.status} code={exc.code}), queued")
            return
        await self._reject(order, exc, found.error_class.value, found.reason)

    async def _reject(self, order: OrderRecord, exc: VenueError, error_class: str, why: str) -> None:
        """PERMANENT: the order is REJECTED, dead-lettered for the operator, and alerted."""
        coid = order.client_order_id
        order.reason = f"venue rejected ({why}): code={exc.code} {exc.msg}"
        self._transition(order, OrderTrigger.REJECT)
        rejected = OrderRejected(
            client_order_id=coid, symbol=order.symbol, reason=order.reason, error_class=error_class, venue_code=exc.code
        )
        await self._publish(self._order_subject("rejected", order), rejected, f"rejected:{coid}", coid)
        await self._save(order)
        self.log.warning("order_rejected", client_order_id=coid, status=exc.status, code=exc.code, msg=exc.msg)
        letter = DeadLettered(
            consumer=self.orders_durable,
            subject=subjects.evt_order("approved", order.venue, order.symbol),
            reason=f"{error_class} {why}: HTTP {exc.status} code={exc.code} {exc.msg}"[:1000],
            deliveries=1,
            payload=encode(OrderApproved(order=command_from_record(order))).decode(),
            original_message_id=f"approved:{coid}",
        )
        await self.bus.publish(subjects.dlq(self.orders_durable), letter, msg_id=f"dlq:rejected:{coid}")
        if why == "auth":
            await self._alert(
                f"venue-auth:{self.venue}",
                AlertSeverity.P1,
                "venue refused our API key: no order can be placed",
                code=exc.code,
                msg=exc.msg,
            )
        else:
            await self._alert(
                f"order-rejected:{coid}", AlertSeverity.P2, "order rejected by the venue", coid=coid, reason=why
            )

    async def _mark_unknown(self, order: OrderRecord, reason: str) -> None:
        coid = order.client_order_id
        self._transition(order, OrderTrigger.AMBIGUOUS)
        order.reason = reason
        unknown = OrderStatusUnknown(client_order_id=coid, symbol=order.symbol, reason=reason)
        await self._publish(self._order_subject("unknown", order), unknown, f"unknown:{coid}", coid)
        await self._save(order)
        self.log.warning("order_status_unknown", client_order_id=coid, reason=reason, action_taken="query")

    async def _resolve_unknown(self, order: OrderRecord, backoff_s: Sequence[float] | None = None) -> bool:
        """Query an UNKNOWN order until the venue answers; -2013 means not placed: resend once, same id."""
        for delay in self.query_backoff_s if backoff_s is None else backoff_s:
            await asyncio.sleep(delay)
            try:
                answer = await self.client.query_order(order.symbol, orig_client_order_id=order.client_order_id)
            except VenueError as exc:
                if exc.code == ORDER_NOT_FOUND:
                    await self._not_at_venue(order)
                    return True
                self.log.warning("order_query_failed", client_order_id=order.client_order_id, error=str(exc))
                continue
            except BreakerOpen as exc:
                # The venue is down: the order stays UNKNOWN; reconciliation resolves it when it is back.
                self.log.warning("order_query_deferred", client_order_id=order.client_order_id, error=str(exc))
                return False
            except (VenueTimeout, VenueUnreachable) as exc:
                self.log.warning("order_query_failed", client_order_id=order.client_order_id, error=str(exc))
                continue
            await self._apply_venue_order(order, answer)
            return True
        return False

    async def _not_at_venue(self, order: OrderRecord) -> None:
        """The venue says the order does not exist: resend once with the same id, else reject."""
        coid = order.client_order_id
        if order.status in (OrderStatus.UNKNOWN, OrderStatus.SUBMITTED) and not order.resend_used:
            order.resend_used = True
            self.log.warning("order_not_placed", client_order_id=coid, action_taken="resend with the same id")
            if order.status == OrderStatus.SUBMITTED:
                self._transition(order, OrderTrigger.AMBIGUOUS)
            await self._submit(order)
            return
        if order.status in (OrderStatus.UNKNOWN, OrderStatus.SUBMITTED):
            order.reason = "not found at the venue after a resend"
            self._transition(order, OrderTrigger.REJECT)
            rejected = OrderRejected(
                client_order_id=coid, symbol=order.symbol, reason=order.reason, venue_code=ORDER_NOT_FOUND
            )
            await self._publish(self._order_subject("rejected", order), rejected, f"rejected:{coid}", coid)
            await self._save(order)
            return
        # A live order the venue no longer knows: it is gone; say so loudly.
        order.reason = "venue does not know this live order"
        self._transition(order, OrderTrigger.CANCEL)
        await self._emit_canceled(order, order.reason)
        await self._alert(f"order-vanished:{coid}", AlertSeverity.P1, "live order unknown to the venue", coid=coid)

    async def _query_and_apply(self, order: OrderRecord) -> None:
        try:
            answer = await self.client.query_order(order.symbol, orig_client_order_id=order.client_order_id)
        except VenueError as exc:
            if exc.code == ORDER_NOT_FOUND:
                await self._not_at_venue(order)
                return
            raise TransientError(f"query {order.client_order_id}: {exc}") from exc
        except (VenueTimeout, VenueUnreachable, BreakerOpen) as exc:
            raise TransientError(f"query {order.client_order_id}: {exc}") from exc
        await self._apply_venue_order(order, answer)

    # ------------------------------------------------------------------ venue answers

    async def _emit_canceled(self, order: OrderRecord, reason: str) -> None:
        coid = order.client_order_id
        canceled = OrderCanceled(client_order_id=coid, symbol=order.symbol, reason=reason)
        await self._publish(self._order_subject("canceled", order), canceled, f"canceled:{coid}", coid)
        await self._save(order)

    async def _apply_venue_order(self, order: OrderRecord, answer: dict, reason: str = "") -> None:
        """Bring the local order to the venue's view: accepted, fills, final status."""
        coid = order.client_order_id
        previous = order.status
        if answer.get("orderId") is not None:
            order.venue_order_id = int(answer["orderId"])
        venue_status = str(answer.get("status", ""))
        executed = Decimal(str(answer.get("executedQty", "0")))
        if previous in (OrderStatus.SUBMITTED, OrderStatus.UNKNOWN) and venue_status != "REJECTED":
            status = OrderStatus(venue_status) if venue_status in OrderStatus.__members__ else OrderStatus.NEW
            accepted = OrderAccepted(
                client_order_id=coid, venue_order_id=order.venue_order_id or 0, symbol=order.symbol, status=status
            )
            await self._publish(self._order_subject("accepted", order), accepted, f"accepted:{coid}", coid)
        if executed > order.filled_quantity:
            await self._sync_fills(order)
        trigger = venue_trigger(venue_status)
        if trigger == OrderTrigger.FILL and order.filled_quantity < executed:
            trigger = OrderTrigger.PARTIAL_FILL  # the trades are not all visible yet; the poll finishes it
        if trigger == OrderTrigger.ACCEPT and order.filled_quantity > 0:
            trigger = OrderTrigger.PARTIAL_FILL
        if trigger == OrderTrigger.AMBIGUOUS:
            self.log.warning("venue_status_unrecognised", client_order_id=coid, venue_status=venue_status)
            return
        if not self._transition(order, trigger):
            return
        if order.status == previous and trigger != OrderTrigger.FILL:
            await self._save(order)
            return
        match trigger:
            case OrderTrigger.REJECT:
                order.reason = f"venue status REJECTED {reason}".strip()
                rejected = OrderRejected(client_order_id=coid, symbol=order.symbol, reason=order.reason)
                await self._publish(self._order_subject("rejected", order), rejected, f"rejected:{coid}", coid)
            case OrderTrigger.CANCEL | OrderTrigger.EXPIRE:
                await self._emit_canceled(order, reason or venue_status.lower())
                return
            case _:
                pass
        await self._save(order)

    async def _sync_fills(self, order: OrderRecord) -> None:
        """Fetch the order's venue trades; publish and project every one not seen yet."""
        if order.venue_order_id is None:
            return
        trades = await self.client.user_trades(order.symbol, order_id=order.venue_order_id, limit=1000)
        for trade in sorted(trades, key=lambda t: int(t["id"])):
            if int(trade.get("orderId", order.venue_order_id)) != order.venue_order_id:
                continue
            await self._apply_trade(order, trade)

    async def _apply_trade(self, order: OrderRecord, trade: dict, via: str = "rest") -> None:
        coid = order.client_order_id
        trade_id = int(trade["id"])
        quantity = Decimal(str(trade["qty"]))
        price = Decimal(str(trade["price"]))
        if not order.add_fill(trade_id, quantity, price):
            return
        if order.filled_quantity > order.quantity:
            await self._alert(
                f"invariant-overfill:{coid}",
                AlertSeverity.P0,
                "filled quantity above order quantity",
                coid=coid,
                filled=str(order.filled_quantity),
                quantity=str(order.quantity),
            )
        ts_event_ns = int(trade.get("time", 0)) * 1_000_000 or self.clock()
        commission = Decimal(str(trade.get("commission", "0")))
        fill = OrderFilled(
            client_order_id=coid,
            venue_order_id=order.venue_order_id or 0,
            trade_id=trade_id,
            symbol=order.symbol,
            side=order.side,
            price=price,
            quantity=quantity,
            cumulative_quantity=order.filled_quantity,
            order_quantity=order.quantity,
            commission=commission,
            realized_pnl=Decimal(str(trade.get("realizedPnl", "0"))),
            ts_event_ns=ts_event_ns,
        )
        await self._publish(subjects.evt_fill(order.venue, order.symbol), fill, f"fill:{coid}:{trade_id}", coid)
        position = apply_fill(self.positions.get(order.symbol, Position()), order.side, quantity, price)
        self.positions[order.symbol] = position
        self._protect_dirty.add(order.symbol)
        changed = PositionChanged(
            venue=order.venue,
            symbol=order.symbol,
            quantity=position.quantity,
            average_entry_price=position.average_entry_price,
            realized_pnl=position.realized_pnl,
            caused_by_client_order_id=coid,
            ts_event_ns=ts_event_ns,
        )
        seq = await self._publish(
            subjects.evt_position(order.venue, order.symbol), changed, f"position:{coid}:{trade_id}"
        )
        self._position_seq = max(self._position_seq, seq)
        self._position_seqs[order.symbol] = seq
        now = self.clock()

        async def write_fill() -> None:
            await self.projections.record_fill(
                order, trade_id, price, quantity, commission, ts_event_ns, position, now, seq
            )

        try:
            await write_fill()
        except PG_ERRORS as exc:
            self._defer(f"fill:{coid}:{trade_id}", write_fill, exc)
        self.log.info(
            "order_filled",
            client_order_id=coid,
            trade_id=trade_id,
            price=str(price),
            quantity=str(quantity),
            position=str(position.quantity),
            via=via,
        )

    # ------------------------------------------------------------------ user-data stream

    async def on_user_event(self, event: dict) -> None:
        """One user-data stream event: fills and status of our orders, de-duplicated by trade id."""
        if event.get("e") != "ORDER_TRADE_UPDATE" or not isinstance(event.get("o"), dict):
            return
        update: dict = event["o"]
        coid = str(update.get("c", ""))
        async with self._lock:
            order = self.orders.get(coid)
            if order is None:
                # A venue order we never sent: reconciliation adopts it (or corrects the position).
                self.log.warning("user_stream_unknown_order", client_order_id=coid, status=update.get("X"))
                self.reconciled = False
                return
            try:
                if order.venue_order_id is None and update.get("i") is not None:
                    order.venue_order_id = int(update["i"])
                if update.get("x") == "TRADE" and int(update.get("t") or 0):
                    await self._apply_trade(order, trade_from_user_event(update), via="user-stream")
                stale = Decimal(str(update.get("z", "0"))) < order.filled_quantity
                if not is_terminal(order.status) and not stale:
                    answer = {"orderId": update.get("i"), "status": update.get("X"), "executedQty": update.get("z")}
                    await self._apply_venue_order(order, answer)
            except (KeyError, ValueError, ArithmeticError) as exc:
                self.log.warning("user_event_invalid", client_order_id=coid, error=repr(exc), raw=str(event)[:500])
                return
            await self.check_invariants()
            await self.maintain_protection()

    async def user_stream_forever(self, ws_bases: Sequence[str], stream: Callable[..., Any]) -> None:
        """Consume the user-data stream forever; every (re)connect asks for a reconciliation.

        Args:
            ws_bases: venue WebSocket base URLs, the main one first, then configured alternates
                (FM-N4/N6: a connection that fails moves to the next one).
            stream: `stream(ws_base, listen_key, on_open)` async iterator of events (raises when it ends).
        """
        attempt = 0
        endpoints = EndpointRotation(ws_bases)
        opened = False

        async def on_open() -> None:
            nonlocal attempt, opened
            attempt = 0
            opened = True
            endpoints.on_success()
            self.user_stream_up = True
            # Updates may have been missed while it was down: reconcile before any new order.
            self.reconciled = False
            self.log.info("user_stream_connected", action_taken="reconcile")
            self._wake.set()

        while True:
            delay = reconnect_delay_s(attempt)
            await asyncio.sleep(delay)
            attempt += 1
            opened = False
            ws_base = endpoints.current
            try:
                listen_key = await self.client.new_listen_key()
                self._last_keepalive_ns = self.clock()
                async for event in stream(ws_base, listen_key, on_open):
                    await self.on_user_event(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the stream must come back whatever ended it
                # A stream that never opened counts against its endpoint (the next one is tried);
                # one that was up and dropped is tried again where it was.
                all_failed = not opened and endpoints.on_failure()
                self.log.warning(
                    "user_stream_lost",
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    endpoint=ws_base,
                    action_taken=f"reconnect to {endpoints.current}",
                    all_endpoints_failed=all_failed,
                )
            self.user_stream_up = False

    # ------------------------------------------------------------------ polling

    async def poll_once(self, *, follow_live: bool = True) -> None:
        """Send queued orders, resolve UNKNOWN ones, and (when `follow_live`) follow live ones."""
        await self._send_queued()
        async with self._lock:
            live = [order for order in self.orders.values() if not is_terminal(order.status)]
            for order in live:
                if order.status == OrderStatus.UNKNOWN and self.reconciled:
                    await self._resolve_unknown(order, backoff_s=(0.0,))
            if not follow_live:
                return
            self._last_follow_ns = self.clock()
            at_venue = [order for order in live if order.status in VENUE_LIVE]
            # Asked even without live orders (one symbol then): the cheapest signed check that the
            # venue is there (FM-N6).
            symbols = {order.symbol for order in at_venue} or set(self.symbols[:1])
            open_orders = {str(o.get("clientOrderId")): o for o in await self._venue_open_orders(symbols)}
            for order in at_venue:
                answer = open_orders.get(order.client_order_id)
                if answer is None:
                    await self._query_and_apply(order)
                elif Decimal(str(answer.get("executedQty", "0"))) != order.filled_quantity or (
                    str(answer.get("status")) != order.status.value and order.status != OrderStatus.PENDING_CANCEL
                ):
                    await self._apply_venue_order(order, answer)
            await self.check_invariants()
            await self.maintain_protection(all_symbols=True)

    async def _send_queued(self) -> None:
        """Send queued orders, oldest first, one per hold of the lock: approvals that arrive
        meanwhile are recorded (and queued behind) between two sends instead of waiting for all.

        An order whose sending fails is left queued for the next poll and the next one is tried:
        new orders queue behind old ones, so one that can never go out must not hold back the rest.
        """
        queued = [o.client_order_id for o in self.orders.values() if o.status == OrderStatus.PENDING_SUBMISSION]
        for coid in queued:
            async with self._lock:
                order = self.orders.get(coid)
                hold = self.client.order_hold()
                if not self.may_submit() or (not hold.allowed and hold.wait_s > QUEUE_HOLD_S):
                    return  # the next poll tries again
                if order is None or order.status != OrderStatus.PENDING_SUBMISSION:
                    continue
                try:
                    await self._submit(order)
                except (LeaseLost, asyncio.CancelledError):
                    raise
                except Exception as exc:  # noqa: BLE001 - logged; the order stays queued for the next poll
                    self.log.warning(
                        "queued_order_send_failed",
                        client_order_id=coid,
                        error=f"{type(exc).__name__}: {exc}"[:300],
                        action_taken="left queued; next order tried",
                    )

    async def _venue_open_orders(self, symbols: Iterable[str]) -> list[dict]:
        """The venue's open orders of `symbols`, one symbol per request.

        `GET /fapi/v1/openOrders` weighs 1 with a symbol and 40 without: the poll runs every second
        while the user-data stream is down, and 40 a second is the IP's whole 2400/min budget, which
        market-data's snapshots share (FM-N2). From 40 symbols on, the one request for all is cheaper.
        One request after the other, stopping at the first failure: a venue that is down costs the
        venue breaker one failure per poll, as before.

        Raises:
            VenueError, VenueTimeout, VenueUnreachable, BreakerOpen: as `open_orders`.
        """
        wanted = sorted(set(symbols))
        if not wanted or len(wanted) >= ALL_SYMBOLS_OPEN_ORDERS_WEIGHT:
            every = await self.client.open_orders()
            return [order for order in every if not wanted or order.get("symbol") in wanted]
        found: list[dict] = []
        for symbol in wanted:
            found.extend(await self.client.open_orders(symbol))
        return found

    async def tick(self) -> None:
        """One supervision round: snapshot when due, reconcile when needed, poll, keep the dead-man's
        switch armed."""
        async with self._lock:
            self.trim()
            await self.check_invariants(full=True)
        await self.snapshot()
        await self.flush_projections()
        await self.refresh_degradation()
        if not self.reconciled:
            await self.reconcile(self.symbols)
        await self.enforce_flatten()
        now = self.clock()
        follow = not self.user_stream_up or now - self._last_follow_ns >= self.safety_poll_ns
        await self.poll_once(follow_live=follow)
        await self.refresh_countdowns()
        if self.user_stream_up and now - self._last_keepalive_ns >= LISTEN_KEY_KEEPALIVE_NS:
            await self.client.keepalive_listen_key()
            self._last_keepalive_ns = now

    async def poll_forever(self, interval_s: float = 1.0) -> None:
        """Run `tick` every `interval_s`; venue trouble is logged and retried next round."""
        while True:
            # A user-stream (re)connect wakes the round at once: nothing is sent until it reconciled.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval_s)
            self._wake.clear()
            try:
                await self.tick()
            except LeaseLost:
                return  # not the writer any more: `_guard` reported it, the service stops
            except (*VENUE_FAILURES, TransientError) as exc:
                self.log.warning("order_poll_failed", error=f"{type(exc).__name__}: {exc}", action_taken="retry")

    async def refresh_countdowns(self) -> None:
        """FM-N8: keep the venue's countdownCancelAll armed for every symbol with live orders."""
        if not self.may_submit():
            return
        live_symbols = countdown_symbols(self.orders.values())
        now = self.clock()
        for symbol, countdown_ms in self.countdown.due(live_symbols, now).items():
            await self._guard()
            try:
                await self.client.countdown_cancel_all(symbol, countdown_ms)
            except VENUE_FAILURES as exc:
                self.log.warning("countdown_failed", symbol=symbol, error=f"{type(exc).__name__}: {exc}")
                continue
            self.countdown.sent(symbol, countdown_ms, now)
            self.log.info("countdown_armed" if countdown_ms else "countdown_disarmed", symbol=symbol, ms=countdown_ms)

    # ------------------------------------------------------------------ reconciliation

    async def load(self) -> None:
        """Rebuild in-memory orders and positions from the Postgres projections (no snapshot, and the
        ORDERS stream no longer starts at 1, so a full replay would miss orders).

        Only what memory keeps is read: live orders and the finished ones within the retention
        (indexed queries). Anything older may exist without being in memory, so from now on an
        approval not in memory is always checked against the projection (`evicted_until_ns`).
        """
        now = self.clock()
        live = [status.value for status in OrderStatus if not is_terminal(status)]
        loaded = await self.projections.load_recent_orders(
            live, now - self.retention.keep_ns, self.retention.max_terminal
        )
        self.orders = {coid: order for coid, order in loaded.items() if order.venue == self.venue}
        self.evicted_until_ns = now
        self.positions, self._position_seq = await self.projections.load_positions(self.venue)
        self.rebase()
        await self._load_protections()
        self.log.info(
            "position_state_loaded",
            orders=len(self.orders),
            positions=len(self.positions),
            protections=len(self.protections),
        )

    async def _load_protections(self, fallback: Sequence[Protection] = ()) -> None:
        """Protective levels from KV (written before use, so authoritative); `fallback` (a snapshot's)
        only for a symbol whose KV record cannot be read."""
        self.protections = {}
        saved = {p.symbol: p for p in fallback}
        for symbol in self.symbols:
            try:
                entry = await self.bus.kv_get(self._protection_key(symbol))
            except (NatsError, TimeoutError) as exc:
                self.log.warning("protection_read_failed", symbol=symbol, error=repr(exc), action_taken="snapshot's")
                if symbol in saved:
                    self.protections[symbol] = saved[symbol]
                continue
            if entry is None:
                continue
            try:
                raw = msgspec.json.decode(entry[0])
                self.protections[symbol] = Protection(
                    str(raw["entry"]),
                    symbol,
                    Decimal(raw["stop_loss"]) if raw.get("stop_loss") else None,
                    Decimal(raw["take_profit"]) if raw.get("take_profit") else None,
                )
            except (msgspec.DecodeError, KeyError, TypeError, ArithmeticError) as exc:
                self.log.error("protection_record_invalid", symbol=symbol, error=repr(exc), action_taken="ignored")

    # ------------------------------------------------------------------ snapshot and recovery (SPEC §8, FM-C9)

    async def recover(self) -> RecoveryReport:
        """Load the latest valid snapshot and fold only the ORDERS messages after it (bounded replay).

        Without a valid snapshot the whole ORDERS stream is folded (it starts at 1: nothing was
        removed), else the Postgres projections are loaded as before snapshots existed. A corrupt
        snapshot is skipped for an older one (P1 alert). The tail's effects are upserted into the
        projections (idempotent), which repairs rows a crash left behind. Reconciliation with the
        venue follows (`reconcile`), before any order is accepted.
        """
        checkpoint: PositionCheckpoint | None = None
        corrupt: list[str] = []
        started_ns = self.clock()
        phases: dict[str, float] = {}
        if self.snapshots is not None:
            try:
                found = await self.snapshots.load_latest_valid(self.component, accept=checkpoint_problem)
            except (asyncpg.PostgresError, OSError) as exc:
                self.log.warning("snapshot_load_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            else:
                corrupt = [f"id {c.id} seq {c.stream_seq}: {c.reason}" for c in found.corrupt]
                if found.snapshot is not None:
                    checkpoint = decode_checkpoint(found.snapshot.state)
        phases["snapshot_load_ms"] = (self.clock() - started_ns) / 1e6
        try:
            first, last = await self.bus.stream_bounds(subjects.STREAM_ORDERS.name)
        except NotFoundError:
            first, last = 0, 0
        if checkpoint is None and first > 1:
            await self.load()
            report = RecoveryReport("projections", None, 0, len(corrupt), last)
        else:
            start = Folded()
            from_seq = 1
            mode = "replay"
            if checkpoint is not None:
                mode = "snapshot"
                from_seq = checkpoint.stream_seq + 1
                start = Folded(
                    orders={order.client_order_id: order for order in checkpoint.orders},
                    order_seq=dict(checkpoint.order_seq),
                    positions={
                        (self.venue, symbol): (position, checkpoint.position_seq.get(symbol, 0), 0)
                        for symbol, position in checkpoint.positions.items()
                    },
                )
                if checkpoint.stream_seq > last:
                    self.log.warning(
                        "snapshot_ahead_of_stream",
                        snapshot_seq=checkpoint.stream_seq,
                        stream_last=last,
                        action_taken="snapshot kept; reconciliation with the venue corrects it",
                    )
            mark_ns = self.clock()
            # The stream holds every venue's orders: this process keeps, and writes, its own only.
            folded = of_venue(fold_events(await read_orders_stream(self.bus, from_seq), start), self.venue)
            phases["tail_fold_ms"] = (self.clock() - mark_ns) / 1e6
            self.orders = folded.orders
            self._seq = dict(folded.order_seq)
            self.evicted_until_ns = checkpoint.evicted_until_ns if checkpoint is not None else 0
            self.positions = {}
            self._position_seqs = {}
            for (_, symbol), (position, seq, _) in folded.positions.items():
                self.positions[symbol] = position
                self._position_seqs[symbol] = seq
            self._position_seq = max(self._position_seqs.values(), default=0)
            await self._load_protections(checkpoint.protections if checkpoint is not None else ())
            mark_ns = self.clock()
            try:
                await write(folded, self.projections, touched_only=True)
            except (asyncpg.PostgresError, OSError) as exc:
                # FM-C3: the log is the truth; the projections catch up with the next writes or a rebuild.
                self.log.warning("projection_catch_up_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            phases["projection_write_ms"] = (self.clock() - mark_ns) / 1e6
            evicted = self.trim()  # a whole-log replay, or a long downtime, leaves old finished orders
            self.rebase()
            covered = max(last, checkpoint.stream_seq if checkpoint is not None else 0)
            snapshot_seq = checkpoint.stream_seq if checkpoint is not None else None
            report = RecoveryReport(mode, snapshot_seq, folded.events, len(corrupt), covered, orders_evicted=evicted)
            # The next snapshot is due once the stream grew past the policy's budget since this one.
            self._snapshot_stream_mark = snapshot_seq or 0
        recovered = {symbol: str(p.quantity) for symbol, p in sorted(self.positions.items()) if p.quantity}
        report = msgspec.structs.replace(report, positions=recovered, orders_loaded=len(self.orders))
        self.recovery = report
        self.log.info(
            "position_recovered",
            mode=report.mode,
            snapshot_seq=report.snapshot_seq,
            replayed=report.replayed,
            corrupt_snapshots=report.corrupt_snapshots,
            orders=len(self.orders),
            orders_evicted=report.orders_evicted,
            timings={name: round(ms, 1) for name, ms in phases.items()},
            total_ms=round((self.clock() - started_ns) / 1e6, 1),
            positions=recovered,
            protections=len(self.protections),
        )
        if corrupt:
            await self._alert(
                f"snapshot-corrupt.{self.component}",
                AlertSeverity.P1,
                "corrupt position snapshot skipped (FM-C3); recovered from an older one or the log",
                snapshots=corrupt[:10],
            )
        return report

    async def state_query(self, payload: bytes) -> bytes:
        """`svc.position.state`: orders (status, filled), positions, protections and the recovery report."""
        async with self._lock:
            view = {
                "orders": {
                    coid: {"status": o.status.value, "filled_quantity": str(o.filled_quantity), "symbol": o.symbol}
                    for coid, o in sorted(self.orders.items())
                },
                "positions": {symbol: str(p.quantity) for symbol, p in sorted(self.positions.items())},
                "protections": {
                    symbol: {"entry": p.entry, "stop_loss": str(p.stop_loss), "take_profit": str(p.take_profit)}
                    for symbol, p in sorted(self.protections.items())
                },
                "reconciled": self.reconciled,
                "recovery": msgspec.structs.asdict(self.recovery) if self.recovery is not None else None,
                "memory": {
                    "orders": len(self.orders),
                    "evicted": self.orders_evicted,
                    "evicted_until_ns": self.evicted_until_ns,
                    "retention_s": self.retention.keep_ns / 1e9,
                    "retention_max_terminal": self.retention.max_terminal,
                },
            }
        return msgspec.json.encode(view)

    async def _covered_sequence(self, last: int) -> int:
        """The ORDERS sequence a snapshot taken now covers (`adapters.covered_sequence` over the
        consumers that create orders: approvals, denials). Folding is idempotent, so covering less
        than everything is always safe."""
        durables = (self.orders_durable, self.denials_durable)
        return await covered_sequence(self.bus.js, subjects.STREAM_ORDERS.name, durables, last)

    async def snapshot(self, *, force: bool = False) -> int | None:
        """Snapshot the state when the policy says so (or `force`); returns the covered sequence.

        Captured under the order lock (a consistent cut), saved outside it. A failed save is logged
        and retried at the next due time: trading never depends on Postgres (FM-C3).
        """
        if self.snapshots is None or self.snapshot_policy is None:
            return None
        if not force and not self.snapshot_policy.due():
            # Others write to ORDERS too (risk's approvals, the gateway's commands, ...): the tail a
            # restart folds is bounded by the stream's growth, not only by what this service published.
            _, last = await self.bus.stream_bounds(subjects.STREAM_ORDERS.name)
            behind = self._snapshot_lowered
            if last - self._snapshot_stream_mark < self.snapshot_policy.every_events and not behind:
                return None
        async with self._lock:
            _, last = await self.bus.stream_bounds(subjects.STREAM_ORDERS.name)
            self._snapshot_stream_mark = last
            covered = await self._covered_sequence(last)
            # Lowered to an approval not acknowledged yet: the next round tries again (it is acked by then).
            self._snapshot_lowered = covered < last
            checkpoint = PositionCheckpoint(
                version=SNAPSHOT_VERSION,
                stream_seq=covered,
                orders=list(self.orders.values()),
                order_seq=dict(self._seq),
                positions=dict(self.positions),
                position_seq=dict(self._position_seqs),
                protections=list(self.protections.values()),
                evicted_until_ns=self.evicted_until_ns,
            )
            state = msgspec.json.encode(checkpoint)
            self.snapshot_policy.taken()
        try:
            await self.snapshots.save(self.component, covered, state)
            await self.snapshots.prune(self.component)
        except (asyncpg.PostgresError, OSError) as exc:
            self.snapshots_failed += 1
            self.log.warning("snapshot_save_failed", error=f"{type(exc).__name__}: {exc}"[:300], action_taken="retry")
            return None
        self.snapshots_saved += 1
        self.last_snapshot_seq = covered
        self.log.info("snapshot_saved", stream_seq=covered, orders=len(checkpoint.orders), bytes=len(state))
        return covered

    async def reconcile(self, symbols: Sequence[str]) -> None:
        """Compare with the venue, correct through events, and only then mark reconciled.

        Runs at start-up, after the venue link comes back and after every user-stream reconnect;
        no order is sent until it has succeeded (SPEC §6).

        Raises:
            VenueError, VenueTimeout, VenueUnreachable, BreakerOpen, TransientError: the venue could not
                be asked; the service stays unreconciled and tries again.
        """
        async with self._lock:
            symbols = tuple(symbols) or self.symbols
            venue_open = await self._venue_open_orders(symbols)
            live = {coid: o for coid, o in self.orders.items() if not is_terminal(o.status)}
            plan = plan_reconciliation(live, venue_open, {}, {}, set(self.orders))
            for answer in plan.adopt:
                await self._adopt(answer)
            open_by_id = {str(o.get("clientOrderId")): o for o in venue_open}
            for coid, order in live.items():
                if coid in open_by_id:
                    await self._apply_venue_order(order, open_by_id[coid])
                elif order.status == OrderStatus.PENDING_SUBMISSION:
                    continue  # sent by the poll once reconciled
                else:
                    await self._query_and_apply(order)
            # Positions last, after every order's fills were fetched: the smallest window for a race.
            venue_positions_raw = await self.client.position_risk()
            venue_positions = {
                str(p["symbol"]): Decimal(str(p.get("positionAmt", "0")))
                for p in venue_positions_raw
                if p.get("symbol") in symbols and Decimal(str(p.get("positionAmt", "0"))) != 0
            }
            local_positions = {s: p.quantity for s, p in self.positions.items() if p.quantity != 0}
            entry_prices = {str(p["symbol"]): Decimal(str(p.get("entryPrice", "0"))) for p in venue_positions_raw}
            position_plan = plan_reconciliation({}, [], local_positions, venue_positions, set())
            for symbol, (local, remote) in position_plan.position_mismatches.items():
                await self._correct_position(symbol, local, remote, entry_prices.get(symbol, Decimal(0)))
            self.rebase()
            self.reconciled = True
            self.reconciliations += 1
            self.log.info(
                "reconciliation_done",
                adopted=len(plan.adopt),
                live_orders=len(live),
                position_corrections=len(position_plan.position_mismatches),
                number=self.reconciliations,
            )
            await self._set_link(ConnectionState.CONNECTED, "venue reachable and reconciled")
            await self.check_invariants(full=True)
            # Stops of open positions are re-established (or found, same ids) after every reconciliation.
            await self.maintain_protection(all_symbols=True)

    async def _adopt(self, answer: dict) -> None:
        coid = str(answer.get("clientOrderId"))
        now = self.clock()
        order = OrderRecord(
            client_order_id=coid,
            idempotency_key=coid,
            source=OrderSource.EXTERNAL,
            venue=self.venue,
            symbol=str(answer["symbol"]),
            side=Side(str(answer["side"])),
            order_type=OrderType(str(answer["type"]))
            if answer.get("type") in OrderType.__members__
            else OrderType.LIMIT,
            quantity=Decimal(str(answer.get("origQty", "0"))),
            status=OrderStatus.UNKNOWN,
            created_ns=now,
            updated_ns=now,
            price=Decimal(str(answer["price"])) if Decimal(str(answer.get("price", "0"))) > 0 else None,
            stop_price=Decimal(str(answer["stopPrice"])) if Decimal(str(answer.get("stopPrice", "0"))) > 0 else None,
            reduce_only=bool(answer.get("reduceOnly", False)),
            venue_order_id=int(answer["orderId"]),
            reason="adopted from the venue at reconciliation",
        )
        # Fills before adoption are already in the venue's position: remember them, do not re-apply.
        for trade in await self.client.user_trades(order.symbol, order_id=order.venue_order_id, limit=1000):
            order.add_fill(int(trade["id"]), Decimal(str(trade["qty"])), Decimal(str(trade["price"])))
        self.orders[coid] = order
        await self._apply_venue_order(order, answer)
        await self._alert(
            f"reconcile-adopted:{coid}",
            AlertSeverity.P2,
            "venue order unknown locally adopted as EXTERNAL",
            coid=coid,
            symbol=order.symbol,
        )

    async def _correct_position(self, symbol: str, local: Decimal, remote: Decimal, entry: Decimal) -> None:
        previous = self.positions.get(symbol, Position())
        corrected = Position(remote, entry if remote != 0 else Decimal(0), previous.realized_pnl)
        self.positions[symbol] = corrected
        now = self.clock()
        changed = PositionChanged(
            venue=self.venue,
            symbol=symbol,
            quantity=corrected.quantity,
            average_entry_price=corrected.average_entry_price,
            realized_pnl=corrected.realized_pnl,
        )
        seq = await self._publish(subjects.evt_position(self.venue, symbol), changed, f"reconcile:{symbol}:{now}")
        self._position_seqs[symbol] = seq
        await self.projections.upsert_position(self.venue, symbol, corrected, now, seq)
        await self._alert(
            self._scoped(f"reconcile-position:{symbol}"),
            AlertSeverity.P1,
            "local position differs from the venue; corrected to the venue",
            symbol=symbol,
            local=str(local),
            venue=str(remote),
        )

    # ------------------------------------------------------------------ protective stops (FM-C2)

    def _protection_key(self, symbol: str) -> str:
        return f"protection.{self.venue}.{symbol}"

    async def _set_protection(self, protection: Protection) -> None:
        """Remember (durably, in KV) the levels that protect the symbol's position."""
        self.protections[protection.symbol] = protection
        value = {
            "entry": protection.entry,
            "stop_loss": str(protection.stop_loss) if protection.stop_loss is not None else None,
            "take_profit": str(protection.take_profit) if protection.take_profit is not None else None,
        }
        await self.bus.kv_put(self._protection_key(protection.symbol), msgspec.json.encode(value))
        self._protect_dirty.add(protection.symbol)

    async def _clear_protection(self, symbol: str) -> None:
        self.protections.pop(symbol, None)
        kv = await self.bus.kv()
        try:
            await kv.delete(self._protection_key(symbol))
        except KeyNotFoundError:
            pass
        self.log.info("protection_cleared", symbol=symbol)

    async def maintain_protection(self, *, all_symbols: bool = False) -> None:
        """Keep each protected position's reduce-only stop and take-profit at the venue, sized to it.

        Called under the order lock after fills, cancels, polls and reconciliation. Wanted orders
        are placed before stale ones are cancelled, so a resize never leaves the position bare;
        when the position is flat every protective order of the symbol is cancelled. Nothing is
        done while orders may not be sent (unreconciled, link down, lease lost).
        """
        if not self.may_submit():
            return
        symbols = set(self._protect_dirty)
        if all_symbols:
            symbols |= set(self.protections) | {o.symbol for o in self.orders.values() if is_protective(o)}
        self._protect_dirty.clear()
        for symbol in sorted(symbols):
            try:
                await self._protect_symbol(symbol)
            except (*VENUE_FAILURES, TransientError) as exc:
                self._protect_dirty.add(symbol)  # tried again at the next poll
                self.log.warning("protection_failed", symbol=symbol, error=f"{type(exc).__name__}: {exc}")

    async def _protect_symbol(self, symbol: str) -> None:
        position = self.positions.get(symbol, Position()).quantity
        protection = self.protections.get(symbol)
        if any(
            o.symbol == symbol and o.idempotency_key.startswith(PROTECT_CLOSE_PREFIX) and not is_terminal(o.status)
            for o in self.orders.values()
        ):
            return  # closing at market after a stop/take-profit refused as already triggered: wait for it
        wanted = protective_orders(protection, position)
        plan = plan_protection(wanted, self.orders, symbol, client_order_id_for)
        for item, planned in plan.place:
            key = await self._fresh_key(planned.rsplit(":", 1)[0]) if planned.startswith(PROTECT_PREFIX) else planned
            if not await self._place_protective(item, key):
                return  # closed at market instead; the rest follows the position at the next round
        for stem in plan.unavailable:
            if stem not in self._protect_given_up:
                self._protect_given_up.add(stem)
                await self._alert(
                    f"protection-unavailable:{stem}",
                    AlertSeverity.P1,
                    "the venue keeps refusing a protective order: position not protected",
                    symbol=symbol,
                    stem=stem,
                    position=str(position),
                )
        for coid in plan.cancel:
            await self._cancel(self.orders[coid], "protective order no longer matches the position")
        if position == 0 and protection is not None:
            entry = self.orders.get(protection.entry)
            if entry is None or is_terminal(entry.status):
                await self._clear_protection(symbol)

    async def _place_protective(self, item: ProtectiveOrder, key: str) -> bool:
        """Place one protective order; False when the venue refused it as already triggered (-2021)
        and the position is being closed at market instead."""
        coid = client_order_id_for(key)
        command = SubmitOrder(
            client_order_id=coid,
            idempotency_key=key,
            source=OrderSource.RISK,
            symbol=item.symbol,
            side=item.side,
            order_type=item.order_type,
            quantity=item.quantity,
            venue=self.venue,
            stop_price=item.stop_price,
            reduce_only=True,
            correlation_id=item.entry,
        )
        order = await self._approve_own(command)
        self.log.info(
            "protective_order_placing",
            client_order_id=coid,
            symbol=item.symbol,
            type=item.order_type.value,
            quantity=str(item.quantity),
            stop_price=str(item.stop_price),
            entry=item.entry,
        )
        await self._submit(order)
        return not (order.status == OrderStatus.REJECTED and (order.reason or "").startswith(IMMEDIATE_TRIGGER_REASON))

    async def _triggered_at_placement(self, order: OrderRecord, exc: VenueError) -> None:
        """A stop or take-profit the venue refuses because the mark is already past it (-2021).

        Its level is passed: for a stop the loss limit, for a take-profit the target. Leaving the
        position without it is the one wrong answer, so the position is closed now with a reduce-only
        MARKET order (`protect-close:...`), as the venue would have done had the order rested.
        """
        coid = order.client_order_id
        order.reason = f"{IMMEDIATE_TRIGGER_REASON} (code={exc.code} {exc.msg}): position closed at market instead"
        self._transition(order, OrderTrigger.REJECT)
        rejected = OrderRejected(
            client_order_id=coid,
            symbol=order.symbol,
            reason=order.reason,
            error_class=ErrorClass.PERMANENT.value,
            venue_code=exc.code,
        )
        await self._publish(self._order_subject("rejected", order), rejected, f"rejected:{coid}", coid)
        await self._save(order)
        position = self.positions.get(order.symbol, Position()).quantity
        self.log.error(
            "protection_triggered_at_placement",
            client_order_id=coid,
            symbol=order.symbol,
            type=order.order_type.value,
            stop_price=str(order.stop_price),
            position=str(position),
            action_taken="close the position at market (reduce-only)",
        )
        await self._alert(
            self._scoped(f"protection-triggered:{order.symbol}"),
            AlertSeverity.P1,
            "protective order would trigger immediately: position closed at market",
            coid=coid,
            type=order.order_type.value,
            stop_price=str(order.stop_price),
            position=str(position),
        )
        if position == 0:
            return
        stem = order.idempotency_key[len(PROTECT_PREFIX) :].rsplit(":", 1)[0]  # <kind>:<entry>:<size>
        key = await self._fresh_key(f"{PROTECT_CLOSE_PREFIX}{stem}")
        close = await self._approve_own(self._market_close(key, order.symbol, position, correlation_id=coid))
        await self._submit(close)

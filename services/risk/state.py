"""risk's rebuilt state and its one fold: `RiskState` and `apply(state, event)`.

`RiskState` is everything risk derives from the ORDERS stream (positions, pending exposure, decided
orders and their strategies, the strategies' order rate, the trades feeding CB-1/CB-3) plus the last
mark prices. `apply` is the only way it changes: the live handlers decide, publish, then apply what
they published; recovery applies the replayed log with the same function, so a restarted risk
holds exactly what the running one held (SPEC §8, "recover deterministically").

Pure: no I/O and no clock. Times come from the events themselves.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from proto.enums import TERMINAL_ORDER_STATUSES, OrderStatus
from proto.envelope import Message
from proto.messages import (
    MarkPrice,
    OrderAccepted,
    OrderApproved,
    OrderCanceled,
    OrderDenied,
    OrderFilled,
    OrderRejected,
    PositionChanged,
    SubmitOrder,
)

from .exposure import OrderRateWindow, PendingExposure
from .routing import book_key
from .trades import TradeTracker, TradeUpdate

MAX_REMEMBERED_ORDERS = 10_000
"""Position message ids and order → strategy entries kept (the durable consumers' acks cover older ones)."""


DECIDED_KEEP_NS = 24 * 3600 * 1_000_000_000
"""How long a decided order is remembered after the newest decision: the ORDERS stream's
de-duplication window, far longer than any redelivery of an approval or of its command."""


MAX_DECIDED_ORDERS = 100_000
"""At most this many decided orders are remembered, the newest: a burst of orders within the 24 h
would otherwise grow risk's memory without bound (issue 15). Redeliveries come within minutes."""


@dataclass
class DecidedOrders:
    """Client order ids that have a decision, each with the decision's time, kept for
    `DECIDED_KEEP_NS` after the newest decision, and at most `limit` of them (the newest).

    Both bounds depend only on the (time, id) pairs, never on the order they arrived in: live
    handling (decision order) and a replay (stream order) keep exactly the same ids.
    """

    at: dict[str, int] = field(default_factory=dict)
    newest_ns: int = 0
    limit: int = field(default=MAX_DECIDED_ORDERS, repr=False, compare=False)
    _by_time: list[tuple[int, str]] = field(default_factory=list, repr=False, compare=False)

    def __contains__(self, client_order_id: object) -> bool:
        return client_order_id in self.at

    def __len__(self) -> int:
        return len(self.at)

    def add(self, client_order_id: str, ts_ns: int) -> None:
        """Remember a decision taken at `ts_ns`; an order decided more than once keeps its latest time."""
        self.newest_ns = max(self.newest_ns, ts_ns)
        floor = self.newest_ns - DECIDED_KEEP_NS
        if ts_ns >= floor and ts_ns > self.at.get(client_order_id, -1):
            self.at[client_order_id] = ts_ns
            heapq.heappush(self._by_time, (ts_ns, client_order_id))
        while self._by_time and (self._by_time[0][0] < floor or len(self.at) > self.limit):
            ts, coid = heapq.heappop(self._by_time)
            if self.at.get(coid) == ts:
                del self.at[coid]
        if len(self._by_time) > 2 * len(self.at) + 64:
            # Entries of orders decided again pile up in the heap: keep only the live ones.
            self._by_time = [(ts, coid) for ts, coid in self._by_time if self.at.get(coid) == ts]
            heapq.heapify(self._by_time)

    def to_state(self) -> list[tuple[str, int]]:
        """Snapshot form: (client order id, decision time), oldest first."""
        return sorted(self.at.items(), key=lambda item: (item[1], item[0]))

    @classmethod
    def from_state(cls, entries: list[tuple[str, int]]) -> DecidedOrders:
        """Rebuild from `to_state`'s form."""
        decided = cls()
        for client_order_id, ts_ns in entries:
            decided.add(client_order_id, ts_ns)
        return decided


@dataclass
class RiskState:
    """What risk rebuilds on recovery, as of the ORDERS sequence `orders_seq`.

    Attributes:
        venue: the main venue (its books are keyed by symbol alone: `book_key`).
        backup_venue: the backup venue ("" none).
        paper_venue: the paper venue beside the live ones ("" none): its positions are tracked
            (paper orders' own limits and holders) but never feed the loss breakers (CB-1/CB-3).
        positions: position per `book_key`.
        position_ts: event time of the position held per book (older events are ignored).
        seen_positions: `PositionChanged` message ids already counted (bounded).
        trades: position changes turned into trades (CB-1/CB-3 inputs).
        pending: approved orders not yet filled, rejected or canceled.
        decided: client order ids that have a decision (the last 24 h of decisions).
        order_strategy: the strategy of each approved order (bounded), to attribute its trades.
        rates: the strategies' exposure-adding approvals in the last minute.
        mark_prices: last mark price per symbol (followed live; kept in snapshots).
        orders_seq: highest ORDERS sequence reflected here.
    """

    venue: str
    backup_venue: str = ""
    paper_venue: str = ""
    positions: dict[str, Decimal] = field(default_factory=dict)
    position_ts: dict[str, int] = field(default_factory=dict)
    seen_positions: OrderedDict[str, None] = field(default_factory=OrderedDict)
    trades: TradeTracker = field(default_factory=TradeTracker)
    pending: PendingExposure = field(default_factory=PendingExposure)
    decided: DecidedOrders = field(default_factory=DecidedOrders)
    order_strategy: OrderedDict[str, str | None] = field(default_factory=OrderedDict)
    rates: OrderRateWindow = field(default_factory=OrderRateWindow)
    mark_prices: dict[str, Decimal] = field(default_factory=dict)
    orders_seq: int = 0

    @property
    def venues(self) -> tuple[str, ...]:
        """Venues this desk trades on: the main one, then the backup if configured."""
        return (self.venue, self.backup_venue) if self.backup_venue else (self.venue,)

    def book(self, venue: str, symbol: str) -> str:
        """The `book_key` of a symbol on a venue."""
        return book_key(venue, symbol, self.venue)

    def position(self, venue: str, symbol: str) -> Decimal:
        """The signed position of a symbol on a venue (0 when none is known)."""
        return self.positions.get(self.book(venue, symbol), Decimal(0))


def counts_toward_rate(order: SubmitOrder) -> bool:
    """Does an approved order count toward its strategy's orders-per-minute limit?

    Every strategy order that is not reduce-only: the rule reads the event alone, so the log
    rebuilds the same window whatever positions risk had seen when it decided (the position a
    decision saw is not on the log). Strategies mark their exits reduce-only, and those are exempt.
    """
    return order.strategy is not None and not order.reduce_only


def apply(state: RiskState, event: Message) -> TradeUpdate | None:
    """Fold one event into `state` (idempotent: a redelivered event changes nothing).

    Returns:
        What a position change means for the loss breakers (CB-1/CB-3), None for any other event
        and for a position change that is stale, already counted or a symbol's first (a baseline).
    """
    match event:
        case OrderApproved(order=order):
            if order.client_order_id in state.decided:
                # Applied already (live right after the decision, or a redelivery): adding it again
                # would make an order that has filled since pending a second time.
                return None
            state.pending.add(order)
            state.decided.add(order.client_order_id, event.ts_event_ns)
            remember(state.order_strategy, order.client_order_id, order.strategy)
            if order.strategy is not None and counts_toward_rate(order):
                state.rates.record(order.strategy, event.ts_event_ns)
        case OrderDenied(order=order):
            state.decided.add(order.client_order_id, event.ts_event_ns)
        case OrderFilled():
            # Fills carry the cumulative quantity: applying one twice is applying it once.
            state.pending.on_fill(event.client_order_id, event.cumulative_quantity)
        case OrderRejected() | OrderCanceled():
            state.pending.release(event.client_order_id)
        case OrderAccepted() if event.status in TERMINAL_ORDER_STATUSES and event.status != OrderStatus.FILLED:
            state.pending.release(event.client_order_id)
        case PositionChanged():
            return _apply_position(state, event)
        case MarkPrice():
            state.mark_prices[event.symbol] = event.mark_price
        case _:
            pass  # order commands, events risk does not derive state from
    return None


def _apply_position(state: RiskState, event: PositionChanged) -> TradeUpdate | None:
    if event.message_id in state.seen_positions or not track_position(state, event):
        return None
    remember(state.seen_positions, event.message_id, None)
    strategy = state.order_strategy.get(event.caused_by_client_order_id or "")
    book = state.book(event.venue, event.symbol)
    update = state.trades.on_position(book, event.quantity, event.realized_pnl, event.ts_event_ns, strategy)
    # A paper fill is no live loss: the loss breakers never count it (the owner is still tracked).
    return None if state.paper_venue and event.venue == state.paper_venue else update


def track_position(state: RiskState, event: PositionChanged) -> bool:
    """Take the position of a newer `PositionChanged`, without counting it as a trade.

    Returns:
        False when the event is older than the position held, or of a venue this desk does not
        trade on (ignored).
    """
    if event.venue not in state.venues and not (state.paper_venue and event.venue == state.paper_venue):
        return False
    book = state.book(event.venue, event.symbol)
    if event.ts_event_ns < state.position_ts.get(book, 0):
        return False
    state.position_ts[book] = event.ts_event_ns
    state.positions[book] = event.quantity
    return True


def seed_position(state: RiskState, event: PositionChanged) -> None:
    """Start from a symbol's newest known position (no recovery ran) without counting it as a result."""
    if track_position(state, event):
        state.trades.seed(state.book(event.venue, event.symbol), event.quantity, event.realized_pnl, event.ts_event_ns)


def remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    """Put `key` in a bounded, insertion-ordered cache (the oldest entry goes beyond the bound)."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > MAX_REMEMBERED_ORDERS:
        cache.popitem(last=False)

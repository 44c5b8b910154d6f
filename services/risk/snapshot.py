"""risk's snapshot (SPEC §8): the in-memory state derived from the ORDERS stream, as of one sequence.

What it holds and why (see docs/recovery.md):
- positions (and the event times ordering them), the position events already counted, and the
  trade tracker's per-symbol books (open trade, its strategy and PnL so far): the inputs of CB-1/CB-3
  that would otherwise be lost, or misattributed, across a restart;
- pending exposure (approved, not yet filled/rejected/canceled orders): without it a restarted risk
  would approve past the position limit while earlier approvals are still in flight;
- decided client order ids and which strategy each order belongs to (bounded);
- the strategies' recent approval times (orders-per-minute limit), last mark prices;
- every breaker's record (with counters) and the trading state — kept for the record and as the
  fallback when KV has none; KV stays the fail-closed authority for both (written synchronously at
  every change, before anything else happens).

The classes are other modules' (`domain.PendingExposure`, `breakers.TradeTracker`); this module reads
and rebuilds them without changing them. Their internal maps are read here because they offer no
export; see the report/docs for the suggested `to_state`/`from_state` pair on them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec

from libs.bus import Bus, Delivery
from libs.logging import Logger
from libs.service_snapshots import Loaded, SnapshotKeeper, consumer_processed_through
from proto import subjects
from proto.enums import OrderSource, OrderType, Side
from proto.envelope import Message
from proto.messages import SubmitOrder

from .breakers import BreakerRecord, TradeTracker
from .domain import OrderRateWindow, PendingExposure, TradingStateRecord

SNAPSHOT_COMPONENT = "risk"


class PendingOrderState(msgspec.Struct, frozen=True, kw_only=True):
    client_order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    filled: Decimal = Decimal(0)
    reduce_only: bool = False


class OpenTradeState(msgspec.Struct, frozen=True, kw_only=True):
    strategy: str | None
    opened_ns: int
    pnl: Decimal


class TradeBookState(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    quantity: Decimal
    realized: Decimal
    trade: OpenTradeState | None = None


class RiskSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """risk's state covering every ORDERS message up to `orders_seq`."""

    orders_seq: int
    taken_ns: int
    positions: dict[str, Decimal] = {}
    position_ts: dict[str, int] = {}
    seen_positions: list[str] = []
    trades: list[TradeBookState] = []
    pending: list[PendingOrderState] = []
    decided: list[str] = []
    order_strategy: list[tuple[str, str | None]] = []
    rates: dict[str, list[int]] = {}
    mark_prices: dict[str, Decimal] = {}
    breakers: list[BreakerRecord] = []
    trading_state: TradingStateRecord | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RiskSnapshot)


def encode_snapshot(snapshot: RiskSnapshot) -> bytes:
    return _encoder.encode(snapshot)


def decode_snapshot(data: bytes) -> RiskSnapshot:
    """Raises msgspec errors (ValueError) when the bytes are not a risk snapshot."""
    return _decoder.decode(data)


# --------------------------------------------------------------------------- pending exposure


def pending_state(pending: PendingExposure) -> list[PendingOrderState]:
    orders: dict[str, Any] = pending._orders  # private: no export on the class (module doc)
    return [
        PendingOrderState(
            client_order_id=coid,
            symbol=item.symbol,
            side=item.side,
            quantity=item.quantity,
            filled=item.filled,
            reduce_only=item.reduce_only,
        )
        for coid, item in orders.items()
    ]


def restore_pending(items: list[PendingOrderState]) -> PendingExposure:
    """Rebuilt through the class's own `add` / `on_fill`."""
    pending = PendingExposure()
    for item in items:
        pending.add(
            SubmitOrder(
                client_order_id=item.client_order_id,
                idempotency_key=item.client_order_id,
                source=OrderSource.RISK,
                symbol=item.symbol,
                side=item.side,
                order_type=OrderType.MARKET,
                quantity=item.quantity,
                reduce_only=item.reduce_only,
            )
        )
        if item.filled:
            pending.on_fill(item.client_order_id, item.filled)
    return pending


# --------------------------------------------------------------------------- trades


def trades_state(tracker: TradeTracker) -> list[TradeBookState]:
    books: dict[str, Any] = tracker._books  # private: no export on the class (module doc)
    result = []
    for symbol, book in books.items():
        trade = book.trade
        result.append(
            TradeBookState(
                symbol=symbol,
                quantity=book.quantity,
                realized=book.realized,
                trade=None
                if trade is None
                else OpenTradeState(strategy=trade.strategy, opened_ns=trade.opened_ns, pnl=trade.pnl),
            )
        )
    return result


def restore_trades(items: list[TradeBookState]) -> TradeTracker:
    """Seeded through `seed`; an open trade then gets back its strategy and PnL so far."""
    tracker = TradeTracker()
    books: dict[str, Any] = tracker._books
    for item in items:
        tracker.seed(item.symbol, item.quantity, item.realized, item.trade.opened_ns if item.trade else 0)
        book = books[item.symbol]
        if item.trade is None:
            book.trade = None
        elif book.trade is not None:
            book.trade.strategy = item.trade.strategy
            book.trade.pnl = item.trade.pnl
    return tracker


# --------------------------------------------------------------------------- rate window


def rates_state(rates: OrderRateWindow, now_ns: int) -> dict[str, list[int]]:
    times: dict[str, deque[int]] = rates._times  # private: no export on the class (module doc)
    return {
        strategy: list(values) for strategy in times if (values := times[strategy]) and rates.count(strategy, now_ns)
    }


def restore_rates(state: dict[str, list[int]]) -> OrderRateWindow:
    rates = OrderRateWindow()
    for strategy, values in state.items():
        for ts in values:
            rates.record(strategy, ts)
    return rates


# --------------------------------------------------------------------------- the ORDERS log


ORDERS_EVENTS_CONSUMER = "risk-events"
"""Durable consumer of the ORDERS events risk follows; its ack floor is what risk has fully processed."""
ORDERS_EVENT_SUBJECTS = ("evt.order.>", "evt.fill.>", "evt.position.>")
MAX_DECIDED = 20_000
"""Decided client order ids kept in a snapshot (the durable consumers' acks cover older ones)."""


class OrdersLog:
    """What `RiskService.recover` reads: snapshots, the ORDERS stream and the `risk-events` consumer."""

    def __init__(self, bus: Bus, snapshots: SnapshotKeeper[RiskSnapshot] | None) -> None:
        self._bus = bus
        self._snapshots = snapshots

    async def load_snapshot(self) -> Loaded[RiskSnapshot]:
        if self._snapshots is None:
            return Loaded(available=False)
        return await self._snapshots.load()

    async def bounds(self) -> tuple[int, int]:
        return await self._bus.stream_bounds(subjects.STREAM_ORDERS.name)

    async def processed_through(self) -> int | None:
        return await consumer_processed_through(self._bus, subjects.STREAM_ORDERS.name, ORDERS_EVENTS_CONSUMER)

    async def replay(self, start_seq: int, end_seq: int, apply: Callable[[Message, int], None]) -> int:
        def handler(message: Message, delivery: Delivery) -> None:
            apply(message, delivery.stream_sequence)

        return await self._bus.replay(subjects.STREAM_ORDERS.name, start_seq, end_seq, handler)


def snapshot_keeper(dsn: str, log: Logger) -> SnapshotKeeper[RiskSnapshot]:
    """risk's snapshots in Postgres, component `risk`."""
    return SnapshotKeeper(dsn, SNAPSHOT_COMPONENT, encode=encode_snapshot, decode=decode_snapshot, log=log)


async def consumer_missing(bus: Bus) -> bool:
    """True when the `risk-events` durable does not exist yet (first start with it)."""
    return await consumer_processed_through(bus, subjects.STREAM_ORDERS.name, ORDERS_EVENTS_CONSUMER) is None

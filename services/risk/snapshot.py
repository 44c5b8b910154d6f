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

The classes (`domain.PendingExposure`, `domain.OrderRateWindow`, `breakers.TradeTracker`) export
and rebuild their own state (`to_state` / `from_state`, msgspec structs defined next to them); this
module composes those into one snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import msgspec

from libs.bus import Bus, Delivery
from libs.logging import Logger
from libs.service_snapshots import Loaded, SnapshotKeeper, consumer_processed_through
from proto import subjects
from proto.envelope import Message

from .breakers import BreakerRecord, OpenTradeState, TradeBookState, TradeTracker
from .domain import OrderRateWindow, PendingExposure, PendingOrderState, TradingStateRecord

# The snapshot's parts are defined next to the classes they describe; re-exported from here.
__all__ = ["OpenTradeState", "PendingOrderState", "RiskSnapshot", "TradeBookState"]

SNAPSHOT_COMPONENT = "risk"


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


# --------------------------------------------------------------------------- the classes' own state


def pending_state(pending: PendingExposure) -> list[PendingOrderState]:
    return pending.to_state()


def restore_pending(items: list[PendingOrderState]) -> PendingExposure:
    return PendingExposure.from_state(items)


def trades_state(tracker: TradeTracker) -> list[TradeBookState]:
    return tracker.to_state()


def restore_trades(items: list[TradeBookState]) -> TradeTracker:
    return TradeTracker.from_state(items)


def rates_state(rates: OrderRateWindow, now_ns: int) -> dict[str, list[int]]:
    return rates.to_state(now_ns)


def restore_rates(state: dict[str, list[int]]) -> OrderRateWindow:
    return OrderRateWindow.from_state(state)


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

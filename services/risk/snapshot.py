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

The classes (`exposure.PendingExposure`, `exposure.OrderRateWindow`, `trades.TradeTracker`) export
and rebuild their own state (`to_state` / `from_state`, msgspec structs defined next to them);
`capture` composes those and the rest of `state.RiskState` into one snapshot, `restore` takes it back.
"""

from __future__ import annotations

from collections import OrderedDict
from decimal import Decimal

import msgspec

from libs.bus import Bus
from libs.logging import Logger
from libs.service_snapshots import SnapshotKeeper, StreamLog, StructCodec, consumer_processed_through
from proto import subjects
from proto.kv import BreakerValue, TradingStateValue

from .breaker_rules import BreakerBoard
from .exposure import OrderRateWindow, PendingExposure, PendingOrderState
from .state import DecidedOrders, RiskState
from .trades import OpenTradeState, TradeBookState, TradeTracker

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
    """Decided ids of snapshots written before `decided_at` (read only; taken as decided at `taken_ns`)."""
    decided_at: list[tuple[str, int]] = []
    """Decided client order ids with their decision times (`state.DecidedOrders`)."""
    order_strategy: list[tuple[str, str | None]] = []
    rates: dict[str, list[int]] = {}
    mark_prices: dict[str, Decimal] = {}
    breakers: list[BreakerValue] = []
    trading_state: TradingStateValue | None = None


CODEC = StructCodec(RiskSnapshot)
encode_snapshot = CODEC.encode
decode_snapshot = CODEC.decode


def capture(
    state: RiskState, orders_seq: int, breakers: BreakerBoard | None, trading: TradingStateValue, now_ns: int
) -> RiskSnapshot:
    """`state` as a snapshot covering ORDERS up to `orders_seq`, with breakers and trading state."""
    return RiskSnapshot(
        orders_seq=orders_seq,
        taken_ns=now_ns,
        positions=dict(state.positions),
        position_ts=dict(state.position_ts),
        seen_positions=list(state.seen_positions),
        trades=state.trades.to_state(),
        pending=state.pending.to_state(),
        decided_at=state.decided.to_state(),
        order_strategy=list(state.order_strategy.items()),
        rates=state.rates.to_state(now_ns),
        mark_prices=dict(state.mark_prices),
        # Counters as of now, but the record's own time kept: KV, written at every change, stays
        # the newer one and so the authority (`breaker_effects.load_breakers`).
        breakers=[msgspec.structs.replace(breaker.record, details=breaker.details()) for breaker in breakers.all()]
        if breakers
        else [],
        trading_state=trading,
    )


def restore(state: RiskState, snapshot: RiskSnapshot) -> None:
    """Load what `snapshot` holds of the ORDERS-derived state into `state` (mark prices are merged:
    a live one already followed is newer)."""
    state.positions = dict(snapshot.positions)
    state.position_ts = dict(snapshot.position_ts)
    state.seen_positions = OrderedDict((key, None) for key in snapshot.seen_positions)
    state.trades = TradeTracker.from_state(snapshot.trades)
    state.pending = PendingExposure.from_state(snapshot.pending)
    state.decided = DecidedOrders.from_state(
        [(coid, snapshot.taken_ns) for coid in snapshot.decided] + list(snapshot.decided_at)
    )
    state.order_strategy = OrderedDict(snapshot.order_strategy)
    state.rates = OrderRateWindow.from_state(snapshot.rates)
    state.mark_prices.update(snapshot.mark_prices)
    state.orders_seq = snapshot.orders_seq


# --------------------------------------------------------------------------- the ORDERS log


ORDERS_EVENT_SUBJECTS = (subjects.EVT_ORDER_ALL, subjects.EVT_FILL_ALL, subjects.EVT_POSITION_ALL)
"""What the durable `subjects.RISK_ORDER_EVENTS_CONSUMER` follows; its ack floor is what risk has fully processed."""


def orders_log(bus: Bus, snapshots: SnapshotKeeper[RiskSnapshot] | None) -> StreamLog[RiskSnapshot]:
    """What `recovery.recover` reads: snapshots, the ORDERS stream and the `risk-events` consumer."""
    return StreamLog(bus, snapshots, subjects.STREAM_ORDERS.name, durable=subjects.RISK_ORDER_EVENTS_CONSUMER)


def snapshot_keeper(dsn: str, log: Logger) -> SnapshotKeeper[RiskSnapshot]:
    """risk's snapshots in Postgres, component `risk`."""
    return CODEC.keeper(dsn, SNAPSHOT_COMPONENT, log)


async def consumer_missing(bus: Bus) -> bool:
    """True when the `risk-events` durable does not exist yet (first start with it)."""
    return (
        await consumer_processed_through(bus, subjects.STREAM_ORDERS.name, subjects.RISK_ORDER_EVENTS_CONSUMER) is None
    )

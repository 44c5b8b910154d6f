"""One fold for live and replay (`services.risk.state.apply`): for random sequences of orders,
fills, cancels, rejections and position changes, the state risk holds after handling them live
equals the state a restarted risk rebuilds from the same ORDERS log, from scratch and from a
snapshot the live one took plus the tail after it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.bus import Delivery
from libs.clock import ManualClock
from libs.logging import get_logger
from libs.service_snapshots import Loaded
from proto.enums import HotStateStatus, OrderSource, OrderType, Side, TradingState
from proto.envelope import Message
from proto.kv import TradingStateValue
from proto.messages import (
    MarkPrice,
    OrderApproved,
    OrderCanceled,
    OrderFilled,
    OrderRejected,
    PositionChanged,
    SubmitOrder,
)
from services.risk import dependencies, recovery
from services.risk import snapshot as snap
from services.risk.checks import RiskLimits
from services.risk.handlers import RiskService
from services.risk.state import apply

S = 1_000_000_000
VENUE = "binance-usdm"
SYMBOL = "BTCUSDT"
LIMITS = RiskLimits(
    symbols=frozenset({SYMBOL}),
    max_position_qty=Decimal(1),
    max_order_notional=Decimal(10**6),
    max_orders_per_minute=3,  # low, so that the window denies orders within a sequence
)
ORDERS_SUBJECTS = ("evt.order.", "evt.fill.", "evt.position.")


class OrdersStream:
    """The ORDERS stream in memory: risk's decisions land on it as the other services' events do."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def append(self, message: Message) -> int:
        self.messages.append(message)
        return len(self.messages)


class MemoryBus:
    """What risk's decisions need of the bus: publishing on the ORDERS stream, and KV (where no venue
    rules are published: the decisions here are about risk's own state)."""

    connected = True

    def __init__(self, stream: OrdersStream) -> None:
        self.stream = stream

    async def kv_get(self, key: str) -> tuple[bytes, int] | None:
        return None

    async def publish(self, subject: str, message: Message, *, msg_id: str | None = None) -> int:
        assert subject.startswith(ORDERS_SUBJECTS), f"{subject} is not on the ORDERS stream"
        return self.stream.append(message)


class MemoryLog:
    """`StreamLog` over the in-memory stream: a snapshot (or none), and every message processed."""

    def __init__(self, messages: list[Message], snapshot: snap.RiskSnapshot | None) -> None:
        self.messages = messages
        self.snapshot = snapshot

    async def load_snapshot(self) -> Loaded[snap.RiskSnapshot]:
        return Loaded(self.snapshot, self.snapshot.orders_seq if self.snapshot else None)

    async def bounds(self) -> tuple[int, int]:
        return (1, len(self.messages)) if self.messages else (0, 0)

    async def processed_through(self) -> int | None:
        return len(self.messages)

    async def replay(self, start_seq: int, end_seq: int, fold: Callable[[Message, int], None]) -> int:
        for seq in range(start_seq, end_seq + 1):
            fold(self.messages[seq - 1], seq)
        return max(0, end_seq - start_seq + 1)


def risk(stream: OrdersStream, clock: ManualClock) -> RiskService:
    """A risk with a live, VALID market: its decisions depend on positions, pending orders and rates."""
    monotonic = ManualClock(10 * S)  # stands still: the state-builder stays alive
    service = RiskService(
        MemoryBus(stream),  # type: ignore[arg-type]
        get_logger("risk-test"),
        LIMITS,
        VENUE,
        clock,
        TradingStateValue(state=TradingState.ACTIVE),
        monotonic=monotonic,
    )
    service.hot_state[SYMBOL] = HotStateStatus.VALID
    dependencies.heard_state_builder(service)
    # Marks are followed live (not on the ORDERS stream): every instance has seen the same one.
    apply(service.state, MarkPrice(venue=VENUE, symbol=SYMBOL, mark_price=Decimal(60000)))
    return service


def delivery(seq: int) -> Delivery:
    return Delivery(subject="evt.order", stream_sequence=seq, num_delivered=1, headers={})


QUANTITIES = [Decimal("0.05"), Decimal("0.1"), Decimal("0.2"), Decimal("0.4")]
SOURCES = [("alpha", OrderSource.STRATEGY), ("beta", OrderSource.STRATEGY), (None, OrderSource.OPERATOR)]

submit = st.tuples(
    st.just("submit"), st.sampled_from(Side), st.sampled_from(QUANTITIES), st.booleans(), st.sampled_from(SOURCES)
)
outcome = st.tuples(st.sampled_from(["fill", "fill-part", "cancel", "reject"]), st.integers(0, 40))
position = st.tuples(
    st.just("position"),
    st.sampled_from([Decimal("-0.4"), Decimal("-0.1"), Decimal(0), Decimal("0.1"), Decimal("0.4")]),
    st.integers(-30, 30),
    st.one_of(st.none(), st.integers(0, 40)),
    st.booleans(),
)
redeliver = st.tuples(st.just("redeliver"), st.integers(0, 200))
advance = st.tuples(st.just("advance"), st.integers(1, 45))
steps = st.lists(st.one_of(submit, submit, outcome, position, redeliver, advance), max_size=60)


async def run_live(
    plan: list[tuple[Any, ...]], snapshot_after: int
) -> tuple[RiskService, OrdersStream, ManualClock, bytes]:
    """Handle `plan` live; returns the service, the stream it produced and a snapshot taken mid-way."""
    clock = ManualClock(1_700_000_000 * S)
    stream = OrdersStream()
    live = risk(stream, clock)
    approved: list[SubmitOrder] = []
    realized = Decimal(0)
    keys = itertools.count()
    snapshot = snap.encode_snapshot(live.capture(live.orders_seq))

    async def publish_event(message: Message) -> None:
        seq = stream.append(message)
        await live.on_orders_event(message, delivery(seq))

    for index, step in enumerate(plan):
        if index == snapshot_after:
            snapshot = snap.encode_snapshot(live.capture(live.orders_seq))
        match step:
            case ("submit", side, quantity, reduce_only, (strategy, source)):
                key = f"k{next(keys)}"
                order = SubmitOrder(
                    client_order_id=f"c-{key}",
                    idempotency_key=key,
                    source=source,
                    symbol=SYMBOL,
                    side=side,
                    order_type=OrderType.MARKET,
                    quantity=quantity,
                    venue=VENUE,
                    reduce_only=reduce_only,
                    strategy=strategy,
                )
                await live.on_order_message(order, delivery(0))
                decision = stream.messages[-1]
                if isinstance(decision, OrderApproved):
                    approved.append(decision.order)
                # The durable `risk-events` consumer then delivers risk's own decision back.
                await live.on_orders_event(decision, delivery(len(stream.messages)))
            case (kind, pick) if kind in ("fill", "fill-part", "cancel", "reject") and approved:
                order = approved[pick % len(approved)]
                coid = order.client_order_id
                if kind == "cancel":
                    await publish_event(OrderCanceled(client_order_id=coid, symbol=SYMBOL))
                elif kind == "reject":
                    await publish_event(OrderRejected(client_order_id=coid, symbol=SYMBOL, reason="test"))
                else:
                    done = order.quantity if kind == "fill" else order.quantity / 2
                    fill = OrderFilled(
                        client_order_id=coid,
                        venue_order_id=1,
                        trade_id=next(keys),
                        symbol=SYMBOL,
                        side=order.side,
                        price=Decimal(60000),
                        quantity=done,
                        cumulative_quantity=done,
                        order_quantity=order.quantity,
                    )
                    await publish_event(fill)
            case ("position", quantity, pnl, cause, stale):
                realized += pnl
                caused_by = approved[cause % len(approved)].client_order_id if cause is not None and approved else None
                await publish_event(
                    PositionChanged(
                        venue=VENUE,
                        symbol=SYMBOL,
                        quantity=quantity,
                        average_entry_price=Decimal(60000),
                        realized_pnl=realized,
                        caused_by_client_order_id=caused_by,
                        ts_event_ns=clock.now - (5 * S if stale else 0),
                    )
                )
            case ("redeliver", pick) if stream.messages:
                seq = pick % len(stream.messages) + 1
                await live.on_orders_event(stream.messages[seq - 1], delivery(seq))
            case ("advance", seconds):
                clock.advance(seconds)
            case _:
                pass  # an outcome or a redelivery before there is anything to pick
    return live, stream, clock, snapshot


def state_of(service: RiskService) -> dict[str, Any]:
    snapshot = service.capture(service.orders_seq)
    return msgspec.to_builtins(msgspec.structs.replace(snapshot, taken_ns=0))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=steps, snapshot_after=st.integers(0, 60))
def test_apply_when_log_replayed_then_state_equals_live(plan: list[tuple[Any, ...]], snapshot_after: int) -> None:
    async def scenario() -> None:
        live, stream, clock, snapshot = await run_live(plan, snapshot_after)

        from_scratch = risk(OrdersStream(), clock)
        await recovery.recover(from_scratch, MemoryLog(stream.messages, None))  # type: ignore[arg-type]
        assert state_of(from_scratch) == state_of(live)

        from_snapshot = risk(OrdersStream(), clock)
        report = await recovery.recover(
            from_snapshot,
            MemoryLog(stream.messages, snap.decode_snapshot(snapshot)),  # type: ignore[arg-type]
        )
        assert report.mode == "snapshot"
        assert state_of(from_snapshot) == state_of(live)

    asyncio.run(scenario())


def test_apply_when_strategy_exit_is_not_reduce_only_then_it_counts_toward_the_rate_live_and_on_replay() -> None:
    """The rule the fold applies: a strategy order counts toward its orders-per-minute window unless
    it is reduce-only, whether or not it happened to reduce the position when it was decided."""

    async def scenario() -> None:
        plan: list[tuple[Any, ...]] = [
            ("position", Decimal("0.4"), 0, None, False),
            ("submit", Side.SELL, Decimal("0.1"), False, SOURCES[0]),  # reduces, not reduce-only: counts
            ("submit", Side.SELL, Decimal("0.1"), True, SOURCES[0]),  # reduce-only: exempt
        ]
        live, stream, clock, _ = await run_live(plan, 0)
        assert [type(m).__name__ for m in stream.messages] == ["PositionChanged", "OrderApproved", "OrderApproved"]
        assert live.state.rates.count("alpha", clock.now) == 1
        restarted = risk(OrdersStream(), clock)
        await recovery.recover(restarted, MemoryLog(stream.messages, None))  # type: ignore[arg-type]
        assert restarted.state.rates.count("alpha", clock.now) == 1

    asyncio.run(scenario())

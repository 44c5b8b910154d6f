"""Domain code builds its messages with the time and ids it is given (`libs.stamping.Stamper`), never
with the envelope's defaults (wall clock, `uuid4`): the same inputs on a `ManualClock` with
`sequential_ids` give byte-identical messages on every run. A message built with a default
`message_id` or `ts_init_ns` differs between two runs, and these tests fail.

Covered: the book procedure (market-data `BookSync`), risk's decisions, a strategy's intents, and
every event the position service publishes (orders, fills, positions, alerts, link state).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from libs.bus import Delivery
from libs.clock import ManualClock
from libs.logging import get_logger
from libs.stamping import Stamper, sequential_ids
from proto.codec import encode
from proto.enums import AlertSeverity, OrderSource, OrderType, Side, StrategyState
from proto.envelope import Message
from proto.messages import AlertRaised, OrderApproved, OrderDenied, SubmitOrder
from services.market_data.book_sync import BookSync
from services.market_data.frames import DepthEvent, DepthSnapshotData
from services.strategy.domain import Signal, Transition
from services.strategy.signals import IntentPublisher
from tests.unit.test_position_apply import SimVenue
from tests.unit.test_position_apply import service as position_service
from tests.unit.test_position_venue_link import FakeBus
from tests.unit.test_risk_apply import OrdersStream, delivery, risk

S = 1_000_000_000
START_NS = 1_700_000_000 * S
VENUE = "binance-usdm"
SYMBOL = "BTCUSDT"


def encoded(messages: list[Message]) -> list[bytes]:
    return [encode(message) for message in messages]


def test_stamper_when_fields_not_given_then_ids_and_times_from_its_sources() -> None:
    clock = ManualClock(START_NS)
    stamp = Stamper(clock, sequential_ids("t-"))
    first = stamp(AlertRaised, key="k", severity=AlertSeverity.P2, component="c", title="t")
    clock.advance(1)
    second = stamp(AlertRaised, key="k", severity=AlertSeverity.P2, component="c", title="t", ts_event_ns=5)
    assert (first.message_id, first.ts_init_ns, first.ts_event_ns) == ("t-000000000001", START_NS, START_NS)
    assert (second.message_id, second.ts_init_ns, second.ts_event_ns) == ("t-000000000002", START_NS + S, 5)


def test_stamper_when_envelope_given_then_kept() -> None:
    stamp = Stamper(ManualClock(START_NS), sequential_ids())
    alert = stamp(
        AlertRaised, key="k", severity=AlertSeverity.P2, component="c", title="t", message_id="mine", ts_init_ns=7
    )
    assert (alert.message_id, alert.ts_init_ns) == ("mine", 7)


# ---------------------------------------------------------------------- market-data: the book procedure


def book_messages() -> list[Message]:
    clock = ManualClock(START_NS)
    sync = BookSync(VENUE, SYMBOL, clock=clock, nonce="0000feed", message_ids=sequential_ids("md-"))

    def event(first: int, final: int, previous: int) -> DepthEvent:
        return DepthEvent(SYMBOL, first, final, previous, 0, [("100", "1")], [("101", "1")])

    out = [*sync.force_resync("start")]
    out += sync.on_event(event(10, 12, 9))
    out += sync.on_snapshot(DepthSnapshotData(11, [("100", "2")], [("101", "2")]))  # no event time: the clock's
    out += sync.on_event(event(13, 15, 12))
    out += sync.on_event(event(20, 22, 19))  # a gap
    return out


def test_book_sync_when_run_twice_then_byte_identical_messages() -> None:
    first, second = book_messages(), book_messages()
    assert len(first) == 5
    assert encoded(first) == encoded(second)


# ---------------------------------------------------------------------- risk: the decisions


def order(coid: str, quantity: str) -> SubmitOrder:
    return SubmitOrder(
        client_order_id=coid,
        idempotency_key=coid,
        source=OrderSource.OPERATOR,
        symbol=SYMBOL,
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=Decimal(quantity),
        venue=VENUE,
        message_id=f"cmd-{coid}",
        ts_event_ns=START_NS,
        ts_init_ns=START_NS,
    )


def risk_decisions() -> list[Message]:
    clock = ManualClock(START_NS)
    stream = OrdersStream()
    service = risk(stream, clock)
    service.stamp = Stamper(clock, sequential_ids("risk-"))

    async def run() -> None:
        await service.on_order_message(order("c-1", "0.1"), delivery(0))
        clock.advance(1)
        await service.on_order_message(order("c-2", "5"), delivery(0))  # above the position limit

    asyncio.run(run())
    return stream.messages


def test_risk_decisions_when_run_twice_then_byte_identical_messages() -> None:
    first, second = risk_decisions(), risk_decisions()
    assert [type(m) for m in first] == [OrderApproved, OrderDenied]
    assert encoded(first) == encoded(second)


# ---------------------------------------------------------------------- strategy: the intents


def strategy_intents() -> list[Message]:
    clock = ManualClock(START_NS)
    bus = FakeBus()
    publisher = IntentPublisher(
        bus,  # type: ignore[arg-type]
        get_logger("test"),
        "fade",
        "cascade_fade",
        stamp=Stamper(clock, sequential_ids("strategy-")),
    )

    async def run() -> None:
        await publisher.transition(
            Transition(StrategyState.DISABLED, StrategyState.SCANNING, "enabled"), SYMBOL, clock()
        )
        await publisher.signal(Signal(SYMBOL, Side.BUY, Decimal("0.01"), reduce_only=False, reason="cascade"))
        await publisher.alert("strategy-crash:fade", AlertSeverity.P2, "crashed", error="boom")

    asyncio.run(run())
    return [message for _, message, _ in bus.published]


def test_strategy_intents_when_run_twice_then_byte_identical_messages() -> None:
    first, second = strategy_intents(), strategy_intents()
    assert len(first) == 3
    assert encoded(first) == encoded(second)


# ---------------------------------------------------------------------- position: every event it publishes


def position_events() -> list[Message]:
    bus, venue = FakeBus(), SimVenue()
    service = position_service(bus, venue, sequential_ids("position-"))
    venue.plan.update({"c-1": "fill", "c-2": "timeout_placed", "c-3": "reject"})

    async def run() -> None:
        for seq, coid in enumerate(("c-1", "c-2", "c-3"), start=1):
            approved = OrderApproved(
                order=order(coid, "0.002"), message_id=f"a-{coid}", ts_init_ns=START_NS, ts_event_ns=START_NS
            )
            await service.on_approved(approved, Delivery("evt.order.approved", seq, 1, {}))
        denied = OrderDenied(
            order=order("c-4", "1"), reason="limits", message_id="d-c-4", ts_init_ns=START_NS, ts_event_ns=START_NS
        )
        await service.on_denied(denied, Delivery("evt.order.denied", 4, 1, {}))
        await service.venue_sync.poll_once()

    asyncio.run(run())
    return [message for _, message, _ in bus.published]


def test_position_events_when_run_twice_then_byte_identical_messages() -> None:
    first, second = position_events(), position_events()
    kinds = {type(m).__name__ for m in first}
    assert {"OrderSubmitted", "OrderAccepted", "OrderFilled", "PositionChanged", "OrderRejected"} <= kinds
    assert encoded(first) == encoded(second)


@pytest.mark.parametrize("build", [book_messages, risk_decisions, strategy_intents, position_events])
def test_messages_when_built_then_stamped_from_the_given_clock(build: Any) -> None:
    """No message carries the wall clock's time: every `ts_init_ns` is the ManualClock's."""
    messages = build()
    assert messages
    assert all(START_NS <= m.ts_init_ns < START_NS + 10 * S for m in messages)

"""A protective stop stuck in the venue's trigger, through the position service on an in-memory bus:
nothing is done before the bound or while orders may not be sent, a late MARKET order the venue
confirms is taken as normal, and a stop still stuck is alerted, closed at market and given up."""

from __future__ import annotations

from decimal import Decimal

from libs.orders_model import Position
from proto.enums import ConnectionState, OrderSource, OrderStatus, OrderType, Side
from proto.messages import AlertRaised, OrderApproved, SubmitOrder
from services.position.domain import PROTECT_CLOSE_PREFIX
from tests.unit.test_position_venue_link import DELIVERY, FakeBus, FakeVenue, service

STOP_ID = "bwprotectstop"
TRIGGERING = {"clientOrderId": STOP_ID, "orderId": 77, "status": "NEW", "executedQty": "0", "algoStatus": "TRIGGERING"}


def protective_stop() -> OrderApproved:
    return OrderApproved(
        order=SubmitOrder(
            client_order_id=STOP_ID,
            idempotency_key="protect:stop:bw-entry:0.01:0",
            source=OrderSource.RISK,
            symbol="BTCUSDT",
            side=Side.SELL,
            order_type=OrderType.STOP_MARKET,
            quantity=Decimal("0.01"),
            stop_price=Decimal("90000"),
            reduce_only=True,
        )
    )


async def _stuck_stop(venue: FakeVenue, bus: FakeBus) -> object:
    svc = service(venue, bus)
    svc.ledger.positions["BTCUSDT"] = Position(Decimal("0.01"), Decimal("95000"))
    svc.ledger.rebase()  # a long position held before (an audited baseline, not an invariant break)
    await svc.on_approved(protective_stop(), DELIVERY)
    assert svc.ledger.orders[STOP_ID].status == OrderStatus.NEW
    await svc.on_user_event({"e": "ALGO_UPDATE", "o": {"caid": STOP_ID, "aid": 77, "X": "TRIGGERING", "ai": ""}})
    return svc


async def _check(svc: object) -> None:
    async with svc.core.lock:  # type: ignore[attr-defined]
        await svc.stuck_triggers.check()  # type: ignore[attr-defined]


def _closes(svc: object) -> list:
    orders = svc.ledger.orders.values()  # type: ignore[attr-defined]
    return [o for o in orders if o.idempotency_key.startswith(PROTECT_CLOSE_PREFIX)]


async def test_stuck_stop_when_still_triggering_past_the_bound_then_alert_close_at_market_and_given_up() -> None:
    close = {"orderId": 88, "status": "NEW", "executedQty": "0"}
    venue = FakeVenue(place_order=[{"orderId": 77, "status": "NEW", "executedQty": "0"}, close])
    venue.scripts["query_order"] = [TRIGGERING]
    bus = FakeBus()
    svc = await _stuck_stop(venue, bus)
    clock = svc.core.clock  # type: ignore[attr-defined]

    clock.advance(4)
    await _check(svc)
    assert "query_order" not in venue.calls and _closes(svc) == []  # within the 5 s bound: nothing yet

    svc.core.link_state = ConnectionState.DISCONNECTED  # type: ignore[attr-defined]
    clock.advance(2)
    await _check(svc)
    assert "query_order" not in venue.calls and _closes(svc) == []  # nothing may be sent: waits

    svc.core.link_state = ConnectionState.CONNECTED  # type: ignore[attr-defined]
    await _check(svc)
    (closing,) = _closes(svc)
    assert (closing.order_type, closing.side, closing.quantity, closing.reduce_only) == (
        OrderType.MARKET,
        Side.SELL,
        Decimal("0.01"),
        True,
    )
    stop = svc.ledger.orders[STOP_ID]  # type: ignore[attr-defined]
    assert stop.status == OrderStatus.CANCELED and "stuck in the venue's trigger for 6.0 s" in (stop.reason or "")
    (alert,) = [a for a in bus.of(AlertRaised) if a.key == "protection-stuck:BTCUSDT"]
    assert alert.details["coid"] == STOP_ID and alert.details["stuck_s"] == 6.0
    await _check(svc)  # answered once
    assert len(_closes(svc)) == 1 and len([a for a in bus.of(AlertRaised) if a.key == alert.key]) == 1


async def test_stuck_stop_when_the_venue_now_shows_its_market_order_then_taken_and_nothing_closed() -> None:
    venue = FakeVenue(place_order=[{"orderId": 77, "status": "NEW", "executedQty": "0"}])
    venue.scripts["query_order"] = [{"clientOrderId": STOP_ID, "orderId": 555, "status": "NEW", "executedQty": "0"}]
    bus = FakeBus()
    svc = await _stuck_stop(venue, bus)
    svc.core.clock.advance(10)  # type: ignore[attr-defined]
    await _check(svc)
    assert venue.calls.count("query_order") == 1 and _closes(svc) == [] and bus.of(AlertRaised) == []
    assert svc.ledger.orders[STOP_ID].status == OrderStatus.NEW  # type: ignore[attr-defined]
    assert svc.core.triggers.since_ns == {}  # type: ignore[attr-defined]

"""Bounded memory of the position service (issue 4): finished orders leave memory after a retention,
their fills fold into the position baselines (SPEC §6 invariants stay exact), an old approval whose
order left memory is still never sent twice (projection lookup; Postgres down → retried, never blind),
and a stop or take-profit the venue refuses as already triggered (-2021) closes the position at market.

Pure domain functions and the service with fakes (venue, bus, projections) and an injected clock.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from libs.binance.errors import VenueError
from libs.errors import TransientError
from libs.ids import client_order_id_for
from libs.orders_model import OrderRecord, Position
from proto.enums import OrderSource, OrderStatus, OrderType, Side
from proto.messages import AlertRaised, DeadLettered, OrderApproved, OrderSubmitted, SubmitOrder
from services.position.domain import (
    IMMEDIATE_TRIGGER_REASON,
    PositionCheckpoint,
    Protection,
    Retention,
    decode_checkpoint,
    evictable_orders,
    fold_evicted,
    pinned_orders,
    position_baselines,
    position_invariant_violations,
    protective_orders,
)
from services.position.handlers import PositionService
from tests.unit.test_position_venue_link import DELIVERY, FakeBus, FakeProjections, FakeVenue, service

D = Decimal
S = 1_000_000_000
RETENTION = Retention(keep_ns=60 * S, max_terminal=3)


def order(
    coid: str,
    *,
    side: Side = Side.BUY,
    status: OrderStatus = OrderStatus.FILLED,
    updated_ns: int = 0,
    filled: str = "1",
    key: str | None = None,
) -> OrderRecord:
    record = OrderRecord(
        client_order_id=coid,
        idempotency_key=key or coid,
        source=OrderSource.OPERATOR,
        venue="binance-usdm",
        symbol="BTCUSDT",
        side=side,
        order_type=OrderType.MARKET,
        quantity=D("1"),
        status=status,
        created_ns=updated_ns,
        updated_ns=updated_ns,
    )
    if D(filled):
        record.add_fill(abs(hash(coid)) % 10_000, D(filled), D("100"))
    return record


def by_coid(*records: OrderRecord) -> dict[str, OrderRecord]:
    return {r.client_order_id: r for r in records}


# ---------------------------------------------------------------------- pure


def test_evictable_when_terminal_and_old_then_evicted_and_live_or_recent_or_pinned_kept() -> None:
    now = 1_000 * S
    orders = by_coid(
        order("old-filled", updated_ns=now - 120 * S),
        order("old-live", status=OrderStatus.NEW, filled="0", updated_ns=now - 3_600 * S),
        order("old-pinned", updated_ns=now - 120 * S),
        order("recent", updated_ns=now - 10 * S),
    )
    assert evictable_orders(orders, now, RETENTION, pinned={"old-pinned"}) == ["old-filled"]


def test_evictable_when_more_recent_terminal_than_the_cap_then_oldest_beyond_it_evicted() -> None:
    now = 1_000 * S
    orders = by_coid(*(order(f"o{n}", updated_ns=now - n * S) for n in range(6)))
    assert evictable_orders(orders, now, RETENTION, pinned=set()) == ["o3", "o4", "o5"]


def test_fold_evicted_when_filled_orders_leave_then_position_still_baseline_plus_fills() -> None:
    buy, sell, live = (
        order("a"),
        order("b", side=Side.SELL, filled="0.25"),
        order("c", status=OrderStatus.NEW, filled="0"),
    )
    orders = by_coid(buy, sell, live)
    positions = {"BTCUSDT": Position(D("1.75"), D("100"))}  # 1 adopted at reconciliation + 1 - 0.25
    baselines = position_baselines(orders, positions)
    assert baselines == {"BTCUSDT": D("1")}
    assert position_invariant_violations(orders, positions, baselines) == []

    kept = {"c": live}
    # Dropping the orders without folding their fills would look like a position without fills.
    assert position_invariant_violations(kept, positions, baselines) != []
    folded = fold_evicted(baselines, [buy, sell])
    assert folded == {"BTCUSDT": D("1.75")}
    assert position_invariant_violations(kept, positions, folded) == []
    # A later fill is still checked exactly against the folded baseline.
    live.add_fill(7, D("0.5"), D("101"))
    assert position_invariant_violations(kept, positions, folded) == ["BTCUSDT: position 1.75 != sum of fills 2.25"]


def test_pinned_when_protection_current_then_entry_and_its_attempts_pinned_others_not() -> None:
    protection = Protection("bwentry", "BTCUSDT", D("90"), D("110"))
    stop = protective_orders(protection, D("1"))[0]
    attempt = order(client_order_id_for(stop.attempt_key(0)), key=stop.attempt_key(0), filled="0")
    close_key = "protect-close:stop:bwentry:1:0"
    close = order(client_order_id_for(close_key), key=close_key)
    stale_key = "protect:stop:bwolder:1:0"
    stale = order(client_order_id_for(stale_key), key=stale_key, filled="0")
    orders = by_coid(order("bwentry"), attempt, close, stale, order("other"))
    assert pinned_orders(orders, [protection], None) == {"bwentry", attempt.client_order_id, close.client_order_id}
    flatten = order("f", key="flatten:position:42:BTCUSDT:0")
    assert pinned_orders(by_coid(flatten), [], "42") == {"f"}
    assert pinned_orders(by_coid(flatten), [], None) == set()


def test_checkpoint_when_written_before_retention_existed_then_decodes_with_nothing_evicted() -> None:
    old = b'{"version":1,"stream_seq":5,"orders":[],"order_seq":{},"positions":{},"position_seq":{},"protections":[]}'
    assert decode_checkpoint(old).evicted_until_ns == 0
    current = PositionCheckpoint(1, 5, [], {}, {}, {}, [], evicted_until_ns=7)
    assert decode_checkpoint(msgspec.json.encode(current)).evicted_until_ns == 7


# ---------------------------------------------------------------------- the service


def approved_at(key: str, ts_ns: int) -> OrderApproved:
    return OrderApproved(
        order=SubmitOrder(
            client_order_id=client_order_id_for(key),
            idempotency_key=key,
            source=OrderSource.OPERATOR,
            symbol="BTCUSDT",
            side=Side.BUY,
            order_type=OrderType.MARKET,
            quantity=D("0.01"),
        ),
        ts_event_ns=ts_ns,
        ts_init_ns=ts_ns,
    )


def filling_venue() -> FakeVenue:
    return FakeVenue(
        place_order=[{"orderId": 7, "status": "FILLED", "executedQty": "0.01"}],
        user_trades=[[{"id": 70, "orderId": 7, "qty": "0.01", "price": "100"}]],
    )


async def test_trim_when_filled_orders_age_out_then_memory_bounded_and_invariants_hold() -> None:
    venue, bus, projections = filling_venue(), FakeBus(), FakeProjections()
    svc = service(venue, bus, projections)
    svc.core.retention = RETENTION
    svc.ledger.rebase()
    for n in range(5):
        venue.scripts["place_order"] = [{"orderId": 7 + n, "status": "FILLED", "executedQty": "0.01"}]
        venue.scripts["user_trades"] = [[{"id": 70 + n, "orderId": 7 + n, "qty": "0.01", "price": "100"}]]
        await svc.on_approved(approved_at(f"t{n}", svc.core.clock()), DELIVERY)
        svc.core.clock.now += S  # type: ignore[attr-defined]
    assert svc.ledger.positions["BTCUSDT"].quantity == D("0.05") and len(svc.ledger.orders) == 5

    assert svc.integrity.trim() == 2  # the cap: 3 finished orders stay
    svc.core.clock.now += 120 * S  # type: ignore[attr-defined]
    assert svc.integrity.trim() == 3  # the time window: none stays
    assert svc.ledger.orders == {} and svc.ledger.orders_evicted == 5
    assert svc.ledger.baselines == {"BTCUSDT": D("0.05")}
    assert await svc.integrity.check_invariants(full=True) == [] and not svc.core.hard_shutdown

    venue.scripts["place_order"] = [{"orderId": 20, "status": "FILLED", "executedQty": "0.01"}]
    venue.scripts["user_trades"] = [[{"id": 200, "orderId": 20, "qty": "0.01", "price": "100"}]]
    await svc.on_approved(approved_at("after", svc.core.clock()), DELIVERY)
    assert svc.ledger.positions["BTCUSDT"].quantity == D("0.06")
    assert await svc.integrity.check_invariants(full=True) == [] and not svc.core.hard_shutdown


async def test_redelivered_approval_when_order_evicted_then_found_in_projection_and_not_sent_again() -> None:
    venue, bus, projections = filling_venue(), FakeBus(), FakeProjections()
    svc = service(venue, bus, projections)
    svc.core.retention = RETENTION
    message = approved_at("old", svc.core.clock())
    coid = message.order.client_order_id
    await svc.on_approved(message, DELIVERY)
    assert svc.ledger.orders[coid].status == OrderStatus.FILLED
    svc.core.clock.now += 120 * S  # type: ignore[attr-defined]
    svc.integrity.trim()
    assert coid not in svc.ledger.orders and svc.ledger.evicted_until_ns > 0

    await svc.on_approved(message, DELIVERY)

    assert venue.calls.count("place_order") == 1
    assert len(bus.of(OrderSubmitted)) == 1
    assert coid in projections.lookups and coid not in svc.ledger.orders


async def test_old_approval_when_evicted_and_postgres_down_then_retried_not_sent() -> None:
    venue, bus, projections = filling_venue(), FakeBus(), FakeProjections()
    svc = service(venue, bus, projections)
    svc.core.retention = RETENTION
    message = approved_at("old", svc.core.clock())
    await svc.on_approved(message, DELIVERY)
    svc.core.clock.now += 120 * S  # type: ignore[attr-defined]
    svc.integrity.trim()
    projections.down = True

    with pytest.raises(TransientError):
        await svc.on_approved(message, DELIVERY)

    assert venue.calls.count("place_order") == 1
    assert len(bus.of(OrderSubmitted)) == 1


async def test_new_approval_when_postgres_down_then_memory_proves_it_new_sent_and_row_written_when_back() -> None:
    venue, bus, projections = filling_venue(), FakeBus(), FakeProjections()
    svc = service(venue, bus, projections)
    svc.ledger.evicted_until_ns = svc.core.clock() - 600 * S  # orders left memory, all long before this approval
    projections.down = True
    message = approved_at("fresh", svc.core.clock())

    await svc.on_approved(message, DELIVERY)  # FM-C3: the projection outage does not stop the order

    assert len(bus.of(OrderSubmitted)) == 1  # decided new from memory and sent
    assert venue.calls.count("place_order") == 1
    coid = message.order.client_order_id
    assert coid not in projections.orders
    assert await svc.core.flush_projections() == 0  # still down: kept for later
    projections.down = False
    assert await svc.core.flush_projections() >= 1
    assert projections.orders[coid] == svc.ledger.orders[coid].status.value


# ---------------------------------------------------------------------- -2021: already triggered


def protected_long(stop: str, take_profit: str, venue: FakeVenue) -> tuple[FakeBus, PositionService]:
    bus = FakeBus()
    svc = service(venue, bus)
    svc.ledger.orders["bwentry"] = order("bwentry", filled="0")
    svc.ledger.orders["bwentry"].quantity = D("0.01")
    svc.ledger.positions["BTCUSDT"] = Position(D("0.01"), D("100"))
    svc.ledger.protections["BTCUSDT"] = Protection("bwentry", "BTCUSDT", D(stop), D(take_profit))
    return bus, svc


@pytest.mark.parametrize(("stop", "take_profit", "refused"), [("105", "120", "STOP_MARKET"), ("80", "99", "")])
async def test_protective_order_when_venue_says_would_trigger_immediately_then_position_closed_at_market(
    stop: str, take_profit: str, refused: str
) -> None:
    would_trigger = VenueError(400, -2021, "Order would immediately trigger.")
    resting = {"orderId": 8, "status": "NEW", "executedQty": "0"}
    closed = {"orderId": 9, "status": "FILLED", "executedQty": "0.01"}
    # The stop is refused first (stop above the mark), or the stop rests and the take-profit is refused.
    script = [would_trigger, closed] if refused else [resting, would_trigger, closed]
    placements = len(script)
    venue = FakeVenue(place_order=script, user_trades=[[{"id": 90, "orderId": 9, "qty": "0.01", "price": "99"}]])
    bus, svc = protected_long(stop, take_profit, venue)
    svc.ledger.rebase()

    await svc.protection.maintain(all_symbols=True)

    orders = list(svc.ledger.orders.values())
    closes = [o for o in orders if o.idempotency_key.startswith("protect-close:")]
    assert [(o.order_type, o.side, o.quantity, o.reduce_only, o.status) for o in closes] == [
        (OrderType.MARKET, Side.SELL, D("0.01"), True, OrderStatus.FILLED)
    ]
    triggered = [o for o in orders if (o.reason or "").startswith(IMMEDIATE_TRIGGER_REASON)]
    assert len(triggered) == 1 and triggered[0].status == OrderStatus.REJECTED
    assert triggered[0].order_type == (OrderType.STOP_MARKET if refused else OrderType.TAKE_PROFIT_MARKET)
    assert svc.ledger.positions["BTCUSDT"].quantity == 0
    assert venue.calls.count("place_order") == placements  # nothing placed after the close
    assert not bus.of(DeadLettered)
    assert any(alert.key == "protection-triggered:BTCUSDT" for alert in bus.of(AlertRaised))
    assert await svc.integrity.check_invariants(full=True) == []


async def test_approval_when_order_only_in_projection_as_submitted_then_queried_before_any_resend() -> None:
    venue = FakeVenue(query_order=[{"orderId": 7, "status": "NEW", "executedQty": "0"}])
    bus, projections = FakeBus(), FakeProjections()
    svc = service(venue, bus, projections)
    message = approved_at("half-way", svc.core.clock())
    coid = message.order.client_order_id
    row = order(coid, status=OrderStatus.SUBMITTED, filled="0", updated_ns=svc.core.clock())
    projections.records[coid] = row  # a handler that failed after the projection write, before memory kept it

    await svc.on_approved(message, DELIVERY)
    await svc.venue_sync.poll_once(follow_live=False)

    assert "place_order" not in venue.calls and "query_order" in venue.calls
    assert svc.ledger.orders[coid].status == OrderStatus.NEW

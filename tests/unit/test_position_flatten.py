"""Position service in EMERGENCY_MODE / HARD_SHUTDOWN (SPEC §5) and the dead-man's switch scope,
with fakes for the bus, the projections and the venue."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from libs.orders_model import OrderRecord, Position
from proto import subjects
from proto.enums import OrderSource, OrderStatus, OrderType, Side
from services.position.venue_sync import countdown_symbols
from tests.unit.test_position_venue_link import DELIVERY, FakeBus, FakeVenue, approved, service


def record(coid: str, symbol: str, status: OrderStatus, key: str | None = None) -> OrderRecord:
    return OrderRecord(
        client_order_id=coid,
        idempotency_key=key or coid,
        source=OrderSource.OPERATOR,
        venue="binance-usdm",
        symbol=symbol,
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal("0.01"),
        status=status,
        created_ns=0,
        updated_ns=0,
    )


def test_countdown_symbols_when_symbol_has_a_live_stop_then_not_armed() -> None:
    orders = [
        record("a", "BTCUSDT", OrderStatus.NEW),
        record("b", "BTCUSDT", OrderStatus.NEW, key="protect:stop:x:0.01:0"),
        record("c", "ETHUSDT", OrderStatus.NEW),
        record("d", "SOLUSDT", OrderStatus.FILLED),
    ]
    assert countdown_symbols(orders) == {"ETHUSDT"}


async def hard_shutdown(bus: FakeBus) -> None:
    bus.kv[subjects.KEY_DEGRADATION_LEVEL] = msgspec.json.encode({"level": "HARD_SHUTDOWN", "ts_ns": 7})


async def test_approved_entry_when_hard_shutdown_then_cancelled_and_venue_untouched() -> None:
    venue, bus = FakeVenue(), FakeBus()
    svc = service(venue, bus)
    await hard_shutdown(bus)
    await svc.core.refresh_degradation()
    assert svc.core.flattening()
    await svc.on_approved(approved("late"), DELIVERY)
    assert svc.ledger.orders["bw-late"].status == OrderStatus.CANCELED
    assert "place_order" not in venue.calls


async def test_reduce_only_when_hard_shutdown_and_position_open_then_sent() -> None:
    answer = {"orderId": 1, "status": "NEW", "executedQty": "0"}
    venue, bus = FakeVenue(place_order=[answer]), FakeBus()
    svc = service(venue, bus)
    svc.ledger.positions["BTCUSDT"] = Position(Decimal("-0.01"), Decimal("100"))
    await hard_shutdown(bus)
    await svc.core.refresh_degradation()
    closing = approved("close")
    closing = msgspec.structs.replace(closing, order=msgspec.structs.replace(closing.order, reduce_only=True))
    await svc.on_approved(closing, DELIVERY)
    assert "place_order" in venue.calls
    assert svc.ledger.orders["bw-close"].status == OrderStatus.NEW


async def test_reduce_only_when_hard_shutdown_and_already_flat_then_cancelled_not_sent() -> None:
    venue, bus = FakeVenue(), FakeBus()
    svc = service(venue, bus)
    await hard_shutdown(bus)
    await svc.core.refresh_degradation()
    closing = approved("close-late")
    closing = msgspec.structs.replace(closing, order=msgspec.structs.replace(closing.order, reduce_only=True))
    await svc.on_approved(closing, DELIVERY)
    assert svc.ledger.orders["bw-close-late"].status == OrderStatus.CANCELED
    assert "place_order" not in venue.calls


async def test_approved_entry_when_level_just_went_back_to_normal_then_sent_not_cancelled() -> None:
    # Risk approved the entry under NORMAL; this service's last read (its previous tick) was EMERGENCY.
    answer = {"orderId": 2, "status": "NEW", "executedQty": "0"}
    venue, bus = FakeVenue(place_order=[answer]), FakeBus()
    svc = service(venue, bus)
    bus.kv[subjects.KEY_DEGRADATION_LEVEL] = msgspec.json.encode({"level": "EMERGENCY_MODE", "ts_ns": 7})
    await svc.core.refresh_degradation()
    assert svc.core.flattening()
    bus.kv[subjects.KEY_DEGRADATION_LEVEL] = msgspec.json.encode({"level": "NORMAL", "ts_ns": 8})
    await svc.on_approved(approved("after-recovery"), DELIVERY)
    assert "place_order" in venue.calls
    assert svc.ledger.orders["bw-after-recovery"].status == OrderStatus.NEW
    assert not svc.core.flattening()

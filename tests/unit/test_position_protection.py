"""Protective stop planning (FM-C2): pure, no I/O."""

from __future__ import annotations

from decimal import Decimal

from libs.ids import client_order_id_for
from proto.enums import OrderSource, OrderStatus, OrderType, Side
from services.position.domain import OrderRecord, Protection, plan_protection, protective_orders

PROTECTION = Protection("entry-1", "BTCUSDT", Decimal("90"), Decimal("110"))


def record(coid: str, key: str, status: OrderStatus) -> OrderRecord:
    return OrderRecord(
        client_order_id=coid,
        idempotency_key=key,
        source=OrderSource.RISK,
        venue="binance-usdm",
        symbol="BTCUSDT",
        side=Side.SELL,
        order_type=OrderType.STOP_MARKET,
        quantity=Decimal("0.01"),
        status=status,
        created_ns=0,
        updated_ns=0,
        reduce_only=True,
    )


def test_protective_orders_when_long_then_reduce_only_sell_stop_and_tp_sized_to_position() -> None:
    wanted = protective_orders(PROTECTION, Decimal("0.010"))
    assert [(w.order_type, w.side, w.quantity) for w in wanted] == [
        (OrderType.STOP_MARKET, Side.SELL, Decimal("0.01")),
        (OrderType.LIMIT, Side.SELL, Decimal("0.01")),
    ]
    assert wanted[0].stop_price == Decimal("90") and wanted[1].price == Decimal("110")
    # Same position, same ids (a restart finds them); another size, other ids.
    assert [w.idempotency_key for w in wanted] == [
        w.idempotency_key for w in protective_orders(PROTECTION, Decimal("0.01"))
    ]
    assert wanted[0].idempotency_key != protective_orders(PROTECTION, Decimal("0.005"))[0].idempotency_key
    assert protective_orders(PROTECTION, Decimal("-0.01"))[0].side == Side.BUY
    assert protective_orders(PROTECTION, Decimal(0)) == []


def test_plan_protection_when_already_placed_then_nothing_to_do_and_when_flat_then_cancel() -> None:
    wanted = protective_orders(PROTECTION, Decimal("0.01"))
    coid_of = {w.idempotency_key: client_order_id_for(w.idempotency_key) for w in wanted}
    assert [p.idempotency_key for p in plan_protection(wanted, {}, "BTCUSDT", coid_of).place] == list(coid_of)
    orders = {coid: record(coid, key, OrderStatus.NEW) for key, coid in coid_of.items()}
    plan = plan_protection(wanted, orders, "BTCUSDT", coid_of)
    assert plan.place == [] and plan.cancel == []
    flat = plan_protection([], orders, "BTCUSDT", {})
    assert flat.cancel == sorted(coid_of.values())

"""Protective stop planning (FM-C2): pure, no I/O."""

from __future__ import annotations

from decimal import Decimal

from libs.ids import client_order_id_for
from libs.orders_model import OrderRecord
from proto.enums import OrderSource, OrderStatus, OrderType, Side
from services.position.domain import (
    MAX_PROTECT_ATTEMPTS,
    Protection,
    ProtectiveOrder,
    plan_protection,
    protective_orders,
)

PROTECTION = Protection("entry-1", "BTCUSDT", Decimal("90"), Decimal("110"))


def record(item: ProtectiveOrder, key: str, status: OrderStatus) -> OrderRecord:
    return OrderRecord(
        client_order_id=client_order_id_for(key),
        idempotency_key=key,
        source=OrderSource.RISK,
        venue="binance-usdm",
        symbol=item.symbol,
        side=item.side,
        order_type=item.order_type,
        quantity=item.quantity,
        status=status,
        created_ns=0,
        updated_ns=0,
        stop_price=item.stop_price,
        reduce_only=True,
    )


def by_coid(*records: OrderRecord) -> dict[str, OrderRecord]:
    return {r.client_order_id: r for r in records}


def test_protective_orders_when_long_then_reduce_only_sell_stop_and_take_profit_sized_to_position() -> None:
    wanted = protective_orders(PROTECTION, Decimal("0.010"))
    assert [(w.order_type, w.side, w.quantity, w.stop_price) for w in wanted] == [
        (OrderType.STOP_MARKET, Side.SELL, Decimal("0.01"), Decimal("90")),
        (OrderType.TAKE_PROFIT_MARKET, Side.SELL, Decimal("0.01"), Decimal("110")),
    ]
    # Same position, same stems (a restart finds them); another size, other stems.
    assert [w.key_stem for w in wanted] == [w.key_stem for w in protective_orders(PROTECTION, Decimal("0.01"))]
    assert wanted[0].key_stem != protective_orders(PROTECTION, Decimal("0.005"))[0].key_stem
    assert protective_orders(PROTECTION, Decimal("-0.01"))[0].side == Side.BUY
    assert protective_orders(PROTECTION, Decimal(0)) == []


def test_plan_protection_when_already_placed_then_nothing_to_do_and_when_flat_then_cancel() -> None:
    wanted = protective_orders(PROTECTION, Decimal("0.01"))
    first = plan_protection(wanted, {}, "BTCUSDT", client_order_id_for)
    assert [key for _, key in first.place] == [w.attempt_key(0) for w in wanted]
    orders = by_coid(*(record(item, key, OrderStatus.NEW) for item, key in first.place))
    plan = plan_protection(wanted, orders, "BTCUSDT", client_order_id_for)
    assert plan.place == [] and plan.cancel == []
    flat = plan_protection([], orders, "BTCUSDT", client_order_id_for)
    assert flat.cancel == sorted(orders)


def test_plan_protection_when_partial_fill_grows_position_then_new_size_placed_and_old_cancelled() -> None:
    small = protective_orders(PROTECTION, Decimal("0.005"))
    orders = by_coid(*(record(item, item.attempt_key(0), OrderStatus.NEW) for item in small))
    grown = protective_orders(PROTECTION, Decimal("0.01"))
    plan = plan_protection(grown, orders, "BTCUSDT", client_order_id_for)
    assert [(item.quantity, key) for item, key in plan.place] == [(Decimal("0.01"), w.attempt_key(0)) for w in grown]
    assert plan.cancel == sorted(orders)


def test_plan_protection_when_size_comes_back_to_a_cancelled_one_then_next_attempt_id_not_reused() -> None:
    wanted = protective_orders(PROTECTION, Decimal("0.005"))
    cancelled = by_coid(*(record(item, item.attempt_key(0), OrderStatus.CANCELED) for item in wanted))
    plan = plan_protection(wanted, cancelled, "BTCUSDT", client_order_id_for)
    assert [key for _, key in plan.place] == [w.attempt_key(1) for w in wanted]
    assert not any(client_order_id_for(key) in cancelled for _, key in plan.place)


def test_plan_protection_when_refused_three_times_then_given_up() -> None:
    stop = protective_orders(PROTECTION, Decimal("0.01"))[0]
    refused = by_coid(*(record(stop, stop.attempt_key(n), OrderStatus.REJECTED) for n in range(MAX_PROTECT_ATTEMPTS)))
    plan = plan_protection([stop], refused, "BTCUSDT", client_order_id_for)
    assert plan.place == [] and plan.unavailable == [stop.key_stem]

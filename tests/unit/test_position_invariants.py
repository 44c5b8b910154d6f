"""SPEC §6 invariants of the position service and the FM-N8 countdown planner (pure, no I/O)."""

from __future__ import annotations

from decimal import Decimal

from libs.orders_model import OrderRecord, Position
from proto.enums import OrderSource, OrderStatus, OrderType, Side
from services.position.domain import (
    CountdownPlanner,
    order_invariant_violations,
    position_baselines,
    position_invariant_violations,
)

D = Decimal
S = 1_000_000_000


def order(coid: str, side: Side = Side.BUY, quantity: str = "1", status: OrderStatus = OrderStatus.NEW) -> OrderRecord:
    return OrderRecord(
        client_order_id=coid,
        idempotency_key=coid,
        source=OrderSource.OPERATOR,
        venue="binance-usdm",
        symbol="BTCUSDT",
        side=side,
        order_type=OrderType.MARKET,
        quantity=D(quantity),
        status=status,
        created_ns=1,
        updated_ns=1,
    )


def test_order_invariants_when_fills_consistent_then_no_violation() -> None:
    record = order("a")
    record.add_fill(1, D("0.4"), D("100"))
    record.add_fill(2, D("0.6"), D("101"))
    record.add_fill(2, D("0.6"), D("101"))  # a replayed trade is not counted twice
    assert record.filled_quantity == D("1")
    assert order_invariant_violations(record) == []


def test_order_invariants_when_overfilled_or_fills_disagree_then_violations() -> None:
    record = order("a")
    record.add_fill(1, D("0.7"), D("100"))
    record.add_fill(2, D("0.7"), D("100"))
    assert any("outside" in problem for problem in order_invariant_violations(record))
    other = order("b")
    other.add_fill(1, D("0.5"), D("100"))
    other.filled_quantity = D("0.6")  # a bug that moved the counter without a fill
    assert any("fills sum" in problem for problem in order_invariant_violations(other))


def test_position_invariant_when_position_moves_without_fill_then_violation() -> None:
    buy, sell = order("a"), order("b", side=Side.SELL)
    buy.add_fill(1, D("1"), D("100"))
    sell.add_fill(2, D("0.25"), D("101"))
    orders = {"a": buy, "b": sell}
    positions = {"BTCUSDT": Position(D("0.75"), D("100"))}
    baselines = position_baselines(orders, positions)
    assert baselines == {"BTCUSDT": D(0)}
    assert position_invariant_violations(orders, positions, baselines) == []
    positions["BTCUSDT"] = Position(D("1.75"), D("100"))  # counted twice
    assert position_invariant_violations(orders, positions, baselines) == [
        "BTCUSDT: position 1.75 != sum of fills 0.75"
    ]


def test_position_baseline_when_venue_correction_adopted_then_later_fills_checked_against_it() -> None:
    orders: dict[str, OrderRecord] = {}
    positions = {"BTCUSDT": Position(D("2"), D("100"))}  # adopted from the venue at reconciliation
    baselines = position_baselines(orders, positions)
    record = order("a", side=Side.SELL)
    record.add_fill(1, D("0.5"), D("100"))
    orders["a"] = record
    positions["BTCUSDT"] = Position(D("1.5"), D("100"))
    assert position_invariant_violations(orders, positions, baselines) == []


def test_countdown_when_symbol_has_live_orders_then_armed_refreshed_and_disarmed_when_flat() -> None:
    planner = CountdownPlanner(countdown_ms=60_000, refresh_ns=20 * S)
    assert planner.due({"BTCUSDT"}, 0) == {"BTCUSDT": 60_000}
    planner.sent("BTCUSDT", 60_000, 0)
    assert planner.due({"BTCUSDT"}, 19 * S) == {}
    assert planner.due({"BTCUSDT"}, 20 * S) == {"BTCUSDT": 60_000}
    planner.sent("BTCUSDT", 60_000, 20 * S)
    assert planner.due(set(), 21 * S) == {"BTCUSDT": 0}
    planner.sent("BTCUSDT", 0, 21 * S)
    assert planner.due(set(), 22 * S) == {}


def test_countdown_when_link_lost_then_rearmed_at_once_and_off_when_zero() -> None:
    planner = CountdownPlanner(countdown_ms=60_000, refresh_ns=20 * S)
    planner.sent("BTCUSDT", 60_000, 100 * S)
    planner.forget()
    assert planner.due({"BTCUSDT"}, 101 * S) == {"BTCUSDT": 60_000}
    assert CountdownPlanner(countdown_ms=0, refresh_ns=S).due({"BTCUSDT"}, 0) == {}

"""Pre-trade checks beyond the basics: degradation effects (SPEC §5), breaker gates, pending exposure,
order rate per strategy, protective stops while HALTED, and flatten orders."""

from __future__ import annotations

from decimal import Decimal

from libs.ids import client_order_id_for
from proto.enums import DegradationLevel, HotStateStatus, OrderSource, OrderType, Side, TradingState
from proto.messages import SubmitOrder
from services.risk.checks import RiskLimits, check_order, parse_degradation
from services.risk.exposure import OrderRateWindow, PendingExposure
from services.risk.routing import flatten_orders

D = Decimal
LIMITS = RiskLimits(
    symbols=frozenset({"BTCUSDT", "ETHUSDT", "DOGEUSDT"}),
    max_position_qty=D("1"),
    max_order_notional=D("1000000"),
    liquid_symbols=frozenset({"BTCUSDT", "ETHUSDT"}),
    reduced_min_confidence=D("0.8"),
    max_orders_per_minute=3,
)


def order(side: Side = Side.BUY, quantity: str = "0.1", n: int = 1, **kwargs: object) -> SubmitOrder:
    fields: dict = {
        "client_order_id": f"bw{n}",
        "idempotency_key": f"k{n}",
        "source": OrderSource.OPERATOR,
        "symbol": "BTCUSDT",
        "side": side,
        "order_type": OrderType.MARKET,
        "quantity": D(quantity),
    }
    fields.update(kwargs)
    return SubmitOrder(**fields)


def strategy_order(quantity: str = "0.1", **kwargs: object) -> SubmitOrder:
    return order(quantity=quantity, source=OrderSource.STRATEGY, strategy="imbalance", **kwargs)


def check(o: SubmitOrder, **overrides: object) -> tuple[bool, str]:
    args: dict = {
        "trading_state": TradingState.ACTIVE,
        "hot_state": HotStateStatus.VALID,
        "position": D(0),
        "reference_price": D("60000"),
        "limits": LIMITS,
    }
    args.update(overrides)
    decision = check_order(o, **args)
    return decision.approved, decision.reason


# --------------------------------------------------------------------------- degradation


def test_check_when_emergency_mode_and_entry_then_denied() -> None:
    approved, reason = check(order(), degradation=DegradationLevel.EMERGENCY_MODE)
    assert not approved and "EMERGENCY_MODE" in reason


def test_check_when_emergency_mode_and_order_reduces_then_approved() -> None:
    assert check(order(Side.SELL, "0.5"), degradation=DegradationLevel.EMERGENCY_MODE, position=D("0.5"))[0]


def test_check_when_hard_shutdown_then_only_flattening_passes() -> None:
    approved, reason = check(order(), degradation=DegradationLevel.HARD_SHUTDOWN)
    assert not approved and "HARD_SHUTDOWN" in reason
    assert check(order(Side.BUY, "0.3"), degradation=DegradationLevel.HARD_SHUTDOWN, position=D("-0.3"))[0]


def test_check_when_degradation_unknown_then_entries_denied_fail_closed() -> None:
    approved, reason = check(order(), degradation=None)
    assert not approved and "fail closed" in reason
    assert check(order(Side.SELL, "0.1"), degradation=None, position=D("0.2"))[0]


def test_check_when_reduced_and_illiquid_symbol_then_denied() -> None:
    approved, reason = check(order(symbol="DOGEUSDT"), degradation=DegradationLevel.REDUCED_FUNCTIONALITY)
    assert not approved and "most liquid" in reason
    assert check(order(symbol="DOGEUSDT"))[0]  # NORMAL: fine


def test_check_when_reduced_and_position_above_half_limit_then_denied() -> None:
    reduced = DegradationLevel.REDUCED_FUNCTIONALITY
    assert check(order(quantity="0.5"), degradation=reduced)[0]
    approved, reason = check(order(quantity="0.6"), degradation=reduced)
    assert not approved and "limit 0.5" in reason
    assert check(order(quantity="0.6"))[0]  # NORMAL: full limit


def test_check_when_reduced_and_signal_confidence_low_or_unknown_then_denied() -> None:
    reduced = DegradationLevel.REDUCED_FUNCTIONALITY
    approved, reason = check(strategy_order(), degradation=reduced, confidence=D("0.7"))
    assert not approved and "confidence 0.7" in reason
    assert not check(strategy_order(), degradation=reduced, confidence=None)[0]
    assert check(strategy_order(), degradation=reduced, confidence=D("0.8"))[0]
    assert check(strategy_order(), confidence=None)[0]  # NORMAL: no threshold from risk


# --------------------------------------------------------------------------- trading state and breakers


def test_check_when_halted_and_protective_stop_then_approved() -> None:
    stop = order(Side.SELL, "0.5", order_type=OrderType.STOP_MARKET, stop_price=D("50000"), reduce_only=True)
    assert check(stop, trading_state=TradingState.HALTED, position=D("0.5"))[0]
    not_reduce_only = order(Side.SELL, "0.5", order_type=OrderType.STOP_MARKET, stop_price=D("50000"))
    assert not check(not_reduce_only, trading_state=TradingState.HALTED, position=D("0.5"))[0]


def test_check_when_entries_paused_then_entry_denied_and_exit_approved() -> None:
    approved, reason = check(order(), entries_paused="BTCUSDT price moved 25%")
    assert not approved and "CB-2" in reason
    assert check(order(Side.SELL, "0.1"), entries_paused="x", position=D("0.1"))[0]


def test_check_when_strategy_disabled_then_its_entries_denied() -> None:
    approved, reason = check(strategy_order(), strategy_disabled="win rate 10%")
    assert not approved and "CB-3" in reason


# --------------------------------------------------------------------------- pending exposure and rates


def test_check_when_burst_of_approved_unfilled_orders_then_limit_holds() -> None:
    pending = PendingExposure()
    approved = 0
    for n in range(10):
        candidate = order(quantity="0.3", n=n)
        buy, sell = pending.totals("BTCUSDT")
        if check(candidate, pending_buy=buy, pending_sell=sell)[0]:
            pending.add(candidate)
            approved += 1
    assert approved == 3  # 0.9 pending; a fourth would make 1.2 > 1
    assert pending.totals("BTCUSDT") == (D("0.9"), D(0))


def test_check_when_exit_in_flight_then_second_plain_exit_is_not_reducing_but_reduce_only_is() -> None:
    emergency = DegradationLevel.EMERGENCY_MODE
    # Position 0.2 with a flatten SELL 0.2 pending: another plain SELL would end up short.
    approved, reason = check(order(Side.SELL), degradation=emergency, position=D("0.2"), pending_sell=D("0.2"))
    assert not approved and "EMERGENCY_MODE" in reason
    assert check(order(Side.SELL, reduce_only=True), degradation=emergency, position=D("0.2"), pending_sell=D("0.2"))[0]


def test_pending_when_filled_rejected_or_canceled_then_released() -> None:
    pending = PendingExposure()
    for n in range(3):
        pending.add(order(quantity="0.3", n=n))
    pending.on_fill("bw0", D("0.1"))
    assert pending.totals("BTCUSDT") == (D("0.8"), D(0))
    pending.on_fill("bw0", D("0.3"))
    pending.release("bw1")
    assert pending.totals("BTCUSDT") == (D("0.3"), D(0)) and len(pending) == 1


def test_pending_when_reduce_only_then_not_listed_as_entry() -> None:
    pending = PendingExposure()
    pending.add(order(n=1))
    pending.add(order(Side.SELL, n=2, reduce_only=True))
    assert pending.entries() == ["bw1"]


def test_check_when_strategy_above_order_rate_then_entry_denied_and_exit_approved() -> None:
    rates = OrderRateWindow(window_ns=60)
    for t in range(3):
        rates.record("imbalance", t)
    approved, reason = check(strategy_order(), recent_strategy_orders=rates.count("imbalance", 10))
    assert not approved and "orders per minute" in reason
    exit_order = strategy_order(side=Side.SELL)
    assert check(exit_order, recent_strategy_orders=3, position=D("0.1"))[0]
    assert rates.count("imbalance", 61) == 1  # the two oldest left the window
    assert check(order(), recent_strategy_orders=99)[0]  # operator orders are not rate-limited here


# --------------------------------------------------------------------------- one holder per symbol


def test_check_when_another_strategys_entry_in_flight_then_second_strategy_entry_denied() -> None:
    pending = PendingExposure()
    first = strategy_order(n=1)
    assert check(first, holders=frozenset(pending.entry_holders("BTCUSDT")))[0]
    pending.add(first)
    other = order(n=2, source=OrderSource.STRATEGY, strategy="trend")
    approved, reason = check(other, holders=frozenset(pending.entry_holders("BTCUSDT")), pending_buy=D("0.1"))
    assert not approved and "held by imbalance" in reason and "one position per symbol" in reason
    # Another symbol is free, and the holder itself is not blocked by its own entry.
    assert pending.entry_holders("ETHUSDT") == set()
    assert check(strategy_order(n=3), holders=frozenset(pending.entry_holders("BTCUSDT")), pending_buy=D("0.1"))[0]


def test_check_when_symbol_held_by_operator_or_unattributed_position_then_strategy_entry_denied() -> None:
    approved, reason = check(strategy_order(), holders=frozenset({"operator"}))
    assert not approved and "held by operator" in reason
    approved, reason = check(strategy_order(), position=D("0.2"), holders=frozenset({"trend"}))
    assert not approved and "held by trend" in reason  # it would add to trend's long


def test_check_when_symbol_held_then_exits_and_operator_orders_still_pass() -> None:
    held = frozenset({"trend"})
    assert check(strategy_order(side=Side.SELL, reduce_only=True), position=D("0.1"), holders=held)[0]
    assert check(order(), holders=held)[0]  # the operator is in charge


def test_pending_when_snapshot_restored_then_entry_holders_kept() -> None:
    pending = PendingExposure()
    pending.add(strategy_order(n=1))
    pending.add(order(n=2))
    pending.add(order(Side.SELL, n=3, reduce_only=True, source=OrderSource.STRATEGY, strategy="trend"))
    restored = PendingExposure.from_state(pending.to_state())
    assert restored.entry_holders("BTCUSDT") == {"imbalance", "operator"}


# --------------------------------------------------------------------------- flatten and level parsing


def test_flatten_orders_when_positions_open_then_reduce_only_market_orders_with_stable_ids() -> None:
    orders = flatten_orders({"BTCUSDT": D("0.5"), "ETHUSDT": D("-2"), "DOGEUSDT": D(0)}, "CB-1:7", "binance-usdm")
    assert [(o.symbol, o.side, o.quantity) for o in orders] == [
        ("BTCUSDT", Side.SELL, D("0.5")),
        ("ETHUSDT", Side.BUY, D("2")),
    ]
    assert all(o.reduce_only and o.order_type == OrderType.MARKET and o.source == OrderSource.RISK for o in orders)
    assert orders[0].client_order_id == client_order_id_for("flatten:CB-1:7:BTCUSDT")


def test_parse_degradation_when_never_set_unreadable_or_unknown_then_normal_or_none() -> None:
    assert parse_degradation(None) == (DegradationLevel.NORMAL, 0)
    assert parse_degradation(b'{"level": "EMERGENCY_MODE"}') == (DegradationLevel.EMERGENCY_MODE, 0)
    assert parse_degradation(b'{"level": "EMERGENCY_MODE", "ts_ns": 7}') == (DegradationLevel.EMERGENCY_MODE, 7)
    assert parse_degradation(b"{broken") == (None, 0)
    assert parse_degradation(b'{"level": "PANIC", "ts_ns": 7}') == (None, 0)

"""Pure risk logic: trading state table and pre-trade checks."""

from __future__ import annotations

from decimal import Decimal

import pytest

from proto.enums import HotStateStatus, OrderSource, OrderType, Side, TradingState
from proto.kv import TradingStateValue, encode_value
from proto.messages import SignalGenerated, SubmitOrder
from services.risk.checks import RiskLimits, check_order, reduces_exposure, reference_price
from services.risk.decisions import signal_to_order
from services.risk.trading_state import (
    TRADING_TRANSITIONS,
    InvalidTransition,
    TradingTrigger,
    load_trading_state,
    next_trading_state,
)

LIMITS = RiskLimits(
    symbols=frozenset({"BTCUSDT", "ETHUSDT"}), max_position_qty=Decimal("1"), max_order_notional=Decimal("100000")
)


def order(side: Side = Side.BUY, quantity: str = "0.1", **kwargs: object) -> SubmitOrder:
    fields: dict = {
        "client_order_id": "bw1",
        "idempotency_key": "k1",
        "source": OrderSource.OPERATOR,
        "symbol": "BTCUSDT",
        "side": side,
        "order_type": OrderType.MARKET,
        "quantity": Decimal(quantity),
    }
    fields.update(kwargs)
    return SubmitOrder(**fields)


def check(o: SubmitOrder, **overrides: object) -> tuple[bool, str]:
    args: dict = {
        "trading_state": TradingState.ACTIVE,
        "hot_state": HotStateStatus.VALID,
        "position": Decimal(0),
        "reference_price": Decimal("60000"),
        "limits": LIMITS,
    }
    args.update(overrides)
    decision = check_order(o, **args)
    return decision.approved, decision.reason


def test_halt_when_active_then_halted() -> None:
    assert next_trading_state(TradingState.ACTIVE, TradingTrigger.HALT) == TradingState.HALTED


def test_resume_when_halted_then_active() -> None:
    assert next_trading_state(TradingState.HALTED, TradingTrigger.RESUME) == TradingState.ACTIVE


def test_reduce_when_halted_then_invalid_transition() -> None:
    with pytest.raises(InvalidTransition):
        next_trading_state(TradingState.HALTED, TradingTrigger.REDUCE)


def test_transition_table_when_any_state_halts_then_halted() -> None:
    for state in TradingState:
        assert TRADING_TRANSITIONS[(state, TradingTrigger.HALT)] == TradingState.HALTED


def test_load_when_never_set_then_active() -> None:
    assert load_trading_state(None).state == TradingState.ACTIVE


def test_load_when_persisted_halted_then_halted() -> None:
    record = TradingStateValue(state=TradingState.HALTED, reason="x", operator="op", ts_ns=5)
    assert load_trading_state(encode_value(record)) == record


def test_load_when_unreadable_then_halted_fail_closed() -> None:
    assert load_trading_state(b"{not json").state == TradingState.HALTED


def test_check_when_all_good_then_approved() -> None:
    assert check(order())[0]


def test_check_when_halted_then_denied_even_if_reducing() -> None:
    approved, reason = check(order(Side.SELL), trading_state=TradingState.HALTED, position=Decimal("0.5"))
    assert not approved and "HALTED" in reason


def test_check_when_reducing_and_order_grows_then_denied() -> None:
    approved, reason = check(order(Side.BUY), trading_state=TradingState.REDUCING, position=Decimal("0.5"))
    assert not approved and "REDUCING" in reason


def test_check_when_reducing_and_order_reduces_then_approved() -> None:
    assert check(order(Side.SELL, "0.5"), trading_state=TradingState.REDUCING, position=Decimal("0.5"))[0]


def test_check_when_hot_state_stale_then_denied() -> None:
    approved, reason = check(order(), hot_state=HotStateStatus.STALE)
    assert not approved and "STALE" in reason


def test_check_when_hot_state_unknown_then_denied() -> None:
    approved, reason = check(order(), hot_state=None)
    assert not approved and "UNKNOWN" in reason


def test_check_when_hot_state_invalid_but_order_reduces_then_approved() -> None:
    assert check(order(Side.BUY, "0.2"), hot_state=HotStateStatus.INVALID, position=Decimal("-0.3"))[0]


def test_check_when_position_limit_exceeded_then_denied() -> None:
    approved, reason = check(order(Side.BUY, "0.6"), position=Decimal("0.5"))
    assert not approved and "limit" in reason


def test_check_when_flip_beyond_limit_then_denied() -> None:
    assert not check(order(Side.SELL, "2.5"), position=Decimal("1"))[0]


def test_check_when_notional_too_big_then_denied() -> None:
    approved, reason = check(order(quantity="0.9"), reference_price=Decimal("200000"))
    assert not approved and "notional" in reason


def test_check_when_no_reference_price_then_denied() -> None:
    approved, reason = check(order(), reference_price=None)
    assert not approved and "reference price" in reason


def test_check_when_quantity_not_positive_then_denied() -> None:
    assert not check(order(quantity="0"))[0]


def test_check_when_unknown_symbol_then_denied() -> None:
    approved, reason = check(order(symbol="DOGEUSDT"))
    assert not approved and "unknown symbol" in reason


def test_check_when_reduce_only_without_position_then_denied() -> None:
    assert not check(order(reduce_only=True))[0]


def test_reduces_exposure_when_order_would_flip_then_false() -> None:
    assert not reduces_exposure(order(Side.SELL, "0.6"), Decimal("0.5"))
    assert reduces_exposure(order(Side.SELL, "0.5"), Decimal("0.5"))


def test_reference_price_when_no_order_price_then_mark_then_far_touch() -> None:
    assert reference_price(order(price=Decimal("10")), Decimal("20"), None, None) == Decimal("10")
    assert reference_price(order(), Decimal("20"), Decimal("1"), Decimal("2")) == Decimal("20")
    assert reference_price(order(Side.BUY), None, Decimal("1"), Decimal("2")) == Decimal("2")
    assert reference_price(order(Side.SELL), None, Decimal("1"), Decimal("2")) == Decimal("1")


def test_signal_to_order_when_converted_then_coid_derives_from_signal_id() -> None:
    signal = SignalGenerated(
        strategy="imbalance", symbol="BTCUSDT", side=Side.BUY, order_type=OrderType.MARKET, quantity=Decimal("0.001")
    )
    submit = signal_to_order(signal, "binance-usdm")
    assert submit.idempotency_key == signal.message_id
    assert submit.source == OrderSource.STRATEGY and submit.strategy == "imbalance"
    assert submit.client_order_id == signal_to_order(signal, "binance-usdm").client_order_id


def test_signal_to_order_when_signal_has_protective_levels_then_order_carries_them() -> None:
    signal = SignalGenerated(
        strategy="cascade-fade",
        symbol="BTCUSDT",
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=Decimal("0.002"),
        stop_loss=Decimal("59200.0"),
        take_profit=Decimal("59700.5"),
    )
    submit = signal_to_order(signal, "binance-usdm")
    assert (submit.stop_loss, submit.take_profit) == (Decimal("59200.0"), Decimal("59700.5"))

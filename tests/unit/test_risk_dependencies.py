"""Fail closed on lost dependencies (SPEC FM-C1, FM-C6): the state-builder liveness rule, stale hot
state, and the entries-halted gate of the pre-trade checks."""

from __future__ import annotations

from decimal import Decimal

from proto.enums import HotStateStatus, OrderSource, OrderType, Side, TradingState
from proto.messages import SubmitOrder
from services.risk.domain import (
    HOT_STATE_MAX_AGE_MS,
    RiskLimits,
    StateBuilderWatch,
    check_order,
    reply_hot_state,
)

S = 1_000_000_000
LIMITS = RiskLimits(symbols=frozenset({"BTCUSDT"}), max_position_qty=Decimal(1), max_order_notional=Decimal(100000))


def order(side: Side, quantity: str = "0.1", reduce_only: bool = False) -> SubmitOrder:
    return SubmitOrder(
        client_order_id="bw1",
        idempotency_key="k1",
        source=OrderSource.STRATEGY,
        strategy="alpha",
        symbol="BTCUSDT",
        side=side,
        order_type=OrderType.MARKET,
        quantity=Decimal(quantity),
        reduce_only=reduce_only,
    )


def decide(o: SubmitOrder, position: str, halted: str | None) -> tuple[bool, str]:
    decision = check_order(
        o,
        trading_state=TradingState.ACTIVE,
        hot_state=HotStateStatus.VALID,
        position=Decimal(position),
        reference_price=Decimal(60000),
        limits=LIMITS,
        entries_halted=halted,
    )
    return decision.approved, decision.reason


def test_watch_when_never_heard_then_dead_with_reason() -> None:
    watch = StateBuilderWatch()
    assert not watch.alive(10 * S)
    assert "not heard from" in (watch.down_reason(10 * S) or "")


def test_watch_when_heard_within_3s_then_alive_and_after_then_dead() -> None:
    watch = StateBuilderWatch()
    assert watch.heard(10 * S) is True  # from unknown to alive counts as a revival
    assert watch.alive(13 * S) and watch.down_reason(13 * S) is None
    assert not watch.alive(13 * S + 1)
    assert "silent for 3.0s" in (watch.down_reason(13 * S + 1) or "")
    assert watch.heard(14 * S) is True
    assert watch.heard(15 * S) is False


def test_reply_hot_state_when_data_older_than_limit_then_invalid() -> None:
    assert reply_hot_state(HotStateStatus.VALID, 10) == HotStateStatus.VALID
    assert reply_hot_state(HotStateStatus.VALID, None) == HotStateStatus.VALID
    assert reply_hot_state(HotStateStatus.VALID, HOT_STATE_MAX_AGE_MS + 1) == HotStateStatus.INVALID
    assert reply_hot_state(HotStateStatus.STALE, 0) == HotStateStatus.STALE


def test_check_when_entries_halted_then_entry_denied_with_reason_and_exit_approved() -> None:
    approved, reason = decide(order(Side.BUY), "0", "state-builder silent for 4.0s")
    assert not approved and reason == "trading HALTED for new entries: state-builder silent for 4.0s"
    assert decide(order(Side.SELL, "0.1", reduce_only=True), "0.1", "state-builder silent")[0]
    assert decide(order(Side.SELL, "0.05"), "0.1", "bus connection lost")[0]
    # Growing the position is an entry even with a position open.
    assert not decide(order(Side.BUY), "0.1", "bus connection lost")[0]


def test_check_when_nothing_halted_then_entry_approved() -> None:
    assert decide(order(Side.BUY), "0", None)[0]

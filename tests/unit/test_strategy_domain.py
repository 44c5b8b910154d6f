"""The strategy state machine and the `imbalance` strategy, driven by an injected clock."""

from __future__ import annotations

from decimal import Decimal

import pytest

from proto.enums import Side, StrategyState
from services.strategy.config import instance_config
from services.strategy.domain import (
    NS,
    STRATEGY_TRANSITIONS,
    IllegalStrategyTransition,
    InjectedCrash,
    MarketView,
    Signal,
    StrategyTrigger,
    Transition,
    crash_fails,
    crashes_in_window,
    next_strategy_state,
)
from services.strategy.strategies import ImbalanceConfig, ImbalanceStrategy

St = StrategyState
VALID = {"BTCUSDT": MarketView(hot_state_valid=True)}
STALE = {"BTCUSDT": MarketView(hot_state_valid=False)}
CONFIG = ImbalanceConfig(min_trades=5, threshold=Decimal("0.6"), cooldown_s=30, hold_s=20, setup_timeout_s=10)


def scanning(config: ImbalanceConfig = CONFIG) -> ImbalanceStrategy:
    strategy = ImbalanceStrategy("imbalance", config)
    strategy.enable(0)
    return strategy


def buy_pressure(strategy: ImbalanceStrategy, start_s: float, count: int = 10) -> None:
    for i in range(count):
        # buyer_is_maker False: the taker bought
        strategy.on_trade(
            "BTCUSDT", int((start_s + i * 0.1) * NS), Decimal(60000), Decimal("1"), buyer_is_maker=i % 10 == 9
        )


def signals(actions: list) -> list[Signal]:
    return [a for a in actions if isinstance(a, Signal)]


def states(actions: list) -> list[StrategyState]:
    return [a.current for a in actions if isinstance(a, Transition)]


def test_enable_when_disabled_then_scanning() -> None:
    assert next_strategy_state(St.DISABLED, StrategyTrigger.ENABLE) == St.SCANNING


def test_setup_when_disabled_then_illegal() -> None:
    with pytest.raises(IllegalStrategyTransition):
        next_strategy_state(St.DISABLED, StrategyTrigger.SETUP_FOUND)


def test_tick_when_strong_buy_imbalance_and_valid_then_setup_and_buy_signal() -> None:
    strategy = scanning()
    buy_pressure(strategy, 1)
    actions = strategy.on_tick(3 * NS, VALID)
    assert states(actions) == [St.SETUP]
    [signal] = signals(actions)
    assert (signal.symbol, signal.side, signal.quantity, signal.reduce_only) == (
        "BTCUSDT",
        Side.BUY,
        Decimal("0.002"),
        False,
    )


def test_tick_when_hot_state_not_valid_then_no_signal() -> None:
    strategy = scanning()
    buy_pressure(strategy, 1)
    assert strategy.on_tick(3 * NS, STALE) == []
    assert strategy.on_tick(3 * NS, {}) == []


def test_tick_when_balanced_flow_then_no_signal() -> None:
    strategy = scanning()
    for i in range(10):
        strategy.on_trade("BTCUSDT", int((1 + i * 0.1) * NS), Decimal(60000), Decimal("1"), buyer_is_maker=i % 2 == 0)
    assert strategy.on_tick(3 * NS, VALID) == []


def test_tick_when_trades_older_than_window_then_ignored() -> None:
    strategy = scanning()
    buy_pressure(strategy, 1)
    assert strategy.on_tick(20 * NS, VALID) == []


def test_position_when_setup_then_in_position_and_exit_after_hold() -> None:
    strategy = scanning()
    buy_pressure(strategy, 1)
    strategy.on_tick(3 * NS, VALID)
    assert states(strategy.on_position("BTCUSDT", Decimal("0.002"), 4 * NS)) == [St.IN_POSITION]
    assert strategy.on_tick(10 * NS, VALID) == []
    actions = strategy.on_tick(24 * NS, VALID)
    assert states(actions) == [St.EXITING]
    [exit_signal] = signals(actions)
    assert (exit_signal.side, exit_signal.quantity, exit_signal.reduce_only) == (Side.SELL, Decimal("0.002"), True)
    assert states(strategy.on_position("BTCUSDT", Decimal(0), 25 * NS)) == [St.SCANNING]


def test_position_when_another_order_opened_it_then_setup_does_not_adopt_it() -> None:
    strategy = scanning()
    buy_pressure(strategy, 1)
    strategy.on_tick(3 * NS, VALID)
    strategy.entry_order = "bw-own-entry"  # the handler's record of the entry it sent
    # Another strategy's entry filled first in the same symbol: not this engagement's position.
    assert strategy.on_position("BTCUSDT", Decimal("0.002"), 4 * NS, caused_by="bw-other") == []
    assert strategy.state == St.SETUP
    assert strategy.on_tick(10 * NS, VALID) == []  # never exits what it does not hold
    assert states(strategy.on_position("BTCUSDT", Decimal("0.004"), 5 * NS, caused_by="bw-own-entry")) == [
        St.IN_POSITION
    ]


def test_position_when_cause_unknown_then_setup_takes_it_as_its_entry() -> None:
    strategy = scanning()
    buy_pressure(strategy, 1)
    strategy.on_tick(3 * NS, VALID)
    strategy.entry_order = "bw-own-entry"
    assert states(strategy.on_position("BTCUSDT", Decimal("0.002"), 4 * NS, caused_by=None)) == [St.IN_POSITION]
    strategy.on_tick(24 * NS, VALID)
    strategy.on_position("BTCUSDT", Decimal(0), 25 * NS)
    assert strategy.state == St.SCANNING and strategy.entry_order is None


def test_tick_when_exit_not_filled_then_exit_signal_repeated() -> None:
    strategy = scanning()
    buy_pressure(strategy, 1)
    strategy.on_tick(3 * NS, VALID)
    strategy.on_position("BTCUSDT", Decimal("0.002"), 4 * NS)
    strategy.on_tick(24 * NS, VALID)
    actions = strategy.on_tick(35 * NS, VALID)
    assert states(actions) == [] and len(signals(actions)) == 1
    assert strategy.state == St.EXITING


def test_tick_when_entry_never_fills_then_back_to_scanning_and_cooldown_holds() -> None:
    strategy = scanning()
    buy_pressure(strategy, 1)
    strategy.on_tick(3 * NS, VALID)
    assert states(strategy.on_tick(14 * NS, VALID)) == [St.SCANNING]
    buy_pressure(strategy, 15)
    assert strategy.on_tick(17 * NS, VALID) == []  # cooldown of 30 s since the entry at 3 s
    buy_pressure(strategy, 30)
    assert states(strategy.on_tick(34 * NS, VALID)) == [St.SETUP]


def test_disable_when_in_setup_then_disabled_and_no_more_signals() -> None:
    strategy = scanning()
    buy_pressure(strategy, 1)
    strategy.on_tick(3 * NS, VALID)
    assert states(strategy.disable(4 * NS)) == [St.DISABLED]
    assert strategy.symbol is None
    buy_pressure(strategy, 40)
    assert strategy.on_tick(42 * NS, VALID) == []


def test_fail_when_scanning_then_failed_until_enabled() -> None:
    strategy = scanning()
    assert states(strategy.fail(1, "boom")) == [St.FAILED]
    assert strategy.disable(2) == []
    assert states(strategy.enable(3)) == [St.SCANNING]


def test_sell_imbalance_when_eth_then_sell_signal_with_eth_size() -> None:
    strategy = scanning()
    for i in range(10):
        strategy.on_trade("ETHUSDT", int((1 + i * 0.1) * NS), Decimal(3000), Decimal("2"), buyer_is_maker=True)
    [signal] = signals(strategy.on_tick(3 * NS, {"ETHUSDT": MarketView(hot_state_valid=True)}))
    assert (signal.side, signal.quantity) == (Side.SELL, Decimal("0.01"))


def test_config_when_env_overrides_then_applied() -> None:
    config = instance_config(
        "imbalance",
        {},
        {
            "BULWARK_IMBALANCE_THRESHOLD": "0.8",
            "BULWARK_IMBALANCE_QUANTITIES": "BTCUSDT:0.002",
            "BULWARK_IMBALANCE_HOLD_S": "5",
        },
    ).config
    assert isinstance(config, ImbalanceConfig)
    assert config.threshold == Decimal("0.8") and config.hold_s == 5.0
    assert config.quantity_for("BTCUSDT") == Decimal("0.002") and config.quantity_for("ETHUSDT") == Decimal("0.01")


# --------------------------------------------------------------------------- SPEC §0 table, FM-N1, FM-C2


def test_table_when_listed_then_only_spec_states_and_every_state_can_be_disabled_or_failed() -> None:
    assert {state for pair in STRATEGY_TRANSITIONS for state in (pair[0], STRATEGY_TRANSITIONS[pair])} == set(St)
    for state in St:
        assert next_strategy_state(state, StrategyTrigger.DISABLE) in (St.DISABLED, St.FAILED)
        assert next_strategy_state(state, StrategyTrigger.FAIL) == St.FAILED


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (St.SCANNING, St.SCANNING),
        (St.SETUP, St.SCANNING),
        (St.IN_POSITION, St.IN_POSITION),
        (St.EXITING, St.EXITING),
        (St.DISABLED, St.DISABLED),
        (St.FAILED, St.FAILED),
    ],
)
def test_data_reset_when_in_state_then_setups_dropped_and_positions_kept(state: St, expected: St) -> None:
    assert next_strategy_state(state, StrategyTrigger.DATA_RESET) == expected


def test_data_reset_when_setup_on_affected_symbol_then_scanning_and_windows_cleared() -> None:
    strategy = scanning()
    buy_pressure(strategy, 1)
    strategy.on_tick(3 * NS, VALID)
    assert strategy.state == St.SETUP
    assert states(strategy.data_reset(["ETHUSDT"], 4 * NS, "resync ETH")) == []  # another symbol: setup kept
    assert states(strategy.data_reset(None, 4 * NS, "link DISCONNECTED")) == [St.SCANNING]
    assert strategy.symbol is None and strategy.windows == {}


def test_data_reset_when_in_position_then_state_and_hold_timer_kept() -> None:
    strategy = scanning()
    buy_pressure(strategy, 1)
    strategy.on_tick(3 * NS, VALID)
    strategy.on_position("BTCUSDT", Decimal("0.002"), 4 * NS)
    assert strategy.data_reset(None, 10 * NS, "link DISCONNECTED") == []
    assert strategy.state == St.IN_POSITION
    assert states(strategy.on_tick(24 * NS, VALID)) == [St.EXITING]  # 20 s hold counted from 4 s


def test_crash_rule_when_fourth_crash_in_ten_minutes_then_fails() -> None:
    crashes = [0, 60 * NS, 120 * NS]
    assert not crash_fails(len(crashes_in_window(crashes, 180 * NS)))
    assert crash_fails(len(crashes_in_window([*crashes, 180 * NS], 180 * NS)))


def test_crash_rule_when_old_crashes_leave_the_window_then_not_failed() -> None:
    crashes = [0, 60 * NS, 120 * NS, 700 * NS]
    window = crashes_in_window(crashes, 700 * NS)
    assert window == [120 * NS, 700 * NS] and not crash_fails(len(window))


def test_surrendered_symbol_when_position_open_then_never_entered_until_flat_and_timeout() -> None:
    strategy = scanning()
    strategy.surrendered = {"BTCUSDT": 1 * NS}
    strategy.positions["BTCUSDT"] = Decimal("0.002")
    buy_pressure(strategy, 20)
    assert strategy.on_tick(22 * NS, VALID) == []
    strategy.on_position("BTCUSDT", Decimal(0), 23 * NS)  # the position service closed it
    buy_pressure(strategy, 24)
    assert states(strategy.on_tick(26 * NS, VALID)) == [St.SETUP]
    assert strategy.surrendered == {}


def test_surrendered_symbol_when_entry_was_in_flight_then_blocked_for_a_setup_timeout() -> None:
    strategy = scanning()
    strategy.surrendered = {"BTCUSDT": 1 * NS}
    buy_pressure(strategy, 1)
    assert strategy.on_tick(3 * NS, VALID) == []  # flat, but the entry sent before the crash may fill
    buy_pressure(strategy, 12)
    assert states(strategy.on_tick(14 * NS, VALID)) == [St.SETUP]


def test_crash_hook_when_configured_then_named_input_raises() -> None:
    strategy = ImbalanceStrategy("imbalance", ImbalanceConfig(crash_on="tick"))
    strategy.enable(0)
    strategy.on_trade("BTCUSDT", 1, Decimal(1), Decimal(1), buyer_is_maker=False)  # other inputs work
    with pytest.raises(InjectedCrash):
        strategy.on_tick(2, VALID)

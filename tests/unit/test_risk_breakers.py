"""Risk circuit breakers CB-1..CB-4: every trip condition and every reset path, on an injected clock."""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.breaker import BreakerState
from libs.fsm import IllegalTransition, next_state
from libs.latency import LatencyWindow
from proto.enums import HotStateStatus
from proto.kv import BreakerValue, decode_value, encode_value
from services.risk.breaker_rules import (
    AbnormalMarketBreaker,
    AbnormalMarketConfig,
    RapidLossBreaker,
    RapidLossConfig,
    ResourceBreaker,
    ResourceConfig,
    ResourceSample,
    StrategyMalfunctionBreaker,
    StrategyMalfunctionConfig,
    trade_stats,
)
from services.risk.breakers import (
    AUTO_RESET_TABLE,
    MANUAL_RESET_TABLE,
    PAUSE_TABLE,
    BreakerNotTripped,
    RiskBreakerTrigger,
)
from services.risk.trades import ClosedTrade, TradeTracker, TradeUpdate

S = 1_000_000_000
D = Decimal
CAPITAL = D("100000")


def loss(pnl: str, *, closed: bool = True, trade_pnl: str | None = None) -> TradeUpdate:
    value = D(pnl)
    trade = ClosedTrade("BTCUSDT", "imbalance", value, 0, 1) if closed else None
    return TradeUpdate("BTCUSDT", value, D(trade_pnl) if trade_pnl is not None else value, trade)


# --------------------------------------------------------------------------- tables


def test_manual_table_when_open_then_only_manual_reset_closes() -> None:
    assert next_state(MANUAL_RESET_TABLE, BreakerState.OPEN, RiskBreakerTrigger.MANUAL_RESET) == BreakerState.CLOSED
    with pytest.raises(IllegalTransition):
        next_state(MANUAL_RESET_TABLE, BreakerState.OPEN, RiskBreakerTrigger.CONDITION_CLEARED)
    with pytest.raises(IllegalTransition):
        next_state(MANUAL_RESET_TABLE, BreakerState.OPEN, RiskBreakerTrigger.PAUSE_ELAPSED)


def test_pause_table_when_open_then_half_open_before_closed() -> None:
    assert next_state(PAUSE_TABLE, BreakerState.OPEN, RiskBreakerTrigger.PAUSE_ELAPSED) == BreakerState.HALF_OPEN
    assert next_state(PAUSE_TABLE, BreakerState.HALF_OPEN, RiskBreakerTrigger.DATA_VALIDATED) == BreakerState.CLOSED
    with pytest.raises(IllegalTransition):
        next_state(PAUSE_TABLE, BreakerState.OPEN, RiskBreakerTrigger.DATA_VALIDATED)


def test_auto_table_when_condition_clears_then_closed() -> None:
    assert next_state(AUTO_RESET_TABLE, BreakerState.OPEN, RiskBreakerTrigger.CONDITION_CLEARED) == BreakerState.CLOSED


# --------------------------------------------------------------------------- CB-1


def rapid() -> RapidLossBreaker:
    return RapidLossBreaker(RapidLossConfig(capital=CAPITAL))


def test_cb1_when_one_trade_loses_more_than_5_percent_then_tripped() -> None:
    breaker = rapid()
    assert breaker.on_trade_update(loss("-5000"), 1) is None  # exactly 5 %: not more
    change = rapid().on_trade_update(loss("-5000.01"), 1)
    assert change is not None and change.tripped and change.current == BreakerState.OPEN
    assert "one BTCUSDT trade" in change.reason and change.record.tripped_at_ns == 1


def test_cb1_when_open_trade_loss_exceeds_5_percent_then_tripped_before_close() -> None:
    change = rapid().on_trade_update(loss("-6000", closed=False), 1)
    assert change is not None and change.tripped


def test_cb1_when_session_loses_more_than_10_percent_then_tripped() -> None:
    breaker = rapid()
    changes = [breaker.on_trade_update(loss("-2600"), i) for i in range(1, 5)]
    assert changes[:3] == [None, None, None]  # 7800: under 10 %
    assert changes[3] is not None and "session loss 10400" in changes[3].reason


def test_cb1_when_new_session_starts_then_session_loss_restarts() -> None:
    breaker = rapid()
    day = 86_400 * S
    for i in range(3):
        assert breaker.on_trade_update(loss("-3000"), i) is None
        breaker.consecutive_losses = 0  # isolate the session rule
    assert breaker.on_trade_update(loss("-3000"), day + 1) is None
    assert breaker.session_pnl == D("-3000")


def test_cb1_when_five_consecutive_losses_then_tripped_and_a_win_restarts_the_count() -> None:
    breaker = rapid()
    for _ in range(4):
        assert breaker.on_trade_update(loss("-1"), 1) is None
    assert breaker.on_trade_update(loss("+1"), 1) is None
    for _ in range(4):
        assert breaker.on_trade_update(loss("-1"), 1) is None
    change = breaker.on_trade_update(loss("-1"), 2)
    assert change is not None and "5 consecutive" in change.reason


def test_cb1_when_tripped_then_only_manual_reset_with_counters_cleared() -> None:
    breaker = rapid()
    assert breaker.on_trade_update(loss("-20000"), 1) is not None
    assert breaker.on_trade_update(loss("-1"), 2) is None  # already OPEN: no second event
    change = breaker.reset("alice", "reviewed", 3)
    assert (change.previous, change.current, change.operator) == (BreakerState.OPEN, BreakerState.CLOSED, "alice")
    assert change.record.reset_at_ns == 3 and change.record.trips == 1
    assert breaker.session_pnl == 0 and breaker.consecutive_losses == 0
    with pytest.raises(BreakerNotTripped):
        breaker.reset("alice", "again", 4)


def test_cb1_when_restored_from_record_then_counters_and_state_survive() -> None:
    breaker = rapid()
    breaker.on_trade_update(loss("-1000"), 1)
    breaker.on_trade_update(loss("-1000"), 2)
    record = decode_value(BreakerValue, encode_value(breaker.snapshot(3)))
    restored = RapidLossBreaker(RapidLossConfig(capital=CAPITAL), record)
    assert restored.session_pnl == D("-2000") and restored.consecutive_losses == 2
    assert restored.state == BreakerState.CLOSED


# --------------------------------------------------------------------------- trades


def test_tracker_when_position_opens_and_closes_then_one_trade_with_its_pnl() -> None:
    tracker = TradeTracker()
    tracker.seed("BTCUSDT", D(0), D("100"), 0)
    opened = tracker.on_position("BTCUSDT", D("0.5"), D("100"), 1, "imbalance")
    assert opened is not None and opened.closed is None
    partial = tracker.on_position("BTCUSDT", D("0.2"), D("70"), 2, None)
    assert partial is not None and partial.realized_delta == D("-30") and partial.trade_pnl == D("-30")
    closed = tracker.on_position("BTCUSDT", D("0"), D("40"), 3, None)
    assert closed is not None and closed.closed == ClosedTrade("BTCUSDT", "imbalance", D("-60"), 1, 3)


def test_tracker_when_position_flips_then_trade_closed_and_new_one_opened() -> None:
    tracker = TradeTracker()
    tracker.seed("BTCUSDT", D("1"), D(0), 0)
    flipped = tracker.on_position("BTCUSDT", D("-1"), D("50"), 1, "s2")
    assert flipped is not None and flipped.closed is not None and flipped.closed.pnl == D("50")
    again = tracker.on_position("BTCUSDT", D(0), D("40"), 2, None)
    assert again is not None and again.closed is not None
    assert (again.closed.strategy, again.closed.pnl) == ("s2", D("-10"))


def test_tracker_when_symbol_first_seen_then_baseline_only() -> None:
    assert TradeTracker().on_position("BTCUSDT", D("1"), D("-999"), 1, None) is None


# --------------------------------------------------------------------------- CB-2


def market(pause_s: float = 60.0) -> AbnormalMarketBreaker:
    return AbnormalMarketBreaker(AbnormalMarketConfig(funding_normal=D("0.0001"), pause_s=pause_s))


VALID = {"BTCUSDT": HotStateStatus.VALID}


def test_cb2_when_price_moves_more_than_20_percent_within_a_minute_then_tripped() -> None:
    breaker = market()
    assert breaker.on_price("BTCUSDT", D("100"), 0) is None
    assert breaker.on_price("BTCUSDT", D("120"), 30 * S) is None  # exactly 20 %
    change = breaker.on_price("BTCUSDT", D("79"), 50 * S)
    assert change is not None and change.tripped and "BTCUSDT price moved" in change.reason


def test_cb2_when_price_moves_20_percent_over_more_than_a_minute_then_not_tripped() -> None:
    breaker = market()
    breaker.on_price("BTCUSDT", D("100"), 0)
    assert breaker.on_price("BTCUSDT", D("125"), 61 * S) is None


def test_cb2_when_book_depth_drops_more_than_95_percent_then_tripped() -> None:
    breaker = market()
    for i in range(5):
        assert breaker.on_depth("BTCUSDT", D("1000000"), i * S) is None
    assert breaker.on_depth("BTCUSDT", D("60000"), 5 * S) is None  # 94 % drop
    change = breaker.on_depth("BTCUSDT", D("40000"), 6 * S)
    assert change is not None and "depth dropped" in change.reason


def test_cb2_when_funding_above_10x_normal_then_tripped() -> None:
    breaker = market()
    assert breaker.on_funding("BTCUSDT", D("0.001"), 0) is None  # exactly 10x
    change = breaker.on_funding("BTCUSDT", D("-0.0011"), 1)
    assert change is not None and "funding" in change.reason


def test_cb2_when_pause_elapsed_and_data_valid_then_closed_automatically() -> None:
    breaker = market()
    breaker.on_funding("BTCUSDT", D("0.01"), 0)
    assert breaker.tick(59 * S, VALID) == []
    breaker.on_funding("BTCUSDT", D("0.0001"), 59 * S)
    changes = breaker.tick(60 * S, VALID)
    assert [(c.previous, c.current) for c in changes] == [
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert changes[-1].trigger == RiskBreakerTrigger.DATA_VALIDATED


def test_cb2_when_pause_elapsed_but_data_not_valid_then_stays_half_open_until_valid() -> None:
    breaker = market()
    breaker.on_price("BTCUSDT", D("100"), 0)
    breaker.on_price("BTCUSDT", D("150"), S)
    changes = breaker.tick(61 * S, {"BTCUSDT": HotStateStatus.STALE})
    assert [c.current for c in changes] == [BreakerState.HALF_OPEN]
    assert breaker.is_open
    assert [c.current for c in breaker.tick(62 * S, VALID)] == [BreakerState.CLOSED]


def test_cb2_when_funding_still_abnormal_after_pause_then_stays_paused() -> None:
    breaker = market()
    breaker.on_funding("BTCUSDT", D("0.01"), 0)
    breaker.tick(60 * S, VALID)
    assert breaker.state == BreakerState.HALF_OPEN
    change = breaker.on_funding("BTCUSDT", D("0.01"), 61 * S)
    assert change is not None and change.current == BreakerState.OPEN and breaker.pause_until_ns == 121 * S


def test_cb2_when_abnormal_again_while_open_then_pause_extended_without_event() -> None:
    breaker = market()
    breaker.on_funding("BTCUSDT", D("0.01"), 0)
    assert breaker.on_funding("BTCUSDT", D("0.01"), 30 * S) is None
    assert breaker.tick(60 * S, VALID) == []
    assert breaker.pause_until_ns == 90 * S


def test_cb2_when_reset_manually_then_closed() -> None:
    breaker = market()
    breaker.on_funding("BTCUSDT", D("0.01"), 0)
    assert breaker.reset("bob", "venue confirmed", 1).current == BreakerState.CLOSED


# --------------------------------------------------------------------------- CB-3


def strategy_breaker(baseline: str = "0.5") -> StrategyMalfunctionBreaker:
    return StrategyMalfunctionBreaker("imbalance", StrategyMalfunctionConfig(baseline_win_rate=D(baseline)))


def feed(breaker: StrategyMalfunctionBreaker, pnls: list[str]) -> list:
    return [breaker.on_closed_trade(D(p), i) for i, p in enumerate(pnls)]


def test_cb3_when_fewer_than_20_trades_then_never_tripped() -> None:
    assert all(change is None for change in feed(strategy_breaker(), ["-1"] * 19))


def test_cb3_when_win_rate_30_points_below_baseline_then_strategy_breaker_tripped() -> None:
    # 3 wins of 20 = 15 % < 50 - 30 = 20 %, with wins big enough for the other two rules.
    changes = feed(strategy_breaker(), ["10"] * 3 + ["-1"] * 17)
    assert changes[-1] is not None and "win rate 15%" in changes[-1].reason
    assert changes[-1].breaker == "CB-3-imbalance"


def test_cb3_when_average_loss_above_twice_average_win_then_tripped() -> None:
    changes = feed(strategy_breaker(), ["1"] * 12 + ["-2.5"] * 8)  # win rate 60 %, loss 2.5 > 2 x 1
    assert changes[-1] is not None and "average loss" in changes[-1].reason


def test_cb3_when_sharpe_negative_then_tripped() -> None:
    changes = feed(strategy_breaker(), ["1"] * 10 + ["-1.1"] * 10)  # 50 %, 1.1 < 2, mean < 0
    assert changes[-1] is not None and "Sharpe" in changes[-1].reason


def test_cb3_when_healthy_strategy_then_not_tripped() -> None:
    assert all(change is None for change in feed(strategy_breaker(), ["2", "-1"] * 10))


def test_cb3_when_reset_then_window_cleared_and_judged_anew() -> None:
    breaker = strategy_breaker()
    feed(breaker, ["-1"] * 20)
    assert breaker.is_open
    breaker.reset("carol", "strategy fixed", 100)
    assert not breaker.is_open and len(breaker.trades) == 0


def test_cb3_when_window_set_shorter_then_judged_over_that_many_trades() -> None:
    breaker = StrategyMalfunctionBreaker("imbalance", StrategyMalfunctionConfig(window=4))
    changes = feed(breaker, ["1", "-3", "1", "-3"])  # 50 %, loss 3 > 2 x 1
    assert changes[:3] == [None, None, None]
    assert changes[-1] is not None and "over 4 trades" in changes[-1].reason


def test_cb3_when_window_below_two_trades_then_config_refused() -> None:
    with pytest.raises(ValueError, match="BULWARK_RISK_CB3_TRADES=1"):
        StrategyMalfunctionConfig(window=1)


def test_trade_stats_when_mixed_then_win_rate_and_averages() -> None:
    stats = trade_stats([D("2"), D("-1"), D("4"), D("-3")])
    assert (stats.win_rate, stats.average_win, stats.average_loss) == (D("0.5"), D("3"), D("2"))
    assert stats.sharpe > 0


# --------------------------------------------------------------------------- CB-4


def resource() -> ResourceBreaker:
    return ResourceBreaker(ResourceConfig(latency_baseline_ms=10.0))


def test_cb4_when_cpu_above_95_percent_for_30_s_then_tripped() -> None:
    breaker = resource()
    assert breaker.on_sample(ResourceSample(cpu_fraction=0.99), 0) is None
    assert breaker.on_sample(ResourceSample(cpu_fraction=0.99), 29 * S) is None
    change = breaker.on_sample(ResourceSample(cpu_fraction=0.99), 30 * S)
    assert change is not None and "CPU" in change.reason


def test_cb4_when_cpu_dips_below_then_30_s_count_restarts() -> None:
    breaker = resource()
    breaker.on_sample(ResourceSample(cpu_fraction=0.99), 0)
    breaker.on_sample(ResourceSample(cpu_fraction=0.5), 20 * S)
    assert breaker.on_sample(ResourceSample(cpu_fraction=0.99), 35 * S) is None


def test_cb4_when_memory_above_90_percent_then_tripped_at_once() -> None:
    change = resource().on_sample(ResourceSample(memory_fraction=0.91), 0)
    assert change is not None and "memory" in change.reason


def test_cb4_when_p99_latency_above_10x_baseline_then_tripped() -> None:
    assert resource().on_sample(ResourceSample(p99_latency_ms=100.0), 0) is None
    change = resource().on_sample(ResourceSample(p99_latency_ms=100.1), 0)
    assert change is not None and "latency" in change.reason


def test_cb4_when_back_under_then_closed_automatically() -> None:
    breaker = resource()
    breaker.on_sample(ResourceSample(memory_fraction=0.95), 0)
    assert breaker.on_sample(ResourceSample(memory_fraction=0.92), S) is None  # still over: no event
    change = breaker.on_sample(ResourceSample(memory_fraction=0.5, cpu_fraction=0.2), 2 * S)
    assert change is not None and change.current == BreakerState.CLOSED
    assert change.trigger == RiskBreakerTrigger.CONDITION_CLEARED


def test_latency_window_when_enough_samples_then_p99() -> None:
    window = LatencyWindow(size=100, minimum=10)
    for value in range(5):
        window.add(float(value))
    assert window.p99() is None
    for value in range(5, 100):
        window.add(float(value))
    assert window.p99() == 98.0

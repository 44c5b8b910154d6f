"""Backtest figures on small hand-computed series: Sharpe, max drawdown, exposure, win rate and
average win / loss."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from entrypoints.backtest.driver import strategy_from_spec
from entrypoints.backtest.engine import BacktestOptions, BacktestRun, ClosedTrade, FillRow
from entrypoints.backtest.metrics import exposure, max_drawdown, period_returns, sharpe_ratio, summarize
from entrypoints.backtest.replay import Replay
from services.venue_sim.domain.market_events import DepthEvent

NS = 1_000_000_000
EQUITY = [Decimal(v) for v in ("0", "10", "5", "20", "8")]


def test_sharpe_when_equity_moves_then_mean_over_sample_deviation_annualized() -> None:
    returns = period_returns(EQUITY, Decimal(1000))
    assert returns == pytest.approx([0.01, -0.005, 0.015, -0.012])
    # By hand: mean 0.008 / 4 = 0.002; squared deviations 64e-6 + 49e-6 + 169e-6 + 196e-6 = 478e-6,
    # sample variance 478e-6 / 3; four periods a "year": times sqrt(4) = 2.
    expected = 0.002 / math.sqrt(478e-6 / 3) * 2
    assert sharpe_ratio(returns, periods_per_year=4) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.316888, abs=1e-6)


def test_sharpe_when_too_few_periods_or_flat_then_undefined() -> None:
    assert sharpe_ratio([0.01], 4) is None
    assert sharpe_ratio([0.0, 0.0, 0.0], 4) is None


def test_max_drawdown_when_equity_falls_from_peaks_then_largest_fall_and_its_share() -> None:
    # Running peaks 0, 10, 10, 20, 20: falls 0, 0, 5, 0, 12.
    amount, pct = max_drawdown(EQUITY, Decimal(1000))
    assert amount == Decimal(12)
    assert pct == Decimal(12) / Decimal(1020) * 100
    assert max_drawdown([Decimal(0), Decimal(1), Decimal(2)], Decimal(1000)) == (Decimal(0), Decimal(0))
    # A loss from the very start is a drawdown too (from the starting balance).
    assert max_drawdown([Decimal(0), Decimal(-7), Decimal(-3)], Decimal(1000))[0] == Decimal(7)


def test_exposure_when_intervals_overlap_then_union_share_of_the_time() -> None:
    assert exposure([(0, 10), (5, 15), (20, 30)], 0, 40) == 25 / 40
    assert exposure([(30, 60)], 0, 40) == 10 / 40
    assert exposure([], 0, 40) == 0.0


def _trade(net: str, fees: str = "1") -> ClosedTrade:
    pnl = Decimal(net) + Decimal(fees)
    return ClosedTrade(
        "BTCUSDT", "LONG", Decimal(1), 0, NS, Decimal(100), Decimal(100) + pnl, pnl, Decimal(fees), "", "exit", ""
    )


def test_summarize_when_wins_and_losses_then_rate_averages_and_totals_by_hand() -> None:
    event = DepthEvent("BTCUSDT", 1, 1, 0, (), ())
    replay = Replay({}, [(0, event), (100 * NS, event)], "usdm", 2)
    run = BacktestRun(strategy_from_spec("trend"), replay, BacktestOptions(initial_balance=Decimal(1000)))
    run.trades = [_trade("6"), _trade("-2"), _trade("3"), _trade("-4")]
    run.trades[1] = ClosedTrade(**{**run.trades[1].__dict__, "entry_ns": 10 * NS, "exit_ns": 30 * NS})
    run.fills = [
        FillRow(0, "BTCUSDT", "BUY", Decimal(100), Decimal(1), Decimal("0.5"), Decimal(0), "entry", ""),
        FillRow(NS, "BTCUSDT", "SELL", Decimal(107), Decimal(1), Decimal("0.5"), Decimal(7), "exit", ""),
    ]
    run.equity = [(0, Decimal(0)), (NS, Decimal(6)), (2 * NS, Decimal(1))]
    figures = summarize(run)
    assert figures["trades"] == 4
    assert figures["win_rate"] == 0.5
    assert figures["average_win"] == "4.50000000"  # (6 + 3) / 2
    assert figures["average_loss"] == "-3.00000000"  # (-2 - 4) / 2
    assert (figures["realized_pnl"], figures["fees"], figures["net_pnl"]) == ("7.00000000", "1.00000000", "6.00000000")
    assert figures["max_drawdown"] == "5.00000000"
    assert figures["exposure"] == 0.21  # [0, 1] s and [10, 30] s of 100 s
    assert figures["sharpe"] == pytest.approx(round(sharpe_ratio([0.006, -0.005], 365 * 24 * 3600), 6))

"""A backtest's figures, from its round trips and its equity curve (pure functions).

Definitions (docs/strategies.md, "Backtest"):

* realized PnL: the venue's realized PnL of every fill, before fees; fees: the venue's taker and
  maker fees; net PnL: realized PnL minus fees.
* win rate: round trips with a net PnL > 0, over all round trips; average win / loss: the mean net
  PnL of the winning / the other round trips.
* Sharpe: mean over standard deviation (sample, n - 1) of the equity's change per sampling period
  (a share of the starting balance; the equity is sampled every `sample_s` and once at the end),
  annualized with the square root of the periods in 365 days. Undefined (null) with fewer than
  two periods or a flat curve.
* max drawdown: the largest fall of the equity from its running peak, in USDT and in % of the
  balance at that peak (starting balance + peak equity).
* exposure: the share of the replayed time with a position open in any symbol.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from .engine import BacktestRun, ClosedTrade

NS = 1_000_000_000
SECONDS_PER_YEAR = 365 * 24 * 3600
ZERO = Decimal(0)
MONEY = Decimal("0.00000001")


def sharpe_ratio(returns: Sequence[float], periods_per_year: float) -> float | None:
    """Annualized Sharpe ratio of per-period returns (risk-free rate 0).

    Returns:
        mean / sample standard deviation * sqrt(periods_per_year); None when it is undefined
        (fewer than two returns, or no variation at all).
    """
    if len(returns) < 2:
        return None
    mean = math.fsum(returns) / len(returns)
    variance = math.fsum((r - mean) ** 2 for r in returns) / (len(returns) - 1)
    if variance <= 0:
        return None
    return mean / math.sqrt(variance) * math.sqrt(periods_per_year)


def max_drawdown(equity: Sequence[Decimal], balance: Decimal) -> tuple[Decimal, Decimal]:
    """The largest peak-to-trough fall of an equity curve (PnL since the start, starting at 0).

    Args:
        equity: PnL in time order.
        balance: the starting balance (the percentage is of balance + the peak).

    Returns:
        (the fall in money, the fall in % of the balance at its peak); zeros for a curve that never falls.
    """
    peak = ZERO
    worst = ZERO
    worst_pct = ZERO
    for value in equity:
        peak = max(peak, value)
        fall = peak - value
        if fall > worst:
            worst = fall
            base = balance + peak
            worst_pct = fall / base * 100 if base > 0 else ZERO
    return worst, worst_pct


def exposure(intervals: Sequence[tuple[int, int]], start_ns: int, end_ns: int) -> float:
    """The share of [start, end] covered by at least one of the (start, end) intervals."""
    if end_ns <= start_ns:
        return 0.0
    covered = 0
    reach = start_ns
    for begin, finish in sorted(intervals):
        begin, finish = max(begin, reach), min(finish, end_ns)
        if finish > begin:
            covered += finish - begin
            reach = finish
    return covered / (end_ns - start_ns)


def period_returns(equity: Sequence[Decimal], balance: Decimal) -> list[float]:
    """Each period's change of equity as a share of the starting balance."""
    if balance <= 0:
        return []
    return [float((after - before) / balance) for before, after in itertools.pairwise(equity)]


def _mean(values: Sequence[Decimal]) -> Decimal | None:
    return (sum(values, ZERO) / len(values)).quantize(MONEY) if values else None


def summarize(run: BacktestRun) -> dict[str, Any]:
    """The figures of a run, JSON-ready (money as decimal strings, ratios rounded to 6 places)."""
    trades: list[ClosedTrade] = run.trades
    balance = run.options.initial_balance
    realized = sum((fill.realized_pnl for fill in run.fills), ZERO)
    fees = sum((fill.fee for fill in run.fills), ZERO)
    wins = [trade.net_pnl for trade in trades if trade.net_pnl > 0]
    losses = [trade.net_pnl for trade in trades if trade.net_pnl <= 0]
    # The curve starts at 0 (sampled at the start) and ends flat (everything is closed at the end);
    # its last period (to the end of the recording, with the closing fees) may be shorter.
    curve = [value for _, value in run.equity]
    sharpe = sharpe_ratio(period_returns(curve, balance), SECONDS_PER_YEAR / run.options.sample_s)
    drawdown, drawdown_pct = max_drawdown(curve, balance)
    start, end = run.replay.start_ns, run.replay.end_ns
    held = exposure([(trade.entry_ns, trade.exit_ns) for trade in trades], start, end)

    def money(value: Decimal | None) -> str | None:
        return None if value is None else _plain(value.quantize(MONEY))

    return {
        "trades": len(trades),
        "realized_pnl": money(realized),
        "fees": money(fees),
        "net_pnl": money(realized - fees),
        "win_rate": round(len(wins) / len(trades), 6) if trades else None,
        "average_win": money(_mean(wins)),
        "average_loss": money(_mean(losses)),
        "sharpe": round(sharpe, 6) if sharpe is not None else None,
        "max_drawdown": money(drawdown),
        "max_drawdown_pct": _plain(drawdown_pct.quantize(Decimal("0.000001"))),
        "exposure": round(held, 6),
    }


def _plain(value: Decimal) -> str:
    """A decimal without exponent (`0E-8` is `0.00000000`)."""
    return format(value, "f")

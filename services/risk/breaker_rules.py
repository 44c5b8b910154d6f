"""Risk circuit breakers CB-1..CB-4 (SPEC §4) as pure state machines over an injected clock, and
the `BreakerBoard` holding one process's breakers (see `breakers` for the shared part).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from libs.breaker import BreakerState
from libs.decimals import plain
from proto.enums import HotStateStatus
from proto.kv import BreakerValue

from .breakers import (
    ABNORMAL_MARKET,
    AUTO_RESET_TABLE,
    DAY_NS,
    MANUAL_RESET_TABLE,
    NS_PER_S,
    PAUSE_TABLE,
    RAPID_LOSS,
    RESOURCE_EXHAUSTION,
    STRATEGY_MALFUNCTION_PREFIX,
    BreakerChange,
    RiskBreaker,
    RiskBreakerTrigger,
    strategy_breaker_id,
)
from .trades import TradeUpdate

# --------------------------------------------------------------------------- CB-1


@dataclass(frozen=True)
class RapidLossConfig:
    """SPEC §4 CB-1; `capital` from settings."""

    capital: Decimal
    trade_loss_fraction: Decimal = Decimal("0.05")
    session_loss_fraction: Decimal = Decimal("0.10")
    max_consecutive_losses: int = 5
    session_offset_ns: int = 0

    def __post_init__(self) -> None:
        if self.max_consecutive_losses < 1:
            raise ValueError(
                "CB-1 needs at least 1 losing trade in a row to trip "
                f"(BULWARK_RISK_CB1_CONSECUTIVE_LOSSES={self.max_consecutive_losses})"
            )


class RapidLossBreaker(RiskBreaker):
    """CB-1: one trade losing > 5 % of capital, the session > 10 %, or 5 losses in a row."""

    table = MANUAL_RESET_TABLE
    reset_mode = "manual"
    title = "rapid loss"

    def __init__(self, config: RapidLossConfig, record: BreakerValue | None = None) -> None:
        super().__init__(RAPID_LOSS, record)
        self.config = config
        saved = self.record.details
        self.session_day: int | None = _int_or_none(saved.get("session_day"))
        self.session_pnl = _decimal(saved.get("session_pnl"))
        self.consecutive_losses = int(saved.get("consecutive_losses", 0) or 0)

    def details(self) -> dict[str, Any]:
        return {
            "session_day": self.session_day,
            "session_pnl": str(self.session_pnl),
            "consecutive_losses": self.consecutive_losses,
        }

    def _session(self, now_ns: int) -> int:
        return (now_ns + self.config.session_offset_ns) // DAY_NS

    def on_trade_update(self, update: TradeUpdate, now_ns: int) -> BreakerChange | None:
        """Count a position change; trips on the first limit it breaks."""
        day = self._session(now_ns)
        if day != self.session_day:
            self.session_day, self.session_pnl = day, Decimal(0)
        self.session_pnl += update.realized_delta
        if update.closed is not None:
            if update.closed.pnl < 0:
                self.consecutive_losses += 1
            elif update.closed.pnl > 0:
                self.consecutive_losses = 0
        capital = self.config.capital
        trade_limit = capital * self.config.trade_loss_fraction
        session_limit = capital * self.config.session_loss_fraction
        reason = ""
        if -update.trade_pnl > trade_limit:
            reason = f"loss {-update.trade_pnl} in one {update.symbol} trade > {trade_limit} (5 % of capital)"
        elif -self.session_pnl > session_limit:
            reason = f"session loss {-self.session_pnl} > {session_limit} (10 % of capital)"
        elif self.consecutive_losses >= self.config.max_consecutive_losses:
            reason = f"{self.consecutive_losses} consecutive losing trades"
        if not reason:
            return None
        return self._fire(RiskBreakerTrigger.TRIP, reason, now_ns)

    def _on_manual_reset(self) -> None:
        # The operator acknowledged the losses: the next session starts from zero.
        self.session_pnl = Decimal(0)
        self.consecutive_losses = 0


# --------------------------------------------------------------------------- CB-2


@dataclass(frozen=True)
class AbnormalMarketConfig:
    """SPEC §4 CB-2; `funding_normal` and `pause_s` from settings."""

    funding_normal: Decimal = Decimal("0.0001")
    funding_factor: Decimal = Decimal(10)
    move_fraction: Decimal = Decimal("0.20")
    move_window_s: float = 60.0
    depth_drop_fraction: Decimal = Decimal("0.95")
    depth_window_s: float = 60.0
    min_depth_samples: int = 5
    pause_s: float = 60.0


class AbnormalMarketBreaker(RiskBreaker):
    """CB-2: price > 20 % in < 1 min, book depth down > 95 %, funding > 10 x normal → pause entries."""

    table = PAUSE_TABLE
    reset_mode = "auto"
    title = "abnormal market"

    def __init__(self, config: AbnormalMarketConfig, record: BreakerValue | None = None) -> None:
        super().__init__(ABNORMAL_MARKET, record)
        self.config = config
        self._prices: dict[str, deque[tuple[int, Decimal]]] = {}
        self._depths: dict[str, deque[tuple[int, Decimal]]] = {}
        self._funding: dict[str, Decimal] = {}
        saved = self.record.details
        self.symbols: set[str] = set(saved.get("symbols", []) or [])
        self.pause_until_ns: int = int(saved.get("pause_until_ns", 0) or 0)

    def details(self) -> dict[str, Any]:
        return {"symbols": sorted(self.symbols), "pause_until_ns": self.pause_until_ns}

    def _trip(self, symbol: str, reason: str, now_ns: int) -> BreakerChange | None:
        # Restart the reference windows: post-trip data must not re-trip on the old extreme.
        self._prices.pop(symbol, None)
        self._depths.pop(symbol, None)
        if self.state == BreakerState.CLOSED:
            self.symbols = set()
        self.symbols.add(symbol)
        self.pause_until_ns = now_ns + int(self.config.pause_s * NS_PER_S)
        change = self._fire(RiskBreakerTrigger.TRIP, reason, now_ns)
        if change is None:  # already OPEN: the pause was extended
            self.record = msgspec.structs.replace(self.record, details=self.details(), ts_ns=now_ns)
        return change

    def on_price(self, symbol: str, price: Decimal, now_ns: int) -> BreakerChange | None:
        """A price observation (mark or mid); trips on a > 20 % move within the window."""
        if price <= 0:
            return None
        window = self._prices.setdefault(symbol, deque())
        window.append((now_ns, price))
        horizon = now_ns - int(self.config.move_window_s * NS_PER_S)
        while window and window[0][0] < horizon:
            window.popleft()
        low = min(p for _, p in window)
        high = max(p for _, p in window)
        up, down = (price - low) / low, (high - price) / high
        move = max(up, down)
        if move > self.config.move_fraction:
            return self._trip(symbol, f"{symbol} price moved {move:.1%} within {self.config.move_window_s:g} s", now_ns)
        return None

    def on_depth(self, symbol: str, depth: Decimal, now_ns: int) -> BreakerChange | None:
        """Book depth (quote notional of the top levels); trips when < 5 % of the recent average."""
        window = self._depths.setdefault(symbol, deque())
        horizon = now_ns - int(self.config.depth_window_s * NS_PER_S)
        while window and window[0][0] < horizon:
            window.popleft()
        if len(window) >= self.config.min_depth_samples:
            average = sum((d for _, d in window), Decimal(0)) / len(window)
            if average > 0 and depth < average * (1 - self.config.depth_drop_fraction):
                drop = 1 - depth / average
                return self._trip(symbol, f"{symbol} book depth dropped {drop:.1%} (to {depth:.0f})", now_ns)
        window.append((now_ns, depth))
        return None

    def funding_abnormal(self, rate: Decimal) -> bool:
        return abs(rate) > self.config.funding_normal * self.config.funding_factor

    def on_funding(self, symbol: str, rate: Decimal, now_ns: int) -> BreakerChange | None:
        """A funding rate; trips above 10 x the normal rate."""
        self._funding[symbol] = rate
        if self.funding_abnormal(rate):
            limit = self.config.funding_normal * self.config.funding_factor
            return self._trip(symbol, f"{symbol} funding rate {rate} > {limit} (10 x normal)", now_ns)
        return None

    def tick(self, now_ns: int, hot_state: Mapping[str, HotStateStatus | None]) -> list[BreakerChange]:
        """Pause expiry and re-validation: CLOSED only when every affected symbol is VALID again."""
        changes: list[BreakerChange] = []
        if self.state == BreakerState.OPEN and now_ns >= self.pause_until_ns:
            change = self._fire(RiskBreakerTrigger.PAUSE_ELAPSED, "pause elapsed: re-validating data", now_ns)
            if change is not None:
                changes.append(change)
        if self.state == BreakerState.HALF_OPEN:
            invalid = sorted(s for s in self.symbols if hot_state.get(s) != HotStateStatus.VALID)
            abnormal = sorted(s for s in self.symbols if self.funding_abnormal(self._funding.get(s, Decimal(0))))
            if not invalid and not abnormal:
                symbols = ", ".join(sorted(self.symbols)) or "all symbols"
                change = self._fire(RiskBreakerTrigger.DATA_VALIDATED, f"data validated ({symbols} VALID)", now_ns)
                if change is not None:
                    self.symbols = set()
                    changes.append(change)
        return changes

    def _on_manual_reset(self) -> None:
        self.symbols = set()
        self.pause_until_ns = 0


# --------------------------------------------------------------------------- CB-3


@dataclass(frozen=True)
class StrategyMalfunctionConfig:
    """SPEC §4 CB-3; `baseline_win_rate` from settings."""

    baseline_win_rate: Decimal = Decimal("0.5")
    win_rate_drop: Decimal = Decimal("0.30")
    loss_to_win_ratio: Decimal = Decimal(2)
    window: int = 20

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"CB-3 needs a window of at least 2 closed trades (BULWARK_RISK_CB3_TRADES={self.window})")


@dataclass(frozen=True)
class TradeStats:
    win_rate: Decimal
    average_win: Decimal
    average_loss: Decimal
    sharpe: float


def trade_stats(pnls: list[Decimal]) -> TradeStats:
    """Win rate, average win and loss (positive numbers) and the per-trade Sharpe ratio."""
    wins = [p for p in pnls if p > 0]
    losses = [-p for p in pnls if p < 0]
    count = len(pnls)
    mean = sum(pnls, Decimal(0)) / count
    variance = sum(((p - mean) ** 2 for p in pnls), Decimal(0)) / count
    std = float(variance.sqrt())
    if std == 0:
        sharpe = 0.0 if mean == 0 else math.copysign(math.inf, float(mean))
    else:
        sharpe = float(mean) / std
    return TradeStats(
        win_rate=Decimal(len(wins)) / count,
        average_win=sum(wins, Decimal(0)) / len(wins) if wins else Decimal(0),
        average_loss=sum(losses, Decimal(0)) / len(losses) if losses else Decimal(0),
        sharpe=sharpe,
    )


class StrategyMalfunctionBreaker(RiskBreaker):
    """CB-3 for one strategy, over its last `config.window` closed trades (SPEC: 20)."""

    table = MANUAL_RESET_TABLE
    reset_mode = "manual"
    title = "strategy malfunction"

    def __init__(self, strategy: str, config: StrategyMalfunctionConfig, record: BreakerValue | None = None) -> None:
        super().__init__(strategy_breaker_id(strategy), record)
        self.strategy = strategy
        self.config = config
        saved = self.record.details.get("trades", []) or []
        self.trades: deque[Decimal] = deque((Decimal(str(p)) for p in saved), maxlen=config.window)

    def details(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "trades": [str(p) for p in self.trades]}

    def on_closed_trade(self, pnl: Decimal, now_ns: int) -> BreakerChange | None:
        """Count one closed trade of the strategy; evaluates once the window is full."""
        self.trades.append(pnl)
        if len(self.trades) < self.config.window:
            return None
        stats = trade_stats(list(self.trades))
        floor = self.config.baseline_win_rate - self.config.win_rate_drop
        n = self.config.window
        reason = ""
        if stats.win_rate < floor:
            reason = f"win rate {stats.win_rate:.0%} over {n} trades < {floor:.0%} (baseline - 30 points)"
        elif stats.average_loss > self.config.loss_to_win_ratio * stats.average_win:
            # Amounts printed exactly (to 8 places): sub-cent averages must not read as 0.00.
            loss, win = plain(stats.average_loss, places=8), plain(stats.average_win, places=8)
            reason = f"average loss {loss} > 2 x average win {win} over {n} trades"
        elif stats.sharpe < 0:
            reason = f"Sharpe {stats.sharpe:.2f} < 0 over {n} trades"
        if not reason:
            return None
        return self._fire(RiskBreakerTrigger.TRIP, f"{self.strategy}: {reason}", now_ns)

    def _on_manual_reset(self) -> None:
        # Re-enabled by an operator: judge the strategy on trades from now on.
        self.trades.clear()


# --------------------------------------------------------------------------- CB-4


@dataclass(frozen=True)
class ResourceConfig:
    """SPEC §4 CB-4; `latency_baseline_ms` from settings."""

    latency_baseline_ms: float = 20.0
    latency_factor: float = 10.0
    cpu_fraction: float = 0.95
    cpu_sustain_s: float = 30.0
    memory_fraction: float = 0.90


@dataclass(frozen=True)
class ResourceSample:
    """One measurement; None where a measure is unavailable."""

    cpu_fraction: float | None = None
    memory_fraction: float | None = None
    p99_latency_ms: float | None = None


class ResourceBreaker(RiskBreaker):
    """CB-4: CPU > 95 % for 30 s, memory > 90 %, p99 latency > 10 x baseline."""

    table = AUTO_RESET_TABLE
    reset_mode = "auto"
    title = "resource exhaustion"

    def __init__(self, config: ResourceConfig, record: BreakerValue | None = None) -> None:
        super().__init__(RESOURCE_EXHAUSTION, record)
        self.config = config
        self.cpu_high_since_ns: int | None = None

    def on_sample(self, sample: ResourceSample, now_ns: int) -> BreakerChange | None:
        """Evaluate one sample: trip on any exhausted measure, close when all are back under."""
        config = self.config
        over: list[str] = []
        cpu = sample.cpu_fraction
        if cpu is not None and cpu > config.cpu_fraction:
            if self.cpu_high_since_ns is None:
                self.cpu_high_since_ns = now_ns
            if now_ns - self.cpu_high_since_ns >= int(config.cpu_sustain_s * NS_PER_S):
                over.append(f"CPU {cpu:.0%} > {config.cpu_fraction:.0%} for {config.cpu_sustain_s:g} s")
            elif self.is_open:
                over.append(f"CPU {cpu:.0%}")
        else:
            self.cpu_high_since_ns = None
        memory = sample.memory_fraction
        if memory is not None and memory > config.memory_fraction:
            over.append(f"memory {memory:.0%} > {config.memory_fraction:.0%}")
        latency = sample.p99_latency_ms
        limit = config.latency_baseline_ms * config.latency_factor
        if latency is not None and latency > limit:
            over.append(f"p99 latency {latency:.1f} ms > {limit:g} ms (10 x baseline)")
        if over:
            return self._fire(RiskBreakerTrigger.TRIP, "; ".join(over), now_ns)
        if self.is_open:
            return self._fire(RiskBreakerTrigger.CONDITION_CLEARED, "CPU, memory and latency back under", now_ns)
        return None


# --------------------------------------------------------------------------- helpers


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if value is not None else Decimal(0)
    except ArithmeticError:
        return Decimal(0)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | str) and str(value).lstrip("-").isdigit() else None


@dataclass
class BreakerBoard:
    """Every risk breaker of one process, by id."""

    rapid_loss: RapidLossBreaker
    abnormal_market: AbnormalMarketBreaker
    resource: ResourceBreaker
    strategy_config: StrategyMalfunctionConfig
    strategies: dict[str, StrategyMalfunctionBreaker] = field(default_factory=dict)

    def strategy(self, name: str, record: BreakerValue | None = None) -> StrategyMalfunctionBreaker:
        """The CB-3 breaker of a strategy (created CLOSED on first use)."""
        breaker = self.strategies.get(name)
        if breaker is None:
            breaker = self.strategies[name] = StrategyMalfunctionBreaker(name, self.strategy_config, record)
        return breaker

    def get(self, breaker_id: str) -> RiskBreaker | None:
        """Look a breaker up by id (`CB-3-<strategy>` only when that strategy is known)."""
        fixed: dict[str, RiskBreaker] = {
            RAPID_LOSS: self.rapid_loss,
            ABNORMAL_MARKET: self.abnormal_market,
            RESOURCE_EXHAUSTION: self.resource,
        }
        if breaker_id in fixed:
            return fixed[breaker_id]
        if breaker_id.startswith(STRATEGY_MALFUNCTION_PREFIX):
            return self.strategies.get(breaker_id[len(STRATEGY_MALFUNCTION_PREFIX) :])
        return None

    def all(self) -> list[RiskBreaker]:
        return [self.rapid_loss, self.abnormal_market, self.resource, *self.strategies.values()]


def restore_breaker(board: BreakerBoard, breaker: RiskBreaker, record: BreakerValue) -> RiskBreaker:
    """Rebuild a breaker of `board` from its persisted record (counters included)."""
    restored: RiskBreaker
    match breaker:
        case StrategyMalfunctionBreaker():
            restored = StrategyMalfunctionBreaker(breaker.strategy, board.strategy_config, record)
            board.strategies[breaker.strategy] = restored
        case _ if breaker is board.rapid_loss:
            restored = board.rapid_loss = type(board.rapid_loss)(board.rapid_loss.config, record)
        case _ if breaker is board.abnormal_market:
            restored = board.abnormal_market = type(board.abnormal_market)(board.abnormal_market.config, record)
        case _:
            restored = board.resource = type(board.resource)(board.resource.config, record)
    return restored


def restore_newer(board: BreakerBoard, records: Iterable[BreakerValue]) -> None:
    """Restore the breakers whose `records` (a snapshot's) are newer than what `board` holds."""
    for record in records:
        if record.breaker.startswith(STRATEGY_MALFUNCTION_PREFIX):
            board.strategy(record.breaker[len(STRATEGY_MALFUNCTION_PREFIX) :])
        breaker = board.get(record.breaker)
        if breaker is not None and record.ts_ns > breaker.record.ts_ns:
            restore_breaker(board, breaker, record)

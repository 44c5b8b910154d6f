"""The strategy kinds: liquidation-cascade fade, trend (EMA crossover) and taker-flow imbalance.

They are written on the public strategy SDK only (`services.strategy.sdk`, the API a trader's
own strategy uses; nothing else of the service is imported here). Each kind only says when to
enter (and, optionally, when to leave early); the engagement cycle, stops and take-profits,
cooldowns and the state machine are the SDK's `Strategy`'s. Each kind's market
memory has a public state type (`CascadeState`, `TrendState`, `ImbalanceState`, tagged with the
kind) that it exports and takes back itself (`market_state` / `load_market_state`); `KindState`
is their union, as a snapshot stores it. `KINDS` registers the kinds by name.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

import msgspec

from .sdk import (
    NS,
    CascadeDetection,
    Entry,
    EventPhase,
    LiquidationEvent,
    LiquidationTracker,
    MarketView,
    Side,
    Strategy,
    StrategyConfig,
    TapeState,
    TrackerState,
    entry_confidence,
    parameters,
)

HUNDRED = Decimal(100)
BPS = Decimal(10_000)


# --------------------------------------------------------------------------- cascade fade


@parameters
class CascadeFadeConfig(StrategyConfig, CascadeDetection):
    """Parameters of `cascade_fade`: the detection thresholds (`liquidations.CascadeDetection`,
    inherited with their defaults), then the trade.

    Attributes:
        max_entry_delay_s: enter only this soon after the cascade is exhausted (DECAYING).
        stop_loss_pct: stop this far (% of price) beyond the cascade's extreme.
        take_profit_retrace: target retraces this fraction of the cascade's displacement.
    """

    max_entry_delay_s: float = 10.0
    stop_loss_pct: Decimal = Decimal("0.3")
    take_profit_retrace: Decimal = Decimal("0.5")
    hold_s: float = 90.0

    def detection(self) -> CascadeDetection:
        """The detector's part of the parameters."""
        return CascadeDetection(**{f.name: getattr(self, f.name) for f in fields(CascadeDetection)})


class CascadeState(msgspec.Struct, frozen=True, tag="cascade_fade"):
    """`cascade_fade`'s market memory: the live liquidation events, the tapes they are detected
    from, and the cascades already traded (one attempt each)."""

    events: dict[str, LiquidationEvent] = {}
    tapes: dict[str, TapeState] = {}
    traded_events: list[str] = []


class CascadeFadeStrategy(Strategy):
    """Fade an exhausted liquidation cascade: buy after longs were flushed, sell after shorts were.

    Enters once per cascade, when it turns DECAYING (no forced order for `quiet_s`), with a stop
    beyond the cascade's extreme and a take-profit at a partial retrace of its displacement.
    """

    kind = "cascade_fade"
    config_class = CascadeFadeConfig
    config: CascadeFadeConfig

    def __init__(self, name: str, config: CascadeFadeConfig, **kwargs: Any) -> None:
        super().__init__(name, config, **kwargs)
        self.tracker = LiquidationTracker(config.detection())
        self.traded_events: deque[str] = deque(maxlen=64)

    def observe_trade(self, symbol: str, ts_ns: int, price: Decimal, quantity: Decimal, buyer_is_maker: bool) -> None:
        self.tracker.on_trade(symbol, ts_ns, price)

    def observe_liquidation(self, symbol: str, ts_ns: int, side: Side, price: Decimal, quantity: Decimal) -> None:
        self.tracker.on_liquidation(symbol, ts_ns, side, price, quantity)

    def observe_open_interest(self, symbol: str, ts_ns: int, open_interest: Decimal) -> None:
        self.tracker.on_open_interest(symbol, ts_ns, open_interest)

    def advance(self, now_ns: int) -> None:
        self.tracker.advance(now_ns)

    def clear_events(self, symbols: set[str] | None, now_ns: int) -> None:
        self.tracker.clear(symbols, now_ns, "market data reset")

    def active_events(self) -> list[dict[str, Any]]:
        return [event.as_dict() for event in self.tracker.active()]

    def market_state(self) -> CascadeState:
        tracked = self.tracker.to_state()
        return CascadeState(events=tracked.events, tapes=tracked.tapes, traded_events=list(self.traded_events))

    def load_market_state(self, state: msgspec.Struct | None) -> None:
        if isinstance(state, CascadeState):
            self.tracker.load_state(TrackerState(events=state.events, tapes=state.tapes))
            self.traded_events = deque(state.traded_events, maxlen=self.traded_events.maxlen)

    def event_changes(self) -> list[dict[str, Any]]:
        return [
            {
                "event_id": change.event_id,
                "symbol": change.symbol,
                "previous": change.previous.value if change.previous else None,
                "current": change.current.value,
                "reason": change.reason,
            }
            for change in self.tracker.drain_changes()
        ]

    def find_entry(self, symbol: str, now_ns: int, view: MarketView) -> Entry | None:
        event = self.tracker.events.get(symbol)
        if event is None or event.phase != EventPhase.DECAYING or event.event_id in self.traded_events:
            return None
        if now_ns - event.phase_since_ns > self.config.max_entry_delay_s * NS:
            return None
        price = self.reference_price(symbol, view)
        if price is None:
            return None
        self.traded_events.append(event.event_id)  # one attempt per cascade, whatever happens next
        displacement = abs(event.start_price - event.extreme_price)
        stop_distance = event.extreme_price * self.config.stop_loss_pct / HUNDRED
        if event.direction == Side.SELL:  # longs were liquidated, the price fell: buy the flush
            side = Side.BUY
            stop = event.extreme_price - stop_distance
            target = event.extreme_price + displacement * self.config.take_profit_retrace
            if not stop < price < target:
                return None
        else:
            side = Side.SELL
            stop = event.extreme_price + stop_distance
            target = event.extreme_price - displacement * self.config.take_profit_retrace
            if not target < price < stop:
                return None
        reason = (
            f"fade {event.event_id}: {event.liquidations} liquidations, "
            f"{event.displacement_pct():.2f}% displacement, exhausted"
        )
        return Entry(
            symbol,
            side,
            self.config.quantity_for(symbol),
            reason,
            stop_loss=self.config.round_price(symbol, stop, event.extreme_price, view.best_bid, view.best_ask),
            take_profit=self.config.round_price(symbol, target, event.extreme_price, view.best_bid, view.best_ask),
            confidence=self._confidence(event),
        )

    def _confidence(self, event: LiquidationEvent) -> Decimal:
        if self.config.min_displacement_pct > 0:
            return entry_confidence(event.displacement_pct(), self.config.min_displacement_pct)
        return entry_confidence(Decimal(event.liquidations), Decimal(self.config.min_liquidations))


# --------------------------------------------------------------------------- trend


@parameters
class TrendConfig(StrategyConfig):
    """Parameters of `trend` (EMA crossover of traded prices, time-weighted).

    Attributes:
        fast_s / slow_s: time constants of the fast and slow averages (seconds).
        warmup_s: no entry before the averages have seen this much time.
        min_gap_bps: |fast - slow| / slow needed to enter, in basis points.
        stop_loss_pct / take_profit_pct: protective levels around the entry price.
    """

    fast_s: float = 15.0
    slow_s: float = 90.0
    warmup_s: float = 60.0
    min_gap_bps: Decimal = Decimal(5)
    stop_loss_pct: Decimal = Decimal("0.4")
    take_profit_pct: Decimal = Decimal("0.8")
    hold_s: float = 300.0
    cooldown_s: float = 60.0


@dataclass
class Averages:
    """One symbol's fast and slow averages of traded prices, and the time span they have seen."""

    first_ns: int
    last_ns: int
    fast: Decimal
    slow: Decimal


class TrendState(msgspec.Struct, frozen=True, tag="trend"):
    """`trend`'s market memory: the averages per symbol (copies: the live ones keep moving)."""

    averages: dict[str, Averages] = {}


def _ema_step(average: Decimal, price: Decimal, dt_s: float, tau_s: float) -> Decimal:
    weight = Decimal(str(1 - math.exp(-dt_s / tau_s))) if tau_s > 0 else Decimal(1)
    return average + (price - average) * weight


class TrendStrategy(Strategy):
    """Follow the trend: enter when the fast average leaves the slow one by `min_gap_bps`, leave when
    it crosses back (or at the stop, the take-profit, or the end of the holding time)."""

    kind = "trend"
    config_class = TrendConfig
    config: TrendConfig

    def __init__(self, name: str, config: TrendConfig, **kwargs: Any) -> None:
        super().__init__(name, config, **kwargs)
        self.averages: dict[str, Averages] = {}

    def observe_trade(self, symbol: str, ts_ns: int, price: Decimal, quantity: Decimal, buyer_is_maker: bool) -> None:
        averages = self.averages.get(symbol)
        if averages is None:
            self.averages[symbol] = Averages(ts_ns, ts_ns, price, price)
            return
        dt_s = max(0.0, (ts_ns - averages.last_ns) / NS)
        averages.fast = _ema_step(averages.fast, price, dt_s, self.config.fast_s)
        averages.slow = _ema_step(averages.slow, price, dt_s, self.config.slow_s)
        averages.last_ns = max(averages.last_ns, ts_ns)

    def clear_events(self, symbols: set[str] | None, now_ns: int) -> None:
        # After a data gap the averages describe a market that may have moved: warm up again.
        for symbol in list(self.averages):
            if symbols is None or symbol in symbols:
                del self.averages[symbol]

    def market_state(self) -> TrendState:
        return TrendState(averages={symbol: dataclasses.replace(avg) for symbol, avg in self.averages.items()})

    def load_market_state(self, state: msgspec.Struct | None) -> None:
        if isinstance(state, TrendState):
            self.averages = {symbol: dataclasses.replace(avg) for symbol, avg in state.averages.items()}

    def gap_bps(self, symbol: str) -> Decimal | None:
        """(fast - slow) / slow in basis points, None before any trade."""
        averages = self.averages.get(symbol)
        if averages is None or averages.slow <= 0:
            return None
        return (averages.fast - averages.slow) / averages.slow * BPS

    def find_entry(self, symbol: str, now_ns: int, view: MarketView) -> Entry | None:
        averages = self.averages.get(symbol)
        gap = self.gap_bps(symbol)
        if averages is None or gap is None or now_ns - averages.first_ns < self.config.warmup_s * NS:
            return None
        if abs(gap) < self.config.min_gap_bps:
            return None
        price = self.reference_price(symbol, view)
        if price is None:
            return None
        side = Side.BUY if gap > 0 else Side.SELL
        sign = 1 if side == Side.BUY else -1
        stop = price * (1 - sign * self.config.stop_loss_pct / HUNDRED)
        target = price * (1 + sign * self.config.take_profit_pct / HUNDRED)
        references = (view.best_bid, view.best_ask, self.last_price.get(symbol))
        return Entry(
            symbol,
            side,
            self.config.quantity_for(symbol),
            f"trend: fast/slow gap {gap:.1f} bps",
            stop_loss=self.config.round_price(symbol, stop, *references),
            take_profit=self.config.round_price(symbol, target, *references),
            confidence=entry_confidence(gap, self.config.min_gap_bps),
        )

    def exit_reason(self, now_ns: int, view: MarketView | None) -> str | None:
        if self.symbol is None or self.entry is None:
            return None
        gap = self.gap_bps(self.symbol)
        if gap is None:
            return None
        if (gap < 0) if self.entry.side == Side.BUY else (gap > 0):
            return f"trend reversed: gap {gap:.1f} bps"
        return None


# --------------------------------------------------------------------------- imbalance


@parameters
class ImbalanceConfig(StrategyConfig):
    """Parameters of `imbalance` (taker buy vs sell volume over a window)."""

    window_s: float = 10.0
    threshold: Decimal = Decimal("0.6")
    min_trades: int = 20
    min_volume: Decimal = Decimal(0)
    hold_s: float = 20.0


@dataclass
class TradeWindow:
    """Taker buy and sell volume over a rolling time window."""

    window_ns: int
    trades: deque[tuple[int, bool, Decimal]] = field(default_factory=deque)
    buy_volume: Decimal = Decimal(0)
    sell_volume: Decimal = Decimal(0)

    def add(self, ts_ns: int, taker_buy: bool, quantity: Decimal) -> None:
        """Add one trade (taker side and quantity)."""
        self.trades.append((ts_ns, taker_buy, quantity))
        if taker_buy:
            self.buy_volume += quantity
        else:
            self.sell_volume += quantity

    def prune(self, now_ns: int) -> None:
        """Drop trades older than the window."""
        horizon = now_ns - self.window_ns
        while self.trades and self.trades[0][0] < horizon:
            _, taker_buy, quantity = self.trades.popleft()
            if taker_buy:
                self.buy_volume -= quantity
            else:
                self.sell_volume -= quantity

    def imbalance(self) -> Decimal:
        """(buy - sell) / (buy + sell), in [-1, 1]; 0 without volume."""
        total = self.buy_volume + self.sell_volume
        return (self.buy_volume - self.sell_volume) / total if total > 0 else Decimal(0)


class WindowState(msgspec.Struct, frozen=True, kw_only=True):
    """A `TradeWindow` as a snapshot holds it."""

    window_ns: int
    trades: list[tuple[int, bool, Decimal]] = []
    buy_volume: Decimal = Decimal(0)
    sell_volume: Decimal = Decimal(0)


class ImbalanceState(msgspec.Struct, frozen=True, tag="imbalance"):
    """`imbalance`'s market memory: the taker-flow window per symbol."""

    windows: dict[str, WindowState] = {}


class ImbalanceStrategy(Strategy):
    """Enter in the direction of a strong taker-flow imbalance, hold, then flatten."""

    kind = "imbalance"
    config_class = ImbalanceConfig
    config: ImbalanceConfig

    def __init__(self, name: str, config: ImbalanceConfig, **kwargs: Any) -> None:
        super().__init__(name, config, **kwargs)
        self.windows: dict[str, TradeWindow] = {}

    def observe_trade(self, symbol: str, ts_ns: int, price: Decimal, quantity: Decimal, buyer_is_maker: bool) -> None:
        window = self.windows.get(symbol)
        if window is None:
            window = self.windows[symbol] = TradeWindow(int(self.config.window_s * NS))
        window.add(ts_ns, not buyer_is_maker, quantity)

    def advance(self, now_ns: int) -> None:
        for window in self.windows.values():
            window.prune(now_ns)

    def clear_events(self, symbols: set[str] | None, now_ns: int) -> None:
        for symbol in list(self.windows):
            if symbols is None or symbol in symbols:
                del self.windows[symbol]

    def market_state(self) -> ImbalanceState:
        windows = {
            symbol: WindowState(
                window_ns=window.window_ns,
                trades=list(window.trades),
                buy_volume=window.buy_volume,
                sell_volume=window.sell_volume,
            )
            for symbol, window in self.windows.items()
        }
        return ImbalanceState(windows=windows)

    def load_market_state(self, state: msgspec.Struct | None) -> None:
        if isinstance(state, ImbalanceState):
            self.windows = {
                symbol: TradeWindow(window.window_ns, deque(window.trades), window.buy_volume, window.sell_volume)
                for symbol, window in state.windows.items()
            }

    def find_entry(self, symbol: str, now_ns: int, view: MarketView) -> Entry | None:
        window = self.windows.get(symbol)
        if window is None or len(window.trades) < self.config.min_trades:
            return None
        if window.buy_volume + window.sell_volume < self.config.min_volume:
            return None
        imbalance = window.imbalance()
        if abs(imbalance) < self.config.threshold:
            return None
        side = Side.BUY if imbalance > 0 else Side.SELL
        reason = f"taker imbalance {imbalance:.3f} over {self.config.window_s:g}s"
        return Entry(
            symbol,
            side,
            self.config.quantity_for(symbol),
            reason,
            confidence=entry_confidence(imbalance, self.config.threshold),
        )


KINDS: dict[str, tuple[type[Strategy], type[StrategyConfig]]] = {
    CascadeFadeStrategy.kind: (CascadeFadeStrategy, CascadeFadeConfig),
    TrendStrategy.kind: (TrendStrategy, TrendConfig),
    ImbalanceStrategy.kind: (ImbalanceStrategy, ImbalanceConfig),
}
"""Strategy kind name → (class, its config class)."""

KindState = CascadeState | TrendState | ImbalanceState
"""Every kind's market-memory state, told apart by its tag (the kind's name)."""

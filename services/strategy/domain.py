"""Pure strategy logic: the strategy state machine and the `imbalance` strategy.

Time comes in as integer nanoseconds from the caller (an injected clock); decisions come out as
actions (`Transition`, `Signal`) that handlers turn into bus messages.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from libs.fsm import IllegalTransition, next_state
from proto.enums import Side, StrategyState

NS = 1_000_000_000
St = StrategyState


class StrategyTrigger(StrEnum):
    """What moves a strategy between states."""

    ENABLE = "ENABLE"
    DISABLE = "DISABLE"
    SETUP_FOUND = "SETUP_FOUND"
    SETUP_TIMEOUT = "SETUP_TIMEOUT"
    POSITION_OPENED = "POSITION_OPENED"
    HOLD_EXPIRED = "HOLD_EXPIRED"
    EXIT_RETRY = "EXIT_RETRY"
    POSITION_CLOSED = "POSITION_CLOSED"
    FAIL = "FAIL"


STRATEGY_TRANSITIONS: dict[tuple[StrategyState, StrategyTrigger], StrategyState] = {
    (St.DISABLED, StrategyTrigger.ENABLE): St.SCANNING,
    (St.DISABLED, StrategyTrigger.DISABLE): St.DISABLED,
    (St.FAILED, StrategyTrigger.ENABLE): St.SCANNING,  # only an operator re-enables a failed strategy
    (St.FAILED, StrategyTrigger.DISABLE): St.FAILED,
    (St.SCANNING, StrategyTrigger.ENABLE): St.SCANNING,
    (St.SCANNING, StrategyTrigger.DISABLE): St.DISABLED,
    (St.SCANNING, StrategyTrigger.SETUP_FOUND): St.SETUP,
    (St.SCANNING, StrategyTrigger.FAIL): St.FAILED,
    (St.SETUP, StrategyTrigger.ENABLE): St.SETUP,
    (St.SETUP, StrategyTrigger.DISABLE): St.DISABLED,
    (St.SETUP, StrategyTrigger.POSITION_OPENED): St.IN_POSITION,
    (St.SETUP, StrategyTrigger.SETUP_TIMEOUT): St.SCANNING,
    (St.SETUP, StrategyTrigger.FAIL): St.FAILED,
    (St.IN_POSITION, StrategyTrigger.ENABLE): St.IN_POSITION,
    (St.IN_POSITION, StrategyTrigger.DISABLE): St.DISABLED,
    (St.IN_POSITION, StrategyTrigger.HOLD_EXPIRED): St.EXITING,
    (St.IN_POSITION, StrategyTrigger.POSITION_CLOSED): St.SCANNING,
    (St.IN_POSITION, StrategyTrigger.FAIL): St.FAILED,
    (St.EXITING, StrategyTrigger.ENABLE): St.EXITING,
    (St.EXITING, StrategyTrigger.DISABLE): St.DISABLED,
    (St.EXITING, StrategyTrigger.EXIT_RETRY): St.EXITING,
    (St.EXITING, StrategyTrigger.POSITION_CLOSED): St.SCANNING,
    (St.EXITING, StrategyTrigger.FAIL): St.FAILED,
}


class IllegalStrategyTransition(IllegalTransition):
    """The trigger is not allowed in the strategy's current state."""


def next_strategy_state(state: StrategyState, trigger: StrategyTrigger) -> StrategyState:
    """The state that follows `state` under `trigger`.

    Raises:
        IllegalStrategyTransition: the pair is not in `STRATEGY_TRANSITIONS`.
    """
    return next_state(STRATEGY_TRANSITIONS, state, trigger, IllegalStrategyTransition)


@dataclass(frozen=True)
class Transition:
    """Action: the strategy changed state."""

    previous: StrategyState
    current: StrategyState
    reason: str


@dataclass(frozen=True)
class Signal:
    """Action: ask risk for an order."""

    symbol: str
    side: Side
    quantity: Decimal
    reduce_only: bool
    reason: str


Action = Transition | Signal


@dataclass(frozen=True)
class MarketView:
    """What the strategy needs to know about one symbol at a tick."""

    hot_state_valid: bool
    best_bid: Decimal | None = None
    best_ask: Decimal | None = None


def _env_decimal(env: Mapping[str, str], name: str, default: str) -> Decimal:
    return Decimal(env.get(name, default))


@dataclass(frozen=True)
class ImbalanceConfig:
    """Parameters of the `imbalance` strategy (env overrides: `BULWARK_IMBALANCE_<FIELD>`)."""

    window_s: float = 10.0
    threshold: Decimal = Decimal("0.6")
    min_trades: int = 20
    min_volume: Decimal = Decimal(0)
    cooldown_s: float = 30.0
    hold_s: float = 20.0
    setup_timeout_s: float = 10.0
    exit_retry_s: float = 10.0
    quantities: Mapping[str, Decimal] = field(
        # Small, but above Binance's minimum notional (100 USDT for BTCUSDT, 20 for ETHUSDT).
        default_factory=lambda: {"BTCUSDT": Decimal("0.002"), "ETHUSDT": Decimal("0.01")}
    )
    default_quantity: Decimal = Decimal("0.002")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ImbalanceConfig:
        """Defaults overridden by `BULWARK_IMBALANCE_*` variables (quantities as `SYM:QTY,...`)."""
        env = os.environ if environ is None else environ
        p = "BULWARK_IMBALANCE_"
        base = cls()
        quantities = dict(base.quantities)
        for item in env.get(f"{p}QUANTITIES", "").split(","):
            if ":" in item:
                symbol, quantity = item.split(":", 1)
                quantities[symbol.strip().upper()] = Decimal(quantity.strip())
        return cls(
            window_s=float(env.get(f"{p}WINDOW_S", base.window_s)),
            threshold=_env_decimal(env, f"{p}THRESHOLD", str(base.threshold)),
            min_trades=int(env.get(f"{p}MIN_TRADES", base.min_trades)),
            min_volume=_env_decimal(env, f"{p}MIN_VOLUME", str(base.min_volume)),
            cooldown_s=float(env.get(f"{p}COOLDOWN_S", base.cooldown_s)),
            hold_s=float(env.get(f"{p}HOLD_S", base.hold_s)),
            setup_timeout_s=float(env.get(f"{p}SETUP_TIMEOUT_S", base.setup_timeout_s)),
            exit_retry_s=float(env.get(f"{p}EXIT_RETRY_S", base.exit_retry_s)),
            quantities=quantities,
            default_quantity=_env_decimal(env, f"{p}DEFAULT_QUANTITY", str(base.default_quantity)),
        )

    def quantity_for(self, symbol: str) -> Decimal:
        """Entry size of a symbol."""
        return self.quantities.get(symbol, self.default_quantity)


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


class ImbalanceStrategy:
    """Enter in the direction of a strong taker-flow imbalance, hold, then flatten.

    One engagement at a time: SCANNING -> SETUP (entry signal) -> IN_POSITION (position seen)
    -> EXITING after the holding time (reduce-only signal) -> SCANNING once flat.
    """

    def __init__(self, name: str, config: ImbalanceConfig, state: StrategyState = St.DISABLED) -> None:
        self.name = name
        self.config = config
        self.state = state
        self.symbol: str | None = None
        self.state_since_ns = 0
        self.last_entry_ns: int | None = None
        self.windows: dict[str, TradeWindow] = {}
        self.positions: dict[str, Decimal] = {}

    # ------------------------------------------------------------------ state machine

    def _move(self, trigger: StrategyTrigger, now_ns: int, reason: str) -> list[Action]:
        previous = self.state
        self.state = next_strategy_state(previous, trigger)
        self.state_since_ns = now_ns
        if self.state in (St.SCANNING, St.DISABLED, St.FAILED):
            self.symbol = None
        if self.state == previous:
            return []
        return [Transition(previous, self.state, reason)]

    def enable(self, now_ns: int, reason: str = "enabled") -> list[Action]:
        """Operator (or restart) enables the strategy."""
        return self._move(StrategyTrigger.ENABLE, now_ns, reason)

    def disable(self, now_ns: int, reason: str = "disabled") -> list[Action]:
        """Operator disables the strategy (setups are dropped; positions stay with the position service)."""
        return self._move(StrategyTrigger.DISABLE, now_ns, reason)

    def fail(self, now_ns: int, reason: str) -> list[Action]:
        """The strategy is broken: FAILED until an operator re-enables it."""
        if self.state in (St.DISABLED, St.FAILED):
            return []
        return self._move(StrategyTrigger.FAIL, now_ns, reason)

    # ------------------------------------------------------------------ inputs

    def on_trade(self, symbol: str, ts_ns: int, quantity: Decimal, buyer_is_maker: bool) -> None:
        """Record one market trade; the taker bought when the buyer was not the maker."""
        window = self.windows.get(symbol)
        if window is None:
            window = self.windows[symbol] = TradeWindow(int(self.config.window_s * NS))
        window.add(ts_ns, not buyer_is_maker, quantity)

    def on_position(self, symbol: str, quantity: Decimal, now_ns: int) -> list[Action]:
        """A position update of a symbol (account-wide)."""
        self.positions[symbol] = quantity
        if symbol != self.symbol:
            return []
        if self.state == St.SETUP and quantity != 0:
            return self._move(StrategyTrigger.POSITION_OPENED, now_ns, f"position {quantity} {symbol}")
        if self.state in (St.IN_POSITION, St.EXITING) and quantity == 0:
            return self._move(StrategyTrigger.POSITION_CLOSED, now_ns, f"{symbol} flat")
        return []

    def on_tick(self, now_ns: int, market: Mapping[str, MarketView]) -> list[Action]:
        """Periodic evaluation: look for a setup, time out, or exit."""
        for window in self.windows.values():
            window.prune(now_ns)
        elapsed_s = (now_ns - self.state_since_ns) / NS
        match self.state:
            case St.SCANNING:
                return self._scan(now_ns, market)
            case St.SETUP if elapsed_s >= self.config.setup_timeout_s:
                return self._move(StrategyTrigger.SETUP_TIMEOUT, now_ns, "entry not filled in time")
            case St.IN_POSITION if elapsed_s >= self.config.hold_s:
                return self._exit(StrategyTrigger.HOLD_EXPIRED, now_ns, "holding time over")
            case St.EXITING if elapsed_s >= self.config.exit_retry_s:
                return self._exit(StrategyTrigger.EXIT_RETRY, now_ns, "still not flat: exit again")
            case _:
                return []

    # ------------------------------------------------------------------ decisions

    def _scan(self, now_ns: int, market: Mapping[str, MarketView]) -> list[Action]:
        cooldown_ns = int(self.config.cooldown_s * NS)
        if self.last_entry_ns is not None and now_ns - self.last_entry_ns < cooldown_ns:
            return []
        for symbol in sorted(self.windows):
            view = market.get(symbol)
            window = self.windows[symbol]
            if view is None or not view.hot_state_valid or self.positions.get(symbol, Decimal(0)) != 0:
                continue
            if len(window.trades) < self.config.min_trades:
                continue
            if window.buy_volume + window.sell_volume < self.config.min_volume:
                continue
            imbalance = window.imbalance()
            if abs(imbalance) < self.config.threshold:
                continue
            side = Side.BUY if imbalance > 0 else Side.SELL
            reason = f"taker imbalance {imbalance:.3f} over {self.config.window_s:g}s"
            actions = self._move(StrategyTrigger.SETUP_FOUND, now_ns, reason)
            self.symbol = symbol
            self.last_entry_ns = now_ns
            return [*actions, Signal(symbol, side, self.config.quantity_for(symbol), False, reason)]
        return []

    def _exit(self, trigger: StrategyTrigger, now_ns: int, reason: str) -> list[Action]:
        symbol = self.symbol
        position = self.positions.get(symbol, Decimal(0)) if symbol else Decimal(0)
        if symbol is None or position == 0:
            return self._move(StrategyTrigger.POSITION_CLOSED, now_ns, "already flat")
        actions = self._move(trigger, now_ns, reason)
        self.symbol = symbol
        side = Side.SELL if position > 0 else Side.BUY
        return [*actions, Signal(symbol, side, abs(position), True, reason)]

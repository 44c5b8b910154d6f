"""Pure strategy logic shared by every kind: the SPEC §0 state machine, actions, the engagement
cycle (entry → position → exit) and the FM-C2 crash rule.

Time comes in as integer nanoseconds from the caller (an injected clock); decisions come out as
actions (`Transition`, `Signal`) that the runner publishes (`services.strategy.signals`). A
concrete strategy kind (`services.strategy.strategies`) only decides *when to enter*
(`find_entry`) and, optionally, *when to leave early* (`exit_reason`); everything else is here, once.

The kinds' interface is the "kind hook" methods of `Strategy` (what it observes, how time ages its
market memory, entries and exits, and its memory as a snapshot state) with a `StrategyConfig`
subclass for its parameters; the runner, recovery and snapshots know kinds only through it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar

import msgspec

from libs.fsm import IllegalTransition, next_state
from proto.enums import Side, StrategyState

NS = 1_000_000_000
St = StrategyState

MAX_CRASHES = 3
"""FM-C2: more than this many crashes within `CRASH_WINDOW_NS` → FAILED."""
CRASH_WINDOW_NS = 600 * NS


class StrategyTrigger(StrEnum):
    """What moves a strategy between states."""

    ENABLE = "ENABLE"
    DISABLE = "DISABLE"
    SETUP_FOUND = "SETUP_FOUND"
    SETUP_TIMEOUT = "SETUP_TIMEOUT"
    POSITION_OPENED = "POSITION_OPENED"
    EXIT_STARTED = "EXIT_STARTED"
    EXIT_RETRY = "EXIT_RETRY"
    POSITION_CLOSED = "POSITION_CLOSED"
    DATA_RESET = "DATA_RESET"
    FAIL = "FAIL"


# SPEC §0: DISABLED · SCANNING · SETUP · IN_POSITION · EXITING · FAILED. Every legal pair is listed;
# anything else raises. DATA_RESET (FM-N1 reconnect, FM-D2 resync) drops a setup but never pretends a
# real position away: IN_POSITION and EXITING keep managing the position they have.
STRATEGY_TRANSITIONS: dict[tuple[StrategyState, StrategyTrigger], StrategyState] = {
    (St.DISABLED, StrategyTrigger.ENABLE): St.SCANNING,
    (St.DISABLED, StrategyTrigger.DISABLE): St.DISABLED,
    (St.DISABLED, StrategyTrigger.DATA_RESET): St.DISABLED,
    (St.DISABLED, StrategyTrigger.FAIL): St.FAILED,  # a crash restarts through DISABLED (FM-C2)
    (St.FAILED, StrategyTrigger.ENABLE): St.SCANNING,  # only an operator re-enables a failed strategy
    (St.FAILED, StrategyTrigger.DISABLE): St.FAILED,
    (St.FAILED, StrategyTrigger.DATA_RESET): St.FAILED,
    (St.FAILED, StrategyTrigger.FAIL): St.FAILED,
    (St.SCANNING, StrategyTrigger.ENABLE): St.SCANNING,
    (St.SCANNING, StrategyTrigger.DISABLE): St.DISABLED,
    (St.SCANNING, StrategyTrigger.SETUP_FOUND): St.SETUP,
    (St.SCANNING, StrategyTrigger.DATA_RESET): St.SCANNING,
    (St.SCANNING, StrategyTrigger.FAIL): St.FAILED,
    (St.SETUP, StrategyTrigger.ENABLE): St.SETUP,
    (St.SETUP, StrategyTrigger.DISABLE): St.DISABLED,
    (St.SETUP, StrategyTrigger.POSITION_OPENED): St.IN_POSITION,
    (St.SETUP, StrategyTrigger.SETUP_TIMEOUT): St.SCANNING,
    (St.SETUP, StrategyTrigger.DATA_RESET): St.SCANNING,
    (St.SETUP, StrategyTrigger.FAIL): St.FAILED,
    (St.IN_POSITION, StrategyTrigger.ENABLE): St.IN_POSITION,
    (St.IN_POSITION, StrategyTrigger.DISABLE): St.DISABLED,
    (St.IN_POSITION, StrategyTrigger.EXIT_STARTED): St.EXITING,
    (St.IN_POSITION, StrategyTrigger.POSITION_CLOSED): St.SCANNING,
    (St.IN_POSITION, StrategyTrigger.DATA_RESET): St.IN_POSITION,
    (St.IN_POSITION, StrategyTrigger.FAIL): St.FAILED,
    (St.EXITING, StrategyTrigger.ENABLE): St.EXITING,
    (St.EXITING, StrategyTrigger.DISABLE): St.DISABLED,
    (St.EXITING, StrategyTrigger.EXIT_RETRY): St.EXITING,
    (St.EXITING, StrategyTrigger.POSITION_CLOSED): St.SCANNING,
    (St.EXITING, StrategyTrigger.DATA_RESET): St.EXITING,
    (St.EXITING, StrategyTrigger.FAIL): St.FAILED,
}

ENGAGED_STATES = frozenset({St.SETUP, St.IN_POSITION, St.EXITING})
"""States in which the strategy has (or is opening) a position in `symbol`."""


class IllegalStrategyTransition(IllegalTransition):
    """The trigger is not allowed in the strategy's current state."""


def next_strategy_state(state: StrategyState, trigger: StrategyTrigger) -> StrategyState:
    """The state that follows `state` under `trigger`.

    Raises:
        IllegalStrategyTransition: the pair is not in `STRATEGY_TRANSITIONS`.
    """
    return next_state(STRATEGY_TRANSITIONS, state, trigger, IllegalStrategyTransition)


# --------------------------------------------------------------------------- crash rule (FM-C2)


def crashes_in_window(crashes: Iterable[int], now_ns: int, window_ns: int = CRASH_WINDOW_NS) -> list[int]:
    """The crash times (ns) that still count at `now_ns`, oldest first."""
    return sorted(ts for ts in crashes if now_ns - ts <= window_ns)


def crash_fails(count_in_window: int) -> bool:
    """FM-C2: more than 3 crashes in 10 minutes → FAILED."""
    return count_in_window > MAX_CRASHES


# --------------------------------------------------------------------------- actions and inputs


@dataclass(frozen=True)
class Transition:
    """Action: the strategy changed state."""

    previous: StrategyState
    current: StrategyState
    reason: str


@dataclass(frozen=True)
class Signal:
    """Action: ask risk for an order (market order; stop/take-profit for the position service)."""

    symbol: str
    side: Side
    quantity: Decimal
    reduce_only: bool
    reason: str
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    confidence: Decimal | None = None


Action = Transition | Signal


@dataclass(frozen=True)
class MarketView:
    """What the strategy knows about one symbol at a tick (the state-builder's hot state).

    Attributes:
        hot_state_valid: the symbol's book is VALID (no entry is looked for otherwise).
        best_bid / best_ask: top of the book.
        mark_price / funding_rate / open_interest: the venue's latest, when it published them.
        bids / asks: the top `Strategy.depth_levels` levels as (price, quantity), best first; empty
            unless the strategy asks for depth.
    """

    hot_state_valid: bool
    best_bid: Decimal | None = None
    best_ask: Decimal | None = None
    mark_price: Decimal | None = None
    funding_rate: Decimal | None = None
    open_interest: Decimal | None = None
    bids: tuple[tuple[Decimal, Decimal], ...] = ()
    asks: tuple[tuple[Decimal, Decimal], ...] = ()

    def mid(self) -> Decimal | None:
        """Mid price, when both sides are known."""
        if self.best_bid is None or self.best_ask is None:
            return None
        return (self.best_bid + self.best_ask) / 2


@dataclass(frozen=True)
class Entry:
    """A kind's decision to enter: side, size and the protective levels it wants."""

    symbol: str
    side: Side
    quantity: Decimal
    reason: str
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    confidence: Decimal | None = None


@dataclass(frozen=True)
class TradeTick:
    """One market trade as a strategy saw it (`Strategy.recent_trades`)."""

    ts_ns: int
    price: Decimal
    quantity: Decimal
    taker_buy: bool


@dataclass(frozen=True)
class LiquidationTick:
    """One forced order as a strategy saw it (`Strategy.recent_liquidations`): SELL liquidated a long."""

    ts_ns: int
    side: Side
    price: Decimal
    quantity: Decimal


def entry_confidence(measure: Decimal, threshold: Decimal) -> Decimal:
    """How far an entry condition clears its threshold, in [0, 1]: 0.5 just at it, 1 at twice it.

    Risk requires a minimum confidence in REDUCED_FUNCTIONALITY (SPEC §5 "higher entry
    thresholds"), so a strategy states it rather than risk guessing from the reason text.
    """
    if threshold <= 0:
        return Decimal(1)
    return min(Decimal(1), max(Decimal(0), abs(measure) / (2 * threshold))).quantize(Decimal("0.001"))


@dataclass(frozen=True, kw_only=True)
class StrategyConfig:
    """Parameters every kind shares (per instance; see docs/strategies.md).

    Attributes:
        symbols: symbols this instance trades (empty: every symbol it sees).
        quantities: entry size per symbol (base units).
        default_quantity: entry size of any other symbol.
        tick_sizes: price tick per symbol the kinds round stop and take-profit prices to (a symbol
            without one gets the precision of the venue prices it was computed from); whatever
            they compute, a published signal is put on the venue's own grid (`signals`).
        cooldown_s: no new entry within this time of the previous one.
        setup_timeout_s: an entry not filled by then is dropped (back to SCANNING).
        hold_s: longest time in a position before the strategy exits by itself.
        exit_retry_s: a reduce-only exit not done by then is sent again.
        crash_on: fault injection for drills and tests: an input kind (`tick`, `trade`,
            `liquidation`, `position`) whose handler raises. Empty in production.
    """

    symbols: tuple[str, ...] = ()
    quantities: Mapping[str, Decimal] = field(
        # Small, but above Binance's minimum notional (100 USDT for BTCUSDT, 20 for ETHUSDT).
        default_factory=lambda: {"BTCUSDT": Decimal("0.002"), "ETHUSDT": Decimal("0.01")}
    )
    default_quantity: Decimal = Decimal("0.002")
    tick_sizes: Mapping[str, Decimal] = field(
        # Empty: the venue's own tick (KV `rules.<venue>.<symbol>`) puts published levels on its
        # grid; a table here only overrides it for the levels a kind computes (e.g. a coarser grid).
        default_factory=dict
    )
    cooldown_s: float = 30.0
    setup_timeout_s: float = 10.0
    hold_s: float = 120.0
    exit_retry_s: float = 10.0
    crash_on: str = ""

    def quantity_for(self, symbol: str) -> Decimal:
        """Entry size of a symbol."""
        return self.quantities.get(symbol, self.default_quantity)

    def round_price(self, symbol: str, value: Decimal, *references: Decimal | None) -> Decimal:
        """`value` on the symbol's price grid (its tick size; else the precision of `references`,
        prices the venue published, which carry its grid)."""
        tick = self.tick_sizes.get(symbol)
        if tick is not None and tick > 0:
            return (value / tick).to_integral_value() * tick
        exponents = [r.as_tuple().exponent for r in references if r is not None]
        finite = [e for e in exponents if isinstance(e, int)]
        return value.quantize(Decimal(1).scaleb(min(finite))) if finite else value

    def trades(self, symbol: str) -> bool:
        """Whether this instance trades `symbol`."""
        return not self.symbols or symbol in self.symbols


class InjectedCrash(RuntimeError):
    """Raised by the `crash_on` fault-injection hook."""


# --------------------------------------------------------------------------- the engagement cycle


class Strategy:
    """One strategy instance: the state machine and one engagement at a time.

    SCANNING → SETUP (entry signal, with stop/take-profit) → IN_POSITION (position seen) →
    EXITING (reduce-only exit: stop or take-profit crossed, the kind's own reason, or holding time
    over) → SCANNING once flat. Symbols in `surrendered` (held when the strategy crashed) are never
    entered again while a position in them is open: the position service manages them (FM-C2).
    """

    kind: ClassVar[str] = ""
    config_class: ClassVar[type[StrategyConfig]] = StrategyConfig
    """The declared parameters: the TOML table of an instance is validated against its fields."""
    depth_levels: ClassVar[int] = 0
    """Book levels per side the tick's `MarketView.bids`/`asks` carry (0: top of book only)."""
    memory_trades: ClassVar[int] = 0
    """Trades and forced orders per symbol kept for `recent_trades` / `recent_liquidations` (0: none)."""
    market_state_type: ClassVar[type[msgspec.Struct] | None] = None
    """A trader's own class: the type `market_state` returns, so that a snapshot decodes it back."""

    def __init__(self, name: str, config: StrategyConfig, state: StrategyState = St.DISABLED) -> None:
        self.name = name
        self.config = config
        self.state = state
        self.symbol: str | None = None
        self.entry: Entry | None = None
        self.entry_order: str | None = None
        """Client order id of the engagement's entry, once the signal is out (None: not known)."""
        self.state_since_ns = 0
        self.last_entry_ns: int | None = None
        self.positions: dict[str, Decimal] = {}
        self.last_price: dict[str, Decimal] = {}
        self.surrendered: dict[str, int] = {}
        """Symbol → time of the crash that left its position (or in-flight entry) to the position service."""
        self._trades: dict[str, deque[TradeTick]] = {}
        self._liquidations: dict[str, deque[LiquidationTick]] = {}

    # ------------------------------------------------------------------ what a kind may read

    def position(self, symbol: str) -> Decimal:
        """The account's net position in `symbol` (signed; 0 when flat or not known yet)."""
        return self.positions.get(symbol, Decimal(0))

    def recent_trades(self, symbol: str) -> tuple[TradeTick, ...]:
        """The last `memory_trades` trades of `symbol`, oldest first (emptied by a data reset)."""
        return tuple(self._trades.get(symbol, ()))

    def recent_liquidations(self, symbol: str) -> tuple[LiquidationTick, ...]:
        """The last `memory_trades` forced orders of `symbol`, oldest first (emptied by a data reset)."""
        return tuple(self._liquidations.get(symbol, ()))

    def memory(self) -> tuple[dict[str, deque[TradeTick]], dict[str, deque[LiquidationTick]]]:
        """The recent trades and forced orders per symbol (for snapshots; read, do not change)."""
        return self._trades, self._liquidations

    def load_memory(
        self, trades: Mapping[str, Iterable[TradeTick]], liquidations: Mapping[str, Iterable[LiquidationTick]]
    ) -> None:
        """Take back what `memory` returned (a restore from a snapshot)."""
        size = max(self.memory_trades, 0)
        self._trades = {symbol: deque(ticks, maxlen=size) for symbol, ticks in trades.items()}
        self._liquidations = {symbol: deque(ticks, maxlen=size) for symbol, ticks in liquidations.items()}

    def _remember(self, memory: dict[str, deque[Any]], symbol: str, item: Any) -> None:
        if self.memory_trades > 0:
            memory.setdefault(symbol, deque(maxlen=self.memory_trades)).append(item)

    # ------------------------------------------------------------------ state machine

    def _move(self, trigger: StrategyTrigger, now_ns: int, reason: str) -> list[Action]:
        previous = self.state
        self.state = next_strategy_state(previous, trigger)
        # A self-transition (ENABLE while SCANNING, DATA_RESET in a position) keeps the state's timers;
        # only a retried exit restarts its retry clock.
        if self.state != previous or trigger == StrategyTrigger.EXIT_RETRY:
            self.state_since_ns = now_ns
        if self.state not in ENGAGED_STATES:
            self.symbol = None
            self.entry = None
            self.entry_order = None
        if self.state == previous:
            return []
        return [Transition(previous, self.state, reason)]

    def enable(self, now_ns: int, reason: str = "enabled") -> list[Action]:
        """Operator (or restart) enables the strategy."""
        return self._move(StrategyTrigger.ENABLE, now_ns, reason)

    def disable(self, now_ns: int, reason: str = "disabled") -> list[Action]:
        """Disable (operator, or a crash): setups are dropped; positions stay with the position service."""
        return self._move(StrategyTrigger.DISABLE, now_ns, reason)

    def fail(self, now_ns: int, reason: str) -> list[Action]:
        """The strategy is broken: FAILED until an operator re-enables it."""
        return self._move(StrategyTrigger.FAIL, now_ns, reason)

    def data_reset(self, symbols: Iterable[str] | None, now_ns: int, reason: str) -> list[Action]:
        """FM-N1/FM-D2: market data was interrupted or rebuilt; drop what was derived from it.

        Args:
            symbols: affected symbols (None: all).
            now_ns: current time.
            reason: why (link change, book resync).
        """
        affected = None if symbols is None else set(symbols)
        for memory in (self._trades, self._liquidations):
            for symbol in [s for s in memory if affected is None or s in affected]:
                del memory[symbol]
        self.clear_events(affected, now_ns)
        if affected is not None and self.symbol is not None and self.symbol not in affected:
            return []
        return self._move(StrategyTrigger.DATA_RESET, now_ns, reason)

    # ------------------------------------------------------------------ inputs

    def check_crash_hook(self, input_kind: str) -> None:
        """Fault injection: raise when configured to crash on this input kind.

        Raises:
            InjectedCrash: `config.crash_on` names this input.
        """
        if self.config.crash_on and self.config.crash_on == input_kind:
            raise InjectedCrash(f"injected crash on {input_kind} (crash_on)")

    def on_trade(
        self, symbol: str, ts_ns: int, price: Decimal, quantity: Decimal, buyer_is_maker: bool
    ) -> list[Action]:
        """One market trade; the taker bought when the buyer was not the maker."""
        self.check_crash_hook("trade")
        self.last_price[symbol] = price
        self._remember(self._trades, symbol, TradeTick(ts_ns, price, quantity, not buyer_is_maker))
        self.observe_trade(symbol, ts_ns, price, quantity, buyer_is_maker)
        return []

    def on_liquidation(self, symbol: str, ts_ns: int, side: Side, price: Decimal, quantity: Decimal) -> list[Action]:
        """One forced order (`forceOrder`): SELL liquidates a long, BUY a short."""
        self.check_crash_hook("liquidation")
        self._remember(self._liquidations, symbol, LiquidationTick(ts_ns, side, price, quantity))
        self.observe_liquidation(symbol, ts_ns, side, price, quantity)
        return []

    def on_open_interest(self, symbol: str, ts_ns: int, open_interest: Decimal) -> list[Action]:
        """A fresh open-interest reading."""
        self.observe_open_interest(symbol, ts_ns, open_interest)
        return []

    def on_position(self, symbol: str, quantity: Decimal, now_ns: int, caused_by: str | None = None) -> list[Action]:
        """A position update of a symbol (account-wide); `caused_by` the client order id behind it.

        In SETUP only the strategy's own entry opens its engagement: a position another order
        opened (another strategy, an operator) is not its to manage or to exit. An unknown cause
        (a reconciliation correction, a restart) is taken as its entry's.
        """
        self.check_crash_hook("position")
        self.positions[symbol] = quantity
        if symbol != self.symbol:
            return []
        if self.state == St.SETUP and quantity != 0:
            if caused_by is not None and self.entry_order is not None and caused_by != self.entry_order:
                return []
            return self._move(StrategyTrigger.POSITION_OPENED, now_ns, f"position {quantity} {symbol}")
        if self.state in (St.IN_POSITION, St.EXITING) and quantity == 0:
            return self._move(StrategyTrigger.POSITION_CLOSED, now_ns, f"{symbol} flat")
        return []

    def on_tick(self, now_ns: int, market: Mapping[str, MarketView]) -> list[Action]:
        """Periodic evaluation: look for a setup, time out, or exit."""
        self.check_crash_hook("tick")
        self.advance(now_ns)
        elapsed_s = (now_ns - self.state_since_ns) / NS
        match self.state:
            case St.SCANNING:
                return self._scan(now_ns, market)
            case St.SETUP if elapsed_s >= self.config.setup_timeout_s:
                return self._move(StrategyTrigger.SETUP_TIMEOUT, now_ns, "entry not filled in time")
            case St.IN_POSITION:
                reason = self._exit_trigger(now_ns, market, elapsed_s)
                return self._exit(StrategyTrigger.EXIT_STARTED, now_ns, reason) if reason else []
            case St.EXITING if elapsed_s >= self.config.exit_retry_s:
                return self._exit(StrategyTrigger.EXIT_RETRY, now_ns, "still not flat: exit again")
            case _:
                return []

    # ------------------------------------------------------------------ what a kind provides

    def observe_trade(self, symbol: str, ts_ns: int, price: Decimal, quantity: Decimal, buyer_is_maker: bool) -> None:
        """Kind hook: a trade."""

    def observe_liquidation(self, symbol: str, ts_ns: int, side: Side, price: Decimal, quantity: Decimal) -> None:
        """Kind hook: a forced order."""

    def observe_open_interest(self, symbol: str, ts_ns: int, open_interest: Decimal) -> None:
        """Kind hook: an open-interest reading."""

    def advance(self, now_ns: int) -> None:
        """Kind hook: time passes (prune windows, age events)."""

    def clear_events(self, symbols: set[str] | None, now_ns: int) -> None:
        """Kind hook: forget market events and windows of these symbols (None: all)."""

    def active_events(self) -> list[dict[str, Any]]:
        """Kind hook: the market events the kind currently tracks (for crash records)."""
        return []

    def event_changes(self) -> list[dict[str, Any]]:
        """Kind hook: lifecycle steps of its market events since the last call (for logs)."""
        return []

    def find_entry(self, symbol: str, now_ns: int, view: MarketView) -> Entry | None:
        """Kind hook: an entry in `symbol` now, or None."""
        return None

    def exit_reason(self, now_ns: int, view: MarketView | None) -> str | None:
        """Kind hook: a reason to leave the current position early, or None."""
        return None

    def market_state(self) -> msgspec.Struct | None:
        """Kind hook: a copy of the kind's market memory (windows, averages, events) for a snapshot;
        None for a kind that keeps none. Its type is tagged with the kind and registered in
        `strategies.KindState`, so that a snapshot decodes it."""
        return None

    def load_market_state(self, state: msgspec.Struct | None) -> None:
        """Kind hook: take back what `market_state` returned (a state of another kind is ignored)."""

    # ------------------------------------------------------------------ decisions

    def reference_price(self, symbol: str, view: MarketView | None) -> Decimal | None:
        """Best estimate of the current price: mid, else the last trade."""
        mid = view.mid() if view is not None else None
        return mid if mid is not None else self.last_price.get(symbol)

    def _scan(self, now_ns: int, market: Mapping[str, MarketView]) -> list[Action]:
        cooldown_ns = int(self.config.cooldown_s * NS)
        if self.last_entry_ns is not None and now_ns - self.last_entry_ns < cooldown_ns:
            return []
        for symbol in sorted(market):
            view = market[symbol]
            if not view.hot_state_valid or not self.config.trades(symbol) or self._surrendered(symbol, now_ns):
                continue
            if self.positions.get(symbol, Decimal(0)) != 0:
                continue
            entry = self.find_entry(symbol, now_ns, view)
            if entry is None:
                continue
            actions = self._move(StrategyTrigger.SETUP_FOUND, now_ns, entry.reason)
            self.symbol, self.entry, self.last_entry_ns = symbol, entry, now_ns
            signal = Signal(
                symbol,
                entry.side,
                entry.quantity,
                False,
                entry.reason,
                entry.stop_loss,
                entry.take_profit,
                entry.confidence,
            )
            return [*actions, signal]
        return []

    def _surrendered(self, symbol: str, now_ns: int) -> bool:
        # FM-C2: a position held at the crash is the position service's; an entry in flight at the
        # crash may still fill, so the symbol stays off limits for a setup timeout even while flat.
        crashed_ns = self.surrendered.get(symbol)
        if crashed_ns is None:
            return False
        in_flight = now_ns - crashed_ns < self.config.setup_timeout_s * NS
        if in_flight or self.positions.get(symbol, Decimal(0)) != 0:
            return True
        del self.surrendered[symbol]
        return False

    def _exit_trigger(self, now_ns: int, market: Mapping[str, MarketView], elapsed_s: float) -> str | None:
        symbol, entry = self.symbol, self.entry
        view = market.get(symbol) if symbol else None
        price = self.reference_price(symbol, view) if symbol else None
        if entry is not None and price is not None:
            long = entry.side == Side.BUY
            if entry.stop_loss is not None and (price <= entry.stop_loss if long else price >= entry.stop_loss):
                return f"stop-loss {entry.stop_loss} crossed at {price}"
            if entry.take_profit is not None and (price >= entry.take_profit if long else price <= entry.take_profit):
                return f"take-profit {entry.take_profit} reached at {price}"
        if elapsed_s >= self.config.hold_s:
            return "holding time over"
        return self.exit_reason(now_ns, view)

    def _exit(self, trigger: StrategyTrigger, now_ns: int, reason: str) -> list[Action]:
        symbol = self.symbol
        position = self.positions.get(symbol, Decimal(0)) if symbol else Decimal(0)
        if symbol is None or position == 0:
            return self._move(StrategyTrigger.POSITION_CLOSED, now_ns, "already flat")
        entry = self.entry
        actions = self._move(trigger, now_ns, reason)
        self.symbol, self.entry = symbol, entry
        side = Side.SELL if position > 0 else Side.BUY
        return [*actions, Signal(symbol, side, abs(position), True, reason)]

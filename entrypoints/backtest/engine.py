"""The backtest loop: recordings → the simulator's book and matching engine → the strategy, on a
simulated clock, in one process (no NATS, no Postgres).

The strategy runs exactly as in the strategy service: a `services.strategy.state.RunnerState` whose
only change is `apply(state, fact)` with the same facts the live handlers build (`Received` market
data and positions, `Ticked` every 500 ms with the book's view, `Enabled`, `SignalPublished`,
`Crashed`), and whose intents (transitions, signals) are executed here instead of published.

Orders go where the live system sends them, minus the network: a signal becomes a MARKET order on
the simulator's `Exchange` (its taker walk of the recorded book, its fees, its margin and
reduce-only rules) at the signal's own time; an entry's stop-loss and take-profit become the
position service's protective orders (`services.position.domain.protective_orders`: reduce-only
STOP_MARKET / TAKE_PROFIT_MARKET in the Algo Service, triggered on the mark price); the fills come
back to the strategy as `PositionChanged`. Marks are the recording's, else the book's mid every
second, and open interest the simulator's model, read every 10 s, as the services would see them.
Risk's checks are not applied (the venue's own rules are). Whatever is still open when the
recording ends is closed at market.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

from libs.clock import ManualClock
from libs.ids import client_order_id_for
from libs.stamping import Stamper, sequential_ids
from proto.enums import OrderType, Side, StrategyState
from proto.messages import Liquidation, OpenInterest, PositionChanged, SignalGenerated, Trade
from proto.subjects import DEFAULT_VENUE
from services.market_data.series import OI_POLL_INTERVAL_S
from services.position.algo_orders import algo_params
from services.position.domain import Protection, ProtectKind, protective_orders
from services.strategy.config import InstanceConfig
from services.strategy.domain import Action, MarketView, Signal, Transition
from services.strategy.state import Crashed, Enabled, Fact, Received, RunnerState, SignalPublished, Ticked, apply
from services.venue_sim.domain import BinanceError, Exchange, OrderBook, fmt
from services.venue_sim.domain.accounts import Fill
from services.venue_sim.domain.market_events import (
    DepthEvent,
    LiquidationEvent,
    MarketEvent,
    MarkEvent,
    TradeEvent,
    starting_open_interest,
)

from .replay import Replay

NS = 1_000_000_000
ZERO = Decimal(0)
MONEY = Decimal("0.00000001")
TICK_S = 0.5
"""The strategy service's evaluation interval (`services.strategy.main`)."""
MARK_S = 1.0
"""The simulator's mark price interval for recordings without marks (`venue_sim.engine`)."""
PROCESS_TOKEN = "backtest"
PROGRESS_EVERY = 1000
"""Events between two progress reports."""

Advance = Callable[[int], None]


def _no_progress(_: int) -> None:
    return None


@dataclass(frozen=True)
class BacktestOptions:
    """How a backtest runs.

    Attributes:
        tick_s: the strategy's evaluation interval (simulated seconds).
        sample_s: equity sampling interval (simulated seconds; Sharpe's period).
        initial_balance: the simulated account's wallet at the start (USDT).
        venue: the venue name the strategy sees on its inputs.
    """

    tick_s: float = TICK_S
    sample_s: float = 1.0
    initial_balance: Decimal = Decimal(100000)
    venue: str = DEFAULT_VENUE


@dataclass(frozen=True)
class FillRow:
    """One execution of one of the strategy's orders."""

    time_ns: int
    symbol: str
    side: str
    price: Decimal
    quantity: Decimal
    fee: Decimal
    realized_pnl: Decimal
    role: str
    """entry, exit (the strategy's), stop-loss, take-profit (protective orders), end (recording over)."""
    reason: str


@dataclass(frozen=True)
class ClosedTrade:
    """A round trip: from flat to flat in one symbol."""

    symbol: str
    side: str  # LONG or SHORT
    quantity: Decimal
    entry_ns: int
    exit_ns: int
    entry_price: Decimal
    exit_price: Decimal
    pnl: Decimal
    """Realized PnL before fees."""
    fees: Decimal
    entry_reason: str
    exit_role: str
    exit_reason: str

    @property
    def net_pnl(self) -> Decimal:
        return self.pnl - self.fees


@dataclass
class _OpenTrade:
    symbol: str
    side: str
    entry_ns: int
    entry_reason: str
    quantity: Decimal = ZERO
    entry_notional: Decimal = ZERO
    exit_quantity: Decimal = ZERO
    exit_notional: Decimal = ZERO
    pnl: Decimal = ZERO
    fees: Decimal = ZERO


@dataclass
class BacktestRun:
    """What a backtest produced (metrics are computed from it by `metrics.summarize`)."""

    instance: InstanceConfig
    replay: Replay
    options: BacktestOptions
    events: int = 0
    fills: list[FillRow] = field(default_factory=list)
    trades: list[ClosedTrade] = field(default_factory=list)
    equity: list[tuple[int, Decimal]] = field(default_factory=list)
    """(time ns, realized PnL - fees + unrealized PnL at the mark) every `sample_s`, and at the end."""
    transitions: int = 0
    signals: int = 0
    rejections: list[dict[str, str]] = field(default_factory=list)
    crashes: list[dict[str, str]] = field(default_factory=list)
    final_state: str = ""


class Backtest:
    """One strategy instance replayed on recordings (use `run_backtest`)."""

    def __init__(
        self, instance: InstanceConfig, replay: Replay, options: BacktestOptions, progress: Advance = _no_progress
    ) -> None:
        self.progress = progress
        self.replay = replay
        self.options = options
        self.venue = options.venue
        self.clock = ManualClock(replay.start_ns)
        self.books: dict[str, OrderBook] = {}
        for symbol, recording in replay.symbols.items():
            book = self.books[symbol] = OrderBook(symbol)
            book.reset(recording.start.bids, recording.start.asks, recording.start.last_update_id)
        specs = {symbol: recording.spec for symbol, recording in replay.symbols.items()}
        self.exchange = Exchange(self.clock, specs, self.books, initial_balance=options.initial_balance)
        self.state = RunnerState.fresh(instance, self.venue)
        self.stamp = Stamper(self.clock, sequential_ids("backtest-"))
        self.result = BacktestRun(instance, replay, options)
        self.last_price: dict[str, Decimal] = {}
        self.open_interest = {symbol: starting_open_interest(symbol) for symbol in self.books}
        self.roles: dict[str, tuple[str, str]] = {}  # client order id -> (role, reason)
        self.protection: dict[str, Protection] = {}  # symbol -> the levels of its current entry
        self.protected: set[str] = set()  # entries whose protective orders are placed
        self.open_trades: dict[str, _OpenTrade] = {}
        self.fills_seen = 0

    # ------------------------------------------------------------------ the loop

    def run(self) -> BacktestRun:
        start, end = self.replay.start_ns, self.replay.end_ns
        self.guarded(Enabled(start, "backtest started"))
        intervals = {
            "mark": int(MARK_S * NS),
            "open_interest": int(OI_POLL_INTERVAL_S * NS),
            "tick": int(self.options.tick_s * NS),
            "sample": int(self.options.sample_s * NS),
        }
        due = {name: start + interval for name, interval in intervals.items()}
        timers = {
            "mark": self.on_mark_timer,
            "open_interest": self.on_open_interest_timer,
            "tick": self.on_tick,
            "sample": self.sample,
        }
        self.sample()
        for ts, event in self.replay.events:
            while (next_due := min(due.values())) <= ts:
                self.clock.set(next_due)
                for name, when in due.items():  # fixed order at equal times: mark, OI, tick, sample
                    if when == next_due:
                        timers[name]()
                        due[name] += intervals[name]
            self.clock.set(ts)
            self.on_event(event)
            self.result.events += 1
            if self.result.events % PROGRESS_EVERY == 0:
                self.progress(PROGRESS_EVERY)
        self.clock.set(end)
        self.close_all()
        self.sample()
        self.result.final_state = self.state.strategy.state.value
        return self.result

    def on_event(self, event: MarketEvent) -> None:
        match event:
            case DepthEvent():
                self.books[event.symbol].apply(event.bids, event.asks, event.final_update_id)
                self.exchange.on_book_update(event.symbol)
                self.settle()
            case TradeEvent():
                self.last_price[event.symbol] = event.price
                trade = self.stamp(
                    Trade,
                    venue=self.venue,
                    symbol=event.symbol,
                    trade_id=event.trade_id,
                    price=event.price,
                    quantity=event.quantity,
                    buyer_is_maker=event.buyer_is_maker,
                )
                self.received(trade)
                if event.kind == "INSURANCE_FUND":  # the simulator serves it as a forced order too
                    side = "SELL" if event.buyer_is_maker else "BUY"
                    self.liquidation(LiquidationEvent(event.symbol, side, event.price, event.quantity))
            case MarkEvent():
                self.exchange.on_mark_price(event.symbol, event.mark_price)
                self.check_protection(event.symbol)
            case LiquidationEvent():
                self.liquidation(event)

    def liquidation(self, event: LiquidationEvent) -> None:
        if self.replay.market != "usdm":
            return  # spot has no forced orders
        self.open_interest[event.symbol] = max(ZERO, self.open_interest[event.symbol] - event.quantity)
        message = self.stamp(
            Liquidation,
            venue=self.venue,
            symbol=event.symbol,
            side=Side(event.side),
            price=event.price,
            quantity=event.quantity,
        )
        self.received(message)

    def on_mark_timer(self) -> None:
        for symbol, recording in self.replay.symbols.items():
            mid = self.books[symbol].mid()
            if not recording.has_marks and mid is not None:
                self.exchange.on_mark_price(symbol, mid)
                self.check_protection(symbol)

    def on_open_interest_timer(self) -> None:
        if self.replay.market != "usdm":
            return
        for symbol in self.books:
            oi = self.open_interest[symbol]
            self.received(self.stamp(OpenInterest, venue=self.venue, symbol=symbol, open_interest=oi))

    def on_tick(self) -> None:
        if self.state.strategy.state in (StrategyState.DISABLED, StrategyState.FAILED):
            return  # as the service: a disabled or failed strategy is not evaluated
        views = {}
        for symbol, book in self.books.items():
            bid, ask = book.best_bid(), book.best_ask()
            views[symbol] = MarketView(
                hot_state_valid=bid is not None and ask is not None,
                best_bid=bid[0] if bid else None,
                best_ask=ask[0] if ask else None,
            )
        self.guarded(Ticked(self.clock(), views))

    def sample(self) -> None:
        account = self.exchange.account
        equity = account.realized_pnl - account.commissions + self.exchange.total_unrealized()
        self.result.equity.append((self.clock(), equity.quantize(MONEY)))

    # ------------------------------------------------------------------ the strategy

    def received(self, message: Trade | Liquidation | OpenInterest | PositionChanged) -> None:
        self.guarded(Received(message, self.clock()))

    def guarded(self, fact: Fact) -> None:
        """Apply a fact to the strategy and carry out what it decided; an exception in strategy
        code is a crash handled as the runner does (FM-C2: rebuilt through DISABLED, or FAILED)."""
        try:
            apply(self.state, fact)
        except Exception as exc:  # noqa: BLE001 - FM-C2: a bug in strategy code is a crash of the strategy
            now = self.clock()
            self.result.crashes.append(
                {
                    "time_ns": str(now),
                    "error": f"{type(exc).__name__}: {exc}"[:300],
                    "input": type(fact).__name__,
                    "stack_trace": "".join(traceback.format_exception(exc))[-2000:],
                }
            )
            apply(self.state, Crashed(now, f"crash: {type(exc).__name__}: {exc}"[:300], PROCESS_TOKEN))
        self.execute(self.state.intents)

    def execute(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Transition():
                    self.result.transitions += 1
                case Signal():
                    self.signal(action)

    def signal(self, action: Signal) -> None:
        spec = self.exchange.specs[action.symbol]
        quantity = (action.quantity / spec.step_size).to_integral_value(ROUND_DOWN) * spec.step_size
        # On the venue's grid, as the strategy service publishes it (`signals.IntentPublisher.on_grid`).
        levels = {
            name: (value / spec.tick_size).to_integral_value(ROUND_HALF_UP) * spec.tick_size
            for name in ("stop_loss", "take_profit")
            if (value := getattr(action, name)) is not None
        }
        published = self.stamp(
            SignalGenerated,
            strategy=self.state.instance.name,
            symbol=action.symbol,
            side=action.side,
            order_type=OrderType.MARKET,
            quantity=quantity if quantity > 0 else action.quantity,
            reduce_only=action.reduce_only,
            reason=action.reason,
            confidence=action.confidence,
            **levels,
        )
        self.result.signals += 1
        apply(self.state, SignalPublished(published))
        order_id = client_order_id_for(published.message_id)
        if not action.reduce_only and (published.stop_loss is not None or published.take_profit is not None):
            self.protection[action.symbol] = Protection(
                order_id, action.symbol, published.stop_loss, published.take_profit
            )
        role = "exit" if action.reduce_only else "entry"
        self.place(action.symbol, action.side, published.quantity, action.reduce_only, order_id, role, action.reason)

    # ------------------------------------------------------------------ the venue

    def place(
        self, symbol: str, side: Side, quantity: Decimal, reduce_only: bool, order_id: str, role: str, reason: str
    ) -> None:
        params = {
            "symbol": symbol,
            "side": side.value,
            "type": "MARKET",
            "quantity": fmt(quantity),
            "newClientOrderId": order_id,
        }
        if reduce_only:
            params["reduceOnly"] = "true"
        self.roles[order_id] = (role, reason)
        try:
            self.exchange.place_order(params)
        except BinanceError as error:
            self.reject(symbol, role, error)
            if role == "entry":
                self.protection.pop(symbol, None)
            return
        self.settle()

    def reject(self, symbol: str, role: str, error: BinanceError) -> None:
        self.result.rejections.append(
            {"time_ns": str(self.clock()), "symbol": symbol, "role": role, "code": str(error.code), "error": error.msg}
        )

    def check_protection(self, symbol: str) -> None:
        """Trigger the protective orders the new mark crossed (`Exchange.check_algo_orders`)."""
        waiting = self.exchange.algo.open_orders(symbol)
        if not waiting:
            return
        self.exchange.check_algo_orders({symbol: self.last_price.get(symbol)})
        mark = self.exchange.mark_price(symbol)
        for algo in waiting:
            if algo.actual_order_id is not None:
                placed = self.exchange.orders[algo.actual_order_id]
                role = self.roles.get(algo.client_algo_id, ("exit", ""))[0]
                self.roles[placed.client_order_id] = (role, f"{role} {algo.trigger_price} triggered at mark {mark}")
        self.settle()

    def protect(self, symbol: str, quantity: Decimal) -> None:
        """Place the entry's stop-loss and take-profit as the position service does, once."""
        protection = self.protection.get(symbol)
        if protection is None or protection.entry in self.protected:
            return
        self.protected.add(protection.entry)
        for order in protective_orders(protection, quantity):
            order_id = client_order_id_for(order.attempt_key(0))
            role = "stop-loss" if order.kind == ProtectKind.STOP else "take-profit"
            self.roles[order_id] = (role, "")
            params = {
                "symbol": symbol,
                "side": order.side.value,
                "type": order.order_type.value,
                "quantity": fmt(order.quantity),
                "stopPrice": fmt(order.stop_price),
                "newClientOrderId": order_id,
                "reduceOnly": "true",
            }
            try:
                self.exchange.place_algo(algo_params(params), self.last_price.get(symbol))
            except BinanceError as error:
                if error.code != -2021:
                    self.reject(symbol, role, error)
                    continue
                # Already beyond the level: the position service closes at market instead.
                position = self.exchange.position(symbol).quantity
                if position != 0:
                    close_id = client_order_id_for(f"{order.key_stem}:close")
                    reason = f"{role} {order.stop_price} already crossed"
                    self.place(symbol, order.side, abs(position), True, close_id, role, reason)
                return

    def settle(self) -> None:
        """Book the exchange's new fills, keep the protective orders in line with the positions,
        and tell the strategy its positions (`PositionChanged`, caused by the fill's order)."""
        self.exchange.outbox.clear()  # user-data frames: nobody listens in a backtest
        new = self.exchange.fills[self.fills_seen :]
        if not new:
            return
        self.fills_seen = len(self.exchange.fills)
        causes: dict[str, str] = {}
        for fill in new:
            self.book_fill(fill)
            causes[fill.symbol] = fill.client_order_id
        for symbol, cause in causes.items():
            position = self.exchange.position(symbol)
            if position.quantity == 0:
                for algo in self.exchange.algo.open_orders(symbol):  # as the position service does once flat
                    self.exchange.cancel_algo({"symbol": symbol, "algoId": str(algo.algo_id)})
                self.protection.pop(symbol, None)
            message = self.stamp(
                PositionChanged,
                venue=self.venue,
                symbol=symbol,
                quantity=position.quantity,
                average_entry_price=position.entry_price,
                realized_pnl=position.realized_pnl,
                caused_by_client_order_id=cause,
            )
            self.received(message)
            if self.exchange.position(symbol).quantity != 0:
                self.protect(symbol, self.exchange.position(symbol).quantity)

    def book_fill(self, fill: Fill) -> None:
        role, reason = self.roles.get(fill.client_order_id, ("exit", ""))
        now = self.clock()
        row = FillRow(
            now, fill.symbol, fill.side, fill.price, fill.quantity, fill.commission, fill.realized_pnl, role, reason
        )
        self.result.fills.append(row)
        direction = "LONG" if fill.side == "BUY" else "SHORT"
        trade = self.open_trades.get(fill.symbol)
        if trade is None:
            trade = self.open_trades[fill.symbol] = _OpenTrade(fill.symbol, direction, now, reason)
        trade.fees += fill.commission
        if direction == trade.side:
            trade.quantity += fill.quantity
            trade.entry_notional += fill.price * fill.quantity
            return
        trade.exit_quantity += fill.quantity
        trade.exit_notional += fill.price * fill.quantity
        trade.pnl += fill.realized_pnl
        if trade.exit_quantity >= trade.quantity:  # flat (exits are reduce-only: never past it)
            del self.open_trades[fill.symbol]
            self.result.trades.append(
                ClosedTrade(
                    symbol=trade.symbol,
                    side=trade.side,
                    quantity=trade.quantity,
                    entry_ns=trade.entry_ns,
                    exit_ns=now,
                    entry_price=(trade.entry_notional / trade.quantity).quantize(MONEY),
                    exit_price=(trade.exit_notional / trade.exit_quantity).quantize(MONEY),
                    pnl=trade.pnl.quantize(MONEY),
                    fees=trade.fees.quantize(MONEY),
                    entry_reason=trade.entry_reason,
                    exit_role=role,
                    exit_reason=reason,
                )
            )

    def close_all(self) -> None:
        """The recording is over: close what is open at market (and say so on the trade)."""
        for symbol in sorted(self.books):
            position = self.exchange.position(symbol).quantity
            if position == 0:
                continue
            side = Side.SELL if position > 0 else Side.BUY
            order_id = client_order_id_for(f"backtest-end:{symbol}")
            self.place(symbol, side, abs(position), True, order_id, "end", "recording over: closed at market")


def run_backtest(
    instance: InstanceConfig, replay: Replay, options: BacktestOptions | None = None, progress: Advance = _no_progress
) -> BacktestRun:
    """Replay `replay` through a fresh strategy of `instance` (deterministic: same input, same run);
    `progress` is told every `PROGRESS_EVERY` events replayed (it never changes the run)."""
    return Backtest(instance, replay, options or BacktestOptions(), progress).run()

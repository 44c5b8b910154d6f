"""strategy's handlers: which message goes where. Each input becomes a fact for the runner
(`runner.StrategyRunner`), which applies it, publishes what the strategy decided and contains its
crashes; commands and ticks are decided here (HARD_SHUTDOWN, the state-builder's view) first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.msg import Msg

from libs.bus import Delivery
from libs.metrics import metrics_of
from libs.telemetry import Evaluation, HotStateRead, Tick, evaluating, handling_tick
from proto import subjects
from proto.codec import decode
from proto.enums import DegradationLevel, StrategyState
from proto.envelope import Message
from proto.messages import (
    BookResyncStarted,
    DisableStrategy,
    EnableStrategy,
    LinkStateChanged,
    Liquidation,
    OpenInterest,
    PositionChanged,
    Trade,
)
from proto.replies import ErrorReply

from . import adapters
from .domain import MarketView
from .runner import INPUT_LIMIT, StrategyRunner
from .state import Disabled, Enabled, Received, Sequenced, Ticked

INPUT_SUBJECTS = (subjects.EVT_LINK_ALL, subjects.EVT_POSITION_ALL)
"""Core-NATS subjects every strategy follows (link events, positions). Market data comes through the
durable `subjects.strategy_market_data_consumer(name)` (`MARKET_SUBJECTS`), whose sequences the
snapshots cover."""

MARKET_SUBJECTS = (
    subjects.MD_TRADE_ALL,
    subjects.MD_LIQUIDATION_ALL,
    subjects.MD_OPEN_INTEREST_ALL,
    subjects.MD_RESYNC_ALL,
)
"""The MARKET_DATA subjects a strategy consumes (`state.MARKET_TYPES`)."""


class StandbyError(RuntimeError):
    """A command reached a standby instance: it is nak'ed so the lease holder gets it."""


class StrategyService:
    """The instance's message → handler table over its runner.

    Args:
        runner: the instance's runner.
    """

    def __init__(self, runner: StrategyRunner) -> None:
        self.runner = runner
        market = self._market_input
        self.inputs: dict[type[Message], Callable[[Message, int | None], Awaitable[None]]] = {
            Trade: market,
            Liquidation: market,
            OpenInterest: market,
            BookResyncStarted: self._input,
            LinkStateChanged: self._input,
            PositionChanged: self._input,
        }
        """Input message type → its handler (anything else is ignored)."""
        self.latest_ticks: dict[str, Tick] = {}
        """The latest market input of each symbol: a signal of the periodic evaluation is traced from it."""

    # ------------------------------------------------------------------ inputs

    async def on_market_event(self, msg: Msg) -> None:
        """Core-NATS follower of link events and positions."""
        try:
            message = decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.runner.log.warning("event_rejected", subject=msg.subject, error=str(exc)[:200])
            return
        await self.handle(message)

    async def on_market_data(self, message: Message, delivery: Delivery) -> None:
        """Durable `strategy-<name>-md` handler (trades, liquidations, open interest, resyncs)."""
        runner = self.runner
        if delivery.stream_sequence <= runner.state.md_seq:
            return  # already in memory: restored from a snapshot or replayed at start
        await self.handle(message, delivery.stream_sequence)
        if not runner.active or type(message) not in self.inputs:
            runner.apply(Sequenced(delivery.stream_sequence))
        if runner.policy is not None and runner.policy.record():
            runner.checkpoint()

    async def handle(self, message: Message, stream_seq: int | None = None) -> None:
        """Dispatch one decoded input to the strategy (times are local receive times)."""
        handler = self.inputs.get(type(message))
        if handler is None or not self.runner.active:
            return  # standby: the holder runs the strategy
        await handler(message, stream_seq)

    async def _market_input(self, message: Message, stream_seq: int | None) -> None:
        # The time market-data stamped it: the same whether handled live or replayed after a
        # restart (snapshot + tail rebuild exactly what a run without restart had).
        runner = self.runner
        started_ns = runner.clock()
        tick = Tick(getattr(message, "symbol", ""), message.ts_init_ns, message.message_id, type(message).__name__)
        self.latest_ticks[tick.symbol] = tick
        with handling_tick(tick):  # a signal decided on this input is traced from it
            await self._input(message, stream_seq, min(message.ts_init_ns, started_ns))
        metrics = metrics_of(runner.bus)
        if metrics is not None:
            metrics.decision("strategy", (runner.clock() - started_ns) / 1e9)

    async def _input(self, message: Message, stream_seq: int | None, at_ns: int | None = None) -> None:
        def described() -> str:
            return f"{type(message).__name__} {msgspec.json.encode(message)[:INPUT_LIMIT].decode(errors='replace')}"

        now = self.runner.clock() if at_ns is None else at_ns
        await self.runner.guarded(described, Received(message, now, stream_seq))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ commands

    async def on_command(self, message: Message, delivery: Delivery) -> None:
        """Durable consumer of `cmd.strategy.<name>.enable|disable`.

        Raises:
            StandbyError: this instance does not hold the lease (the command is redelivered).
        """
        runner = self.runner
        if not runner.active:
            raise StandbyError(f"strategy {runner.name} is on standby")
        now = runner.clock()
        async with runner.lock:
            match message:
                case EnableStrategy() if message.strategy == runner.name and await self._hard_shutdown():
                    # SPEC §5: the trading services stay stopped until a manual restart (the
                    # gateway refuses such an enable; this holds for one sent on the bus too).
                    runner.log.warning(
                        "enable_refused",
                        operator=message.operator,
                        reason="HARD_SHUTDOWN",
                        action_taken=f"stays {runner.strategy.state.value}",
                    )
                case EnableStrategy() if message.strategy == runner.name:
                    reason = f"enabled by {message.operator}: {message.reason}"
                    await runner.commit(Enabled(now, reason, runner.strategy.state == StrategyState.FAILED))
                case DisableStrategy() if message.strategy == runner.name:
                    await runner.commit(Disabled(now, f"disabled by {message.operator}: {message.reason}"))
                case _:
                    runner.log.debug("command_ignored", subject=delivery.subject)

    # ------------------------------------------------------------------ ticks

    async def market(self) -> tuple[dict[str, MarketView], HotStateRead | None]:
        """The state-builder's view and when it was read (for the trace of a signal decided on it);
        empty and None (nothing VALID, so no entries) when it does not answer."""
        clock = self.runner.clock
        started_ns = clock()
        try:
            raw = await self.runner.bus.request(subjects.SVC_STATE_BUILDER_SYMBOLS, timeout_s=0.4)
            views = adapters.market_views(raw)
        except Exception as exc:  # noqa: BLE001 - timeouts, no responders, bad replies: fail closed
            self.runner.log.debug("state_builder_unavailable", error=f"{type(exc).__name__}: {exc}")
            return {}, None
        if isinstance(views, ErrorReply):
            self.runner.log.debug("state_builder_unavailable", error=f"{views.error.code}: {views.error.message}")
            return {}, None
        # The span's attributes are decoded only for a signal, so an evaluation costs nothing more.
        return views, HotStateRead(started_ns, clock(), functools.partial(adapters.hot_state_attributes, raw))

    async def with_depth(self, market: dict[str, MarketView]) -> dict[str, MarketView]:
        """The views of the symbols the strategy trades with the book depth it asked for
        (`Strategy.depth_levels`); a symbol whose depth cannot be read keeps its top of book."""
        strategy = self.runner.strategy
        levels = strategy.depth_levels
        if levels <= 0:
            return market
        views = dict(market)
        for symbol, view in market.items():
            if not view.hot_state_valid or not strategy.config.trades(symbol):
                continue
            try:
                bids, asks = await adapters.read_depth(self.runner.bus, symbol, levels)
            except Exception as exc:  # noqa: BLE001 - no depth is no entry on depth, never a crash
                self.runner.log.debug("depth_unavailable", symbol=symbol, error=f"{type(exc).__name__}: {exc}")
                continue
            views[symbol] = dataclasses.replace(view, bids=bids, asks=asks)
        return views

    async def _hard_shutdown(self) -> bool:
        """Is the system in HARD_SHUTDOWN (KV `degradation_level`)? False when it cannot be read."""
        try:
            level = await adapters.read_degradation_level(self.runner.bus)
        except Exception as exc:  # noqa: BLE001 - bus trouble or a garbled value: risk still denies
            self.runner.log.debug("degradation_level_unreadable", error=f"{type(exc).__name__}: {exc}")
            return False
        return level == DegradationLevel.HARD_SHUTDOWN

    async def tick(self) -> None:
        """One evaluation of the strategy (crashes contained like every other input).

        In HARD_SHUTDOWN the strategy stops (SPEC §5 "stop trading services"): DISABLED, which
        persists across restarts and is left only by an operator's enable.
        """
        runner = self.runner
        if not runner.active or runner.strategy.state in (StrategyState.DISABLED, StrategyState.FAILED):
            return
        if await self._hard_shutdown():
            await runner.locked(Disabled(runner.clock(), "HARD_SHUTDOWN: trading services stop (SPEC §5)"))
            runner.log.error(
                "strategy_stopped", reason="HARD_SHUTDOWN", action_taken="DISABLED until an operator enables it"
            )
            return
        views, hot_state = await self.market()
        market = await self.with_depth(views)
        summary = {
            symbol: (view.hot_state_valid, str(view.best_bid), str(view.best_ask)) for symbol, view in market.items()
        }
        with evaluating(Evaluation(dict(self.latest_ticks), hot_state)):  # its signals are traced from the tick
            await runner.guarded(lambda: f"tick market={summary}", Ticked(runner.clock(), market))

    async def run(self, interval_s: float = 0.5) -> None:
        """Tick forever."""
        while True:
            await asyncio.sleep(interval_s)
            await self.tick()

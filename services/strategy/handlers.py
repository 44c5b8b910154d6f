"""strategy's handlers: feed trades, positions and ticks to the pure strategy; publish its actions."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import msgspec
from nats.aio.msg import Msg

from libs.bus import Bus, Delivery
from libs.logging import Logger
from proto import subjects
from proto.codec import decode
from proto.enums import OrderType, StrategyState
from proto.envelope import Message
from proto.messages import (
    DisableStrategy,
    EnableStrategy,
    PositionChanged,
    SignalGenerated,
    StrategyStateChanged,
    Trade,
)

from . import adapters
from .domain import NS, Action, ImbalanceStrategy, MarketView, Signal, Transition

Clock = Callable[[], int]
MAX_CRASHES = 3
CRASH_WINDOW_NS = 600 * NS


class StrategyRunner:
    """Runs one strategy instance: inputs in, signals and state transitions out."""

    def __init__(self, bus: Bus, log: Logger, strategy: ImbalanceStrategy, venue: str, clock: Clock) -> None:
        self.bus = bus
        self.log = log
        self.strategy = strategy
        self.venue = venue
        self.clock = clock
        self.crashes: deque[int] = deque()
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.strategy.name

    def details(self) -> dict[str, object]:
        """Heartbeat details."""
        return {"state": self.strategy.state.value, "symbol": self.strategy.symbol}

    async def execute(self, actions: list[Action]) -> None:
        """Publish transitions (persisted first) and signals, in order."""
        for action in actions:
            match action:
                case Transition():
                    record = adapters.StrategyStateRecord(
                        state=action.current, reason=action.reason, symbol=self.strategy.symbol, ts_ns=self.clock()
                    )
                    await adapters.write_strategy_state(self.bus, self.name, record)
                    event = StrategyStateChanged(
                        strategy=self.name, previous=action.previous, current=action.current, reason=action.reason
                    )
                    await self.bus.publish(subjects.evt_strategy_state(self.name), event)
                    self.log.info(
                        "strategy_state_changed",
                        strategy=self.name,
                        previous=action.previous.value,
                        current=action.current.value,
                        reason=action.reason,
                    )
                case Signal():
                    signal = SignalGenerated(
                        strategy=self.name,
                        symbol=action.symbol,
                        side=action.side,
                        order_type=OrderType.MARKET,
                        quantity=action.quantity,
                        reduce_only=action.reduce_only,
                        reason=action.reason,
                    )
                    await self.bus.publish(
                        subjects.evt_signal(self.name, action.symbol), signal, msg_id=signal.message_id
                    )
                    self.log.info(
                        "signal_generated",
                        strategy=self.name,
                        signal_id=signal.message_id,
                        symbol=action.symbol,
                        side=action.side.value,
                        quantity=str(action.quantity),
                        reduce_only=action.reduce_only,
                        reason=action.reason,
                    )

    async def start(self) -> None:
        """Restore the persisted state: DISABLED/FAILED stay; anything else restarts via DISABLED into SCANNING."""
        record = await adapters.read_strategy_state(self.bus, self.name)
        now = self.clock()
        if record is not None and record.state in (StrategyState.DISABLED, StrategyState.FAILED):
            self.strategy.state = record.state
            self.log.info("strategy_restored", strategy=self.name, state=record.state.value, reason=record.reason)
            return
        self.strategy.state = StrategyState.DISABLED
        async with self._lock:
            if record is not None and record.state != StrategyState.DISABLED:
                await self.execute([Transition(record.state, StrategyState.DISABLED, "restart: setups cleared")])
            await self.execute(self.strategy.enable(now, "started"))

    # ------------------------------------------------------------------ inputs

    async def on_market_event(self, msg: Msg) -> None:
        """Core-NATS follower of trades and positions."""
        try:
            message = decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.log.warning("event_rejected", subject=msg.subject, error=str(exc)[:200])
            return
        match message:
            case Trade():
                self.strategy.on_trade(message.symbol, message.ts_event_ns, message.quantity, message.buyer_is_maker)
            case PositionChanged() if message.venue == self.venue:
                async with self._lock:
                    await self.execute(self.strategy.on_position(message.symbol, message.quantity, self.clock()))
            case _:
                pass

    async def on_command(self, message: Message, delivery: Delivery) -> None:
        """Durable consumer of `cmd.strategy.<name>.enable|disable`."""
        now = self.clock()
        async with self._lock:
            match message:
                case EnableStrategy() if message.strategy == self.name:
                    await self.execute(self.strategy.enable(now, f"enabled by {message.operator}: {message.reason}"))
                case DisableStrategy() if message.strategy == self.name:
                    await self.execute(self.strategy.disable(now, f"disabled by {message.operator}: {message.reason}"))
                case _:
                    self.log.debug("command_ignored", subject=delivery.subject)

    async def market(self) -> dict[str, MarketView]:
        """The state-builder's view; empty (nothing VALID, so no entries) when it does not answer."""
        try:
            raw = await self.bus.request(subjects.service_query(subjects.STATE_BUILDER, "symbols"), timeout_s=0.4)
            return adapters.market_views(raw)
        except Exception as exc:  # noqa: BLE001 - timeouts, no responders, bad replies: fail closed
            self.log.debug("state_builder_unavailable", error=f"{type(exc).__name__}: {exc}")
            return {}

    async def tick(self) -> None:
        """One evaluation; a crash of the strategy logic is counted and isolated (FM-C2)."""
        if self.strategy.state in (StrategyState.DISABLED, StrategyState.FAILED):
            return
        market = await self.market()
        async with self._lock:
            now = self.clock()
            try:
                actions = self.strategy.on_tick(now, market)
            except Exception as exc:  # noqa: BLE001 - one strategy's bug must not take the process down
                await self._crashed(now, exc)
                return
            await self.execute(actions)

    async def _crashed(self, now: int, exc: Exception) -> None:
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > CRASH_WINDOW_NS:
            self.crashes.popleft()
        self.log.exception(
            "strategy_crashed",
            exc,
            strategy=self.name,
            state=self.strategy.state.value,
            symbol=self.strategy.symbol,
            positions={k: str(v) for k, v in self.strategy.positions.items()},
            crashes=len(self.crashes),
        )
        if len(self.crashes) > MAX_CRASHES:
            await self.execute(self.strategy.fail(now, f"{len(self.crashes)} crashes in 10 min: {exc}"))
        else:
            await self.execute(self.strategy.disable(now, f"crash: {exc}"))
            await self.execute(self.strategy.enable(now, "restarted after a crash"))

    async def run(self, interval_s: float = 0.5) -> None:
        """Tick forever."""
        while True:
            await asyncio.sleep(interval_s)
            await self.tick()

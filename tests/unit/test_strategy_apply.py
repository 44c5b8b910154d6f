"""One `apply` for live and replay: a strategy instance driven live (through its service object, an
in-memory bus and a manual clock) ends in the state its log of facts rebuilds, from scratch and from
a snapshot taken on the way plus the tail after it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.bus import Delivery
from libs.clock import NS_PER_S, ManualClock
from libs.logging import get_logger
from proto import subjects
from proto.codec import encode
from proto.enums import ConnectionState, HotStateStatus, Side
from proto.envelope import Message
from proto.messages import (
    BookResyncStarted,
    DisableStrategy,
    EnableStrategy,
    LinkStateChanged,
    Liquidation,
    OpenInterest,
    PositionChanged,
    SignalGenerated,
    SymbolHotState,
    SymbolsReply,
    Trade,
)
from services.strategy import snapshot as snap
from services.strategy.config import InstanceConfig
from services.strategy.domain import St, Strategy, StrategyConfig
from services.strategy.handlers import StrategyService
from services.strategy.runner import StrategyRunner
from services.strategy.state import (
    CrashHistoryLoaded,
    Fact,
    PositionLoaded,
    RunnerState,
    SignalPublished,
    SnapshotLoaded,
    apply,
)
from services.strategy.strategies import KINDS, CascadeFadeConfig, ImbalanceConfig, TrendConfig

M = TypeVar("M", bound=Message)
VENUE = "binance"
SYMBOL = "BTCUSDT"
CRASHING_QUANTITY = Decimal(13)
"""A trade of this size makes the kind's code raise (a bug in a strategy, FM-C2)."""

TIMES: dict[str, Any] = {
    "cooldown_s": 1.0,
    "setup_timeout_s": 3.0,
    "hold_s": 3.0,
    "exit_retry_s": 1.0,
    "symbols": (SYMBOL,),
}
CONFIGS: dict[str, StrategyConfig] = {
    "cascade_fade": dataclasses.replace(
        CascadeFadeConfig(
            window_s=5.0,
            min_liquidations=2,
            min_displacement_pct=Decimal("0.05"),
            quiet_s=0.5,
            max_entry_delay_s=5.0,
        ),
        **TIMES,
    ),
    "trend": dataclasses.replace(TrendConfig(fast_s=1.0, slow_s=5.0, warmup_s=1.0, min_gap_bps=Decimal(1)), **TIMES),
    "imbalance": dataclasses.replace(ImbalanceConfig(window_s=5.0, threshold=Decimal("0.3"), min_trades=2), **TIMES),
}


class _CrashesOnSize(Strategy):
    def observe_trade(self, symbol: str, ts_ns: int, price: Decimal, quantity: Decimal, buyer_is_maker: bool) -> None:
        super().observe_trade(symbol, ts_ns, price, quantity, buyer_is_maker)  # half done, then the bug
        if quantity == CRASHING_QUANTITY:
            raise ZeroDivisionError("a bug in the strategy")


@dataclass(frozen=True)
class CrashingInstance(InstanceConfig):
    """The kind with a bug: it raises on a trade of `CRASHING_QUANTITY`."""

    def build(self, state: St = St.DISABLED) -> Strategy:
        kind_class, _ = KINDS[self.kind]
        crashing = type(f"Crashing{kind_class.__name__}", (_CrashesOnSize, kind_class), {})
        strategy: Strategy = crashing(self.name, self.config, state=state)
        return strategy


class MemoryBus:
    """What a runner uses of the bus, in memory: KV, publications and the state-builder's reply."""

    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}
        self.published: list[tuple[str, Message]] = []
        self.symbols = SymbolsReply(symbols={})

    async def kv_get(self, key: str, bucket: str = subjects.KV_STATE) -> tuple[bytes, int] | None:
        value = self.kv.get(key)
        return None if value is None else (value, 1)

    async def kv_put(self, key: str, value: bytes, bucket: str = subjects.KV_STATE) -> int:
        self.kv[key] = value
        return 1

    async def publish(self, subject: str, message: Message, *, msg_id: str | None = None) -> int:
        self.published.append((subject, message))
        return len(self.published)

    async def request(self, subject: str, payload: bytes = b"{}", *, timeout_s: float = 3.0) -> bytes:
        return encode(self.symbols)

    async def last_message(self, stream: str, subject: str, kind: type[Any]) -> None:
        return None

    async def stream_bounds(self, stream: str) -> tuple[int, int]:
        return 0, 0


# --------------------------------------------------------------------------- the live run


STEPS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "trade": st.tuples(st.just("trade"), st.integers(-4, 4), st.sampled_from([1, 1, 2, 3, 1, 2, 13]), st.booleans()),
    "liquidation": st.tuples(
        st.just("liquidation"), st.integers(-4, 1), st.sampled_from([Side.SELL, Side.SELL, Side.BUY])
    ),
    "cascade": st.tuples(st.just("cascade"), st.sampled_from([Side.SELL, Side.BUY])),
    "open_interest": st.tuples(st.just("open_interest"), st.integers(900, 1100)),
    "tick": st.tuples(st.just("tick"), st.sampled_from([True, True, True, False])),
    **{name: st.just((name,)) for name in ("fill", "flat", "link_down", "book_resync", "enable", "disable")},
    "other_order": st.tuples(st.just("other_order"), st.sampled_from([-1, 1])),
}
WEIGHTS = {"trade": 6, "tick": 6, "cascade": 2, "fill": 2, "liquidation": 1, "open_interest": 1, "flat": 1}
step = st.sampled_from([name for name in STEPS for _ in range(WEIGHTS.get(name, 1))]).flatmap(STEPS.__getitem__)
runs = st.lists(st.tuples(step, st.integers(0, 2500)), min_size=10, max_size=100)


@dataclass
class Checkpoint:
    """What a restart at that point would read: the snapshot, KV's crash history, the ORDERS positions."""

    snapshot: bytes
    crash_record: Any
    positions: list[PositionChanged]
    facts_so_far: int


class LiveRun:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.clock = ManualClock(1_700_000_000 * NS_PER_S)
        self.bus = MemoryBus()
        instance = CrashingInstance(kind.replace("_", "-"), kind, CONFIGS[kind])
        runner = StrategyRunner(self.bus, get_logger("strategy-test"), instance, VENUE, self.clock, journal=True)  # type: ignore[arg-type]
        self.runner = runner
        self.service = StrategyService(runner)
        self.price = Decimal(60000)
        self.md_seq = 0
        self.trade_id = 0
        self.positions: dict[str, PositionChanged] = {}

    def stamped(self, message: M) -> M:
        """The message as sent now (market-data stamps its messages with its clock)."""
        return msgspec.structs.replace(message, ts_event_ns=self.clock.now, ts_init_ns=self.clock.now)

    async def market_data(self, message: Message) -> None:
        self.md_seq += 1
        delivery = Delivery(f"md.{type(message).__name__}", self.md_seq, 1, {})
        await self.service.on_market_data(self.stamped(message), delivery)

    async def position(self, quantity: Decimal, caused_by: str | None) -> None:
        event = PositionChanged(
            venue=VENUE,
            symbol=SYMBOL,
            quantity=quantity,
            average_entry_price=self.price,
            realized_pnl=Decimal(0),
            caused_by_client_order_id=caused_by,
        )
        self.positions[SYMBOL] = self.stamped(event)  # what the ORDERS stream holds last
        await self.service.handle(self.positions[SYMBOL])

    async def step(self, action: tuple[Any, ...]) -> None:
        strategy = self.runner.strategy
        match action:
            case ("trade", move, size, buyer_is_maker):
                self.price += 50 * move
                self.trade_id += 1
                trade = Trade(
                    venue=VENUE,
                    symbol=SYMBOL,
                    trade_id=self.trade_id,
                    price=self.price,
                    quantity=Decimal(size),
                    buyer_is_maker=buyer_is_maker,
                )
                await self.market_data(trade)
            case ("liquidation", move, side):
                self.price += 50 * move
                liquidation = Liquidation(venue=VENUE, symbol=SYMBOL, side=side, price=self.price, quantity=Decimal(2))
                await self.market_data(liquidation)
            case ("cascade", side):  # forced orders of one side moving the price: a cascade to fade
                direction = -1 if side == Side.SELL else 1
                for _ in range(3):
                    self.price += 60 * direction
                    await self.market_data(
                        Liquidation(venue=VENUE, symbol=SYMBOL, side=side, price=self.price, quantity=Decimal(2))
                    )
                    await self.step(("trade", 0, 1, side == Side.SELL))
                    self.clock.advance_ms(200)
            case ("open_interest", level):
                await self.market_data(OpenInterest(venue=VENUE, symbol=SYMBOL, open_interest=Decimal(level)))
            case ("tick", valid):
                state = HotStateStatus.VALID if valid else HotStateStatus.STALE
                view = SymbolHotState(
                    symbol=SYMBOL,
                    hot_state=state,
                    age_ms=5,
                    last_update_id=1,
                    best_bid=self.price - Decimal("0.1"),
                    best_ask=self.price,
                )
                self.bus.symbols = SymbolsReply(symbols={SYMBOL: view})
                await self.service.tick()
            case ("fill",) if strategy.entry is not None:  # the entry's own fill
                entry = strategy.entry
                signed = entry.quantity if entry.side == Side.BUY else -entry.quantity
                await self.position(signed, strategy.entry_order)
            case ("fill",) | ("flat",):
                await self.position(Decimal(0), None)
            case ("other_order", sign):
                await self.position(Decimal("0.5") * sign, "someone-else")
            case ("link_down",):
                link = LinkStateChanged(
                    venue=VENUE,
                    link="market-ws",
                    previous=ConnectionState.CONNECTED,
                    current=ConnectionState.DISCONNECTED,
                    reason="socket closed",
                    symbols=[SYMBOL],
                )
                await self.service.handle(self.stamped(link))
            case ("book_resync",):
                await self.market_data(BookResyncStarted(venue=VENUE, symbol=SYMBOL, reason="gap"))
            case ("enable",):
                enable = EnableStrategy(strategy=self.runner.name, operator="ops", reason="test")
                await self.service.on_command(self.stamped(enable), Delivery("cmd", 1, 1, {}))
            case ("disable",):
                disable = DisableStrategy(strategy=self.runner.name, operator="ops", reason="test")
                await self.service.on_command(self.stamped(disable), Delivery("cmd", 1, 1, {}))

    def checkpoint(self) -> Checkpoint:
        state = self.runner.state
        snapshot = snap.capture(state.strategy, self.kind, state.md_seq, self.clock.now)
        facts = self.runner.facts
        assert facts is not None
        return Checkpoint(snap.encode_snapshot(snapshot), state.crash_record, list(self.positions.values()), len(facts))


IGNORED = {"config", "detection", "changes"}
"""Not state: the configuration, and the log buffer of event phase changes (drained by the runner's logs)."""


def plain(value: Any) -> Any:
    """Any state object as plain data, field by field (independent of what a snapshot keeps)."""
    match value:
        case dict():
            return {key: plain(item) for key, item in value.items()}
        case list() | tuple() | deque():
            return [plain(item) for item in value]
        case _ if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name not in IGNORED}
        case msgspec.Struct():
            return plain(msgspec.structs.asdict(value))
        case _ if hasattr(value, "__dict__") and not isinstance(value, Enum):
            return {key: plain(item) for key, item in vars(value).items() if key not in IGNORED}
        case _:
            return value


def picture(state: RunnerState) -> dict[str, Any]:
    """Everything the state holds: the strategy object (kind's memory included), crash history,
    positions per venue and the MARKET_DATA sequence."""
    return {
        "strategy": plain(state.strategy),
        "crash_record": plain(state.crash_record),
        "venue_positions": plain(state.venue_positions),
        "md_seq": state.md_seq,
    }


def replay(state: RunnerState, facts: list[Fact]) -> RunnerState:
    for fact in facts:
        try:
            apply(state, fact)
        except ZeroDivisionError:
            pass  # live, the same fact raised the same way; the crash after it in the log rebuilds
    return state


async def live(kind: str, actions: list[tuple[tuple[Any, ...], int]], snapshot_at: int) -> tuple[LiveRun, Checkpoint]:
    run = LiveRun(kind)
    await run.runner.start()
    checkpoint = run.checkpoint()
    for index, (action, pause_ms) in enumerate(actions):
        run.clock.advance_ms(pause_ms)
        await run.step(action)
        if index == snapshot_at:
            checkpoint = run.checkpoint()
    return run, checkpoint


# --------------------------------------------------------------------------- the property


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(sorted(CONFIGS)),
    actions=runs,
    snapshot_at=st.integers(-1, 100),
)
def test_strategy_state_when_log_replayed_from_scratch_or_snapshot_then_equals_live(
    kind: str, actions: list[tuple[tuple[Any, ...], int]], snapshot_at: int
) -> None:
    run, checkpoint = asyncio.run(live(kind, actions, snapshot_at))
    runner = run.runner
    facts = runner.facts
    assert facts is not None
    expected = picture(runner.state)
    instance = runner.instance

    # The log is what was published: every signal on the bus is in it, in order.
    signals = [message for _, message in run.bus.published if isinstance(message, SignalGenerated)]
    assert [fact.signal for fact in facts if isinstance(fact, SignalPublished)] == signals

    from_scratch = replay(RunnerState.fresh(instance, VENUE), facts)
    assert picture(from_scratch) == expected

    restarted = RunnerState.fresh(instance, VENUE)
    apply(restarted, SnapshotLoaded(snap.decode_snapshot(checkpoint.snapshot)))
    apply(restarted, CrashHistoryLoaded(checkpoint.crash_record))
    for position in checkpoint.positions:
        apply(restarted, PositionLoaded(position))
    assert picture(replay(restarted, facts[checkpoint.facts_so_far :])) == expected


def test_strategy_apply_when_a_run_trades_crashes_and_fails_then_replay_still_equals_live() -> None:
    # A fixed run through the whole cycle, so the property above is known to reach it.
    flush = [(("liquidation", -3, Side.SELL), 100), (("trade", -2, 2, True), 100)] * 3
    actions: list[tuple[tuple[Any, ...], int]] = [
        (("trade", 0, 1, False), 0),
        *flush,
        (("tick", True), 1500),
        (("fill",), 100),
        (("tick", True), 100),
        (("tick", True), 9000),
        (("flat",), 100),
        *[(("trade", 0, 13, True), 1000)] * 4,
        (("enable",), 100),
    ]
    run, checkpoint = asyncio.run(live("cascade_fade", actions, snapshot_at=8))
    published = [message for _, message in run.bus.published]
    assert any(isinstance(m, SignalGenerated) and not m.reduce_only for m in published)
    assert any(isinstance(m, SignalGenerated) and m.reduce_only for m in published)
    assert run.runner.state.crash_record.crashes == []  # the operator's enable after FAILED
    facts = run.runner.facts
    assert facts is not None
    expected = picture(run.runner.state)
    assert picture(replay(RunnerState.fresh(run.runner.instance, VENUE), facts)) == expected
    restarted = RunnerState.fresh(run.runner.instance, VENUE)
    apply(restarted, SnapshotLoaded(snap.decode_snapshot(checkpoint.snapshot)))
    apply(restarted, CrashHistoryLoaded(checkpoint.crash_record))
    for position in checkpoint.positions:
        apply(restarted, PositionLoaded(position))
    assert picture(replay(restarted, facts[checkpoint.facts_so_far :])) == expected

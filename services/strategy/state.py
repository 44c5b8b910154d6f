"""A strategy instance's state and the one `apply(state, fact)` that changes it, live and in replay.

`RunnerState` is everything a runner remembers about its instance: the strategy object (state
machine, engagement, the kind's market memory), the crash history, the position per venue and the
MARKET_DATA sequence it covers. A *fact* is something that happened to the instance: an input it
handled (market data, a position, a link change, a tick of its clock, an operator's command), a
decision it published (a signal), a crash, a step of its start. Every change of the state is
`apply(state, fact)`: the live handlers build the fact (reading the clock, the bus, the lease),
apply it, publish the intents it left in `state.intents`, then apply what they published; recovery
applies the same facts from the log. `apply` reads no clock, does no I/O and draws no randomness:
the same facts give the same state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

import msgspec

from libs.ids import client_order_id_for
from proto.kv import StrategyCrashesValue
from proto.messages import (
    BookResyncStarted,
    LinkStateChanged,
    Liquidation,
    OpenInterest,
    PositionChanged,
    SignalGenerated,
    Trade,
)

from . import snapshot as snap
from .config import InstanceConfig
from .domain import ENGAGED_STATES, Action, MarketView, St, Strategy, crash_fails, crashes_in_window

MARKET_TYPES = (Trade, Liquidation, OpenInterest, BookResyncStarted)
"""The MARKET_DATA messages a strategy follows (durable `strategy-<name>-md`)."""

Input = Trade | Liquidation | OpenInterest | BookResyncStarted | LinkStateChanged | PositionChanged


@dataclass
class RunnerState:
    """What a runner knows about its instance (owned by one runner; `apply` changes it in place).

    Attributes:
        instance: the instance's configuration (rebuilds the strategy after a crash).
        venue: the venue whose market data the strategy follows.
        order_venues: venues the desk's positions can be on (main, and a backup risk may route
            entries to, FM-N6).
        strategy: the strategy object: state machine, engagement and the kind's market memory.
        crash_record: the crash history as persisted in KV (FM-C2).
        venue_positions: the last position per (venue, symbol).
        md_seq: highest MARKET_DATA sequence reflected in the state.
        intents: what the last applied fact decided (transitions, signals), for the runner to publish.
    """

    instance: InstanceConfig
    venue: str
    order_venues: tuple[str, ...]
    strategy: Strategy
    crash_record: StrategyCrashesValue = field(default_factory=StrategyCrashesValue)
    venue_positions: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    md_seq: int = 0
    intents: list[Action] = field(default_factory=list)

    @classmethod
    def fresh(cls, instance: InstanceConfig, venue: str, order_venues: tuple[str, ...] = ()) -> RunnerState:
        """A state with a freshly built strategy (DISABLED, no memory)."""
        return cls(instance, venue, order_venues or (venue,), instance.build())


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class Received:
    """An input handled live at `at_ns` (for market data: its stamp, capped by the local clock)."""

    message: Input
    at_ns: int
    stream_seq: int | None = None
    """Its MARKET_DATA sequence when it came through the durable consumer."""


@dataclass(frozen=True)
class Sequenced:
    """A MARKET_DATA message this instance let pass (standby): only the sequence moves on."""

    stream_seq: int


@dataclass(frozen=True)
class Replayed:
    """A MARKET_DATA message of the recovery tail: market memory only, no transition and no signal
    (what the strategy decided about that data was decided, and persisted, before)."""

    message: object
    stream_seq: int


@dataclass(frozen=True)
class Ticked:
    """The runner's periodic evaluation at `now_ns`, with the state-builder's view it saw."""

    now_ns: int
    market: Mapping[str, MarketView]


@dataclass(frozen=True)
class Enabled:
    """Enabled (operator or start); `forgive_crashes` when an operator re-enables a FAILED strategy."""

    now_ns: int
    reason: str
    forgive_crashes: bool = False


@dataclass(frozen=True)
class Disabled:
    """Disabled (operator, HARD_SHUTDOWN, or a restart clearing its setups)."""

    now_ns: int
    reason: str


@dataclass(frozen=True)
class Failed:
    """FAILED at start: the persisted crash history is over the limit (FM-C2)."""

    now_ns: int
    reason: str


@dataclass(frozen=True)
class SignalPublished:
    """A signal is out: an entry's client order id tells its own fill from other orders'."""

    signal: SignalGenerated


@dataclass(frozen=True)
class Crashed:
    """The strategy's code raised (or its process died): rebuild it through DISABLED (FM-C2).

    Attributes:
        resume: back to SCANNING (None: unless it was DISABLED or FAILED).
        keep_market: keep the kind's market memory (a dead process's successor rebuilt it from
            the snapshot and the log); setups are cleared either way.
    """

    now_ns: int
    reason: str
    process_token: str
    resume: bool | None = None
    keep_market: bool = False


@dataclass(frozen=True)
class Reset:
    """Start over from a freshly built strategy (a lease taken over: KV is the truth now)."""


@dataclass(frozen=True)
class CrashHistoryLoaded:
    """The crash history read from KV at start."""

    record: StrategyCrashesValue


@dataclass(frozen=True)
class SnapshotLoaded:
    """A snapshot of the instance (recovery); `market_cleared_ns` set when the tail after it is
    unusable (data gap, FM-N1) and the market memory is dropped at that time."""

    snapshot: snap.StrategySnapshot
    market_cleared_ns: int | None = None


@dataclass(frozen=True)
class PositionLoaded:
    """A venue's last position read at start (no strategy code runs)."""

    position: PositionChanged


@dataclass(frozen=True)
class Resumed:
    """Start: the persisted state machine (KV) and the running marker of this process.

    Attributes:
        state: the persisted state (None: the very first start → DISABLED).
        symbol: the persisted engagement symbol.
        process_token: this process's running marker.
        snapshot: the snapshot whose engagement (entry, entry order, state time) carries on, when
            it agrees with KV (SPEC §8).
    """

    state: St | None
    symbol: str | None
    process_token: str
    snapshot: snap.StrategySnapshot | None = None


@dataclass(frozen=True)
class PositionRechecked:
    """After a restart from a snapshot: the engagement's position may have moved while down."""

    now_ns: int


@dataclass(frozen=True)
class Stopped:
    """A clean stop: the running marker is cleared, the next start is no crash."""


Fact = (
    Received
    | Sequenced
    | Replayed
    | Ticked
    | Enabled
    | Disabled
    | Failed
    | SignalPublished
    | Crashed
    | Reset
    | CrashHistoryLoaded
    | SnapshotLoaded
    | PositionLoaded
    | Resumed
    | PositionRechecked
    | Stopped
)


# --------------------------------------------------------------------------- apply


def apply(state: RunnerState, fact: Fact) -> RunnerState:
    """The state after `fact`: the only way a runner's state changes, live and in replay.

    The intents the fact decided are left in `state.intents` (replaced on every fact). A kind's
    code that raises leaves the exception to the caller: live that is a crash (FM-C2), in replay a
    skipped input.

    Returns:
        `state`, changed in place.
    """
    state.intents = []
    strategy = state.strategy
    match fact:
        case Received():
            if fact.stream_seq is not None:
                state.md_seq = max(state.md_seq, fact.stream_seq)
            state.intents = _receive(state, fact.message, fact.at_ns)
        case Sequenced():
            state.md_seq = max(state.md_seq, fact.stream_seq)
        case Replayed():
            state.md_seq = max(state.md_seq, fact.stream_seq)
            _replay(state, fact.message)
        case Ticked():
            state.intents = strategy.on_tick(fact.now_ns, fact.market)
        case Enabled():
            if fact.forgive_crashes:  # the operator takes responsibility: the count starts over
                state.crash_record = msgspec.structs.replace(state.crash_record, crashes=[])
            state.intents = strategy.enable(fact.now_ns, fact.reason)
        case Disabled():
            state.intents = strategy.disable(fact.now_ns, fact.reason)
        case Failed():
            state.intents = strategy.fail(fact.now_ns, fact.reason)
        case SignalPublished() if not fact.signal.reduce_only:
            strategy.entry_order = client_order_id_for(fact.signal.message_id)
        case Crashed():
            state.intents = _crash(state, fact)
        case Reset():
            state.strategy = state.instance.build()
        case CrashHistoryLoaded():
            state.crash_record = fact.record
        case SnapshotLoaded():
            snap.restore(strategy, fact.snapshot)
            if fact.market_cleared_ns is None:
                state.md_seq = fact.snapshot.md_seq  # the tail after it is replayed next
            else:
                strategy.clear_events(None, fact.market_cleared_ns)
        case PositionLoaded():
            strategy.positions[fact.position.symbol] = _net_position(state, fact.position)
        case Resumed():
            _resume(state, fact)
        case PositionRechecked() if strategy.symbol is not None:
            symbol = strategy.symbol
            state.intents = strategy.on_position(symbol, strategy.positions.get(symbol, Decimal(0)), fact.now_ns)
        case Stopped():
            state.crash_record = msgspec.structs.replace(state.crash_record, running=None)
        case _:
            pass
    return state


def _net_position(state: RunnerState, event: PositionChanged) -> Decimal:
    # The symbol's position over every venue, with this venue's changed (a symbol's position is on
    # one venue at a time, risk's routing sees to that; the sum is right either way).
    state.venue_positions[(event.venue, event.symbol)] = event.quantity
    return sum((qty for (_, symbol), qty in state.venue_positions.items() if symbol == event.symbol), Decimal(0))


def is_market_input(state: RunnerState, message: object) -> bool:
    """A MARKET_DATA message of this instance's venue (what the recovery tail counts as an input)."""
    return isinstance(message, MARKET_TYPES) and getattr(message, "venue", state.venue) == state.venue


def _receive(state: RunnerState, message: Input, now: int) -> list[Action]:
    strategy = state.strategy
    if strategy.state == St.FAILED:
        # A FAILED strategy runs none of its code; it only keeps the positions it will need when re-enabled.
        if isinstance(message, PositionChanged) and message.venue in state.order_venues:
            strategy.positions[message.symbol] = _net_position(state, message)
        return []
    match message:
        case Trade():
            return strategy.on_trade(message.symbol, now, message.price, message.quantity, message.buyer_is_maker)
        case Liquidation():
            return strategy.on_liquidation(message.symbol, now, message.side, message.price, message.quantity)
        case OpenInterest():
            return strategy.on_open_interest(message.symbol, now, message.open_interest)
        case PositionChanged() if message.venue in state.order_venues:
            net = _net_position(state, message)
            return strategy.on_position(message.symbol, net, now, message.caused_by_client_order_id)
        case LinkStateChanged() if message.venue == state.venue and message.previous != message.current:
            # Every change, a (re)connection of a restarted market-data included: data had a gap.
            reason = f"link {message.link} {message.current.value}: {message.reason}"[:300]
            return strategy.data_reset(list(message.symbols) or None, now, reason)
        case BookResyncStarted() if message.venue == state.venue:
            return strategy.data_reset([message.symbol], now, f"book resync {message.symbol}: {message.reason}"[:300])
        case _:
            return []


def _replay(state: RunnerState, message: object) -> None:
    if not is_market_input(state, message):
        return
    strategy = state.strategy
    match message:
        case Trade(ts_init_ns=at):
            strategy.on_trade(message.symbol, at, message.price, message.quantity, message.buyer_is_maker)
        case Liquidation(ts_init_ns=at):
            strategy.on_liquidation(message.symbol, at, message.side, message.price, message.quantity)
        case OpenInterest(ts_init_ns=at):
            strategy.on_open_interest(message.symbol, at, message.open_interest)
        case BookResyncStarted(ts_init_ns=at):
            strategy.clear_events({message.symbol}, at)


def crash_window(state: RunnerState, now: int) -> list[int]:
    """The crash times that count for FM-C2 once a crash at `now` is added."""
    return crashes_in_window([*state.crash_record.crashes, now], now)


def _crash(state: RunnerState, fact: Crashed) -> list[Action]:
    now, old = fact.now_ns, state.strategy
    window = crash_window(state, now)
    failed = crash_fails(len(window))
    surrendered = dict(old.surrendered)
    if old.symbol is not None and old.state in ENGAGED_STATES:
        surrendered[old.symbol] = now
    state.crash_record = StrategyCrashesValue(crashes=window, running=fact.process_token, surrendered=surrendered)
    try:
        fresh = state.instance.build(state=old.state)
    except Exception as exc:  # noqa: BLE001 - a class's own __init__ failing now: nothing to restart into
        old.surrendered = surrendered
        return old.fail(now, f"cannot be rebuilt after a crash: {type(exc).__name__}: {exc}"[:300])
    fresh.symbol = old.symbol
    fresh.positions = dict(old.positions)
    fresh.last_price = dict(old.last_price)
    fresh.surrendered = surrendered
    fresh.state_since_ns = old.state_since_ns
    if fact.keep_market:
        fresh.load_memory(*old.memory())
        fresh.load_market_state(old.market_state())
    state.strategy = fresh
    actions = fresh.disable(now, fact.reason)
    if failed:
        actions += fresh.fail(now, f"{len(window)} crashes in 10 min")
    elif fact.resume if fact.resume is not None else old.state not in (St.DISABLED, St.FAILED):
        actions += fresh.enable(now, "restarted after a crash")
    return actions


def _resume(state: RunnerState, fact: Resumed) -> None:
    strategy = state.strategy
    state.crash_record = msgspec.structs.replace(state.crash_record, running=fact.process_token)
    strategy.state = fact.state or St.DISABLED
    strategy.symbol = fact.symbol
    strategy.surrendered = dict(state.crash_record.surrendered)
    restored = fact.snapshot
    if restored is not None:
        engaged = fact.state in ENGAGED_STATES
        strategy.entry = restored.entry if engaged else None
        strategy.entry_order = restored.entry_order if engaged else None
        strategy.state_since_ns = restored.state_since_ns

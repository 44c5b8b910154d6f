"""A strategy instance's snapshot (SPEC §8): its state machine and what it observed of the market,
as of one MARKET_DATA sequence.

- the engagement: state, symbol, the entry (side, stop-loss, take-profit), when the state began,
  the last entry time (cooldown), positions it saw, last traded prices, surrendered symbols;
- the kind's market memory: for `cascade_fade` the live liquidation events (ACTIVE/DECAYING) with
  the tape they were detected from and the cascades already traded; for `trend` the moving
  averages; for `imbalance` the taker-flow windows.

The cascade tracker exports and rebuilds its own state (`LiquidationTracker.to_state` /
`load_state`); the kinds in `strategies.py` have no export of their own yet, so this module reads
and rebuilds their public fields here (a new field of a kind is added here too). `_Averages` is
still imported by its private name: `strategies.py` would need a public state type for it.
KV (`strategy.<name>`, `strategy.<name>.crashes`) stays the authority of the state machine.
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal

import msgspec

from libs.bus import Bus
from libs.logging import Logger
from libs.service_snapshots import SnapshotKeeper, StreamLog, StructCodec
from proto import subjects
from proto.enums import StrategyState

from .domain import Entry, Strategy
from .liquidations import LiquidationEvent, TapeState, TrackerState
from .strategies import CascadeFadeStrategy, ImbalanceStrategy, TradeWindow, TrendStrategy, _Averages


def snapshot_component(name: str) -> str:
    """Component name of an instance's snapshots (table `snapshots`)."""
    return f"strategy.{name}"


class CascadeState(msgspec.Struct, frozen=True, tag="cascade_fade"):
    events: dict[str, LiquidationEvent] = {}
    tapes: dict[str, TapeState] = {}
    traded_events: list[str] = []


class TrendState(msgspec.Struct, frozen=True, tag="trend"):
    averages: dict[str, _Averages] = {}


class WindowState(msgspec.Struct, frozen=True, kw_only=True):
    window_ns: int
    trades: list[tuple[int, bool, Decimal]] = []
    buy_volume: Decimal = Decimal(0)
    sell_volume: Decimal = Decimal(0)


class ImbalanceState(msgspec.Struct, frozen=True, tag="imbalance"):
    windows: dict[str, WindowState] = {}


KindState = CascadeState | TrendState | ImbalanceState


class StrategySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One instance's state covering MARKET_DATA up to `md_seq`."""

    name: str
    kind: str
    md_seq: int
    taken_ns: int
    state: StrategyState
    symbol: str | None = None
    entry: Entry | None = None
    entry_order: str | None = None
    state_since_ns: int = 0
    last_entry_ns: int | None = None
    positions: dict[str, Decimal] = {}
    last_price: dict[str, Decimal] = {}
    surrendered: dict[str, int] = {}
    market: KindState | None = None


CODEC = StructCodec(StrategySnapshot)
encode_snapshot = CODEC.encode
decode_snapshot = CODEC.decode


# --------------------------------------------------------------------------- kinds


def market_state(strategy: Strategy) -> KindState | None:
    """The kind's market memory (None for a kind without one)."""
    match strategy:
        case CascadeFadeStrategy():
            tracked = strategy.tracker.to_state()
            return CascadeState(events=tracked.events, tapes=tracked.tapes, traded_events=list(strategy.traded_events))
        case TrendStrategy():
            return TrendState(averages=dict(strategy.averages))
        case ImbalanceStrategy():
            windows = {
                symbol: WindowState(
                    window_ns=window.window_ns,
                    trades=list(window.trades),
                    buy_volume=window.buy_volume,
                    sell_volume=window.sell_volume,
                )
                for symbol, window in strategy.windows.items()
            }
            return ImbalanceState(windows=windows)
        case _:
            return None


def restore_market(strategy: Strategy, state: KindState | None) -> None:
    """Put a kind's market memory back (a state of another kind is ignored)."""
    match strategy, state:
        case CascadeFadeStrategy(), CascadeState():
            strategy.tracker.load_state(TrackerState(events=state.events, tapes=state.tapes))
            strategy.traded_events = deque(state.traded_events, maxlen=strategy.traded_events.maxlen)
        case TrendStrategy(), TrendState():
            strategy.averages = dict(state.averages)
        case ImbalanceStrategy(), ImbalanceState():
            strategy.windows = {
                symbol: TradeWindow(window.window_ns, deque(window.trades), window.buy_volume, window.sell_volume)
                for symbol, window in state.windows.items()
            }
        case _:
            pass


def capture(strategy: Strategy, kind: str, md_seq: int, now_ns: int) -> StrategySnapshot:
    """The instance's snapshot as of MARKET_DATA sequence `md_seq`."""
    return StrategySnapshot(
        name=strategy.name,
        kind=kind,
        md_seq=md_seq,
        taken_ns=now_ns,
        state=strategy.state,
        symbol=strategy.symbol,
        entry=strategy.entry,
        entry_order=strategy.entry_order,
        state_since_ns=strategy.state_since_ns,
        last_entry_ns=strategy.last_entry_ns,
        positions=dict(strategy.positions),
        last_price=dict(strategy.last_price),
        surrendered=dict(strategy.surrendered),
        market=market_state(strategy),
    )


def restore(strategy: Strategy, snapshot: StrategySnapshot) -> None:
    """Load a snapshot into a freshly built instance (the caller decides about the state machine)."""
    strategy.state = snapshot.state
    strategy.symbol = snapshot.symbol
    strategy.entry = snapshot.entry
    strategy.entry_order = snapshot.entry_order
    strategy.state_since_ns = snapshot.state_since_ns
    strategy.last_entry_ns = snapshot.last_entry_ns
    strategy.positions = dict(snapshot.positions)
    strategy.last_price = dict(snapshot.last_price)
    strategy.surrendered = dict(snapshot.surrendered)
    restore_market(strategy, snapshot.market)


# --------------------------------------------------------------------------- the MARKET_DATA log


def market_log(bus: Bus, snapshots: SnapshotKeeper[StrategySnapshot] | None) -> StreamLog[StrategySnapshot]:
    """What `recovery.recover` reads: the instance's snapshots and the MARKET_DATA stream."""
    return StreamLog(bus, snapshots, subjects.STREAM_MARKET_DATA.name)


def snapshot_keeper(dsn: str, name: str, log: Logger) -> SnapshotKeeper[StrategySnapshot]:
    """An instance's snapshots in Postgres, component `strategy.<name>`."""
    return CODEC.keeper(dsn, snapshot_component(name), log)

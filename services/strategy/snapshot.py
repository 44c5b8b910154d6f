"""A strategy instance's snapshot (SPEC §8): its state machine and what it observed of the market,
as of one MARKET_DATA sequence.

- the engagement: state, symbol, the entry (side, stop-loss, take-profit), when the state began,
  the last entry time (cooldown), positions it saw, last traded prices, surrendered symbols;
- the kind's market memory, as the kind exports it (`Strategy.market_state`, one of
  `strategies.KindState`): for `cascade_fade` the live liquidation events (ACTIVE/DECAYING) with
  the tape they were detected from and the cascades already traded; for `trend` the moving
  averages; for `imbalance` the taker-flow windows.

KV (`strategy.<name>`, `strategy.<name>.crashes`) stays the authority of the state machine.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from libs.bus import Bus
from libs.logging import Logger
from libs.service_snapshots import SnapshotKeeper, StreamLog, StructCodec
from proto import subjects
from proto.enums import StrategyState

from .domain import Entry, Strategy
from .strategies import KindState


def snapshot_component(name: str) -> str:
    """Component name of an instance's snapshots (table `snapshots`)."""
    return f"strategy.{name}"


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


def _kind_state(strategy: Strategy) -> KindState | None:
    state = strategy.market_state()
    if state is not None and not isinstance(state, KindState):
        # A kind whose state is not in `KindState` would write a snapshot no one can read back.
        raise TypeError(f"{type(state).__name__} of kind {strategy.kind!r} is not a registered KindState")
    return state


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
        market=_kind_state(strategy),
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
    strategy.load_market_state(snapshot.market)


# --------------------------------------------------------------------------- the MARKET_DATA log


def market_log(bus: Bus, snapshots: SnapshotKeeper[StrategySnapshot] | None) -> StreamLog[StrategySnapshot]:
    """What `recovery.recover` reads: the instance's snapshots and the MARKET_DATA stream."""
    return StreamLog(bus, snapshots, subjects.STREAM_MARKET_DATA.name)


def snapshot_keeper(dsn: str, name: str, log: Logger) -> SnapshotKeeper[StrategySnapshot]:
    """An instance's snapshots in Postgres, component `strategy.<name>`."""
    return CODEC.keeper(dsn, snapshot_component(name), log)

"""A strategy instance's snapshot (SPEC §8): its state machine and what it observed of the market,
as of one MARKET_DATA sequence.

- the engagement: state, symbol, the entry (side, stop-loss, take-profit), when the state began,
  the last entry time (cooldown), positions it saw, last traded prices, surrendered symbols;
- the kind's market memory, as the kind exports it (`Strategy.market_state`, one of
  `strategies.KindState`): for `cascade_fade` the live liquidation events (ACTIVE/DECAYING) with
  the tape they were detected from and the cascades already traded; for `trend` the moving
  averages; for `imbalance` the taker-flow windows; for a trader's own class (`OwnMarket`) the
  recent trades and forced orders it keeps (`Strategy.memory_trades`) and what its `market_state`
  returns when it names the type in `market_state_type` (else that part is rebuilt from the
  MARKET_DATA tail replayed after the snapshot).

KV (`strategy.<name>`, `strategy.<name>.crashes`) stays the authority of the state machine.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from libs.bus import Bus
from libs.logging import Logger
from libs.service_snapshots import SnapshotKeeper, StreamLog, StructCodec
from proto import subjects
from proto.enums import StrategyState

from .domain import Entry, LiquidationTick, Strategy, TradeTick
from .strategies import KINDS, KindState

BUILTIN_CLASSES = tuple(strategy_cls for strategy_cls, _ in KINDS.values())


def snapshot_component(name: str) -> str:
    """Component name of an instance's snapshots (table `snapshots`)."""
    return f"strategy.{name}"


class OwnMarket(msgspec.Struct, frozen=True, tag="own"):
    """A trader's own strategy's market memory: its recent trades and forced orders, and its
    `market_state` as plain data (decoded back as its `market_state_type`)."""

    recent_trades: dict[str, list[TradeTick]] = {}
    recent_liquidations: dict[str, list[LiquidationTick]] = {}
    state: Any = None


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
    market: KindState | OwnMarket | None = None


CODEC = StructCodec(StrategySnapshot)
encode_snapshot = CODEC.encode
decode_snapshot = CODEC.decode


def _kind_state(strategy: Strategy) -> KindState | OwnMarket | None:
    if not isinstance(strategy, BUILTIN_CLASSES):
        return _own_market(strategy)
    state = strategy.market_state()
    if state is not None and not isinstance(state, KindState):
        # A kind whose state is not in `KindState` would write a snapshot no one can read back.
        raise TypeError(f"{type(state).__name__} of kind {strategy.kind!r} is not a registered KindState")
    return state


def _own_market(strategy: Strategy) -> OwnMarket:
    trades, liquidations = strategy.memory()
    state_type, state = strategy.market_state_type, None
    if state_type is not None:
        try:
            own = strategy.market_state()
            state = msgspec.to_builtins(own) if isinstance(own, state_type) else None
        except Exception:  # noqa: BLE001 - user code: a snapshot without that part (rebuilt by the replay), never a runner crash
            state = None
    return OwnMarket(
        recent_trades={symbol: list(ticks) for symbol, ticks in trades.items()},
        recent_liquidations={symbol: list(ticks) for symbol, ticks in liquidations.items()},
        state=state,
    )


def _restore_market(strategy: Strategy, market: KindState | OwnMarket | None) -> None:
    if not isinstance(market, OwnMarket):
        if market is not None:
            strategy.load_market_state(market)
        return
    strategy.load_memory(market.recent_trades, market.recent_liquidations)
    if market.state is None or strategy.market_state_type is None:
        return
    try:
        strategy.load_market_state(msgspec.convert(market.state, strategy.market_state_type))
    except Exception:  # noqa: BLE001 - the class changed since the snapshot, or its code failed: empty, as after a data gap
        strategy.clear_events(None, strategy.state_since_ns)


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
    _restore_market(strategy, snapshot.market)


# --------------------------------------------------------------------------- the MARKET_DATA log


def market_log(bus: Bus, snapshots: SnapshotKeeper[StrategySnapshot] | None) -> StreamLog[StrategySnapshot]:
    """What `recovery.recover` reads: the instance's snapshots and the MARKET_DATA stream."""
    return StreamLog(bus, snapshots, subjects.STREAM_MARKET_DATA.name)


def snapshot_keeper(dsn: str, name: str, log: Logger) -> SnapshotKeeper[StrategySnapshot]:
    """An instance's snapshots in Postgres, component `strategy.<name>`."""
    return CODEC.keeper(dsn, snapshot_component(name), log)

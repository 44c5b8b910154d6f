"""The recordings a backtest replays, as one time-ordered list of the venue simulator's own market
events (`services.venue_sim.adapters.replay.ReplaySymbol`: the snapshot, the chained depth diffs,
trades, marks and forced orders it serves `bulwark up`). Played once, not looped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from libs import recordings
from services.venue_sim.adapters.replay import ReplaySymbol, SourceError
from services.venue_sim.domain.market_events import MarketEvent

REPLAY_KINDS = frozenset({"DepthSnapshot", "DepthUpdate", "Trade", "MarkPrice", "ForceOrder"})
"""What the simulator replays of a recording (book tickers are derived from the book, not read)."""


class ReplayError(ValueError):
    """The recordings cannot be backtested; the message says why."""


@dataclass(frozen=True)
class Replay:
    """Recordings ready to replay.

    Attributes:
        symbols: each replayed symbol's recording (rules, start book, marks or not).
        events: `(receive time ns, event)` of every symbol, in time order (ties keep file order).
        market: `usdm` or `spot`.
        records: records read from the files (the raw read count of the benchmark).
    """

    symbols: dict[str, ReplaySymbol]
    events: list[tuple[int, MarketEvent]]
    market: str
    records: int

    @property
    def start_ns(self) -> int:
        return self.events[0][0]

    @property
    def end_ns(self) -> int:
        return self.events[-1][0]


def load_replay(paths: Sequence[str | Path]) -> Replay:
    """Read recordings (several files of one symbol join in time order) into one replay.

    Raises:
        ReplayError: a file is missing or unreadable, malformed, mixes markets, or holds no
            symbol with a depth snapshot and chained diffs.
    """
    if not paths:
        raise ReplayError("no recording given")
    for path in paths:
        if not Path(path).is_file():
            raise ReplayError(f"recording {path} does not exist")
    try:
        records = recordings.read_recordings(paths, kinds=REPLAY_KINDS)
    except (recordings.RecordingError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise ReplayError(f"cannot read the recordings: {exc}") from exc
    symbols: dict[str, ReplaySymbol] = {}
    events: list[tuple[int, MarketEvent]] = []
    for symbol, symbol_records in sorted(recordings.split_by_symbol(records).items()):
        snapshot = next((r for r in symbol_records if isinstance(r, recordings.DepthSnapshot)), None)
        if snapshot is None:
            continue  # a symbol without a book cannot be traded (nor is it served by the simulator)
        try:
            replay = ReplaySymbol(symbol, symbol_records)
        except SourceError as exc:
            raise ReplayError(str(exc)) from exc
        symbols[symbol] = replay
        events.extend((snapshot.receive_ns + offset, event) for offset, event in replay.events)
    if not symbols:
        raise ReplayError(f"no replayable symbol (no depth snapshot) in {', '.join(str(p) for p in paths)}")
    try:
        market = recordings.single_market(replay.market for replay in symbols.values())
    except recordings.RecordingError as exc:
        raise ReplayError(str(exc)) from exc
    events.sort(key=lambda item: item[0])  # stable: a symbol's own order, symbols in name order at ties
    return Replay(symbols, events, market, len(records))

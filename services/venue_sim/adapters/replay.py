"""Replay of real recordings as an endless market: each symbol's snapshot, chained diffs, trades,
marks and forced orders, looped seamlessly (one diff joins each loop back to the start book).
A replay is spot when its depth events carry no `pu`."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from libs import recordings
from libs.recordings import SPOT, USDM
from services.venue_sim.domain.book import OrderBook
from services.venue_sim.domain.market_events import (
    DepthEvent,
    LiquidationEvent,
    MarketEvent,
    MarkEvent,
    Script,
    StartBook,
    TradeEvent,
    starting_open_interest,
)
from services.venue_sim.domain.rules import SymbolSpec, spec_for


class SourceError(ValueError):
    """A recording cannot be replayed (no snapshot, no chaining diffs...)."""


class ReplaySymbol:
    """The replayable part of one symbol's recording: snapshot, chained diffs, trades, marks."""

    def __init__(self, symbol: str, records: Sequence[recordings.Record]) -> None:
        self.symbol = symbol
        snapshot = next((r for r in records if isinstance(r, recordings.DepthSnapshot)), None)
        if snapshot is None:
            raise SourceError(f"{symbol}: the recording has no depth snapshot")
        self.start = StartBook(snapshot.last_update_id, snapshot.bids, snapshot.asks)
        self.market = next((r.market for r in records if isinstance(r, recordings.DepthUpdate)), USDM)
        # Spot's snapshot contains update L itself: its first applied event starts at L + 1.
        bridge_id = snapshot.last_update_id + 1 if self.market == SPOT else snapshot.last_update_id
        self.events: list[tuple[int, MarketEvent]] = []
        previous_u: int | None = None
        start_ns = snapshot.receive_ns
        trades = [r for r in records if isinstance(r, recordings.Trade) and r.receive_ns >= start_ns]
        closes = {
            id(trade): following is None
            or (following.trade_time_ms, following.price, following.buyer_is_maker)
            != (trade.trade_time_ms, trade.price, trade.buyer_is_maker)
            for trade, following in zip(trades, [*trades[1:], None], strict=False)
        }
        for record in records:
            if record.receive_ns < start_ns and not isinstance(record, recordings.DepthUpdate):
                continue
            offset = max(0, record.receive_ns - start_ns)
            if isinstance(record, recordings.DepthUpdate):
                if record.market != self.market:
                    raise SourceError(f"{symbol}: the recording mixes USD-M and spot depth events")
                if previous_u is None:
                    if record.final_update_id < bridge_id:
                        continue
                    if record.first_update_id > bridge_id:
                        raise SourceError(f"{symbol}: no diff bridges the snapshot")
                elif record.previous_final_update_id != previous_u:
                    raise SourceError(f"{symbol}: recording has a gap at u={record.final_update_id}")
                previous_u = record.final_update_id
                event: MarketEvent = DepthEvent(
                    symbol,
                    record.first_update_id,
                    record.final_update_id,
                    record.previous_final_update_id,
                    record.bids,
                    record.asks,
                    max(0, record.event_time_ms - record.transaction_time_ms),
                )
            elif isinstance(record, recordings.Trade):
                event = TradeEvent(
                    symbol,
                    record.trade_id,
                    record.price,
                    record.quantity,
                    record.buyer_is_maker,
                    record.kind,
                    closes.get(id(record), True),
                )
            elif isinstance(record, recordings.MarkPrice):
                event = MarkEvent(symbol, record.mark_price, record.index_price, record.funding_rate)
            elif isinstance(record, recordings.ForceOrder):
                event = LiquidationEvent(symbol, record.side, record.price, record.quantity)
            else:
                continue
            self.events.append((offset, event))
        depth = [e for _, e in self.events if isinstance(e, DepthEvent)]
        if not depth:
            raise SourceError(f"{symbol}: no depth diff after the snapshot")
        self.has_marks = any(isinstance(e, MarkEvent) for _, e in self.events)
        self.duration_ns = self.events[-1][0] + 100_000_000
        trade_ids = [e.trade_id for _, e in self.events if isinstance(e, TradeEvent)]
        self.trade_span = (max(trade_ids) - min(trade_ids) + 1) if trade_ids else 0
        levels = (*snapshot.bids, *snapshot.asks)
        self.spec = spec_for(
            symbol, [price for price, _ in levels], [qty for _, qty in levels if qty], market=self.market
        )

    def script(self, book: OrderBook) -> Script:
        """Endless replay: each loop is joined by one diff that restores the start book."""
        id_shift = 0
        trade_shift = 0
        time_shift = 0
        first_depth = next(e for _, e in self.events if isinstance(e, DepthEvent))
        while True:
            for offset, event in self.events:
                if isinstance(event, DepthEvent) and id_shift:
                    event = DepthEvent(
                        event.symbol,
                        event.first_update_id + id_shift,
                        event.final_update_id + id_shift,
                        event.previous_final_update_id + id_shift,
                        event.bids,
                        event.asks,
                        event.latency_ms,
                    )
                elif isinstance(event, TradeEvent) and trade_shift:
                    event = TradeEvent(
                        event.symbol,
                        event.trade_id + trade_shift,
                        event.price,
                        event.quantity,
                        event.buyer_is_maker,
                        event.kind,
                        event.closes_aggregate,
                    )
                yield offset + time_shift, event
            time_shift += self.duration_ns
            trade_shift += self.trade_span
            # Join: one diff from the live book back to the start book, chained on the last u.
            bids, asks = book.diff_to(self.start.bids, self.start.asks)
            join_u = book.last_update_id + 1
            yield (
                time_shift - 50_000_000,
                DepthEvent(self.symbol, join_u, join_u, book.last_update_id, tuple(bids), tuple(asks)),
            )
            id_shift = join_u - first_depth.previous_final_update_id


class ReplaySource:
    """Replays one or more recording files; files of one symbol are joined in time order."""

    def __init__(self, paths: Sequence[str | Path], symbols: Sequence[str] | None = None) -> None:
        records = recordings.read_recordings(
            paths, kinds={"DepthSnapshot", "DepthUpdate", "Trade", "MarkPrice", "ForceOrder"}
        )
        grouped = recordings.split_by_symbol(records)
        wanted = {s.upper() for s in symbols} if symbols else None
        self.replays: dict[str, ReplaySymbol] = {}
        for symbol, symbol_records in grouped.items():
            if wanted is not None and symbol not in wanted:
                continue
            if not any(isinstance(r, recordings.DepthSnapshot) for r in symbol_records):
                continue
            self.replays[symbol] = ReplaySymbol(symbol, symbol_records)
        if not self.replays:
            raise SourceError(f"no replayable symbol in {', '.join(str(p) for p in paths)}")
        self.symbols = sorted(self.replays)
        try:
            self.market = recordings.single_market(replay.market for replay in self.replays.values())
        except recordings.RecordingError as exc:
            raise SourceError(str(exc)) from exc

    def spec(self, symbol: str) -> SymbolSpec:
        """Trading rules of a symbol."""
        return self.replays[symbol].spec

    def start_book(self, symbol: str) -> StartBook:
        """The snapshot the replay starts from."""
        return self.replays[symbol].start

    def has_marks(self, symbol: str) -> bool:
        """Whether mark prices come from the recording (else the engine synthesises them)."""
        return self.replays[symbol].has_marks

    def open_interest(self, symbol: str) -> Decimal:
        """Starting open interest (recordings do not carry it)."""
        return starting_open_interest(symbol)

    def script(self, symbol: str, book: OrderBook) -> Script:
        """Endless event script of a symbol."""
        return self.replays[symbol].script(book)

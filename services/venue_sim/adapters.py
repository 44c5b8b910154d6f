"""Market sources: replay of real recordings (looping seamlessly) and a seeded synthetic market.

A source gives, per symbol, the trading rules, the starting book and an endless *script*: an
iterator of `(offset_ns, event)` in market time, and its `market` (`usdm` or `spot`: a replay is
spot when its depth events carry no `pu`). The engine applies each event to the true book
before it pulls the next one, so a script may look at the live book (the replay does, to build
the one diff that closes a loop).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

from libs import recordings
from services.venue_sim.domain.book import OrderBook
from services.venue_sim.domain.rules import SymbolSpec, spec_for

Level = tuple[Decimal, Decimal]


USDM = recordings.USDM
SPOT = recordings.SPOT


@dataclass(frozen=True, slots=True)
class DepthEvent:
    """A depth diff with Binance ids; `latency_ms` is the recorded E - T.

    Spot ids are consecutive: `previous_final_update_id` is then `first_update_id - 1`.
    """

    symbol: str
    first_update_id: int
    final_update_id: int
    previous_final_update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    latency_ms: int = 1


@dataclass(frozen=True, slots=True)
class TradeEvent:
    """A public trade."""

    symbol: str
    trade_id: int
    price: Decimal
    quantity: Decimal
    buyer_is_maker: bool
    kind: str = "MARKET"
    closes_aggregate: bool = True  # last trade of its aggTrade group (same time, price, side)


@dataclass(frozen=True, slots=True)
class MarkEvent:
    """A recorded mark price."""

    symbol: str
    mark_price: Decimal
    index_price: Decimal
    funding_rate: Decimal


@dataclass(frozen=True, slots=True)
class LiquidationEvent:
    """A forced order, and the open interest it removes."""

    symbol: str
    side: str
    price: Decimal
    quantity: Decimal


MarketEvent = DepthEvent | TradeEvent | MarkEvent | LiquidationEvent
Script = Iterator[tuple[int, MarketEvent]]


@dataclass(frozen=True, slots=True)
class StartBook:
    """The book a script starts from."""

    last_update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


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
        return _BASE_OPEN_INTEREST.get(symbol, Decimal(1_000_000))

    def script(self, symbol: str, book: OrderBook) -> Script:
        """Endless event script of a symbol."""
        return self.replays[symbol].script(book)


_BASE_PRICE = {"BTCUSDT": Decimal("60000"), "ETHUSDT": Decimal("3000"), "BNBUSDT": Decimal("550")}
_BASE_OPEN_INTEREST = {"BTCUSDT": Decimal("80000"), "ETHUSDT": Decimal("1500000")}


DEFAULT_CASCADE_PROBABILITY = 1 / 900
"""Synthetic markets: chance per 100 ms step that a liquidation cascade starts (about one in 90 s)."""


class SyntheticSource:
    """Seeded random-walk markets with a 60-level book, trades and liquidation cascades.

    Args:
        symbols: symbols to generate.
        seed: makes the market reproducible.
        levels: price levels per side (>= 50).
        cascade_probability: chance per 100 ms step that a liquidation cascade starts.
        regime_probability: chance per 100 ms step that the drift regime is drawn again.
        market: `usdm` or `spot`: which protocol the simulator speaks for this market.
    """

    STEP_NS = 100_000_000

    def __init__(
        self,
        symbols: Sequence[str],
        seed: int,
        levels: int = 60,
        cascade_probability: float = DEFAULT_CASCADE_PROBABILITY,
        regime_probability: float = 1 / 900,
        market: str = USDM,
    ) -> None:
        # Generated ids are consecutive (`U == previous u + 1`), so they chain under both markets' rules.
        self.market = market
        self.symbols = sorted({s.upper() for s in symbols})
        self.seed = seed
        self.levels = max(50, levels)
        self.cascade_probability = cascade_probability
        self.regime_probability = regime_probability
        self._specs = {s: spec_for(s, market=self.market) for s in self.symbols}
        self._starts = {s: self._initial_book(s) for s in self.symbols}
        self._pending_moves: dict[str, int] = {}

    def move(self, symbol: str, ticks: int) -> None:
        """Move the market of `symbol` by `ticks` on its next step (the `price_shift` fault).

        The step regenerates its whole ladder around the moved best bid and trades there, so
        book, trades and the mark derived from the mid all move together, and the walk goes on
        from the new level. The random draws are unchanged: the rest of the run stays seeded.
        """
        self._pending_moves[symbol] = self._pending_moves.get(symbol, 0) + ticks

    def _rng(self, symbol: str, purpose: str) -> random.Random:
        return random.Random(f"{self.seed}:{symbol}:{purpose}")

    def _quantity(self, rng: random.Random, spec: SymbolSpec, scale: Decimal) -> Decimal:
        raw = Decimal(str(round(rng.expovariate(1.0) * float(scale), 6))) + spec.step_size
        return (raw / spec.step_size).to_integral_value(rounding=ROUND_DOWN) * spec.step_size

    def _scale(self, symbol: str) -> Decimal:
        return Decimal(1) if symbol == "BTCUSDT" else Decimal(20) if symbol == "ETHUSDT" else Decimal(200)

    def _ladder(
        self, rng: random.Random, symbol: str, best_bid: Decimal, current: OrderBook | None
    ) -> tuple[list[Level], list[Level]]:
        spec = self._specs[symbol]
        tick = spec.tick_size
        bids: list[Level] = []
        asks: list[Level] = []
        for i in range(self.levels):
            for side, price, existing in (
                (bids, best_bid - tick * i, current.bids if current else {}),
                (asks, best_bid + tick * (i + 1), current.asks if current else {}),
            ):
                kept = existing.get(price)
                if kept is not None and rng.random() < 0.85:
                    side.append((price, kept))
                else:
                    side.append((price, self._quantity(rng, spec, self._scale(symbol))))
        return bids, asks

    def _initial_book(self, symbol: str) -> StartBook:
        spec = self._specs[symbol]
        rng = self._rng(symbol, "start")
        base = _BASE_PRICE.get(symbol, Decimal(100))
        best_bid = (base / spec.tick_size).to_integral_value() * spec.tick_size
        bids, asks = self._ladder(rng, symbol, best_bid, None)
        return StartBook(1_000_000_000, tuple(bids), tuple(asks))

    def spec(self, symbol: str) -> SymbolSpec:
        """Trading rules of a symbol."""
        return self._specs[symbol]

    def start_book(self, symbol: str) -> StartBook:
        """The generated starting book."""
        return self._starts[symbol]

    def has_marks(self, symbol: str) -> bool:
        """Synthetic markets let the engine derive the mark from the mid."""
        return False

    def open_interest(self, symbol: str) -> Decimal:
        """Starting open interest."""
        return _BASE_OPEN_INTEREST.get(symbol, Decimal(1_000_000))

    def script(self, symbol: str, book: OrderBook) -> Script:
        """Endless market in 100 ms steps: a random walk with drifting regimes and liquidation cascades.

        A cascade is 5-15 steps of forced orders on one side (each also printing as a taker trade)
        that displace the price by 0.2 % per step and remove open interest (the engine subtracts
        each forced order's quantity); once exhausted, 20-80 % of the move retraces over 3-8 s.
        Regimes (a drift of about 0.1 %/min up, down or none) change at random, so trends exist.
        Everything depends only on the seed and the symbol.
        """
        rng = self._rng(symbol, "walk")
        spec = self._specs[symbol]
        tick = spec.tick_size
        trade_id = 1_000_000
        cascade_steps = 0
        cascade_direction = -1
        cascade_ticks = 0
        rebound_steps = 0
        rebound_left = 0
        drift = 0
        step = 0
        while True:
            step += 1
            offset = step * self.STEP_NS
            best = book.best_bid()
            best_bid = best[0] if best else self._starts[symbol].bids[0][0]
            if rng.random() < self.regime_probability:
                drift_ticks = max(1, int(best_bid * Decimal("0.000002") / tick))
                drift = rng.choice((-drift_ticks, 0, 0, drift_ticks))
            move = round(rng.gauss(0, 2)) + drift
            if cascade_steps == 0 and rebound_steps == 0 and rng.random() < self.cascade_probability:
                cascade_steps = rng.randint(5, 15)
                cascade_direction = rng.choice((-1, 1))
                cascade_ticks = 0
            if cascade_steps > 0:
                cascade_steps -= 1
                displacement = max(1, int(best_bid * Decimal("0.002") / tick))
                move = cascade_direction * displacement
                cascade_ticks += displacement
                side = "SELL" if cascade_direction < 0 else "BUY"  # longs (SELL) or shorts (BUY) forced out
                for _ in range(rng.randint(1, 3)):
                    quantity = self._quantity(rng, spec, self._scale(symbol) * 2)
                    yield offset, LiquidationEvent(symbol, side, best_bid, quantity)
                    trade_id += 1
                    yield offset, TradeEvent(symbol, trade_id, best_bid, quantity, side == "SELL")
                if cascade_steps == 0:
                    rebound_steps = rng.randint(30, 80)
                    rebound_left = int(cascade_ticks * rng.uniform(0.2, 0.8))
            elif rebound_steps > 0:
                share = rebound_left // rebound_steps
                rebound_left -= share
                rebound_steps -= 1
                move = -cascade_direction * share + round(rng.gauss(0, 1))
            move += self._pending_moves.pop(symbol, 0)
            new_best_bid = max(tick * 10, best_bid + tick * move)
            bids, asks = self._ladder(rng, symbol, new_best_bid, book)
            changes_bids, changes_asks = book.diff_to(bids, asks)
            first = book.last_update_id + 1
            final = first + rng.randint(0, 20)
            yield (
                offset,
                DepthEvent(symbol, first, final, book.last_update_id, tuple(changes_bids), tuple(changes_asks), 1),
            )
            for _ in range(rng.randint(0, 3)):
                buyer_is_maker = rng.random() < 0.5
                price = new_best_bid if buyer_is_maker else new_best_bid + tick
                trade_id += 1
                yield (
                    offset,
                    TradeEvent(
                        symbol, trade_id, price, self._quantity(rng, spec, self._scale(symbol) / 10), buyer_is_maker
                    ),
                )


MarketSource = ReplaySource | SyntheticSource

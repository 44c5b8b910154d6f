"""The simulated market as clients see it: per-symbol state beyond the book (last trade, marks,
funding, open interest, recent trades) and the stream frames each market event produces.

Frames follow the market being simulated: USD-M (`pu` on depth, `T` times, mark price and
liquidation streams) or spot (no `pu`: ids are consecutive; no `T` on depth; `M` on trades; no
mark price, funding or liquidation streams).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from libs.clock import Clock
from libs.recordings import SPOT
from services.venue_sim.domain import Exchange, OrderBook, fmt
from services.venue_sim.domain.klines import KlineRecorder, kline_frame
from services.venue_sim.domain.market_events import DepthEvent, LiquidationEvent, MarketEvent, MarkEvent, TradeEvent
from services.venue_sim.streams import StreamHub

FUNDING_INTERVAL_MS = 8 * 3600 * 1000
DEFAULT_FUNDING_RATE = Decimal("0.00010000")
AGG_HISTORY = 1000


@dataclass
class SymbolMarket:
    """Per-symbol market state beyond the book."""

    symbol: str
    open_interest: Decimal
    last_price: Decimal | None = None
    last_trade_id: int = 0
    mark_price: Decimal | None = None
    index_price: Decimal | None = None
    funding_rate: Decimal = DEFAULT_FUNDING_RATE
    agg_id: int = 1_000_000
    agg_pending: list[TradeEvent] = field(default_factory=list)
    # Recent aggregate trades in REST form (`GET /fapi/v1/aggTrades`), for clients backfilling a gap.
    agg_history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=AGG_HISTORY))
    # Recent plain trades in REST form (spot `GET /api/v3/historicalTrades`), for backfilling a `@trade` gap.
    trade_history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=AGG_HISTORY))
    last_top: tuple[Any, Any] | None = None
    mark_count: int = 0
    # Aggregation windows of the 100 ms and 250 ms depth streams: [U, pu, u, bids, asks] or None.
    windows: dict[str, list[Any] | None] = field(default_factory=dict)


class MarketFeed:
    """Applies market events to the true books and the exchange, and publishes their frames."""

    def __init__(
        self,
        books: dict[str, OrderBook],
        exchange: Exchange,
        hub: StreamHub,
        clock: Clock,
        market: str,
        open_interest: Mapping[str, Decimal],
    ) -> None:
        self.books = books
        self.exchange = exchange
        self.hub = hub
        self.clock = clock
        self.market = market
        self.spot = market == SPOT
        self.markets = {s: SymbolMarket(s, open_interest[s]) for s in books}
        self.klines = KlineRecorder()
        self._kline_open: dict[str, int] = {}  # kline stream -> open time of the candle last pushed

    def now_ms(self) -> int:
        """Wall clock in ms."""
        return self.clock() // 1_000_000

    def publish(self, stream: str, symbol: str, channel: str, data: dict[str, Any]) -> None:
        """Send one stream message to its subscribers (through the frame faults)."""
        self.hub.publish(stream, symbol, channel, data)

    def apply(self, event: MarketEvent) -> None:
        """Apply one market event: book, exchange, streams."""
        match event:
            case DepthEvent():
                self._on_depth(event)
            case TradeEvent():
                self.on_trade(event)
            case MarkEvent():
                market = self.markets[event.symbol]
                market.mark_price, market.index_price = event.mark_price, event.index_price
                market.funding_rate = event.funding_rate
                self.publish_mark(event.symbol)
            case LiquidationEvent():
                self._on_liquidation(event)

    def _on_depth(self, event: DepthEvent) -> None:
        book = self.books[event.symbol]
        book.apply(event.bids, event.asks, event.final_update_id)
        self.exchange.on_book_update(event.symbol)
        market = self.markets[event.symbol]
        lower = event.symbol.lower()
        now = self.now_ms()
        bids = [[str(p), str(q)] for p, q in event.bids]
        asks = [[str(p), str(q)] for p, q in event.asks]
        if not self.spot:  # spot has no real-time (@0ms) depth stream
            self.publish(
                f"{lower}@depth@0ms",
                event.symbol,
                "depth",
                {
                    "e": "depthUpdate",
                    "E": now,
                    "T": now - event.latency_ms,
                    "s": event.symbol,
                    "U": event.first_update_id,
                    "u": event.final_update_id,
                    "pu": event.previous_final_update_id,
                    "b": bids,
                    "a": asks,
                },
            )
        for window in ("100ms", "250ms"):
            pending = market.windows.get(window)
            if pending is None:
                market.windows[window] = [
                    event.first_update_id,
                    event.previous_final_update_id,
                    event.final_update_id,
                    {p: q for p, q in bids},
                    {p: q for p, q in asks},
                ]
            else:
                pending[2] = event.final_update_id
                pending[3].update({p: q for p, q in bids})
                pending[4].update({p: q for p, q in asks})
        top = (book.best_bid(), book.best_ask())
        if top != market.last_top and top[0] and top[1]:
            market.last_top = top
            ticker: dict[str, Any] = {
                "u": event.final_update_id,
                "s": event.symbol,
                "b": str(top[0][0]),
                "B": str(top[0][1]),
                "a": str(top[1][0]),
                "A": str(top[1][1]),
            }
            if not self.spot:  # spot's bookTicker carries no event type or times
                ticker = {"e": "bookTicker", **ticker, "T": now, "E": now}
            self.publish(f"{lower}@bookTicker", event.symbol, "bookTicker", ticker)

    def flush_windows(self, window: str) -> None:
        stream_suffix = "depth@100ms" if window == "100ms" else "depth"
        now = self.now_ms()
        for symbol, market in self.markets.items():
            pending = market.windows.get(window)
            if pending is None:
                continue
            market.windows[window] = None
            first, previous, final, bids, asks = pending
            data: dict[str, Any] = {"e": "depthUpdate", "E": now}
            if not self.spot:
                data["T"] = now - 1
            data.update(s=symbol, U=first, u=final)
            if not self.spot:  # spot ids are consecutive: no `pu`
                data["pu"] = previous
            data["b"] = sorted(([p, q] for p, q in bids.items()), key=lambda lv: Decimal(lv[0]), reverse=True)
            data["a"] = sorted(([p, q] for p, q in asks.items()), key=lambda lv: Decimal(lv[0]))
            self.publish(f"{symbol.lower()}@{stream_suffix}", symbol, "depth", data)

    def publish_klines(self) -> None:
        """Push the running candle of every subscribed `<symbol>@kline_<interval>` stream; when an
        interval has ended, its final candle (`x` true) first."""
        now = self.now_ms()
        for stream in [s for s in self.hub.subscribers if "@kline_" in s]:
            lower, interval = stream.split("@kline_", 1)
            symbol = lower.upper()
            if symbol not in self.markets:
                continue
            rows = self.klines.klines(symbol, interval, now, None, None, 2)
            if not rows:
                continue
            published = self._kline_open.get(stream)
            if published is not None and published != rows[-1][0] and len(rows) == 2:
                self.publish(stream, symbol, "kline", kline_frame(symbol, interval, rows[0], now, closed=True))
            self._kline_open[stream] = rows[-1][0]
            self.publish(stream, symbol, "kline", kline_frame(symbol, interval, rows[-1], now, closed=False))

    def on_trade(self, event: TradeEvent) -> None:
        market = self.markets[event.symbol]
        market.last_price = event.price
        market.last_trade_id = max(market.last_trade_id, event.trade_id)
        now = self.now_ms()
        lower = event.symbol.lower()
        trade: dict[str, Any] = {
            "e": "trade",
            "E": now,
            "T": now,
            "s": event.symbol,
            "t": event.trade_id,
            "p": str(event.price),
            "q": str(event.quantity),
        }
        if self.spot:
            trade.update(m=event.buyer_is_maker, M=True)
            market.trade_history.append(
                {
                    "id": event.trade_id,
                    "price": str(event.price),
                    "qty": str(event.quantity),
                    "quoteQty": fmt(event.price * event.quantity),
                    "time": now,
                    "isBuyerMaker": event.buyer_is_maker,
                    "isBestMatch": True,
                }
            )
        else:
            trade.update(X=event.kind, m=event.buyer_is_maker)
        self.publish(f"{lower}@trade", event.symbol, "trade", trade)
        if event.kind == "INSURANCE_FUND" and not self.spot:
            self._on_liquidation(
                LiquidationEvent(event.symbol, "SELL" if event.buyer_is_maker else "BUY", event.price, event.quantity)
            )
        if event.kind not in ("MARKET", "INSURANCE_FUND"):
            return
        self.klines.on_trade(event.symbol, now, event.price, event.quantity, not event.buyer_is_maker)
        market.agg_pending.append(event)
        if event.closes_aggregate:
            trades, market.agg_pending = market.agg_pending, []
            market.agg_id += 1
            quantity = sum((t.quantity for t in trades), Decimal(0))
            row = {
                "a": market.agg_id,
                "p": str(event.price),
                "q": fmt(quantity),
                "f": trades[0].trade_id,
                "l": trades[-1].trade_id,
                "T": now,
                "m": event.buyer_is_maker,
            }
            if self.spot:
                row["M"] = True
            market.agg_history.append(row)
            self.publish(
                f"{lower}@aggTrade", event.symbol, "aggTrade", {"e": "aggTrade", "E": now, "s": event.symbol, **row}
            )

    def _on_liquidation(self, event: LiquidationEvent) -> None:
        if self.spot:
            return  # no forced orders (nor open interest) on spot
        market = self.markets[event.symbol]
        market.open_interest = max(Decimal(0), market.open_interest - event.quantity)
        now = self.now_ms()
        self.publish(
            f"{event.symbol.lower()}@forceOrder",
            event.symbol,
            "forceOrder",
            {
                "e": "forceOrder",
                "E": now,
                "o": {
                    "s": event.symbol,
                    "S": event.side,
                    "o": "LIMIT",
                    "f": "IOC",
                    "q": fmt(event.quantity),
                    "p": fmt(event.price),
                    "ap": fmt(event.price),
                    "X": "FILLED",
                    "l": fmt(event.quantity),
                    "z": fmt(event.quantity),
                    "T": now,
                },
            },
        )

    def next_funding_ms(self) -> int:
        """Next 8-hour funding boundary."""
        now = self.now_ms()
        return (now // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS

    def mark_of(self, symbol: str) -> Decimal:
        """Current mark price (recorded, else derived from the mid)."""
        market = self.markets[symbol]
        if market.mark_price is not None:
            return market.mark_price
        mid = self.books[symbol].mid()
        return mid if mid is not None else Decimal(0)

    def publish_mark(self, symbol: str, mark: Decimal | None = None) -> None:
        market = self.markets[symbol]
        mark = mark if mark is not None else self.mark_of(symbol)
        self.exchange.on_mark_price(symbol, mark)
        if self.spot:
            return  # spot has no mark price stream; the exchange still values positions on it
        index = market.index_price if market.index_price is not None else mark
        data = {
            "e": "markPriceUpdate",
            "E": self.now_ms(),
            "s": symbol,
            "p": fmt(mark, 8),
            "P": fmt(mark, 8),
            "i": fmt(index, 8),
            "r": fmt(market.funding_rate, 8),
            "T": self.next_funding_ms(),
        }
        lower = symbol.lower()
        self.publish(f"{lower}@markPrice@1s", symbol, "markPrice", data)
        market.mark_count += 1
        if market.mark_count % 3 == 0:
            self.publish(f"{lower}@markPrice", symbol, "markPrice", data)

"""The running market: drives source scripts in (scaled) time, keeps the true books, publishes streams.

Frames follow the market being simulated: USD-M (`pu` on depth, `T` times, mark price and
liquidation streams) or spot (no `pu`: ids are consecutive; no `T` on depth; `M` on trades; no
mark price, funding or liquidation streams).

Wiring only: the book, fill model and fault decisions live in `domain`; this module owns the
asyncio tasks and the WebSocket subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
from aiohttp import web

from services.venue_sim.adapters import (
    SPOT,
    USDM,
    DepthEvent,
    LiquidationEvent,
    MarketSource,
    MarkEvent,
    SyntheticSource,
    TradeEvent,
)
from services.venue_sim.domain import Exchange, FaultScheduler, MarketClock, OrderBook, fmt
from services.venue_sim.domain.faults import Frame, PriceShift, corrupt_text, shift_progress, shift_ticks

_encoder = msgspec.json.Encoder()
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


class Subscriber:
    """One WebSocket client: its streams, and a sender task that applies latency."""

    def __init__(self, ws: web.WebSocketResponse, combined: bool, listen_key: str | None = None) -> None:
        self.ws = ws
        self.combined = combined
        self.listen_key = listen_key
        self.streams: set[str] = set()
        self.queue: asyncio.Queue[tuple[float, str]] = asyncio.Queue(maxsize=20_000)
        self.closed = False

    def symbols(self) -> set[str]:
        """Upper-case symbols this client listens to."""
        return {stream.split("@", 1)[0].upper() for stream in self.streams}

    def enqueue(self, due: float, text: str) -> None:
        """Queue a frame; a client that cannot keep up is disconnected, as Binance does."""
        if self.closed:
            return
        try:
            self.queue.put_nowait((due, text))
        except asyncio.QueueFull:
            self.closed = True
            asyncio.get_running_loop().create_task(self.ws.close(code=1008, message=b"slow consumer"))

    async def run_sender(self) -> None:
        """Send queued frames, each not before its due time."""
        loop = asyncio.get_running_loop()
        while not self.closed:
            due, text = await self.queue.get()
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.ws.closed:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return


class MarketEngine:
    """Runs the market: scripts → true books → exchange → stream subscribers, under faults."""

    def __init__(
        self,
        source: MarketSource,
        exchange: Exchange,
        books: dict[str, OrderBook],
        faults: FaultScheduler,
        market_clock: MarketClock,
        clock: Callable[[], int],
        speed: float,
        log: Any,
        ping_interval_s: float = 20.0,
        market: str = USDM,
    ) -> None:
        self.source = source
        self.market = market
        self.spot = market == SPOT
        self.exchange = exchange
        self.books = books
        self.faults = faults
        self.market_clock = market_clock
        self.clock = clock
        self.speed = speed
        self.log = log
        self.ping_interval_s = ping_interval_s
        self.markets = {s: SymbolMarket(s, source.open_interest(s)) for s in books}
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.connections: set[Subscriber] = set()
        self.user_connections: set[Subscriber] = set()
        self.listen_keys: dict[str, int] = {}
        self.messages_published = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._shifts: dict[str, PriceShift] = {}

    @property
    def can_move_prices(self) -> bool:
        """Whether the `price_shift` fault works here: only a synthetic market can be moved (a
        replay's recorded diffs, trades and marks carry absolute prices)."""
        return isinstance(self.source, SyntheticSource)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the symbol scripts and the periodic tasks."""
        for symbol in self.books:
            self._tasks.append(asyncio.create_task(self._run_script(symbol), name=f"script-{symbol}"))
        self._tasks.append(asyncio.create_task(self._ticker(), name="ticker"))
        self._tasks.append(asyncio.create_task(self._marks(), name="marks"))
        self._tasks.append(asyncio.create_task(self._pinger(), name="pinger"))

    async def stop(self) -> None:
        """Cancel the tasks and close every WebSocket."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for subscriber in list(self.connections):
            await subscriber.ws.close(code=1001, message=b"server shutdown")

    def now_ms(self) -> int:
        """Wall clock in ms."""
        return self.clock() // 1_000_000

    # ----------------------------------------------------------------- market loop
    async def _run_script(self, symbol: str) -> None:
        book = self.books[symbol]
        script = self.source.script(symbol, book)
        counter = 0
        try:
            for offset_ns, event in script:
                if self.speed > 0:
                    target = offset_ns / self.speed
                    while True:
                        remaining = target - self.market_clock.elapsed_ns()
                        if remaining <= 0 and not self.market_clock.paused:
                            break
                        await asyncio.sleep(0.05 if self.market_clock.paused else min(0.05, remaining / 1e9))
                else:
                    while self.market_clock.paused:  # noqa: ASYNC110 - pause is polled, like the timed wait
                        await asyncio.sleep(0.05)
                    counter += 1
                    # Max speed: yield to the loop between events so clients and REST stay served.
                    await asyncio.sleep(0.001 if counter % 20 == 0 else 0)
                self.handle(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.error("market_script_failed", symbol=symbol, error=repr(exc))
            raise

    def handle(self, event: DepthEvent | TradeEvent | MarkEvent | LiquidationEvent) -> None:
        """Apply one market event: book, exchange, streams."""
        match event:
            case DepthEvent():
                self._on_depth(event)
            case TradeEvent():
                self._on_trade(event)
            case MarkEvent():
                market = self.markets[event.symbol]
                market.mark_price, market.index_price = event.mark_price, event.index_price
                market.funding_rate = event.funding_rate
                self._publish_mark(event.symbol)
            case LiquidationEvent():
                self._on_liquidation(event)
        self.flush_user_events()

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

    def _flush_windows(self, window: str) -> None:
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

    def _on_trade(self, event: TradeEvent) -> None:
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

    def _publish_mark(self, symbol: str, mark: Decimal | None = None) -> None:
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

    async def _marks(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.market_clock.paused:
                continue
            for symbol in self.books:
                if not self.source.has_marks(symbol):
                    self.markets[symbol].mark_price = None
                    self._publish_mark(symbol)
            spike = self.faults.take("price_spike") if self.faults.faults else None
            if spike is not None:
                self._price_spike(spike)
            self.flush_user_events()

    def _price_spike(self, fault: Any) -> None:
        symbols = [fault.symbol] if fault.symbol in self.books else list(self.books)
        direction = fault.params["direction"]
        if direction == "random":
            direction = fault.rng.choice(("up", "down"))
        factor = Decimal(1) + Decimal(str(fault.params["pct"])) / 100 * (1 if direction == "up" else -1)
        for symbol in symbols:
            spiked = self.mark_of(symbol) * factor
            spiked = spiked.quantize(self.exchange.specs[symbol].tick_size)
            self.log.warning("fault_price_spike", symbol=symbol, price=str(spiked), fault=fault.id)
            # Spot clients read `@trade`, whose ids must move on for the spike to be a new trade.
            market = self.markets[symbol]
            trade_id = market.last_trade_id + 1 if self.spot else 0
            last_price = market.last_price
            self._on_trade(
                TradeEvent(symbol, trade_id, spiked, self.exchange.specs[symbol].step_size, direction == "down")
            )
            # A bad print on the stream only: REST (`ticker/price`, spot's second source) keeps the true price.
            market.last_price = last_price
            self._publish_mark(symbol, spiked)

    def apply_price_shifts(self) -> None:
        """Advance the active `price_shift` fault: hand the ticks now due to the market source."""
        fault = self.faults.active("price_shift") if self.faults.faults else None
        if fault is None or not isinstance(self.source, SyntheticSource):
            return
        shift = self._shifts.get(fault.id)
        if shift is None:
            direction = fault.params["direction"]
            if direction == "random":
                direction = fault.rng.choice(("up", "down"))
            # A symbol this market does not trade moves nothing (not every symbol, unlike price_spike).
            symbols = [s for s in self.books if fault.symbol is None or s == fault.symbol]
            pct = Decimal(fault.params["pct"])
            totals = {
                symbol: shift_ticks(self.mark_of(symbol), pct, direction == "up", self.exchange.specs[symbol].tick_size)
                for symbol in symbols
            }
            shift = self._shifts[fault.id] = PriceShift(totals)
            self.log.warning(
                "fault_price_shift_started", fault=fault.id, direction=direction, pct=str(pct), ticks=totals
            )
        if shift.done:
            return  # handed over already; the fault lives on only while its `duration_s` runs
        for symbol, ticks in shift.due(shift_progress(fault, self.clock())).items():
            self.source.move(symbol, ticks)
        if shift.done:
            fault.used += 1  # one shift per fault: it expires now that the whole move is handed over
            self.log.warning("fault_price_shift_done", fault=fault.id, ticks=shift.applied_ticks)

    async def _ticker(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(0.1)
            tick += 1
            self._flush_windows("100ms")
            if tick % 5 in (0, 2):  # every 250 ms on average (250 = 2.5 ticks)
                self._flush_windows("250ms")
            self.exchange.check_countdowns()
            await self.check_connection_faults()
            self.apply_price_shifts()
            self.flush_user_events()

    async def _pinger(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            for subscriber in list(self.connections):
                if subscriber.ws.closed or self.is_stalled(subscriber):
                    continue
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await subscriber.ws.ping()

    # ----------------------------------------------------------------- faults on connections
    def is_stalled(self, subscriber: Subscriber) -> bool:
        """ws_stall applies to this client (global, or one of its symbols)."""
        if not self.faults.faults:
            return False
        fault = self.faults.active("ws_stall")
        if fault is None:
            return False
        return fault.symbol is None or fault.symbol in subscriber.symbols()

    async def check_connection_faults(self) -> None:
        """Close connections for active ws_close / outage faults."""
        if not self.faults.faults:
            return
        for kind in ("ws_close", "outage"):
            fault = self.faults.active(kind)
            if fault is None:
                continue
            victims = [s for s in self.connections if fault.symbol is None or fault.symbol in s.symbols()]
            if kind == "ws_close":
                if not victims and fault.count is not None:
                    continue
                self.faults.take(kind)
            for subscriber in victims:
                await self.close_subscriber(
                    subscriber, fault.params.get("code", 1001), fault.params.get("abrupt", False)
                )
            if victims:
                self.log.warning("fault_ws_closed", kind=kind, fault=fault.id, connections=len(victims))

    async def close_subscriber(self, subscriber: Subscriber, code: int, abrupt: bool) -> None:
        """Close one client, with a close frame or by dropping the TCP connection."""
        subscriber.closed = True
        self.connections.discard(subscriber)
        if abrupt:
            transport = subscriber.ws._req.transport if subscriber.ws._req is not None else None
            if transport is not None:
                transport.abort()
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await subscriber.ws.close(code=code, message=b"closed by fault injection")

    # ----------------------------------------------------------------- publishing
    def subscribe(self, subscriber: Subscriber, streams: list[str]) -> None:
        """Add streams to a client."""
        for stream in streams:
            subscriber.streams.add(stream)
            self.subscribers.setdefault(stream, set()).add(subscriber)

    def unsubscribe(self, subscriber: Subscriber, streams: list[str] | None = None) -> None:
        """Remove streams (all when None) from a client."""
        for stream in list(subscriber.streams if streams is None else streams):
            subscriber.streams.discard(stream)
            members = self.subscribers.get(stream)
            if members is not None:
                members.discard(subscriber)
                if not members:
                    del self.subscribers[stream]

    def _latency_s(self, symbol: str | None) -> float:
        fault = self.faults.active("latency", symbol) if self.faults.faults else None
        return fault.params["ms"] / 1000 if fault is not None else 0.0

    def publish(self, stream: str, symbol: str, channel: str, data: dict[str, Any]) -> None:
        """Send one stream message to its subscribers, through the frame faults."""
        members = self.subscribers.get(stream)
        if not members:
            return
        self.messages_published += 1
        if self.faults.faults:
            self.faults.on_message(symbol)
        frames = self.faults.transform(stream, symbol, channel, data)
        if not frames:
            return
        due = asyncio.get_running_loop().time() + self._latency_s(symbol)
        for frame in frames:
            raw_text: str | None = None
            combined_text: str | None = None
            for subscriber in list(members):
                if self.is_stalled(subscriber):
                    continue
                if subscriber.combined:
                    if combined_text is None:
                        combined_text = self._serialise(frame, stream)
                    subscriber.enqueue(due, combined_text)
                else:
                    if raw_text is None:
                        raw_text = self._serialise(frame, None)
                    subscriber.enqueue(due, raw_text)

    @staticmethod
    def _serialise(frame: Frame, stream: str | None) -> str:
        payload = frame.data if stream is None else {"stream": stream, "data": frame.data}
        text = _encoder.encode(payload).decode()
        return corrupt_text(text, frame.corrupt) if frame.corrupt else text

    def flush_user_events(self) -> None:
        """Deliver the exchange's ORDER_TRADE_UPDATE / ACCOUNT_UPDATE events to user streams."""
        if not self.exchange.outbox:
            return
        events, self.exchange.outbox = self.exchange.outbox, []
        if not self.user_connections:
            return
        due = asyncio.get_running_loop().time() + self._latency_s(None)
        for event in events:
            text = _encoder.encode(event).decode()
            for subscriber in list(self.user_connections):
                if not self.is_stalled(subscriber):
                    subscriber.enqueue(due, text)

"""The running market: drives the source scripts in (scaled, pausable) market time and runs the
periodic work (depth windows, marks, countdowns, connection and price faults, pings).

Wiring only: the book, fill model and fault decisions live in `domain`; the frames each event
produces in `market`; the WebSocket clients in `streams`; the price-moving faults in
`price_faults`. This module owns the asyncio tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from libs.clock import Clock
from libs.recordings import USDM
from services.venue_sim.domain import Exchange, FaultScheduler, MarketClock, OrderBook
from services.venue_sim.domain.market_events import LiveMarket, MarketEvent, MarketSource, StartBook
from services.venue_sim.domain.venue_rules import ConnectionRules
from services.venue_sim.market import MarketFeed
from services.venue_sim.price_faults import PriceFaults
from services.venue_sim.streams import StreamHub


class MarketEngine:
    """Runs the market: scripts → true books → exchange → stream subscribers, under faults."""

    def __init__(
        self,
        source: MarketSource,
        exchange: Exchange,
        books: dict[str, OrderBook],
        faults: FaultScheduler,
        market_clock: MarketClock,
        clock: Clock,
        speed: float,
        log: Any,
        ping_interval_s: float = 20.0,
        market: str = USDM,
        rules: ConnectionRules | None = None,
    ) -> None:
        self.source = source
        self.exchange = exchange
        self.books = books
        self.faults = faults
        self.market_clock = market_clock
        self.speed = speed
        self.log = log
        self.ping_interval_s = ping_interval_s
        self.hub = StreamHub(faults, log, clock, rules)
        self.feed = MarketFeed(books, exchange, self.hub, clock, market, {s: source.open_interest(s) for s in books})
        self.prices = PriceFaults(self.feed, source, faults, clock, log)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def can_move_prices(self) -> bool:
        """Whether the `price_shift` fault works here (synthetic markets only)."""
        return self.prices.can_move_prices

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the symbol scripts and the periodic tasks."""
        for symbol in self.books:
            self._tasks.append(asyncio.create_task(self._run_script(symbol), name=f"script-{symbol}"))
        if isinstance(self.source, LiveMarket):
            # A mirrored market is not scripted: its events arrive as they happen elsewhere.
            self._tasks.append(asyncio.create_task(self.source.follow(self.handle, self.reset_book), name="follow"))
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
        await self.hub.close_all()

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

    def reset_book(self, symbol: str, start: StartBook) -> None:
        """Replace a symbol's book with a snapshot (a live market resynced) and fill what now crosses."""
        self.books[symbol].reset(start.bids, start.asks, start.last_update_id)
        self.exchange.on_book_update(symbol)
        self.flush_user_events()

    def handle(self, event: MarketEvent) -> None:
        """Apply one market event (book, exchange, streams) and deliver the user events it caused."""
        self.feed.apply(event)
        self.flush_user_events()

    async def _marks(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.market_clock.paused:
                continue
            for symbol in self.books:
                if not self.source.has_marks(symbol):
                    self.feed.markets[symbol].mark_price = None
                    self.feed.publish_mark(symbol)
            self.prices.apply_price_spike()
            self.flush_user_events()

    async def _ticker(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(0.1)
            tick += 1
            self.feed.flush_windows("100ms")
            if tick % 5 in (0, 2):  # every 250 ms on average (250 = 2.5 ticks)
                self.feed.flush_windows("250ms")
                self.feed.publish_klines()
            self.exchange.check_countdowns()
            self.exchange.check_algo_orders({s: m.last_price for s, m in self.feed.markets.items()})
            await self.hub.check_connection_faults()
            self.hub.check_connection_rules()
            self.hub.expire_listen_keys()
            self.prices.apply_price_shifts()
            self.flush_user_events()

    async def _pinger(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            await self.hub.ping_all()

    def flush_user_events(self) -> None:
        """Deliver the exchange's ORDER_TRADE_UPDATE / ACCOUNT_UPDATE events to user streams."""
        if not self.exchange.outbox:
            return
        events, self.exchange.outbox = self.exchange.outbox, []
        self.hub.deliver_user_events(events)

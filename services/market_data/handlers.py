"""market-data's service object: wires its parts together and owns the frame table, i.e. which
handler each stream channel goes to, with the checks every frame passes first: FM-D4 (a malformed
frame is counted, logged truncated and skipped; a corruption rate above 5 % degrades the link) and
FM-D3 (event times in the future rejected, backwards ones replaced by the receive time).

Where the rest lives: `streams` (the WebSocket loop and reconnects), `books` (book syncs,
snapshots, resyncs), `series` (trades, marks, liquidations, open interest, FM-D5 confirmations),
`clock_offset` (FM-D3 clock), `rest` (venue calls behind the breaker and budget), `link` (link
states), `alerts` (alerts, flags, KV), `publishing` (subjects and the publisher). Pure rules:
`frames`, `book_sync`, `quality`, `return_probe`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec

from libs.binance.stream import StreamFrame
from libs.breaker import CircuitBreaker
from libs.clock import Clock, wall_clock
from libs.latency import LatencyWindow
from libs.logging import Logger
from libs.ratelimit import RateBudget
from libs.reconnect import Uniform
from proto.enums import AlertSeverity
from proto.messages import Trade
from services.market_data.alerts import Alerts, KvPut
from services.market_data.books import Books
from services.market_data.clock_offset import ClockOffsetCheck, Request
from services.market_data.frames import (
    MAX_TIME_MS,
    BadFrame,
    MarketKind,
    liquidation_from_force_order,
    mark_from_update,
    parse_depth_event,
    trade_from_agg_trade,
    trade_from_trade,
)
from services.market_data.link import DEGRADE_REASON_CORRUPTION, Links
from services.market_data.publishing import Publish, Publisher, PublishMany
from services.market_data.quality import CorruptionMonitor, TimestampGuard, TimestampVerdict
from services.market_data.rest import RestPort, VenueRest
from services.market_data.runtime import Runtime, Sleep
from services.market_data.series import OI_POLL_INTERVAL_S, Series
from services.market_data.streams import DEFAULT_MAX_CONNECTION_AGE_S, MarketStream, StreamPort, symbols_of

MONITOR_INTERVAL_S = 0.25
STREAM_LATENCY_SAMPLES = 1_000
"""Stream frames in the latency window: tens of seconds of a few symbols' depth, trades and marks."""
_RAW_LOG_CHARS = 300
_MS = 1_000_000


class MarketDataService:
    """market-data with its I/O injected: venue stream and REST in, validated messages out.

    Args:
        venue: venue name used in subjects.
        symbols: upper-case symbols.
        publish: `publish(subject, message, msg_id)` onto JetStream.
        kv_put: `kv_put(key, value)` into the state bucket.
        rest: venue REST client (depth, open interest, premium index, server time, aggTrades;
            spot: depth, server time, ticker price, historicalTrades).
        open_stream: builds a fresh (unconnected) combined stream on a WebSocket base URL, for
            every connection attempt.
        log: component logger.
        ws_urls: the WebSocket base URLs to rotate through (main first, then alternates).
        request: NATS request/reply (for `svc.risk.halt` on a clock offset > 5 s); None: no halt.
        publish_many: pipelined publishing (see `publishing.Publisher`); None: one at a time.
        budget: the venue's request budget the REST client uses (its transitions are published here).
        breaker: the per-venue circuit breaker around REST calls (FM-N5); None: no breaker.
        clock: wall clock in integer ns.
        new_id: a fresh random id (hex); each book sync session's nonce is cut from one.
        sleep: `asyncio.sleep` (injected in tests).
        uniform: the reconnect schedule's jitter source; None: `random.uniform`.
        market: the venue's market kind. Spot: the spot book procedure, `@trade` trades
            (backfilled from `historicalTrades`), the REST ticker price as the second source of
            FM-D5, and no mark price, funding or open interest (nothing polled, nothing alerted).
        max_connection_age_s: the stream connection is replaced make-before-break at this age
            (Binance closes it at 24 h); 0: never.
        route_streams: the other connections beside `open_stream`'s: name → builder, e.g. `market`
            for trades, mark price and liquidations when the venue routes streams by path (Binance
            USD-M), `public-2` for the depth of the symbols past the first connection's stream
            limit; empty: one connection.
        connection_streams: the streams of every connection (`""`: `open_stream`'s), from which
            each knows its symbols and whose depth it carries; None: the first carries every
            symbol's depth and the others none.
    """

    def __init__(
        self,
        *,
        venue: str,
        symbols: tuple[str, ...],
        publish: Publish,
        kv_put: KvPut,
        rest: RestPort,
        open_stream: Callable[[str], StreamPort],
        log: Logger,
        ws_urls: Sequence[str] = ("",),
        request: Request | None = None,
        publish_many: PublishMany | None = None,
        budget: RateBudget | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Clock = wall_clock,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        sleep: Sleep = asyncio.sleep,
        uniform: Uniform | None = None,
        market: MarketKind = MarketKind.USDM,
        max_connection_age_s: float = DEFAULT_MAX_CONNECTION_AGE_S,
        route_streams: Mapping[str, Callable[[str], StreamPort]] | None = None,
        connection_streams: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.venue = venue
        self.market = market
        self.symbols = tuple(symbol.upper() for symbol in symbols)
        self.log = log
        self.runtime = Runtime(clock=clock, sleep=sleep, log=log)
        self.publisher = Publisher(self.runtime, publish, publish_many)
        self.alerts = Alerts(self.runtime, venue, self.publisher, kv_put)
        self.links = Links(self.runtime, venue, self.symbols, self.publisher, self.alerts)
        self.rest = VenueRest(
            self.runtime,
            rest,
            venue=venue,
            publisher=self.publisher,
            alerts=self.alerts,
            links=self.links,
            budget=budget,
            breaker=breaker,
        )
        self.books = Books(
            self.runtime,
            venue=venue,
            symbols=self.symbols,
            market=market,
            clock=clock,
            new_id=new_id,
            publisher=self.publisher,
            links=self.links,
            rest=self.rest,
        )
        self.publisher.book_loss = self.books
        self.series = Series(
            self.runtime,
            venue=venue,
            symbols=self.symbols,
            market=market,
            publisher=self.publisher,
            alerts=self.alerts,
            rest=self.rest,
            books=self.books,
        )
        self.clock_check = ClockOffsetCheck(
            self.runtime, venue=venue, rest=self.rest, alerts=self.alerts, links=self.links, request=request
        )

        def market_stream(opener: Callable[[str], StreamPort], route: str = "", books: bool = True) -> MarketStream:
            names = None if connection_streams is None else connection_streams.get(route)
            carried = None if names is None else symbols_of(names)
            return MarketStream(
                self.runtime,
                venue=venue,
                market=market,
                open_stream=opener,
                ws_urls=ws_urls,
                on_frame=self.handle_frame,
                links=self.links,
                alerts=self.alerts,
                rest=self.rest,
                books=self.books,
                series=self.series,
                uniform=uniform,
                max_connection_age_s=max_connection_age_s,
                route=route,
                carries_books=books if names is None else bool(symbols_of(names, "depth")),
                symbols=carried,
                book_symbols=None if names is None else symbols_of(names, "depth"),
            )

        self.stream = market_stream(open_stream)
        self.route_streams = [market_stream(opener, route, False) for route, opener in (route_streams or {}).items()]
        self.bad_frames = 0
        self.frames = 0
        self.corruption = CorruptionMonitor()
        self.timestamps = TimestampGuard()
        self.latency = LatencyWindow(size=STREAM_LATENCY_SAMPLES)
        """Receive time minus event time of stream frames, on the venue's clock (FM-N5)."""
        self._on_channel: dict[str, Callable[[str, Any], Awaitable[None]]] = {
            "depth": self._on_depth,
            "aggTrade": self._on_agg_trade,
            "trade": self._on_trade,
            "markPrice": self._on_mark_price,
            "forceOrder": self._on_force_order,
        }

    # ------------------------------------------------------------------ entry points

    async def run_stream_forever(self) -> None:
        """Connect, consume, and on any loss reconnect on SPEC FM-N1's schedule, forever."""
        if not self.route_streams:
            await self.stream.run_forever()
            return
        await asyncio.gather(self.stream.run_forever(), *(stream.run_forever() for stream in self.route_streams))

    async def handle_resync_request(self, payload: bytes) -> bytes:
        """`svc.market-data.resync` {"symbol"}: rebuild that symbol's book from a new snapshot."""
        return await self.books.handle_resync_request(payload)

    async def poll_open_interest_forever(self, interval_s: float = OI_POLL_INTERVAL_S) -> None:
        """Publish every symbol's open interest from REST every `interval_s` (spot: returns at once)."""
        await self.series.poll_open_interest_forever(interval_s)

    async def check_clock_forever(self, interval_s: float) -> None:
        """FM-D3: the local clock against the venue's every `interval_s`."""
        await self.clock_check.check_forever(interval_s)

    async def check_clock(self) -> None:
        """One clock-offset sample: > 1 s alert, > 5 s trading HALTED (through risk) and the link DEGRADED."""
        await self.clock_check.check()

    async def monitor_forever(self, interval_s: float = MONITOR_INTERVAL_S) -> None:
        """Timers: the clean window, budget/breaker state changes, and quiet transient alerts."""
        while not self.runtime.closed:
            await self.runtime.sleep(interval_s)
            await self.monitor_tick()

    async def monitor_tick(self) -> None:
        """One round of the timers (`monitor_forever`)."""
        if self.links.connected:
            await self.links.refresh("clean window passed")
        await self.rest.tick()
        await self.alerts.resolve_quiet()

    def details(self) -> dict[str, Any]:
        """Heartbeat details: links, budget, breaker, data quality, per-symbol sync."""
        links = self.links
        return {
            "market": self.market.value,
            "link": links.link_state.value if links.link_state else None,
            "rest_link": links.rest_link_state.value if links.rest_link_state else None,
            **self.stream.details(),
            **({"ws_routes": {s.route: s.details() for s in self.route_streams}} if self.route_streams else {}),
            "degraded": dict(links.degraded),
            "bad_frames": self.bad_frames,
            "corruption_rate": round(self.corruption.rate, 4),
            "clock_offset_ms": self.clock_check.monitor.offset_ms,
            # The watchdog's FM-N5 rule: p99 > 2x baseline (and over its floor) -> REDUCED_FUNCTIONALITY.
            **self.latency.heartbeat_details(),
            **self.rest.details(),
            "flags": dict(self.alerts.flags),
            "symbols": self.books.details(),
        }

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued was acknowledged (or failed); False on timeout."""
        return await self.publisher.flush(timeout_s)

    async def close(self) -> None:
        """Stop the stream loop, the polls, snapshot fetches and background work."""
        await self.publisher.flush(2.0)
        self.runtime.closed = True
        self.publisher.stop()
        flusher = self.publisher.flusher
        await self.runtime.cancel_all([*self.books.fetching.values(), *([flusher] if flusher else [])])
        self.books.fetching.clear()

    # ------------------------------------------------------------------ frames

    async def handle_frame(self, frame: StreamFrame) -> None:
        """Process one stream frame; a bad one is counted, logged truncated and skipped (FM-D4)."""
        self.frames += 1
        bad = await self._handle(frame)
        changed = self.corruption.record(self.runtime.clock(), bad=bad)
        if changed is True:
            rate = f"{self.corruption.rate * 100:.1f}% of recent frames corrupt"
            await self.alerts.raise_alert(f"md.corruption.{self.venue}", AlertSeverity.P1, f"market stream: {rate}")
            await self.links.degrade(DEGRADE_REASON_CORRUPTION, rate)
        elif changed is False:
            await self.alerts.resolve(f"md.corruption.{self.venue}", "corruption rate back to normal")
            await self.links.undegrade(DEGRADE_REASON_CORRUPTION, "corruption rate back to normal")

    async def _handle(self, frame: StreamFrame) -> bool:
        """Returns True when the frame was bad."""
        if frame.error is not None or frame.stream is None:
            self._bad_frame(frame.raw, frame.error or "no stream")
            return True
        prefix, _, rest = frame.stream.partition("@")
        channel = rest.split("@", 1)[0]
        symbol = prefix.upper()
        handler = self._on_channel.get(channel)
        if handler is None or symbol not in self.books.syncs:
            self._bad_frame(frame.raw, f"unexpected stream {frame.stream[:60]}")
            return True
        try:
            await handler(symbol, frame.data)
        except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
            # BadFrame and anything else a malformed payload can raise: never fatal (FM-D4).
            self._bad_frame(frame.raw, f"{type(exc).__name__}: {exc}")
            return True
        return False

    def _bad_frame(self, raw: str, reason: str) -> None:
        self.bad_frames += 1
        self.log.warning("bad_frame", reason=reason[:300], raw=raw[:_RAW_LOG_CHARS], count=self.bad_frames)

    async def _check_time(self, symbol: str, channel: str, event_ms: int) -> int | None:
        """FM-D3: the timestamp to use (ns), or None when the event must be rejected."""
        now_ns = self.runtime.clock()
        check = self.timestamps.check(f"{symbol}@{channel}", event_ms, now_ns)
        match check.verdict:
            case TimestampVerdict.OK:
                venue_now_ms = now_ns / 1e6 + (self.clock_check.monitor.offset_ms or 0)
                self.latency.add(max(0.0, venue_now_ms - event_ms))
                return check.ts_ns
            case TimestampVerdict.FUTURE:
                await self.alerts.flag(
                    symbol, "future_ts", "rejected", f"{channel} event time {event_ms} ms", str(event_ms)
                )
                if check.repeated:
                    await self.alerts.raise_alert(
                        f"md.future_ts.{symbol}",
                        AlertSeverity.P2,
                        f"{symbol}: event times > 5 s in the future keep arriving",
                        transient=True,
                    )
                return None
            case _:
                await self.alerts.flag(
                    symbol, "backward_ts", "suspect", f"{channel} event time went backwards", str(event_ms)
                )
                await self.alerts.raise_alert(
                    f"md.backward_ts.{symbol}",
                    AlertSeverity.P3,
                    f"{symbol}: event time went backwards; receive time used",
                    transient=True,
                )
                return check.ts_ns

    async def _on_depth(self, symbol: str, data: Any) -> None:
        event = parse_depth_event(data, self.market)
        if event.symbol and event.symbol != symbol:
            raise BadFrame(f"symbol {event.symbol} on the {symbol} stream")
        ts_ns = await self._check_time(symbol, "depth", event.event_time_ms)
        if ts_ns is None:
            # Rejected: the next event's `pu` will not chain, and the book resyncs from a snapshot.
            return
        if ts_ns != event.event_time_ms * _MS:
            event = dataclasses.replace(event, event_time_ms=ts_ns // _MS)
        await self.books.on_event(symbol, event)

    async def _on_agg_trade(self, symbol: str, data: Any) -> None:
        await self._on_any_trade(symbol, data, "aggTrade", trade_from_agg_trade(self.venue, data))

    async def _on_trade(self, symbol: str, data: Any) -> None:
        """Spot `@trade`: trade ids `t` are consecutive, with the same gap rules as aggregate ids."""
        await self._on_any_trade(symbol, data, "trade", trade_from_trade(self.venue, data))

    async def _on_any_trade(self, symbol: str, data: Any, channel: str, trade: Trade) -> None:
        """FM-D3 time check, then the trade series (FM-D2 id sequence, FM-D5 checks, publish)."""
        if trade.symbol and trade.symbol != symbol:
            raise BadFrame(f"symbol {trade.symbol} on the {symbol} stream")
        event_ms = data.get("E", trade.ts_event_ns // _MS)
        if isinstance(event_ms, bool) or not isinstance(event_ms, int) or not 0 <= event_ms <= MAX_TIME_MS:
            raise BadFrame("field 'E' is not a time in ms")
        ts_ns = await self._check_time(symbol, channel, event_ms)
        if ts_ns is None:
            return
        if ts_ns != event_ms * _MS:
            trade = msgspec.structs.replace(trade, ts_event_ns=ts_ns)
        await self.series.on_trade(symbol, channel, trade)

    async def _on_mark_price(self, symbol: str, data: Any) -> None:
        mark = mark_from_update(self.venue, data)
        if mark.symbol and mark.symbol != symbol:
            raise BadFrame(f"symbol {mark.symbol} on the {symbol} stream")
        ts_ns = await self._check_time(symbol, "markPrice", mark.ts_event_ns // _MS)
        if ts_ns is None:
            return
        if ts_ns != mark.ts_event_ns:
            mark = msgspec.structs.replace(mark, ts_event_ns=ts_ns)
        await self.series.on_mark(symbol, mark)

    async def _on_force_order(self, symbol: str, data: Any) -> None:
        liquidation = liquidation_from_force_order(self.venue, data)
        if liquidation.symbol != symbol:
            # Its symbol names the subject it is published on: only the stream's own.
            raise BadFrame(f"symbol {liquidation.symbol or '(none)'} on the {symbol} stream")
        await self.series.on_liquidation(liquidation)

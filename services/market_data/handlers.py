"""market-data effects: stream frames → validated messages on JetStream, REST snapshots and
open-interest polls, link state, reconnects and resync requests.

All book decisions are taken by `domain.BookSync`; this module only moves data between the
venue and the bus. One lock serialises everything that touches a symbol's sync state and the
publishes that follow from it, so the bus sees snapshots and diffs in exactly the applied order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from libs.binance.stream import StreamClosed, StreamFrame
from libs.logging import Logger
from proto import subjects
from proto.enums import ConnectionState
from proto.envelope import Message
from proto.messages import (
    BookResyncStarted,
    BookSnapshot,
    DepthDiff,
    LinkStateChanged,
    Liquidation,
    MarkPrice,
    OpenInterest,
    Trade,
)
from services.market_data import domain
from services.market_data.adapters import MARKET_WS_LINK

Publish = Callable[[str, Message, str | None], Awaitable[int]]
KvPut = Callable[[str, bytes], Awaitable[int]]

OI_POLL_INTERVAL_S = 10.0
SNAPSHOT_LIMIT = 1000
_RAW_LOG_CHARS = 300


class RestPort(Protocol):
    async def depth(self, symbol: str, limit: int = 1000) -> dict: ...

    async def open_interest(self, symbol: str) -> dict: ...


class StreamPort(Protocol):
    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    def __aiter__(self) -> Any: ...


def route(message: Message) -> tuple[str, str | None]:
    """Subject and de-duplication id of a market-data message (None: the message id)."""
    match message:
        case DepthDiff(venue=venue, symbol=symbol, final_update_id=u, correlation_id=sync_id):
            return subjects.md_depth(venue, symbol), f"{venue}:{symbol}:depth:{sync_id}:{u}"
        case BookSnapshot(venue=venue, symbol=symbol, last_update_id=last, correlation_id=sync_id):
            return subjects.md_snapshot(venue, symbol), f"{venue}:{symbol}:snapshot:{sync_id}:{last}"
        case Trade(venue=venue, symbol=symbol, trade_id=trade_id):
            return subjects.md_trade(venue, symbol), f"{venue}:{symbol}:trade:{trade_id}"
        case MarkPrice(venue=venue, symbol=symbol, ts_event_ns=ts):
            return subjects.md_mark(venue, symbol), f"{venue}:{symbol}:mark:{ts}"
        case OpenInterest(venue=venue, symbol=symbol, ts_event_ns=ts):
            return subjects.md_open_interest(venue, symbol), f"{venue}:{symbol}:oi:{ts}"
        case Liquidation(venue=venue, symbol=symbol):
            return subjects.md_liquidation(venue, symbol), None
        case BookResyncStarted(venue=venue, symbol=symbol):
            return subjects.md_resync(venue, symbol), None
        case LinkStateChanged(venue=venue, link=link):
            return subjects.evt_link(venue, link), None
    raise TypeError(f"no route for {type(message).__name__}")


class MarketDataService:
    """Everything market-data does, with its I/O injected.

    Args:
        venue: venue name used in subjects.
        symbols: upper-case symbols.
        publish: `publish(subject, message, msg_id)` onto JetStream.
        kv_put: `kv_put(key, value)` into the state bucket.
        rest: venue REST client (depth, open interest).
        open_stream: builds a fresh (unconnected) combined stream for every connection attempt.
        log: component logger.
    """

    def __init__(
        self,
        *,
        venue: str,
        symbols: tuple[str, ...],
        publish: Publish,
        kv_put: KvPut,
        rest: RestPort,
        open_stream: Callable[[], StreamPort],
        log: Logger,
        uniform: Callable[[float, float], float] | None = None,
    ) -> None:
        self.venue = venue
        self.symbols = tuple(symbol.upper() for symbol in symbols)
        self._publish = publish
        self._kv_put = kv_put
        self._rest = rest
        self._open_stream = open_stream
        self.log = log
        self._uniform = uniform
        self.syncs = {symbol: domain.BookSync(venue, symbol) for symbol in self.symbols}
        self.link_state: ConnectionState | None = None
        self.bad_frames = 0
        self.frames = 0
        self._lock = asyncio.Lock()
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._generation = 0
        self._connected = False
        self._closed = False
        self._on_channel: dict[str, Callable[[str, Any], Awaitable[None]]] = {
            "depth": self._on_depth,
            "aggTrade": self._on_agg_trade,
            "markPrice": self._on_mark_price,
            "forceOrder": self._on_force_order,
        }

    # ------------------------------------------------------------------ status

    def details(self) -> dict[str, Any]:
        """Heartbeat details: per symbol whether the book is synced and its last update id."""
        return {
            "link": self.link_state.value if self.link_state else None,
            "bad_frames": self.bad_frames,
            "symbols": {
                symbol: {"synced": sync.synced, "last_update_id": sync.last_update_id if sync.synced else None}
                for symbol, sync in self.syncs.items()
            },
        }

    # ------------------------------------------------------------------ publishing

    async def _emit(self, messages: list[Message]) -> None:
        """Publish in order; a lost book message forces a resync so the chain is never silently broken."""
        if self._closed:
            return
        for message in messages:
            subject, msg_id = route(message)
            try:
                await self._publish(subject, message, msg_id)
            except Exception as exc:  # noqa: BLE001 - bus trouble must not kill the venue link
                self.log.warning(
                    "publish_failed",
                    subject=subject,
                    error=f"{type(exc).__name__}: {exc}",
                    action_taken="resync symbol" if isinstance(message, DepthDiff | BookSnapshot) else "dropped",
                )
                if isinstance(message, DepthDiff | BookSnapshot):
                    sync = self.syncs[message.symbol]
                    if not sync.wants_snapshot:
                        sync.force_resync("publish failed")
                    self._ensure_snapshot(message.symbol)
                    return

    async def _set_link(self, state: ConnectionState, reason: str) -> None:
        if state == self.link_state or self._closed:
            return
        previous, self.link_state = self.link_state, state
        self.log.info("link_state_changed", link=MARKET_WS_LINK, previous=previous, current=state, reason=reason)
        event = LinkStateChanged(
            venue=self.venue,
            link=MARKET_WS_LINK,
            previous=previous,
            current=state,
            reason=reason,
            symbols=list(self.symbols),
        )
        value = msgspec.json.encode({"state": state.value, "reason": reason, "ts_ns": event.ts_event_ns})
        try:
            await self._kv_put(subjects.key_link(self.venue, MARKET_WS_LINK), value)
        except Exception as exc:  # noqa: BLE001 - the event below still tells the others
            self.log.warning("link_kv_put_failed", error=str(exc))
        await self._emit([event])

    # ------------------------------------------------------------------ stream

    async def run_stream_forever(self) -> None:
        """Connect, consume, and on any loss reconnect on SPEC FM-N1's schedule, forever."""
        attempt = 0
        # `close()` stops the loop by flag too: a cancellation can be swallowed by a library's
        # wait_for (Python 3.11) and must not leave a zombie link publishing after shutdown.
        while not self._closed:
            stream = self._open_stream()
            try:
                await stream.connect()
            except StreamClosed as exc:
                await self._on_attempt_failed(attempt, str(exc))
                attempt += 1
                await asyncio.sleep(self._delay(attempt))
                continue
            attempt = 0
            reason = "stream ended"
            try:
                await self._on_connected()
                async for frame in stream:
                    if self._closed:
                        break
                    await self.handle_frame(frame)
            except StreamClosed as exc:
                reason = str(exc)
            finally:
                await stream.close()
            await self._on_disconnected(reason)
            await asyncio.sleep(self._delay(attempt))

    def _delay(self, attempt: int) -> float:
        if self._uniform is None:
            return domain.reconnect_delay_s(attempt)
        return domain.reconnect_delay_s(attempt, self._uniform)

    async def _on_attempt_failed(self, attempt: int, reason: str) -> None:
        self.log.warning("market_ws_connect_failed", attempt=attempt + 1, reason=reason)
        if attempt + 1 >= domain.DEGRADED_AFTER_ATTEMPTS:
            await self._set_link(ConnectionState.DEGRADED, f"{attempt + 1} failed attempts: {reason}")
        elif self.link_state is None:
            await self._set_link(ConnectionState.DISCONNECTED, reason)

    async def _on_connected(self) -> None:
        self._generation += 1
        self._connected = True
        reason = "connected" if self._generation == 1 else "reconnected"
        await self._set_link(ConnectionState.CONNECTED, reason)
        # Whatever happened while we were away is unknown: every book starts over (FM-N1).
        async with self._lock:
            for symbol, sync in self.syncs.items():
                await self._emit(sync.force_resync(reason))
                self._ensure_snapshot(symbol)

    async def _on_disconnected(self, reason: str) -> None:
        self._connected = False
        for task in list(self._fetching.values()):
            task.cancel()
        self._fetching.clear()
        await self._set_link(ConnectionState.DISCONNECTED, reason)

    async def handle_frame(self, frame: StreamFrame) -> None:
        """Process one stream frame; a bad one is counted, logged truncated and skipped (FM-D4)."""
        self.frames += 1
        if frame.error is not None or frame.stream is None:
            self._bad_frame(frame.raw, frame.error or "no stream")
            return
        prefix, _, rest = frame.stream.partition("@")
        channel = rest.split("@", 1)[0]
        symbol = prefix.upper()
        handler = self._on_channel.get(channel)
        if handler is None or symbol not in self.syncs:
            self._bad_frame(frame.raw, f"unexpected stream {frame.stream[:60]}")
            return
        try:
            await handler(symbol, frame.data)
        except (ValueError, TypeError, KeyError) as exc:
            # BadFrame and anything else a malformed payload can raise: never fatal (FM-D4).
            self._bad_frame(frame.raw, f"{type(exc).__name__}: {exc}")

    def _bad_frame(self, raw: str, reason: str) -> None:
        self.bad_frames += 1
        self.log.warning("bad_frame", reason=reason, raw=raw[:_RAW_LOG_CHARS], count=self.bad_frames)

    async def _on_depth(self, symbol: str, data: Any) -> None:
        event = domain.parse_depth_event(data)
        if event.symbol and event.symbol != symbol:
            raise domain.BadFrame(f"symbol {event.symbol} on the {symbol} stream")
        async with self._lock:
            sync = self.syncs[symbol]
            messages = sync.on_event(event)
            for message in messages:
                if isinstance(message, BookResyncStarted):
                    self.log.warning(
                        "book_gap",
                        symbol=symbol,
                        reason=message.reason,
                        expected=message.expected_prev_update_id,
                        received=message.received_prev_update_id,
                        action_taken="resync from a new snapshot",
                    )
            await self._emit(messages)
            self._ensure_snapshot(symbol)

    async def _on_agg_trade(self, symbol: str, data: Any) -> None:
        await self._emit([domain.trade_from_agg_trade(self.venue, data)])

    async def _on_mark_price(self, symbol: str, data: Any) -> None:
        await self._emit([domain.mark_from_update(self.venue, data)])

    async def _on_force_order(self, symbol: str, data: Any) -> None:
        await self._emit([domain.liquidation_from_force_order(self.venue, data)])

    # ------------------------------------------------------------------ snapshots

    def _ensure_snapshot(self, symbol: str) -> None:
        """Start a snapshot fetch when the symbol needs one and none is running."""
        if not self._connected or not self.syncs[symbol].wants_snapshot:
            return
        task = self._fetching.get(symbol)
        if task is not None and not task.done():
            return
        self._fetching[symbol] = asyncio.create_task(self._fetch_snapshot(symbol), name=f"snapshot-{symbol}")

    async def _fetch_snapshot(self, symbol: str) -> None:
        generation = self._generation
        failures = 0
        while generation == self._generation and self.syncs[symbol].wants_snapshot:
            try:
                raw = await self._rest.depth(symbol, SNAPSHOT_LIMIT)
                snapshot = domain.parse_snapshot(raw)
            except (VenueError, VenueUnreachable, VenueTimeout, domain.BadFrame) as exc:
                failures += 1
                delay = min(0.2 * 2**failures, 5.0)
                self.log.warning(
                    "snapshot_failed", symbol=symbol, error=str(exc)[:300], action_taken=f"retry in {delay:.1f}s"
                )
                await asyncio.sleep(delay)
                continue
            if generation != self._generation:
                return
            async with self._lock:
                messages = self.syncs[symbol].on_snapshot(snapshot)
                self.log.info(
                    "book_snapshot",
                    symbol=symbol,
                    last_update_id=snapshot.last_update_id,
                    synced=self.syncs[symbol].synced,
                )
                await self._emit(messages)
            if self.syncs[symbol].wants_snapshot:
                # The snapshot was older than the buffered events (U > L): fetch a newer one.
                await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ requests and polls

    async def handle_resync_request(self, payload: bytes) -> bytes:
        """`svc.market-data.resync` {"symbol"}: rebuild that symbol's book from a new snapshot."""
        try:
            request = msgspec.json.decode(payload)
            symbol = str(request["symbol"]).upper()
        except (msgspec.DecodeError, KeyError, TypeError) as exc:
            return msgspec.json.encode({"error": {"code": "bad_request", "message": f"expected {{'symbol'}}: {exc}"}})
        sync = self.syncs.get(symbol)
        if sync is None:
            return msgspec.json.encode({"error": {"code": "not_found", "message": f"unknown symbol {symbol}"}})
        async with self._lock:
            if sync.wants_snapshot:
                status = "already_resyncing"
            else:
                status = "resyncing"
                self.log.info("resync_requested", symbol=symbol)
                await self._emit(sync.force_resync("requested"))
            self._ensure_snapshot(symbol)
        return msgspec.json.encode({"symbol": symbol, "status": status})

    async def poll_open_interest_forever(self, interval_s: float = OI_POLL_INTERVAL_S) -> None:
        """Publish every symbol's open interest from REST every `interval_s`."""
        while not self._closed:
            started = time.monotonic()
            for symbol in self.symbols:
                try:
                    message = domain.open_interest_from_rest(self.venue, symbol, await self._rest.open_interest(symbol))
                except (VenueError, VenueUnreachable, VenueTimeout, domain.BadFrame) as exc:
                    self.log.warning("open_interest_failed", symbol=symbol, error=str(exc)[:300])
                    continue
                await self._emit([message])
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))

    async def close(self) -> None:
        """Stop the stream loop, the poll and snapshot fetches."""
        self._closed = True
        for task in list(self._fetching.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fetching.clear()

"""The order books of market-data: one `BookSync` per symbol fed with depth events, REST snapshots
fetched whenever a book needs one (retried for as long as it does), and every resync (gap,
reconnect, trade gap, operator or peer request, lost publish) announced on the bus.

One lock serialises everything that touches a symbol's book sync state and the publishes that
follow from it, so the bus sees snapshots and diffs in exactly the applied order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec

from libs.binance.classify import classify, passes_with_time, retry_while_wanted
from libs.clock import Clock
from proto.enums import ConnectionState
from proto.envelope import Message
from proto.messages import BookResyncStarted, DepthDiff
from proto.replies import ResyncReply, ResyncRequest, error_reply
from services.market_data.book_sync import BookSync
from services.market_data.frames import BadFrame, DepthEvent, DepthSnapshotData, MarketKind, parse_snapshot
from services.market_data.link import Links
from services.market_data.publishing import Publisher
from services.market_data.rest import VENUE_CALL_ERRORS, VenueRest
from services.market_data.runtime import Runtime

SNAPSHOT_LIMIT = 1000
SNAPSHOT_FIRST_WAIT_S = 0.4
SNAPSHOT_MAX_WAIT_S = 5.0
"""Backoff between snapshot attempts when the error asks for no wait of its own: 0.4 s doubling to 5 s."""


def snapshot_passes_with_time(error: BaseException) -> bool:
    """A snapshot fetch is tried again after what time cures (`passes_with_time`) and after a
    garbled answer (the next one is a new answer)."""
    return isinstance(error, BadFrame) or passes_with_time(error)


RESYNC_REQUEST = msgspec.json.Decoder(ResyncRequest)


class Books:
    """Every symbol's book: events in, snapshots fetched, diffs and resyncs out.

    Args:
        runtime: the service's shared context.
        venue: venue name on the messages.
        symbols: upper-case symbols.
        market: whose book procedure applies.
        clock: wall clock for the book syncs.
        new_id: a fresh random id (hex); each book sync session's nonce is cut from one.
        publisher: where the book messages go.
        links: connection state (a snapshot is fetched only while its depth's connection is up) and the clean window.
        rest: the venue REST API (snapshots).
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        venue: str,
        symbols: tuple[str, ...],
        market: MarketKind,
        clock: Clock,
        new_id: Callable[[], str],
        publisher: Publisher,
        links: Links,
        rest: VenueRest,
    ) -> None:
        self._runtime = runtime
        self._venue = venue
        self._publisher = publisher
        self._links = links
        self._rest = rest
        self.syncs = {
            symbol: BookSync(venue, symbol, clock=clock, nonce=new_id()[:8], market=market) for symbol in symbols
        }
        self.lock = asyncio.Lock()
        self.fetching: dict[str, asyncio.Task[None]] = {}

    async def on_event(self, symbol: str, event: DepthEvent) -> None:
        """Apply one (time-checked) depth event; publish what follows and fetch a snapshot when needed."""
        runtime = self._runtime
        clean_window = self._links.clean_window
        async with self.lock:
            sync = self.syncs[symbol]
            messages = sync.on_event(event)
            now = runtime.clock()
            for message in messages:
                if isinstance(message, DepthDiff):
                    clean_window.on_update(symbol, now)
                elif isinstance(message, BookResyncStarted):
                    clean_window.on_break(symbol)
                    runtime.log.warning(
                        "book_gap",
                        symbol=symbol,
                        reason=message.reason,
                        expected=message.expected_prev_update_id,
                        received=message.received_prev_update_id,
                        action_taken="resync from a new snapshot",
                    )
            await self._publisher.emit(messages)
            self.ensure_snapshot(symbol)
        if self._links.link_state == ConnectionState.SUSPECT:
            await self._links.refresh("clean window passed")

    async def resync(self, symbol: str, reason: str) -> bool:
        """Rebuild `symbol`'s book from a new snapshot; False when it was already waiting for one."""
        async with self.lock:
            started = self._start_over(symbol, reason)
            if started:
                await self._publisher.emit(started)
            self.ensure_snapshot(symbol)
        return bool(started)

    def _start_over(self, symbol: str, reason: str) -> list[Message]:
        sync = self.syncs[symbol]
        if sync.wants_snapshot:
            return []
        self._links.clean_window.on_break(symbol)
        return sync.force_resync(reason)

    async def restart(self, reason: str, symbols: tuple[str, ...] | None = None) -> None:
        """A (re)connection of the depth of `symbols` (None: all): whatever happened while away is
        unknown, so their books start over (FM-N1); the other connections' books go on."""
        async with self.lock:
            for symbol in self.syncs if symbols is None else symbols:
                sync = self.syncs[symbol]
                if not sync.wants_snapshot:
                    await self._publisher.emit(sync.force_resync(reason))
                elif self._links.generation_of(symbol) == 1:
                    await self._publisher.emit([BookResyncStarted(venue=self._venue, symbol=symbol, reason=reason)])
                self.ensure_snapshot(symbol)

    def drop_book(self, symbol: str) -> None:
        """A book message was lost (sequential publishing): start over from a new snapshot, at once."""
        sync = self.syncs[symbol]
        if not sync.wants_snapshot:
            sync.force_resync("publish failed")
        self.ensure_snapshot(symbol)

    async def resync_after_publish_failure(self, symbol: str) -> None:
        """A book message was lost (pipelined publishing): announce the resync and start over."""
        await self.resync(symbol, "publish failed")

    def cancel_fetches(self, symbols: tuple[str, ...] | None = None) -> None:
        """The depth connection of `symbols` (None: all) is gone: their snapshot fetches are of no use any more."""
        for symbol in list(self.fetching if symbols is None else symbols):
            task = self.fetching.pop(symbol, None)
            if task is not None:
                task.cancel()

    def ensure_snapshot(self, symbol: str) -> None:
        """Start a snapshot fetch when the symbol needs one and none is running."""
        if not self._links.books_up(symbol) or not self.syncs[symbol].wants_snapshot:
            return
        task = self.fetching.get(symbol)
        if task is not None and not task.done():
            return
        self.fetching[symbol] = asyncio.create_task(self.fetch_snapshot(symbol), name=f"snapshot-{symbol}")

    async def fetch_snapshot(self, symbol: str) -> None:
        """Fetch snapshots until the book is rebuilt, the connection changed, or the service closes.

        A book without a snapshot is no book: failures are retried for as long as one is wanted
        (`retry_while_wanted`, Retry-After and the breaker's cool-down honoured); an error that
        time does not cure (PERMANENT, e.g. an unknown symbol) stops it, loudly.
        """
        runtime = self._runtime
        links = self._links
        generation = links.generation_of(symbol)

        def wanted() -> bool:
            current = generation == links.generation_of(symbol)
            return current and self.syncs[symbol].wants_snapshot and not runtime.closed

        def on_retry(exc: BaseException, delay_s: float) -> None:
            runtime.log.warning(
                "snapshot_failed", symbol=symbol, error=str(exc)[:300], action_taken=f"retry in {delay_s:.1f}s"
            )

        retrying = retry_while_wanted(
            wanted,
            first_wait_s=SNAPSHOT_FIRST_WAIT_S,
            max_wait_s=SNAPSHOT_MAX_WAIT_S,
            sleep=runtime.sleep,
            retryable=snapshot_passes_with_time,
            on_retry=on_retry,
        )

        async def fetch() -> DepthSnapshotData:
            raw = await self._rest.call("depth", lambda: self._rest.api.depth(symbol, SNAPSHOT_LIMIT))
            return parse_snapshot(raw)

        while wanted():
            try:
                snapshot: DepthSnapshotData = await retrying(fetch)
            except VENUE_CALL_ERRORS as exc:
                if wanted():
                    runtime.log.error(
                        "snapshot_failed",
                        symbol=symbol,
                        error=str(exc)[:300],
                        error_class=classify(exc).error_class.value,
                        action_taken="stopped: the next resync fetches again",
                    )
                return
            if generation != links.generation_of(symbol):
                return
            async with self.lock:
                messages = self.syncs[symbol].on_snapshot(snapshot)
                now = runtime.clock()
                for message in messages:
                    if isinstance(message, DepthDiff):
                        self._links.clean_window.on_update(symbol, now)
                runtime.log.info(
                    "book_snapshot",
                    symbol=symbol,
                    last_update_id=snapshot.last_update_id,
                    synced=self.syncs[symbol].synced,
                )
                await self._publisher.emit(messages)
            if self.syncs[symbol].wants_snapshot:
                # The snapshot was older than the buffered events (U > L): fetch a newer one.
                await runtime.sleep(0.1)

    async def handle_resync_request(self, payload: bytes) -> bytes:
        """`svc.market-data.resync` {"symbol"}: rebuild that symbol's book from a new snapshot."""
        try:
            symbol = RESYNC_REQUEST.decode(payload).symbol.upper()
        except msgspec.DecodeError as exc:
            return error_reply("bad_request", f"expected {{'symbol'}}: {exc}")
        sync = self.syncs.get(symbol)
        if sync is None:
            return error_reply("not_found", f"unknown symbol {symbol}")
        async with self.lock:
            if sync.wants_snapshot:
                status = "already_resyncing"
            else:
                status = "resyncing"
                self._runtime.log.info("resync_requested", symbol=symbol)
                self._links.clean_window.on_break(symbol)
                await self._publisher.emit(sync.force_resync("requested"))
            self.ensure_snapshot(symbol)
        return msgspec.json.encode(ResyncReply(symbol=symbol, status=status))

    def details(self) -> dict[str, Any]:
        """Heartbeat details: per symbol, synced and the last applied update id."""
        return {
            symbol: {"synced": sync.synced, "last_update_id": sync.last_update_id if sync.synced else None}
            for symbol, sync in self.syncs.items()
        }

"""Publishing market-data onto JetStream: the subject and de-duplication id of every message
(`route`), and the `Publisher` that sends in order, one at a time or pipelined in batches with
back-pressure. A lost book message is never re-published: the symbol's book is resynced instead
(through `BookLoss`), so no reader sees a silently broken diff chain.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Protocol

from proto import subjects
from proto.envelope import Message
from proto.messages import (
    AlertRaised,
    AlertResolved,
    BookResyncStarted,
    BookSnapshot,
    BreakerStateChanged,
    DepthDiff,
    LinkStateChanged,
    Liquidation,
    MarketDataFlagged,
    MarkPrice,
    OpenInterest,
    Trade,
)
from services.market_data.runtime import Runtime

Publish = Callable[[str, Message, str | None], Awaitable[int]]
PublishItem = tuple[str, Message, str | None]
PublishMany = Callable[[list[PublishItem]], Awaitable[list[int | BaseException]]]
"""Publish several in order with one wait; per item the stream sequence or the exception of a failed one."""

PUBLISH_WINDOW = 2_000
"""Most messages queued or awaiting their acknowledgement before `emit` waits (back-pressure)."""
PUBLISH_BATCH = 500
"""Most messages sent in one `publish_many` batch."""


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
        case MarketDataFlagged(venue=venue, symbol=symbol):
            return subjects.md_flag(venue, symbol), None
        case LinkStateChanged(venue=venue, link=link):
            return subjects.evt_link(venue, link), None
        case BreakerStateChanged(breaker=breaker):
            return subjects.evt_breaker(breaker), None
        case AlertRaised():
            return subjects.EVT_ALERT_RAISED, None
        case AlertResolved():
            return subjects.EVT_ALERT_RESOLVED, None
    raise TypeError(f"no route for {type(message).__name__}")


class BookLoss(Protocol):
    """Who rebuilds a symbol's book when one of its book messages was lost (`books.Books`)."""

    def drop_book(self, symbol: str) -> None:
        """Sequential publishing: start over from a new snapshot, at once."""

    async def resync_after_publish_failure(self, symbol: str) -> None:
        """Pipelined publishing: announce the resync and start over from a new snapshot."""


class Publisher:
    """Sends market-data messages in order.

    Args:
        runtime: the service's shared context.
        publish: `publish(subject, message, msg_id)` onto JetStream.
        publish_many: pipelined publishing (`libs.bus.Bus.publish_many` semantics, results per
            item instead of raising); when given, `emit` only queues and one flusher task sends
            everything queued as one batch while the previous batch's acks are awaited, in
            order. None: each message is published and acknowledged one at a time.
    """

    def __init__(self, runtime: Runtime, publish: Publish, publish_many: PublishMany | None = None) -> None:
        self._runtime = runtime
        self._publish = publish
        self._publish_many = publish_many
        self.book_loss: BookLoss | None = None
        """Set by the service once the books exist."""
        self._outbox: collections.deque[PublishItem] = collections.deque()
        self._outbox_wake = asyncio.Event()
        self._outbox_room = asyncio.Event()
        self._outbox_idle = asyncio.Event()
        self._outbox_idle.set()
        self._in_flight = 0
        self.flusher: asyncio.Task[None] | None = None
        self.publish_batches = 0
        self.publish_failures = 0

    async def emit(self, messages: list[Message]) -> None:
        """Publish in order; a lost book message forces a resync so the chain is never silently broken."""
        if self._runtime.closed or not messages:
            return
        if self._publish_many is not None:
            await self._enqueue(messages)
            return
        for message in messages:
            subject, msg_id = route(message)
            try:
                await self._publish(subject, message, msg_id)
            except Exception as exc:  # noqa: BLE001 - bus trouble must not kill the venue link
                self._runtime.log.warning(
                    "publish_failed",
                    subject=subject,
                    error=f"{type(exc).__name__}: {exc}",
                    action_taken="resync symbol" if isinstance(message, DepthDiff | BookSnapshot) else "dropped",
                )
                if isinstance(message, DepthDiff | BookSnapshot):
                    if self.book_loss is not None:
                        self.book_loss.drop_book(message.symbol)
                    return

    async def _enqueue(self, messages: list[Message]) -> None:
        """Queue for the flusher; waits while the in-flight window is full (back-pressure on the stream)."""
        while len(self._outbox) + self._in_flight >= PUBLISH_WINDOW and not self._runtime.closed:
            self._outbox_room.clear()
            await self._outbox_room.wait()
        for message in messages:
            subject, msg_id = route(message)
            self._outbox.append((subject, message, msg_id))
        self._outbox_idle.clear()
        self._outbox_wake.set()
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self._flush_forever(), name="market-data-publish")

    async def _flush_forever(self) -> None:
        """Send everything queued as one batch, await its acks, repeat: order is the queue's order.

        Only one batch is awaited at a time, so a batch holds what arrived while the previous
        one's acks were pending: one round trip per batch instead of per message.
        """
        assert self._publish_many is not None
        while True:
            if not self._outbox:
                self._outbox_idle.set()
                self._outbox_wake.clear()
                await self._outbox_wake.wait()
                continue
            batch = [self._outbox.popleft() for _ in range(min(PUBLISH_BATCH, len(self._outbox)))]
            self._in_flight = len(batch)
            try:
                results = await self._publish_many(batch)
            except Exception as exc:  # noqa: BLE001 - bus trouble must not kill the venue link
                results = [exc] * len(batch)
            self._in_flight = 0
            self.publish_batches += 1
            self._outbox_room.set()
            failed = [
                (item, result) for item, result in zip(batch, results, strict=False) if not isinstance(result, int)
            ]
            if len(results) < len(batch):
                failed.extend((item, RuntimeError("no result")) for item in batch[len(results) :])
            if failed:
                self._on_publish_failed(failed)

    def _on_publish_failed(self, failed: list[tuple[PublishItem, BaseException]]) -> None:
        """A lost book message: drop the symbol's queued book messages and resync it (never re-publish)."""
        self.publish_failures += len(failed)
        broken: set[str] = set()
        for (subject, message, _), error in failed:
            book = isinstance(message, DepthDiff | BookSnapshot)
            self._runtime.log.warning(
                "publish_failed",
                subject=subject,
                error=f"{type(error).__name__}: {error}"[:300],
                action_taken="resync symbol" if book else "dropped",
            )
            if isinstance(message, DepthDiff | BookSnapshot):
                broken.add(message.symbol)
        if not broken:
            return
        # Diffs queued behind a lost one cannot chain for any reader: sending them is useless.
        kept = [
            item
            for item in self._outbox
            if not (isinstance(item[1], DepthDiff | BookSnapshot) and item[1].symbol in broken)
        ]
        self._outbox = collections.deque(kept)
        if self.book_loss is None:
            return
        for symbol in sorted(broken):
            self._runtime.spawn(self.book_loss.resync_after_publish_failure(symbol), f"publish-resync-{symbol}")

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued was acknowledged (or failed); False on timeout."""
        if self._publish_many is None:
            return True
        try:
            await asyncio.wait_for(self._outbox_idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def stop(self) -> None:
        """The service is closing: release an `emit` waiting for room (the runtime is closed by now)."""
        self._outbox_room.set()

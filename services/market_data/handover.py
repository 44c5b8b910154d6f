"""Make-before-break replacement of the market stream connection (SPEC FM-N1).

Binance closes every stream connection after 24 h. Waiting for that close would cost a
disconnection: symbols STALE, books resynced, trading halted for them. So a connection older than
the configured age is replaced first: a new connection is opened next to it and buffered until
its streams join what the old one has delivered (for every depth and trade stream, the new
connection's first event follows on, or comes before, the old one's last), then the old one is
closed and the new one's buffered frames are handed on, minus those the old one already
delivered. Both connections carry the same venue events with the same ids, so the books continue
without a snapshot and without a gap.

`StreamPositions` (pure) says where each stream stands and when the new connection has caught up;
`Handover` runs the new connection's reader while the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from libs.binance.stream import StreamClosed, StreamFrame

_SEQUENCED = ("depth", "aggTrade", "trade")
"""Channels whose events must all arrive: books chain on them (FM-D2), trades are counted by id."""


class StreamPort(Protocol):
    """A combined market stream (`libs.binance.stream.CombinedStream`)."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    def __aiter__(self) -> Any: ...


def channel_of(stream: str) -> str:
    """`btcusdt@depth@100ms` → `depth`."""
    return stream.partition("@")[2].split("@", 1)[0]


def position(frame: StreamFrame) -> tuple[int, int] | None:
    """Where a frame stands in its stream: (id it follows on, its own id), None when unknown.

    Depth: (`pu`, `u`), spot (`U - 1`, `u`); trades: (id - 1, id) of the aggregate (`a`) or plain
    (`t`) trade id; anything else by its event time (E, E).
    """
    if frame.stream is None or not isinstance(frame.data, dict):
        return None
    data = frame.data
    channel = channel_of(frame.stream)
    values: tuple[Any, Any]
    if channel == "depth":
        values = (data.get("pu", data.get("U", 0) - 1 if isinstance(data.get("U"), int) else None), data.get("u"))
    elif channel in ("aggTrade", "trade"):
        own = data.get("a" if channel == "aggTrade" else "t")
        values = (own - 1 if isinstance(own, int) else None, own)
    else:
        values = (data.get("E"), data.get("E"))
    follows, own = values
    if isinstance(follows, int) and isinstance(own, int) and not isinstance(own, bool):
        return follows, own
    return None


class StreamPositions:
    """The last position each stream reached on one connection, and the first on another."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        """Stream name → own id of the last frame delivered."""
        self.first: dict[str, int] = {}
        """Stream name → the id the first frame followed on."""

    def delivered(self, frame: StreamFrame) -> None:
        """A frame was handed on: its stream now stands at it."""
        where = position(frame)
        if where is not None and frame.stream is not None:
            self.last[frame.stream] = max(where[1], self.last.get(frame.stream, where[1]))

    def buffered(self, frame: StreamFrame) -> None:
        """A frame arrived on the new connection."""
        where = position(frame)
        if where is not None and frame.stream is not None:
            self.first.setdefault(frame.stream, where[0])

    def joined(self, old: StreamPositions) -> bool:
        """True when, for every depth and trade stream the old connection delivered, this one's
        first frame follows on (or precedes) the old one's last: nothing is missing in between."""
        for stream, last in old.last.items():
            if channel_of(stream) not in _SEQUENCED:
                continue
            first = self.first.get(stream)
            if first is None or first > last:
                return False
        return True


def already_delivered(frame: StreamFrame, old: StreamPositions) -> bool:
    """True when the old connection already delivered this frame (or a later one of its stream)."""
    where = position(frame)
    if where is None or frame.stream is None:
        return False
    last = old.last.get(frame.stream)
    return last is not None and where[1] <= last


class Handover:
    """The new connection of a make-before-break replacement: connected, then read into a queue
    while the old one keeps serving, then iterated in its place.

    Args:
        stream: the new, unconnected stream.
        buffer_limit: frames held before the switch; more means the new connection cannot join
            (the replacement is given up and tried again later).
    """

    def __init__(self, stream: StreamPort, buffer_limit: int = 50_000) -> None:
        self.stream = stream
        self.positions = StreamPositions()
        self.failed: str | None = None
        """Why the replacement failed, None while it may still succeed."""
        self._queue: asyncio.Queue[StreamFrame | StreamClosed] = asyncio.Queue()
        self._limit = buffer_limit
        self._reader: asyncio.Task[None] | None = None
        self.connected = False

    def start(self) -> None:
        """Connect and read in the background."""
        self._reader = asyncio.create_task(self._read(), name="market-ws-handover")

    async def _read(self) -> None:
        try:
            await self.stream.connect()
            self.connected = True
            async for frame in self.stream:
                if self._queue.qsize() >= self._limit and not self.failed:
                    self.failed = f"more than {self._limit} frames before the new connection joined"
                self.positions.buffered(frame)
                self._queue.put_nowait(frame)
        except StreamClosed as exc:
            if not self.connected:
                self.failed = str(exc)
            self._queue.put_nowait(exc)

    def ready(self, old: StreamPositions) -> bool:
        """The new connection is up and joins what the old one delivered."""
        return self.connected and self.failed is None and self.positions.joined(old)

    async def frames(self, old: StreamPositions) -> AsyncIterator[StreamFrame]:
        """The new connection's frames after the switch: first the buffered ones the old
        connection had not delivered, then live ones; ends by raising `StreamClosed`."""
        skipping = True
        while True:
            item = await self._queue.get()
            if isinstance(item, StreamClosed):
                raise item
            if skipping and already_delivered(item, old):
                continue
            if self._queue.empty():
                skipping = False  # caught up with the buffer: everything from now on is new
            yield item

    async def abort(self) -> None:
        """Give the replacement up: stop reading and close the new connection."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.stream.close()

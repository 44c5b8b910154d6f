"""Binance combined-stream WebSocket client (`<ws_base>/stream?streams=a/b/c`).

`CombinedStream` connects, answers the server's pings, sends its own ping every
`ping_interval_s` and drops the link after `max_missed_pongs` pongs in a row did not come within
`pong_timeout_s` (SPEC FM-N1: 5 s, 1 s, 3), and treats `silence_timeout_s` without any message as
a dead link. Frames are yielded as `StreamFrame`s;
an unparseable frame is yielded with `error` set instead of raising, so that one bad frame
never ends the stream (the caller counts and logs it, SPEC FM-D4). The iteration ends only by
raising `StreamClosed`, so a caller's reconnect loop sees every way a link can die.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver

__all__ = ["CombinedStream", "StreamClosed", "StreamFrame", "combined_stream_url"]

_decoder = msgspec.json.Decoder()


class StreamClosed(Exception):
    """The stream ended: close frame, socket error, missed pong or silence."""


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """One text frame of a combined stream.

    Attributes:
        stream: the `stream` name (`btcusdt@depth@100ms`), None when the frame could not be parsed.
        data: the decoded `data` object, None when the frame could not be parsed.
        raw: the frame text (for logging of bad frames; truncate before logging).
        error: why the frame is unusable, None for a good frame.
    """

    stream: str | None
    data: Any
    raw: str
    error: str | None = None


def combined_stream_url(ws_base: str, streams: Iterable[str]) -> str:
    """URL of the combined stream of `streams` under `ws_base` (e.g. `wss://fstream.binance.com`)."""
    return f"{ws_base.rstrip('/')}/stream?streams={'/'.join(streams)}"


def parse_frame(text: str) -> StreamFrame:
    """Decode one combined-stream text frame; never raises."""
    try:
        payload = _decoder.decode(text)
    except msgspec.DecodeError as exc:
        return StreamFrame(None, None, text, f"invalid JSON: {exc}")
    except RecursionError:
        return StreamFrame(None, None, text, "JSON nested too deep")
    if not isinstance(payload, dict) or not isinstance(payload.get("stream"), str) or "data" not in payload:
        return StreamFrame(None, None, text, "not a combined-stream frame")
    return StreamFrame(payload["stream"], payload["data"], text)


class CombinedStream:
    """One combined-stream connection; use as an async context manager, then iterate.

    Args:
        ws_base: WebSocket base URL, e.g. `ws://127.0.0.1:8100`.
        streams: stream names, e.g. `["btcusdt@depth@100ms", "btcusdt@aggTrade"]`.
        silence_timeout_s: no message at all for this long ends the stream (`StreamClosed`).
        ping_interval_s: own ping period.
        connect_timeout_s: limit of the TCP + WebSocket handshake.
        pong_timeout_s: a pong later than this counts as missed.
        max_missed_pongs: this many missed pongs in a row end the stream.
        resolver: DNS resolver (e.g. a shared `CachingResolver`, FM-N3); aiohttp's when None.
    """

    def __init__(
        self,
        ws_base: str,
        streams: Iterable[str],
        *,
        silence_timeout_s: float = 5.0,
        ping_interval_s: float = 5.0,
        connect_timeout_s: float = 10.0,
        pong_timeout_s: float = 1.0,
        max_missed_pongs: int = 3,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.url = combined_stream_url(ws_base, streams)
        self.silence_timeout_s = silence_timeout_s
        self.ping_interval_s = ping_interval_s
        self.connect_timeout_s = connect_timeout_s
        self.pong_timeout_s = pong_timeout_s
        self.max_missed_pongs = max_missed_pongs
        self.missed_pongs = 0
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pong = asyncio.Event()
        self._pinger: asyncio.Task[None] | None = None
        self._dead_reason: str | None = None

    async def __aenter__(self) -> CombinedStream:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection.

        Raises:
            StreamClosed: the handshake failed (refused, DNS, HTTP error, timeout).
        """
        connector = aiohttp.TCPConnector(resolver=self._resolver) if self._resolver is not None else None
        self._session = aiohttp.ClientSession(connector=connector)
        try:
            # Pings and pongs are handled here (autoping off) so missed pongs can be counted.
            self._ws = await asyncio.wait_for(
                self._session.ws_connect(self.url, autoping=False, max_msg_size=16 * 1024 * 1024),
                self.connect_timeout_s,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self.close()
            raise StreamClosed(f"connect failed: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            # Cancelled mid-handshake (service shutdown): the session must not outlive us.
            await asyncio.shield(self.close())
            raise
        self._pinger = asyncio.create_task(self._ping_loop(self._ws), name="ws-ping")

    async def _ping_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        missed = 0
        while not ws.closed:
            await asyncio.sleep(self.ping_interval_s)
            self._pong.clear()
            try:
                await ws.ping()
            except (ConnectionError, RuntimeError):
                return
            try:
                await asyncio.wait_for(self._pong.wait(), self.pong_timeout_s)
                missed = 0
            except TimeoutError:
                missed += 1
                self.missed_pongs += 1
            if missed >= self.max_missed_pongs:
                self._dead_reason = f"{missed} pongs missed"
                await ws.close(code=1001, message=b"pong timeout")
                return

    async def close(self) -> None:
        """Close the socket and the session (idempotent)."""
        try:
            if self._pinger is not None:
                self._pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._pinger
                self._pinger = None
            if self._ws is not None and not self._ws.closed:
                await self._ws.close()
        finally:
            # Even when cancelled while closing the socket, the session is released.
            session, self._session, self._ws = self._session, None, None
            if session is not None and not session.closed:
                await asyncio.shield(session.close())

    def __aiter__(self) -> AsyncIterator[StreamFrame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[StreamFrame]:
        ws = self._ws
        if ws is None:
            raise StreamClosed("not connected")
        while True:
            try:
                msg = await ws.receive(timeout=self.silence_timeout_s)
            except TimeoutError as exc:
                raise StreamClosed(f"no message for {self.silence_timeout_s}s") from exc
            if msg.type == aiohttp.WSMsgType.TEXT:
                yield parse_frame(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                yield parse_frame(msg.data.decode("utf-8", errors="replace"))
            elif msg.type == aiohttp.WSMsgType.PING:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.pong(msg.data)
            elif msg.type == aiohttp.WSMsgType.PONG:
                self._pong.set()
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                if self._dead_reason is not None:
                    raise StreamClosed(self._dead_reason)
                raise StreamClosed(f"closed by peer (code {ws.close_code})")
            elif msg.type == aiohttp.WSMsgType.ERROR:
                raise StreamClosed(f"socket error: {ws.exception()!r}")

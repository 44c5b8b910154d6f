"""Binance combined-stream WebSocket client (`<ws_base>/stream?streams=a/b/c`).

`CombinedStream` connects, answers the server's pings, sends its own ping every
`ping_interval_s` and drops the link after `max_missed_pongs` pongs in a row did not come within
`pong_timeout_s` (SPEC FM-N1: 5 s, 1 s, 3), and treats `silence_timeout_s` without any data frame
as a dead link (pings and pongs do not count: they prove the socket, not the stream). Frames are
yielded as `StreamFrame`s; an unparseable frame is yielded with `error` set instead of raising, so that one bad frame
never ends the stream (the caller counts and logs it, SPEC FM-D4). The iteration ends only by
raising `StreamClosed`, so a caller's reconnect loop sees every way a link can die.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver

__all__ = ["CombinedStream", "StreamClosed", "StreamFrame", "combined_stream_url"]

_decoder = msgspec.json.Decoder()

MAX_STREAMS_PER_CONNECTION = 1024
"""Binance's limit of streams on one connection (USD-M and spot)."""
URL_STREAMS = 200
"""Streams named in the connection URL; the rest are subscribed after connecting."""
SUBSCRIBE_BATCH = 100
"""Streams per SUBSCRIBE message."""
MESSAGES_PER_S = 5.0
"""Pace of SUBSCRIBE messages: half the venue's 10 messages a second, the rest left for pings and pongs."""


class StreamClosed(Exception):
    """The stream ended: close frame, socket error, missed pong or silence.

    Args:
        reason: what happened.
        status: the HTTP status when the venue refused the connect at the upgrade (418: IP banned,
            429: rate limited), None otherwise.
        retry_after_s: the refusal's `Retry-After` in seconds, None when it named none.
    """

    def __init__(self, reason: str, *, status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after_s = retry_after_s


def _retry_after_s(headers: Any) -> float | None:
    """The `Retry-After` seconds of a refused upgrade; None when absent or not a number."""
    try:
        value = float((headers or {}).get("Retry-After", ""))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


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


def _is_reply(text: str) -> bool:
    """True for the venue's answer to a SUBSCRIBE (`{"result": null, "id": 1}`).

    Raises:
        StreamClosed: the venue refused a subscription (`{"error": ..., "id": 1}`): streams would
            be missing, so the connection is not usable.
    """
    try:
        payload = _decoder.decode(text)
    except msgspec.DecodeError:
        return False
    if not isinstance(payload, dict) or "id" not in payload or "stream" in payload:
        return False
    if "error" in payload:
        raise StreamClosed(f"subscription refused: {str(payload['error'])[:200]}")
    return "result" in payload


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
        silence_timeout_s: no data frame for this long ends the stream (`StreamClosed`); pings and
            pongs do not count.
        ping_interval_s: own ping period.
        connect_timeout_s: limit of the TCP + WebSocket handshake.
        pong_timeout_s: a pong later than this counts as missed.
        max_missed_pongs: this many missed pongs in a row end the stream.
        resolver: DNS resolver (e.g. a shared `CachingResolver`, FM-N3); aiohttp's when None.
        url_streams: streams named in the connection URL (a URL has a length limit); the rest are
            subscribed after connecting.
        subscribe_batch: streams per SUBSCRIBE message.
        messages_per_s: pace of the SUBSCRIBE messages: the venue counts every message a client
            sends, pings and pongs included, and closes a connection over 10 a second.
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
        url_streams: int = URL_STREAMS,
        subscribe_batch: int = SUBSCRIBE_BATCH,
        messages_per_s: float = MESSAGES_PER_S,
    ) -> None:
        names = list(streams)
        if len(names) > MAX_STREAMS_PER_CONNECTION:
            raise ValueError(
                f"{len(names)} streams on one connection; the venue allows {MAX_STREAMS_PER_CONNECTION}: "
                "split them over several connections"
            )
        self.url = combined_stream_url(ws_base, names[:url_streams])
        self.to_subscribe = [names[i : i + subscribe_batch] for i in range(url_streams, len(names), subscribe_batch)]
        """The streams beyond the URL's share, in SUBSCRIBE messages of `subscribe_batch` each."""
        self.message_interval_s = 1.0 / messages_per_s
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
        except aiohttp.WSServerHandshakeError as exc:
            # The venue answered the upgrade with a status: a ban (418) or rate limit (429) says
            # in Retry-After when the next connect may be tried (FM-N2).
            await self.close()
            raise StreamClosed(
                f"connect refused: HTTP {exc.status}: {exc.message}",
                status=exc.status,
                retry_after_s=_retry_after_s(exc.headers),
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self.close()
            raise StreamClosed(f"connect failed: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            # Cancelled mid-handshake (service shutdown): the session must not outlive us.
            await asyncio.shield(self.close())
            raise
        self._pinger = asyncio.create_task(self._ping_loop(self._ws), name="ws-ping")
        try:
            await self._subscribe(self._ws)
        except BaseException:
            await asyncio.shield(self.close())
            raise

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """SUBSCRIBE the streams the URL could not carry, paced under the venue's message limit."""
        for number, batch in enumerate(self.to_subscribe, start=1):
            if number > 1:
                await asyncio.sleep(self.message_interval_s)
            try:
                await ws.send_str(msgspec.json.encode({"method": "SUBSCRIBE", "params": batch, "id": number}).decode())
            except (ConnectionError, RuntimeError) as exc:
                raise StreamClosed(f"subscribe failed: {type(exc).__name__}: {exc}") from exc

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
        loop = asyncio.get_running_loop()
        # Silence is counted from the last data frame: pings and pongs keep the socket alive but
        # carry no market data, and a venue that answers our pings while it sends nothing (a
        # stalled stream) is silent all the same.
        silent_until = loop.time() + self.silence_timeout_s
        while True:
            remaining = silent_until - loop.time()
            if remaining <= 0:
                raise StreamClosed(f"no data for {self.silence_timeout_s}s")
            try:
                msg = await ws.receive(timeout=remaining)
            except TimeoutError as exc:
                raise StreamClosed(f"no data for {self.silence_timeout_s}s") from exc
            if msg.type == aiohttp.WSMsgType.TEXT:
                frame = parse_frame(msg.data)
                if frame.error is not None and _is_reply(msg.data):
                    continue  # the answer to a SUBSCRIBE: not market data
                silent_until = loop.time() + self.silence_timeout_s
                yield frame
            elif msg.type == aiohttp.WSMsgType.BINARY:
                silent_until = loop.time() + self.silence_timeout_s
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

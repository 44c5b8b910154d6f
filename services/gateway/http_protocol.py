"""The gateway's HTTP/1.1 connection protocol: uvicorn's h11 protocol with the limits uvicorn lacks.

uvicorn bounds a header block's size (`h11_max_incomplete_event_size`) and idle keep-alive
(`timeout_keep_alive`), but not how long a client may take to send its request line and headers:
a slowloris client that opens connections and dribbles a header byte every few seconds holds each
connection forever, and a connection that sends nothing at all is never closed. This protocol gives
every request `header_timeout_s` from its first byte (or from the connection's start) to complete
its header block, else answers 408 and closes; and it refuses a request with more than
`max_headers` header fields or `max_header_bytes` of them (431) before the application sees it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

HEADER_TIMEOUT_S = 10.0
"""Time a client has to send a complete request line and header block."""
MAX_HEADERS = 100
"""Header fields a request may carry (Binance's and common proxies' limits are about this)."""
MAX_HEADER_BYTES = 32 * 1024
"""Request target plus header names and values. h11's `max_incomplete_event_size` bounds only a
header block still incomplete when a chunk arrives; one arriving whole in a large chunk passes it."""

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 29\r\n\r\nrequest headers not received"
    b"\n"
)
_TOO_MANY_HEADERS_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 26\r\n\r\nrequest headers too large\n"
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a header-read deadline and a header-count limit."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    max_headers: int = MAX_HEADERS
    max_header_bytes: int = MAX_HEADER_BYTES

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._refused = False
        # uvicorn reads events through `conn.next_event`: counted there, before the app is called.
        self._h11_next_event = self.conn.next_event
        self.conn.next_event = self._next_event  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a request is closed too (uvicorn arms no timer here).
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self.conn.their_state is h11.IDLE and self._header_deadline is None:
            # The first bytes of the next request on a kept-alive connection: its clock starts.
            self._arm_header_deadline()
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            # The header block is complete (the body's read time is the application's guard).
            self._cancel_header_deadline()

    def _next_event(self) -> Any:
        """h11's next event, a request with too many header fields answered 431 instead of served."""
        event = self._h11_next_event()
        if isinstance(event, h11.Request) and (
            len(event.headers) > self.max_headers
            or len(event.target) + sum(len(name) + len(value) for name, value in event.headers) > self.max_header_bytes
        ):
            self._refuse(_TOO_MANY_HEADERS_RESPONSE, "request header block too large")
            # uvicorn stops reading on PAUSED; the connection is already closing.
            return h11.PAUSED
        return event

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_timeout(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._refuse(_TIMEOUT_RESPONSE, "request headers not received in time")

    def _refuse(self, response: bytes, why: str) -> None:
        self._refused = True
        self._cancel_header_deadline()
        self.logger.warning("HTTP connection refused: %s", why)
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()


def guarded_protocol(
    header_timeout_s: float = HEADER_TIMEOUT_S, max_headers: int = MAX_HEADERS, max_header_bytes: int = MAX_HEADER_BYTES
) -> type[GuardedH11Protocol]:
    """The protocol class (uvicorn's `http=`) with these limits."""
    limits = {"header_timeout_s": header_timeout_s, "max_headers": max_headers, "max_header_bytes": max_header_bytes}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), limits)

"""The gateway's input guard: what every request must satisfy before any route, auth or parser sees it.

A pure ASGI middleware checking, in this order and without trusting the client: the size of each
header (400) and of the query string (414), that the path and every query parameter decode to text
without NUL (400 naming the parameter), the declared `Content-Length` (413 before a byte of the body
is read), then the body itself read under a deadline (408 for a client that trickles it) and a size
limit (413 while reading), and a JSON body's nesting depth (400 `invalid_json`, before the recursive
parser sees it). The body read here is handed on unchanged, so the routes read it as before.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.bounds import JSON_MAX_DEPTH, BoundsError, check_json_depth, check_text
from services.gateway.errors import error_body


@dataclass(frozen=True)
class GuardLimits:
    """Limits of one request: sizes in bytes, the body's read deadline in seconds."""

    max_body_bytes: int = 64 * 1024
    max_header_bytes: int = 8 * 1024
    max_query_bytes: int = 4 * 1024
    max_query_value_chars: int = 1024
    max_json_depth: int = JSON_MAX_DEPTH
    body_timeout_s: float = 10.0


class RequestRefused(Exception):
    """A request refused by the guard, answered with the error envelope."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


async def send_error(
    send: Send, status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> None:
    """Answer with the gateway's error envelope straight from a middleware."""
    body = msgspec.json.encode(error_body(code, message, details))
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def check_headers(scope: Scope, limits: GuardLimits) -> int | None:
    """The declared body length (None: not declared).

    Raises:
        RequestRefused: a header too large, or a `Content-Length` that is not a number or too large.
    """
    declared: int | None = None
    for name, value in scope.get("headers", ()):
        if len(value) > limits.max_header_bytes:
            header = name.decode("latin-1")[:64]
            raise RequestRefused(
                400,
                "header_too_large",
                f"header {header} is longer than {limits.max_header_bytes} bytes",
                [{"loc": ["header", header], "msg": "too large", "type": "too_long"}],
            )
        if name == b"content-length":
            if not value.isdigit() or len(value) > 18:
                raise RequestRefused(400, "bad_request", "Content-Length is not a number")
            declared = int(value)
    if declared is not None and declared > limits.max_body_bytes:
        raise RequestRefused(413, "payload_too_large", f"request body is larger than {limits.max_body_bytes} bytes")
    return declared


def check_target(scope: Scope, limits: GuardLimits) -> None:
    """The path and query parameters as text: bounded, decodable, without NUL.

    Raises:
        RequestRefused: 414 for a query string too long, 400 naming the parameter otherwise.
    """
    query: bytes = scope.get("query_string", b"")
    if len(query) > limits.max_query_bytes:
        raise RequestRefused(414, "uri_too_long", f"query string is longer than {limits.max_query_bytes} bytes")
    try:
        check_text(scope.get("path", ""), "path")
        text = query.decode("ascii")
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        field = exc.field if isinstance(exc, BoundsError) else "query"
        raise RequestRefused(
            400, "bad_request", f"{field} is not valid text", [{"loc": [field], "msg": str(exc)[:200], "type": "text"}]
        ) from exc
    for name, value in pairs:
        try:
            check_text(name, name[:64], max_length=64)
            check_text(value, name[:64], max_length=limits.max_query_value_chars)
        except BoundsError as exc:
            raise RequestRefused(
                400,
                "validation_error",
                str(exc),
                [{"loc": ["query", exc.field], "msg": exc.reason, "type": "value_error"}],
            ) from exc


async def read_body(receive: Receive, limits: GuardLimits) -> tuple[bytes, list[Message]]:
    """The whole body, read under the deadline and the size limit; the messages seen after it.

    Raises:
        RequestRefused: 408 when the client is too slow, 413 when the body is too large.
    """
    chunks: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.body_timeout_s
    while True:
        remaining = deadline - loop.time()
        try:
            message = await asyncio.wait_for(receive(), max(remaining, 0.001))
        except TimeoutError as exc:
            raise RequestRefused(
                408, "request_timeout", f"request body not received within {limits.body_timeout_s:g} s"
            ) from exc
        if message["type"] != "http.request":
            return b"".join(chunks), [message]  # the client went away
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise RequestRefused(413, "payload_too_large", f"request body is larger than {limits.max_body_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), []


class InputGuard:
    """Pure ASGI middleware applying `GuardLimits` to every HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: GuardLimits | None = None) -> None:
        self.app = app
        self.limits = limits or GuardLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_headers(scope, self.limits)
            check_target(scope, self.limits)
            body, after = await read_body(receive, self.limits)
            if body.lstrip()[:1] in (b"[", b"{"):  # only a JSON array or object can nest
                try:
                    check_json_depth(body, "body", max_depth=self.limits.max_json_depth)
                except BoundsError as exc:
                    raise RequestRefused(
                        400,
                        "invalid_json",
                        f"request body is nested deeper than {self.limits.max_json_depth} levels",
                        [{"loc": ["body"], "msg": exc.reason, "type": "json_too_deep"}],
                    ) from exc
        except RequestRefused as refused:
            headers = {"Connection": "close"} if refused.status in (408, 413) else None
            await send_error(send, refused.status, refused.code, refused.message, refused.details, headers)
            return
        await self.app(scope, replay(body, after, receive), send)


def replay(body: bytes, after: list[Message], receive: Receive) -> Receive:
    """A `receive` handing over the body already read, then what came after it, then the client's."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}, *after]

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed

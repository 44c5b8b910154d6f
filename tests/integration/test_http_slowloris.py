"""Slow and oversized clients against real sockets: the gateway's HTTP server (its uvicorn
configuration, `services.gateway.main.http_config`) and the venue simulator's process both cut a
connection that dribbles its headers or sends nothing, and refuse header blocks that are too many
or too large, while ordinary requests on kept-alive connections are served."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from entrypoints.harness.venue import running_venue_sim
from services.gateway.main import EmbeddedServer, bind_socket, http_config

HEADER_TIMEOUT_S = 0.6


async def _hello(_: object) -> PlainTextResponse:
    return PlainTextResponse("ok")


@contextlib.asynccontextmanager
async def _gateway_server() -> AsyncIterator[int]:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = Starlette(routes=[Route("/", _hello)])
    server = EmbeddedServer(http_config(app, header_timeout_s=HEADER_TIMEOUT_S, max_headers=20))
    # The socket already listens: connections wait in its backlog until uvicorn accepts them.
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _dribble(port: int, lines: list[bytes], pause_s: float, give_up_s: float) -> tuple[bytes, float]:
    """Send `lines` one every `pause_s`, then keep dribbling header bytes until the server closes
    (or `give_up_s` passes); what the server answered and when it closed (s after connecting)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    received = b""
    try:
        index = 0
        while time.monotonic() - start < give_up_s:
            line = lines[index] if index < len(lines) else b"X-Slow: 1\r\n"
            index += 1
            with contextlib.suppress(ConnectionError):
                writer.write(line)
                await writer.drain()
            try:
                chunk = await asyncio.wait_for(reader.read(4096), pause_s)
            except TimeoutError:
                continue
            except ConnectionError:
                break
            if not chunk:
                break
            received += chunk
        return received, time.monotonic() - start
    finally:
        writer.close()


async def _request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


async def test_gateway_http_when_headers_dribbled_or_none_then_cut_and_normal_requests_served() -> None:
    async with _gateway_server() as port:
        answer, closed_after = await _dribble(port, [b"GET / HTTP/1.1\r\n", b"Host: x\r\n"], 0.2, give_up_s=8)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert HEADER_TIMEOUT_S <= closed_after < HEADER_TIMEOUT_S + 2

        # A connection that never sends anything is closed as well.
        silent, closed_after = await _dribble(port, [b""] * 100, 0.2, give_up_s=8)
        assert closed_after < HEADER_TIMEOUT_S + 2 and silent.startswith(b"HTTP/1.1 408")

        # Two requests on one kept-alive connection, the second after the first's deadline had
        # passed: each request has its own clock.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            first = await asyncio.wait_for(reader.readuntil(b"ok"), 5)
            assert first.startswith(b"HTTP/1.1 200")
            await asyncio.sleep(HEADER_TIMEOUT_S + 0.3)
        writer.close()

        many = b"".join(b"X-H%d: 1\r\n" % i for i in range(25))
        assert (await _request(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")).startswith(b"HTTP/1.1 431")
        huge = b"X-Big: " + b"a" * (40 * 1024) + b"\r\n"
        assert (await _request(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + huge + b"\r\n")).startswith(b"HTTP/1.1 431")
        # Still serving.
        assert (await _request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("timeout_s", [1.0])
async def test_venue_sim_when_headers_dribbled_then_cut_and_header_count_bounded(
    tmp_path: Path, timeout_s: float
) -> None:
    with running_venue_sim(tmp_path, "--source", "synthetic", "--http-idle-timeout", str(timeout_s)) as url:
        port = int(urlsplit(url).port or 0)
        answer, closed_after = await _dribble(port, [b"GET /fapi/v1/ping HTTP/1.1\r\n", b"Host: x\r\n"], 0.2, 10)
        assert closed_after < timeout_s + 3, (answer, closed_after)
        many = b"".join(b"X-H%d: 1\r\n" % i for i in range(110))
        refused = await _request(port, b"GET /fapi/v1/ping HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        assert b" 400 " in refused.split(b"\r\n")[0] and b"Too many headers" in refused, refused
        ok = await _request(port, b"GET /fapi/v1/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200"), ok

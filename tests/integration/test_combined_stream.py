"""The combined-stream client against a real WebSocket server (aiohttp): the server's pings are
answered, and a venue that answers our pings but sends no data is silent (SPEC FM-N1)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from entrypoints.infra import free_port
from libs.binance.stream import CombinedStream, StreamClosed

pytestmark = pytest.mark.timeout(60)


class Venue:
    """A WebSocket endpoint that sends `frames` data frames, pings the client every `ping_s`, and
    then keeps the connection open without data (its pongs to our pings are automatic)."""

    def __init__(self, frames: int = 1, ping_s: float | None = None) -> None:
        self.frames = frames
        self.ping_s = ping_s
        self.pongs = 0

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        for n in range(self.frames):
            await ws.send_str(f'{{"stream": "btcusdt@aggTrade", "data": {{"a": {n}}}}}')

        async def pinger() -> None:
            while self.ping_s is not None and not ws.closed:
                await asyncio.sleep(self.ping_s)
                await ws.ping(b"venue")

        task = asyncio.create_task(pinger())
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)  # the venue answers our pings all along
                elif msg.type == aiohttp.WSMsgType.PONG:
                    self.pongs += 1
        finally:
            task.cancel()
        return ws


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[object]:
    runners: list[web.AppRunner] = []

    async def start(venue: Venue) -> str:
        app = web.Application()
        app.router.add_get("/stream", venue.handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"ws://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_stream_when_venue_answers_pings_but_sends_no_data_then_closed_as_silent(serve) -> None:
    url = await serve(Venue(frames=1))
    stream = CombinedStream(url, ["btcusdt@aggTrade"], silence_timeout_s=1.0, ping_interval_s=0.2, pong_timeout_s=0.5)
    await stream.connect()
    started = time.monotonic()
    received = []
    with pytest.raises(StreamClosed, match="no data"):
        async for frame in stream:
            received.append(frame)
    await stream.close()
    assert len(received) == 1
    # Pongs arrived every 0.2 s all along; the silence still ends the stream at about 1 s.
    assert time.monotonic() - started < 2.0


async def test_stream_when_venue_pings_then_each_ping_answered_and_data_flows(serve) -> None:
    venue = Venue(frames=3, ping_s=0.1)
    url = await serve(venue)
    stream = CombinedStream(url, ["btcusdt@aggTrade"], silence_timeout_s=1.0, ping_interval_s=5.0)
    await stream.connect()
    received = []
    with pytest.raises(StreamClosed):
        async for frame in stream:
            received.append(frame.data["a"])
    await stream.close()
    assert received == [0, 1, 2]
    assert venue.pongs >= 5  # the venue's pings in that second, each answered


async def test_stream_when_more_streams_than_the_url_carries_then_subscribed_paced_under_10_messages_a_second(
    serve,
) -> None:
    received_at: list[float] = []
    subscribed: list[str] = []
    in_url: list[str] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        in_url.extend(request.query["streams"].split("/"))
        async for msg in ws:
            received_at.append(time.monotonic())
            command = msg.json()
            subscribed.extend(command["params"])
            await ws.send_json({"result": None, "id": command["id"]})  # Binance's answer
            if len(in_url) + len(subscribed) == 60:
                await ws.send_str('{"stream": "s59@aggTrade", "data": {"a": 1}}')
        return ws

    app = web.Application()
    app.router.add_get("/stream", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        names = [f"s{n}@aggTrade" for n in range(60)]
        stream = CombinedStream(f"ws://127.0.0.1:{port}", names, url_streams=10, subscribe_batch=4, messages_per_s=5)
        await stream.connect()
        frames = aiter(stream)
        first = await anext(frames)  # the replies are not frames (nor bad ones): the data is the first
        await stream.close()
    finally:
        await runner.cleanup()
    assert first.stream == "s59@aggTrade" and first.error is None
    assert in_url + subscribed == names
    assert len(received_at) == 13  # 50 streams, 4 a message
    busiest = max(sum(1 for at in received_at if start <= at < start + 1.0) for start in received_at)
    assert busiest <= 6  # the venue closes a connection over 10 messages a second


def test_stream_when_more_streams_than_one_connection_allows_then_refused_with_how_to_fix() -> None:
    with pytest.raises(ValueError, match="split them over several connections"):
        CombinedStream("ws://127.0.0.1:1", [f"s{n}@aggTrade" for n in range(1025)])

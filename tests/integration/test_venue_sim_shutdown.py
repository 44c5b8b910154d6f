"""The venue simulator stops at once on SIGTERM even with clients connected to its streams: it closes
them (1001 going away) instead of waiting for them to leave."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp

from entrypoints.harness.venue import PROJECT_ROOT
from entrypoints.infra import free_port, tcp_ready


async def test_sigterm_when_stream_clients_connected_then_closed_going_away_and_exits_promptly(tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "venue_sim.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "services.venue_sim.main", "--port", str(port), "--source", "synthetic"),
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "BULWARK_SYMBOLS": "BTCUSDT"},
        )
    try:
        deadline = time.monotonic() + 40
        while not tcp_ready("127.0.0.1", port, 0.2):
            assert process.returncode is None and time.monotonic() < deadline, "simulator did not start"
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as session:
            url = f"ws://127.0.0.1:{port}/stream?streams=btcusdt@depth@100ms/btcusdt@aggTrade"
            async with session.ws_connect(url) as market, session.ws_connect(url) as other:
                assert (await market.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                closes = []
                for ws in (market, other):
                    while True:
                        message = await ws.receive(timeout=5)
                        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                            closes.append(ws.close_code)
                            break
                assert await asyncio.wait_for(process.wait(), 5) == 0
                assert time.monotonic() - started < 3.0
                assert closes == [1001, 1001]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

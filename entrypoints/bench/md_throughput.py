"""market-data publish throughput: the simulator replays as fast as it can, market-data publishes
onto JetStream, and the MARKET_DATA stream's message count is sampled. Pipelined (`publish_many`,
the default) against one acknowledged publish at a time, same run.

    .venv/bin/python -m entrypoints.bench.md_throughput [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from entrypoints.harness.embedded import EmbeddedInfra
from entrypoints.harness.venue import running_venue_sim
from libs.bus import Bus
from libs.settings import Settings
from proto import subjects
from services.market_data import main as market_data_main
from services.market_data.handlers import MarketDataService


class _Sequential(MarketDataService):
    """The service without pipelining: every message awaits its own acknowledgement."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["publish_many"] = None
        super().__init__(**kwargs)


async def _venue_published(venue_url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{venue_url}/_sim/state") as response:
        return int((await response.json())["messages_published"])


async def _measure(nats_url: str, venue_url: str, seconds: float, warmup_s: float) -> tuple[float, float]:
    settings = Settings(
        nats_url=nats_url,
        venue_rest_url=venue_url,
        venue_ws_url=venue_url.replace("http://", "ws://"),
        symbols=("BTCUSDT", "ETHUSDT"),
        log_level="ERROR",
    )
    task = asyncio.create_task(market_data_main.run(settings), name="market-data")
    bus = Bus("bench-md")
    await bus.connect(nats_url)
    try:
        await asyncio.sleep(warmup_s)
        start_count = (await bus.js.stream_info(subjects.STREAM_MARKET_DATA.name)).state.messages
        start_venue = await _venue_published(venue_url)
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        end_count = (await bus.js.stream_info(subjects.STREAM_MARKET_DATA.name)).state.messages
        elapsed = time.perf_counter() - start
        venue_rate = (await _venue_published(venue_url) - start_venue) / elapsed
        return (end_count - start_count) / elapsed, venue_rate
    finally:
        await bus.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def md_throughput(seconds: float = 8.0, warmup_s: float = 4.0) -> dict[str, Any]:
    """md.* messages per second stored in MARKET_DATA, sequential vs pipelined (fresh servers each)."""
    result: dict[str, Any] = {"seconds": seconds}
    for mode in ("sequential", "pipelined"):
        with tempfile.TemporaryDirectory() as folder:
            servers = EmbeddedInfra(Path(folder)).start(("nats",))
            try:
                with running_venue_sim(Path(folder), "--speed", "max") as venue_url:
                    original = market_data_main.MarketDataService
                    if mode == "sequential":
                        market_data_main.MarketDataService = _Sequential  # type: ignore[misc]
                    try:
                        rate, venue_rate = asyncio.run(_measure(servers.nats_url, venue_url, seconds, warmup_s))
                    finally:
                        market_data_main.MarketDataService = original  # type: ignore[misc]
            finally:
                servers.stop()
        result[f"{mode}_msgs_per_s"] = round(rate)
        result[f"{mode}_venue_frames_per_s"] = round(venue_rate)
    return result


def format_md_throughput(result: dict[str, Any]) -> str:
    """One line for the bench report."""
    return (
        f"market-data → MARKET_DATA at replay speed max: sequential {result['sequential_msgs_per_s']}/s, "
        f"pipelined {result['pipelined_msgs_per_s']}/s (venue sent {result['sequential_venue_frames_per_s']}/s and "
        f"{result['pipelined_venue_frames_per_s']}/s stream frames)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    print(format_md_throughput(md_throughput(parser.parse_args().seconds)))  # noqa: T201 - CLI output

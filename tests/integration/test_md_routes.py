"""market-data against a venue that routes streams by path as Binance USD-M (`/public` depth,
`/market` trades, mark price and liquidations): with one connection per route every kind of data
arrives; the old single un-routed connection gets the depth only and loses the rest, silently.

Real processes and servers as in `test_md_faults`: the simulator (`--stream-routing binance`, its
default) is a subprocess, nats-server is fresh per test, market-data and state-builder run in-process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from entrypoints.harness.venue import running_venue_sim
from proto import subjects
from tests.integration.test_md_faults import Harness, _settings, _start
from tests.support.polling import eventually

pytestmark = pytest.mark.timeout(180)
KINDS = {"mark": subjects.MD_MARK_ALL, "trade": subjects.MD_TRADE_ALL, "liquidation": subjects.MD_LIQUIDATION_ALL}


@pytest.fixture
def venue_url(tmp_path: Path) -> Iterator[str]:
    # Synthetic market with frequent liquidation cascades: every kind of data within seconds.
    with running_venue_sim(tmp_path, "--source", "synthetic", "--cascade-probability", "0.05") as url:
        yield url


async def _received(harness: Harness) -> dict[str, int]:
    counts = dict.fromkeys(KINDS, 0)
    for kind, subject in KINDS.items():

        async def count(_: Any, kind: str = kind) -> None:
            counts[kind] += 1

        await harness.bus.subscribe_core(subject, count)
    return counts


async def _run(nats_url: str, venue_url: str, *, routed: bool) -> AsyncIterator[tuple[Harness, dict[str, int]]]:
    settings = replace(_settings(nats_url, venue_url), venue_ws_routed=routed)
    async for harness in _start(nats_url, settings, venue_url):
        yield harness, await _received(harness)


async def _every_kind_arrives(harness: Harness, counts: dict[str, int]) -> None:
    await harness.wait_valid(30)
    await eventually(lambda: all(counts.values()), 30, lambda: f"received per kind: {counts}")
    await harness.until(lambda: harness.links()[-1:] == ["CONNECTED"], 20)


async def test_routed_connections_when_venue_routes_by_path_then_marks_trades_and_liquidations_arrive(
    nats_url: str, venue_url: str
) -> None:
    async for harness, counts in _run(nats_url, venue_url, routed=True):
        await _every_kind_arrives(harness, counts)


async def test_single_unrouted_connection_when_venue_routes_by_path_then_only_depth_arrives(
    nats_url: str, venue_url: str
) -> None:
    async for harness, counts in _run(nats_url, venue_url, routed=False):
        await harness.wait_valid(30)  # the depth comes: /stream is served public data
        await asyncio.sleep(8)
        assert counts == dict.fromkeys(KINDS, 0), "an un-routed connection gets no market-class streams"

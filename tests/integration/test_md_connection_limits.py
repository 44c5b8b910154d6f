"""market-data under the venue's connection limits, through the running simulator (a subprocess
with its streams-per-connection limit set to 4 and a fixed-length IP ban) and market-data with the
same limit, state-builder beside it (in-process), nats-server fresh.

One run checks: five symbols' streams spread over several connections, each within the limit, and
every book VALID and exact; one connection dropped → only its symbol resyncs, the others stay
VALID; an IP ban → WebSocket connects refused at the upgrade, market-data makes no further attempt
until the ban's Retry-After has passed (the link down meanwhile), then reconnects and resyncs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nats import errors as nats_errors

from entrypoints.harness.venue import running_venue_sim
from tests.integration.test_md_faults import Harness, _settings, _start
from tests.support.polling import eventually

pytestmark = pytest.mark.timeout(240)
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT")
LIMIT = 4
BAN_S = 5


@pytest.fixture
def venue_url(tmp_path: Path) -> Iterator[str]:
    args = ("--source", "synthetic", "--ws-max-streams", str(LIMIT), "--ban-escalation", "1")
    with running_venue_sim(tmp_path, *args, env={"BULWARK_SYMBOLS": ",".join(SYMBOLS)}) as url:
        yield url


@pytest_asyncio.fixture
async def harness(nats_url: str, venue_url: str) -> AsyncIterator[Harness]:
    settings = replace(_settings(nats_url, venue_url), symbols=SYMBOLS, md_ws_max_streams=LIMIT)
    async for value in _start(nats_url, settings, venue_url):
        yield value


async def _sim_state(harness: Harness) -> dict[str, Any]:
    async with harness.http.get(f"{harness.venue}/_sim/state") as response:
        return dict(await response.json())


async def _valid_and_exact(harness: Harness, symbol: str) -> bool:
    """The state-builder serves `symbol` VALID, and then its book equals the venue's at that update id."""
    try:
        return await harness.assert_valid_book_is_true(symbol)
    except (TimeoutError, nats_errors.Error):  # the state-builder not answering yet: not VALID
        return False


async def _all_valid(harness: Harness, symbols: tuple[str, ...] = SYMBOLS) -> bool:
    return all([await _valid_and_exact(harness, symbol) for symbol in symbols])


def _resyncs(harness: Harness) -> list[str]:
    return [m.symbol for s, m in harness.events if s.startswith("md.resync.")]


async def test_streams_over_the_limit_when_spread_then_valid_one_drop_resyncs_its_symbol_and_a_ban_is_waited_out(
    harness: Harness,
) -> None:
    await eventually(lambda: _all_valid(harness), 60, "every symbol VALID and exact")
    state = await _sim_state(harness)
    market = [c for c in state["ws_connections"] if not c["user_stream"]]
    # 5 depth streams on /public (4 + 1), 3 market streams a symbol on /market (one symbol each).
    assert sorted((c["path"], c["streams"]) for c in market) == sorted(
        [("/public/stream", 4), ("/public/stream", 1)] + [("/market/stream", 3)] * 5
    ), market
    await harness.until(lambda: harness.links()[-1:] == ["CONNECTED"], 20)

    # One symbol's connections dropped (and refused for 3 s): only its book resyncs.
    resyncs_before, events_before = len(_resyncs(harness)), len(harness.events)

    def downs() -> list[Any]:
        return [
            m
            for s, m in harness.events[events_before:]
            if s == "evt.link.binance-usdm.market-ws" and m.current.value in ("DISCONNECTED", "DEGRADED")
        ]

    await harness.fault(kind="ws_close", symbol="BNBUSDT", duration_s=3)
    await harness.until(lambda: bool(downs()), 10)
    for _ in range(10):  # while BNBUSDT is away, the other four stay VALID (and exact)
        assert await _all_valid(harness, SYMBOLS[:4])
        await asyncio.sleep(0.2)
    await harness.until(lambda: "BNBUSDT" in _resyncs(harness)[resyncs_before:], 15)
    assert all(m.symbols == ["BNBUSDT"] for m in downs()), downs()
    await eventually(lambda: _all_valid(harness), 30, "BNBUSDT back VALID")
    assert set(_resyncs(harness)[resyncs_before:]) == {"BNBUSDT"}
    await harness.until(lambda: harness.links()[-1:] == ["CONNECTED"], 20)

    # An IP ban: every connection dropped; connects refused at the upgrade (418, Retry-After) until it ends.
    await harness.fault(kind="http_418", params={"retry_after_s": BAN_S})
    async with harness.http.get(f"{harness.venue}/fapi/v1/time") as response:
        assert response.status == 418  # the ban starts here, unknown to market-data
    links_before = len(harness.links())
    await harness.fault(kind="ws_close")
    await harness.until(lambda: "DISCONNECTED" in harness.links()[links_before:], 10)
    await asyncio.sleep(BAN_S - 1)
    state = await _sim_state(harness)
    assert state["ip_ban"]["banned"], state["ip_ban"]
    refused = state["ip_ban"]["refused_ws_connects"]
    # At most the first attempt of each connection; after it, every one waits for the Retry-After.
    assert 1 <= refused <= len(market), state["ip_ban"]
    assert "CONNECTED" not in harness.links()[links_before:], "risk must see the link down during the ban"
    await eventually(lambda: _all_valid(harness), 40, "every symbol VALID again after the ban")
    await harness.until(lambda: harness.links()[-1:] == ["CONNECTED"], 20)
    state = await _sim_state(harness)
    assert state["ip_ban"]["refused_ws_connects"] == refused, "no connect after the first refusal during the ban"
    assert "md.ip_banned.binance-usdm" in harness.alerts()

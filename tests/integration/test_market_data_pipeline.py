"""venue simulator → market-data → JetStream → state-builder: the served book equals the venue's
true book at the same update id, and the hot state becomes VALID.

Real processes and servers: the simulator runs as a subprocess (killed by pid), nats-server is
a fresh one from the `nats_url` fixture, market-data and state-builder run in-process through
their own `run` entry points.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import aiohttp
import msgspec
import pytest
import pytest_asyncio

from entrypoints.harness.venue import running_venue_sim
from entrypoints.infra import free_port
from libs.bus import Bus, cancel_and_wait
from libs.settings import Settings
from proto import subjects
from services.market_data import main as market_data_main
from services.state_builder import main as state_builder_main
from tests.support.polling import eventually

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SYMBOL = "BTCUSDT"


@pytest.fixture
def venue_url(tmp_path: Path) -> Iterator[str]:
    """The venue simulator on a free port."""
    with running_venue_sim(tmp_path) as url:
        yield url


@pytest_asyncio.fixture
async def pipeline(nats_url: str, venue_url: str) -> AsyncIterator[tuple[Bus, str]]:
    """market-data and state-builder running against the simulator; yields a test bus client."""
    settings = Settings(
        nats_url=nats_url,
        venue_rest_url=venue_url,
        venue_ws_url=venue_url.replace("http://", "ws://"),
        symbols=(SYMBOL, "ETHUSDT"),
        log_level="WARNING",
    )
    tasks = [
        asyncio.create_task(market_data_main.run(settings), name="market-data"),
        asyncio.create_task(state_builder_main.run(settings), name="state-builder"),
    ]
    bus = Bus("pipeline-test")
    await bus.connect(nats_url)
    try:
        yield bus, venue_url
    finally:
        await bus.close()
        await cancel_and_wait(tasks)
        assert all(task.done() for task in tasks), "a service did not stop when cancelled"


async def book(bus: Bus, depth: int = 20) -> dict:
    reply = await bus.request(
        subjects.SVC_STATE_BUILDER_BOOK,
        msgspec.json.encode({"symbol": SYMBOL, "depth": depth}),
    )
    return msgspec.json.decode(reply)


def as_decimals(levels: list[list[str]]) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(price), Decimal(qty)) for price, qty in levels]


async def wait_valid(bus: Bus, timeout_s: float = 20.0) -> dict:
    served: dict = {}

    async def valid() -> dict | None:
        nonlocal served
        with contextlib.suppress(Exception):
            served = await book(bus)
        return served if served.get("status") == "VALID" else None

    found: dict = await eventually(valid, timeout_s, lambda: f"hot state not VALID: {served}")
    return found


async def assert_book_matches_venue(bus: Bus, http: aiohttp.ClientSession, venue_rest: str) -> None:
    """The served top 20 equals the simulator's true book at the update id the state-builder reports."""
    served = await book(bus)
    last = served["last_update_id"]
    params = {"depth": "20", "update_id": str(last)}
    async with http.get(f"{venue_rest}/_sim/book/{SYMBOL}", params=params) as response:
        assert response.status == 200, await response.text()
        truth = await response.json()
    assert truth["last_update_id"] == last
    assert len(served["bids"]) == len(served["asks"]) == 20
    assert as_decimals(served["bids"]) == as_decimals(truth["bids"])
    assert as_decimals(served["asks"]) == as_decimals(truth["asks"])


async def test_pipeline_when_running_then_book_equals_venue_truth_and_hot_state_valid(
    pipeline: tuple[Bus, str],
) -> None:
    bus, venue_rest = pipeline
    await wait_valid(bus, 30)
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            await assert_book_matches_venue(bus, http, venue_rest)
            await asyncio.sleep(0.3)

    entry = await bus.kv_get(subjects.key_hot_state(SYMBOL))
    assert entry is not None
    assert msgspec.json.decode(entry[0])["status"] == "VALID"

    symbols = msgspec.json.decode(await bus.request(subjects.SVC_STATE_BUILDER_SYMBOLS))
    view = symbols["symbols"][SYMBOL]
    assert view["hot_state"] == "VALID"
    assert Decimal(view["best_bid"]) < Decimal(view["best_ask"])
    assert view["age_ms"] is not None and view["age_ms"] < 1000

    # CONNECTED once the post-connect clean window (3 s and 3 fresh updates per symbol) has passed.
    link_state = None
    for _ in range(200):
        link = await bus.kv_get(subjects.key_link("binance-usdm", "market-ws"))
        link_state = msgspec.json.decode(link[0])["state"] if link is not None else None
        if link_state == "CONNECTED":
            break
        await asyncio.sleep(0.05)
    assert link_state == "CONNECTED"

    unknown = msgspec.json.decode(await bus.request(subjects.SVC_STATE_BUILDER_BOOK, b'{"symbol": "NOPEUSDT"}'))
    assert unknown["error"]["code"] == "not_found"


async def test_pipeline_when_depth_dropped_or_socket_closed_then_resynced_and_exact_again(
    pipeline: tuple[Bus, str],
) -> None:
    bus, venue_rest = pipeline
    seen: list[str] = []

    async def record(msg: object) -> None:
        seen.append(msg.subject)  # type: ignore[attr-defined]

    await bus.subscribe_core("md.resync.>", record)
    await bus.subscribe_core("evt.link.>", record)
    await bus.subscribe_core("evt.hotstate.BTCUSDT", record)
    await wait_valid(bus, 30)
    async with aiohttp.ClientSession() as http:
        # A lost depth event: market-data must see the pu break, resync, and rebuild exactly.
        seen.clear()
        async with http.post(f"{venue_rest}/_sim/faults", json={"kind": "drop_depth", "symbol": SYMBOL}) as r:
            assert r.status in (200, 201), await r.text()
        await eventually(lambda: f"md.resync.binance-usdm.{SYMBOL}" in seen, interval_s=0.05)
        assert f"md.resync.binance-usdm.{SYMBOL}" in seen
        await wait_valid(bus)
        await assert_book_matches_venue(bus, http, venue_rest)

        # The socket closes: link down, reconnect, fresh snapshots, VALID and exact again.
        seen.clear()
        async with http.post(f"{venue_rest}/_sim/faults", json={"kind": "ws_close"}) as r:
            assert r.status in (200, 201), await r.text()
        await eventually(lambda: seen.count("evt.link.binance-usdm.market-ws") >= 2, interval_s=0.05)
        assert seen.count("evt.link.binance-usdm.market-ws") >= 2, seen
        await wait_valid(bus)
        await assert_book_matches_venue(bus, http, venue_rest)
        assert "evt.hotstate.BTCUSDT" in seen


async def test_rest_client_when_talking_to_simulator_then_answers_and_errors_are_classified(venue_url: str) -> None:
    from libs.binance.client import BinanceRestClient, VenueError, VenueUnreachable

    settings = Settings()
    async with BinanceRestClient(venue_url, settings.venue_api_key, settings.venue_api_secret) as client:
        assert await client.server_time_ms() > 0
        depth = await client.depth(SYMBOL, 5)
        assert depth["lastUpdateId"] > 0 and len(depth["bids"]) == 5
        assert client.used_weight_1m is None or client.used_weight_1m >= 0
        assert "markPrice" in await client.premium_index(SYMBOL)
        assert Decimal((await client.open_interest(SYMBOL))["openInterest"]) >= 0
        assert isinstance(await client.balance(), list)  # signed: the signature is accepted
        assert isinstance(await client.open_orders(SYMBOL), list)
        with pytest.raises(VenueError) as unknown_order:
            await client.query_order(SYMBOL, orig_client_order_id="does-not-exist")
        assert 400 <= unknown_order.value.status < 500 and unknown_order.value.code is not None

    async with BinanceRestClient(f"http://127.0.0.1:{free_port()}", timeout_s=2) as nobody:
        with pytest.raises(VenueUnreachable):
            await nobody.server_time_ms()

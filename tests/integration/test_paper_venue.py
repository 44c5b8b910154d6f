"""The paper venue: a simulator started with `--source mirror` follows another venue's live book
(here a simulator serving as the real venue) and fills orders against it with its own matching
engine; the mirrored venue's own record holds none of them, and the venue's key is not the paper
account's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from libs.binance.client import BinanceRestClient
from libs.binance.errors import VenueError
from libs.logging import get_logger
from services.venue_sim.adapters.mirror import MirrorSource
from services.venue_sim.adapters.synthetic import SyntheticSource
from services.venue_sim.config import SimConfig
from services.venue_sim.main import build_simulator
from tests.support.polling import eventually

VENUE_KEY, VENUE_SECRET = "real-venue-key", "real-venue-secret"
PAPER_KEY, PAPER_SECRET = "paper-key", "paper-secret"


async def _state(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(f"{base}/_sim/state") as response:
        return dict(await response.json())


@pytest.fixture
async def venues() -> AsyncIterator[tuple[str, str, aiohttp.ClientSession]]:
    """(the venue's URL, the paper venue's URL, a session): the paper venue mirrors the venue."""
    venue_config = SimConfig(seed=3, api_key=VENUE_KEY, api_secret=VENUE_SECRET)
    venue = TestServer(
        build_simulator(venue_config, SyntheticSource(["BTCUSDT"], seed=3), "venue").build_app(), host="127.0.0.1"
    )
    await venue.start_server()
    venue_url = str(venue.make_url("")).rstrip("/")
    mirror = await MirrorSource.connect(
        venue_url, venue_url.replace("http", "ws"), ["BTCUSDT"], get_logger("paper-venue")
    )
    paper_config = SimConfig(api_key=PAPER_KEY, api_secret=PAPER_SECRET, symbols=("BTCUSDT",))
    paper = TestServer(build_simulator(paper_config, mirror, "mirror").build_app(), host="127.0.0.1")
    await paper.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield venue_url, str(paper.make_url("")).rstrip("/"), session
    finally:
        await paper.close()
        await venue.close()


async def test_paper_venue_when_venue_market_moves_then_book_follows_and_orders_fill_only_on_paper(
    venues: tuple[str, str, aiohttp.ClientSession],
) -> None:
    venue, paper, session = venues

    # The mirror follows diff by diff: it moves on with the venue (the first move may be its
    # starting snapshot, every later one is a diff).
    for _ in range(3):
        seen = (await _state(session, paper))["books"]["BTCUSDT"]["last_update_id"]
        await eventually(
            lambda seen=seen: _advanced(session, paper, seen),
            timeout_s=20,
            failure=lambda seen=seen: f"paper book stuck at {seen}",
        )
    # With the venue's market held still, the paper book is exactly the venue's.
    async with session.post(f"{venue}/_sim/pause") as response:
        assert response.status == 200
    venue_book = await eventually(lambda: _same_book(session, venue, paper), timeout_s=20)

    async with BinanceRestClient(paper, PAPER_KEY, PAPER_SECRET) as client:
        placed = await client.place_order(
            symbol="BTCUSDT",
            side="BUY",
            type="MARKET",
            quantity="0.010",
            newClientOrderId=f"paper-{uuid.uuid4().hex[:12]}",
        )
        order = await client.query_order("BTCUSDT", orig_client_order_id=placed["clientOrderId"])
    assert order["status"] == "FILLED", order
    # Filled by the paper venue's engine against the venue's live book (its best ask).
    assert Decimal(order["avgPrice"]) == Decimal(venue_book["best_ask"]), (order, venue_book)
    assert [o["client_order_id"] for o in (await _state(session, paper))["orders"]] == [placed["clientOrderId"]]
    assert (await _state(session, venue))["orders"] == []
    # The venue's key opens no paper account, and the paper key no account at the venue.
    async with BinanceRestClient(paper, VENUE_KEY, VENUE_SECRET) as client:
        with pytest.raises(VenueError):
            await client.open_orders("BTCUSDT")
    async with BinanceRestClient(venue, PAPER_KEY, PAPER_SECRET) as client:
        with pytest.raises(VenueError):
            await client.open_orders("BTCUSDT")


async def _advanced(session: aiohttp.ClientSession, paper: str, first: int) -> bool:
    return bool((await _state(session, paper))["books"]["BTCUSDT"]["last_update_id"] > first)


async def _same_book(session: aiohttp.ClientSession, venue: str, paper: str) -> dict[str, Any] | None:
    theirs = (await _state(session, venue))["books"]["BTCUSDT"]
    ours = (await _state(session, paper))["books"]["BTCUSDT"]
    keys = ("last_update_id", "best_bid", "best_ask")
    return theirs if all(theirs[key] == ours[key] for key in keys) else None

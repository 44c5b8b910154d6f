"""The user-data stream's listen key against the venue simulator: the key is closed at the venue
(`DELETE /fapi/v1/listenKey`, as an expiry ends it) and the stream cannot come back for a while,
and an order of ours fills in that gap; the service takes a new key, reconnects, and books the fill
once (the safety poll of a stream that is up is far away, so nothing else finds it first)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import aiohttp
import pytest

from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    System,
    add_fault,
    assert_venue_matches_system,
    eventually,
    local_position,
    market_order,
    settings_overrides_fixture,
    sim_state,
    submit,
    system_fixture,
    venue_url_fixture,
    wait_status,
)

STREAM_UP_POLL = {"order_safety_poll_s": 120.0}


async def _user_connections(system: System) -> int:
    return int((await sim_state(system.venue_url)).get("connections", 0))


async def _close_listen_key(system: System) -> None:
    headers = {"X-MBX-APIKEY": system.settings.venue_api_key}
    async with (
        aiohttp.ClientSession() as session,
        session.delete(f"{system.venue_url}/fapi/v1/listenKey", headers=headers) as answer,
    ):
        assert answer.status == 200, await answer.text()


@pytest.mark.parametrize("settings_overrides", [STREAM_UP_POLL])
async def test_listen_key_when_closed_at_venue_and_order_fills_meanwhile_then_new_key_and_fill_booked_once(
    system: System,
) -> None:
    pool = system.pool

    async def stream_up() -> bool:
        return await _user_connections(system) >= 1

    await eventually(stream_up, 20)
    await asyncio.sleep(1.0)
    # The venue fills the next order 3 s after accepting it.
    await add_fault(system.venue_url, {"kind": "delayed_fill", "params": {"ms": 3000}})
    order = market_order("listen-key-gap")
    await submit(system.bus, order)
    await wait_status(pool, order.client_order_id, "NEW", timeout_s=15)
    # The key ends at the venue, and user streams cannot connect for 5 s: the fill falls in the gap.
    await add_fault(system.venue_url, {"kind": "ws_close", "duration_s": 5, "count": 1000})
    await _close_listen_key(system)

    row = await wait_status(pool, order.client_order_id, "FILLED", timeout_s=30)
    assert row["filled_quantity"] == Decimal("0.01")
    booked = await pool.fetchval("SELECT sum(quantity) FROM fills WHERE client_order_id = $1", order.client_order_id)
    assert booked == Decimal("0.01")  # every trade of the fill, each once
    assert await local_position(pool) == Decimal("0.01")
    await eventually(stream_up, 30)  # back on a new key
    await assert_venue_matches_system(pool, system.venue_url)

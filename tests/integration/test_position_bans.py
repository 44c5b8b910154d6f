"""An IP ban (418 with Retry-After) the position service receives itself, against the venue
simulator answering 418 to every request while the ban lasts (as Binance does, and bans longer a
client that keeps sending): after the first refusal no request of any kind leaves the service
(polls, order placements, keep-alives) until Retry-After has passed; an order approved meanwhile is
held and sent once after the ban."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    System,
    add_fault,
    assert_venue_matches_system,
    eventually,
    market_order,
    order_row,
    settings_overrides_fixture,
    submit,
    system_fixture,
    venue_url_fixture,
    wait_status,
)

BAN_S = 5
BUSY = {"order_safety_poll_s": 0.3, "order_poll_interval_s": 0.3}


async def _fault_used(url: str, fault_id: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_sim/faults") as answer:
        faults = await answer.json()
    listed = faults if isinstance(faults, list) else faults.get("faults", [])
    return next(int(f["used"]) for f in listed if str(f["id"]) == fault_id)


@pytest.mark.parametrize("settings_overrides", [BUSY])
async def test_ip_ban_when_venue_answers_418_then_no_request_until_retry_after_and_order_sent_once_after(
    system: System,
) -> None:
    url = system.venue_url
    await asyncio.sleep(1.0)  # polling the venue several times a second
    fault_id = await add_fault(
        url, {"kind": "http_418", "count": 10_000, "duration_s": BAN_S, "params": {"retry_after_s": BAN_S}}
    )
    banned_at = time.monotonic()

    async def refused_once() -> int:
        return await _fault_used(url, fault_id)

    first_wave = await eventually(refused_once, 5)
    await asyncio.sleep(0.5)  # requests already in flight when the first 418 came back
    settled = await _fault_used(url, fault_id)
    order = market_order("ip-ban")
    await submit(system.bus, order)
    await wait_status(system.pool, order.client_order_id, "PENDING_SUBMISSION")
    await asyncio.sleep(max(0.0, BAN_S - 1.0 - (time.monotonic() - banned_at)))
    during = await _fault_used(url, fault_id)
    assert during == settled, (
        f"{during - settled} request(s) sent while banned (first wave {first_wave}, then {settled})"
    )
    assert settled <= 5, f"{settled} requests refused before the ban was honoured"

    row = await wait_status(system.pool, order.client_order_id, "FILLED", timeout_s=30)
    assert row["status"] == "FILLED"
    await asyncio.sleep(1.0)
    state = await assert_venue_matches_system(system.pool, url)
    assert len([o for o in state["orders"] if o["client_order_id"] == order.client_order_id]) == 1
    assert (await order_row(system.pool, order.client_order_id))["filled_quantity"] > 0

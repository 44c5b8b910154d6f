"""Orders placed on the venue account by anyone else (the venue's web page, another tool), here a
signed REST call to the simulator with the account's own key, are adopted as EXTERNAL as soon as
the user-data stream reports them: a projection row (what `/v1/orders` serves) with source
EXTERNAL, their fills booked into the position (no correction needed afterwards), a P2 alert, and
the events on the ORDERS stream (what the audit writer records and a replay rebuilds: the order is
still there, and cancelable, after a restart)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from libs.binance.client import BinanceRestClient
from proto import subjects
from proto.messages import CancelOrder
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    SYMBOL,
    System,
    assert_venue_matches_system,
    eventually,
    local_position,
    order_row,
    raised_alerts,
    settings_overrides_fixture,
    sim_state,
    system_fixture,
    venue_url_fixture,
    wait_status,
)


async def _alert_keys(system: System) -> set[str]:
    return {alert["key"] for alert in await raised_alerts(system)}


async def _place_as_someone_else(system: System, **params: str) -> dict[str, Any]:
    settings = system.settings
    async with BinanceRestClient(system.venue_url, settings.venue_api_key, settings.venue_api_secret) as client:
        return await client.place_order(**params)


async def _user_stream_up(system: System) -> None:
    async def connected() -> bool:
        state = await sim_state(system.venue_url)
        return bool(state.get("connections", 0))

    await eventually(connected, 20)
    await asyncio.sleep(1.0)  # the first reconciliation after the stream opened is done


@pytest.mark.parametrize("settings_overrides", [{"order_safety_poll_s": 30.0, "order_poll_interval_s": 0.5}])
async def test_external_orders_when_placed_on_the_account_then_adopted_from_the_stream_with_fills(
    system: System,
) -> None:
    pool = system.pool
    await _user_stream_up(system)
    book = (await sim_state(system.venue_url))["books"][SYMBOL]
    far_below = (Decimal(book["best_bid"]) * Decimal("0.97")).quantize(Decimal("0.1"))
    await _place_as_someone_else(
        system,
        symbol=SYMBOL,
        side="BUY",
        type="LIMIT",
        timeInForce="GTC",
        quantity="0.01",
        price=str(far_below),
        newClientOrderId="web_resting_1",
    )
    await _place_as_someone_else(
        system, symbol=SYMBOL, side="BUY", type="MARKET", quantity="0.02", newClientOrderId="web_market_1"
    )

    resting = await wait_status(pool, "web_resting_1", "NEW", timeout_s=15)
    assert resting["source"] == "EXTERNAL" and resting["price"] == far_below and resting["venue_order_id"]
    filled = await wait_status(pool, "web_market_1", "FILLED", timeout_s=15)
    assert filled["source"] == "EXTERNAL" and filled["filled_quantity"] == Decimal("0.02")
    fills = await pool.fetchval("SELECT sum(quantity) FROM fills WHERE client_order_id = 'web_market_1'")
    assert fills == Decimal("0.02")

    async def booked() -> bool:
        return await local_position(pool) == Decimal("0.02")

    await eventually(booked, 10)
    keys = await _alert_keys(system)
    assert {"external-order:web_resting_1", "external-order:web_market_1"} <= keys
    # The fill was booked as a fill of a known order: nothing had to be corrected to the venue.
    assert f"reconcile-position:{SYMBOL}" not in keys
    await assert_venue_matches_system(pool, system.venue_url)

    # Adopted through the log: a restarted service rebuilds it from the replay, and it can be canceled.
    await system.stop(subjects.POSITION)
    system.start(subjects.POSITION)
    await system.wait_ready()
    await system.bus.publish(subjects.CMD_ORDER_CANCEL, CancelOrder(client_order_id="web_resting_1", operator="bob"))
    await wait_status(pool, "web_resting_1", "CANCELED", timeout_s=20)
    assert (await order_row(pool, "web_market_1"))["status"] == "FILLED"
    assert await local_position(pool) == Decimal("0.02")
    await assert_venue_matches_system(pool, system.venue_url)

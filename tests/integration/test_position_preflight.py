"""The venue preflight in the running position service (+ risk) against the venue simulator as an
external venue, on real NATS and Postgres: all ok at start and orders fill; an account switched to
hedge mode fails it at the next reconnect of the order link, trading is HALTED with the reason and
orders are refused, and nothing crashes; passing again does not resume trading. Orders approved while
the order link was down wait for the preflight of the next connection: an entry never reaches an
account the preflight refuses, a reduce-only close still does."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
import pytest
from msgspec import structs

from proto import subjects
from proto.enums import Side
from proto.kv import PreflightValue, TradingStateValue, decode_value
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    SYMBOL,
    VENUE,
    System,
    add_fault,
    assert_venue_matches_system,
    clear_faults,
    eventually,
    market_order,
    order_row,
    settings_overrides_fixture,
    sim_state,
    submit,
    system_fixture,
    venue_url_fixture,
    wait_status,
)

FAST = {"venue_breaker_open_s": 1.0, "order_safety_poll_s": 1.0, "venue_leverage": "BTCUSDT=7,*=3"}


async def _preflight(system: System) -> PreflightValue | None:
    entry = await system.bus.kv_get(subjects.key_preflight(VENUE))
    return decode_value(PreflightValue, entry[0] if entry else None)


async def _trading(system: System) -> TradingStateValue | None:
    entry = await system.bus.kv_get(subjects.KEY_TRADING_STATE)
    return decode_value(TradingStateValue, entry[0] if entry else None)


async def _link_state(system: System) -> str | None:
    entry = await system.bus.kv_get(subjects.key_link(VENUE, subjects.ORDER_LINK))
    return msgspec.json.decode(entry[0])["state"] if entry else None


async def _set_modes(url: str, body: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session, session.post(f"{url}/_sim/account_modes", json=body) as answer:
        assert answer.status == 200, await answer.text()


async def _reconnect_order_link(system: System) -> None:
    """Take the venue away until the order link is DISCONNECTED, then give it back until CONNECTED."""
    fault = await add_fault(system.venue_url, {"kind": "outage"})

    async def down() -> bool:
        return await _link_state(system) == "DISCONNECTED"

    await eventually(down, 30)
    await clear_faults(system.venue_url)
    assert fault

    async def up() -> bool:
        return await _link_state(system) == "CONNECTED"

    await eventually(up, 30)


@pytest.mark.parametrize("settings_overrides", [FAST])
async def test_preflight_when_venue_set_up_then_all_ok_and_an_operator_order_fills(system: System) -> None:
    value = await eventually(lambda: _preflight(system), 10)
    assert value.ok and value.trigger == "start", value
    names = {check.name for check in value.checks}
    assert {"server_time", "api_key", "position_mode", "leverage.BTCUSDT", "leverage.ETHUSDT", "balance"} <= names
    assert "BTCUSDT leverage set to 7x" in [c.message for c in value.checks if c.name == "leverage.BTCUSDT"]
    order = market_order("preflight-ok")
    await submit(system.bus, order)
    await wait_status(system.pool, order.client_order_id, "FILLED", timeout_s=30)
    await asyncio.sleep(1.0)
    await assert_venue_matches_system(system.pool, system.venue_url)
    position = await system.pool.fetchrow("SELECT quantity FROM positions WHERE symbol = $1", SYMBOL)
    assert position["quantity"] == Decimal("0.01")


@pytest.mark.parametrize("settings_overrides", [FAST])
async def test_preflight_when_venue_switched_to_hedge_mode_then_halted_with_reason_and_orders_refused(
    system: System,
) -> None:
    await eventually(lambda: _preflight(system), 10)
    await _set_modes(system.venue_url, {"dualSidePosition": True})
    await _reconnect_order_link(system)

    async def failed() -> PreflightValue | None:
        value = await _preflight(system)
        return value if value is not None and value.trigger == "reconnect" and not value.ok else None

    value = await eventually(failed, 30)
    assert [check.name for check in value.checks if not check.ok] == ["position_mode"]

    async def halted() -> TradingStateValue | None:
        trading = await _trading(system)
        return trading if trading is not None and trading.state.value == "HALTED" else None

    trading = await eventually(halted, 15)
    assert "position_mode" in trading.reason and "dualSidePosition=false" in trading.reason, trading.reason
    refused = market_order("preflight-hedge")
    await submit(system.bus, refused)
    await wait_status(system.pool, refused.client_order_id, "DENIED", timeout_s=20)
    # Nothing crashed: both services still run, and the order link is up.
    assert all(not task.done() for task in system.tasks.values())
    assert await _link_state(system) == "CONNECTED"

    # Fixed at the venue: the next preflight passes, but trading stays HALTED for the operator.
    await _set_modes(system.venue_url, {"dualSidePosition": False})
    await _reconnect_order_link(system)

    async def passed() -> PreflightValue | None:
        value = await _preflight(system)
        return value if value is not None and value.ok else None

    await eventually(passed, 30)
    await asyncio.sleep(1.0)
    trading_after = await _trading(system)
    assert trading_after is not None and trading_after.state.value == "HALTED"


@pytest.mark.parametrize("settings_overrides", [{**FAST, "venue_profile": "binance"}])
async def test_preflight_when_real_money_profile_then_every_start_halts_even_when_all_ok(system: System) -> None:
    value = await eventually(lambda: _preflight(system), 10)
    assert value.ok and value.profile == "binance"

    async def halted() -> TradingStateValue | None:
        trading = await _trading(system)
        return trading if trading is not None and trading.state.value == "HALTED" else None

    trading = await eventually(halted, 15)
    assert "real-money" in trading.reason and "resume" in trading.reason, trading.reason
    refused = market_order("preflight-mainnet")
    await submit(system.bus, refused)
    await wait_status(system.pool, refused.client_order_id, "DENIED", timeout_s=20)


@pytest.mark.parametrize("settings_overrides", [FAST])
async def test_preflight_gate_when_hedge_mode_found_at_reconnect_then_queued_entry_never_reaches_venue(
    system: System,
) -> None:
    bus, pool, venue_url = system.bus, system.pool, system.venue_url
    await eventually(lambda: _preflight(system), 10)
    opened = market_order("gate-open")
    await submit(bus, opened)
    await wait_status(pool, opened.client_order_id, "FILLED", timeout_s=30)

    await _set_modes(venue_url, {"dualSidePosition": True})
    await add_fault(venue_url, {"kind": "outage"})

    async def down() -> bool:
        return await _link_state(system) == "DISCONNECTED"

    await eventually(down, 30)
    entry = market_order("gate-entry")
    close = structs.replace(market_order("gate-close", side=Side.SELL), reduce_only=True)
    await submit(bus, entry)
    await wait_status(pool, entry.client_order_id, "PENDING_SUBMISSION")
    await submit(bus, close)
    await wait_status(pool, close.client_order_id, "PENDING_SUBMISSION")
    await clear_faults(venue_url)

    # The reconnect's preflight finds hedge mode: the entry approved during the outage is rejected
    # with that reason instead of being sent. The reduce-only close is not held back by the preflight
    # and goes out; a hedge-mode account refuses a one-way order (-4061, as Binance does), which the
    # system records as the venue's rejection: the position stays until the account is one-way again.
    row = await wait_status(pool, entry.client_order_id, "REJECTED", timeout_s=40)
    assert "preflight failed" in row["reason"] and "position_mode" in row["reason"], row["reason"]
    refused = await wait_status(pool, close.client_order_id, "REJECTED", timeout_s=30)
    assert "-4061" in refused["reason"], refused["reason"]
    value = await _preflight(system)
    assert value is not None and value.trigger == "reconnect" and not value.ok
    await asyncio.sleep(2.0)  # a few more polls: still never sent
    state = await sim_state(venue_url)
    sent = {order["client_order_id"] for order in state["orders"]}
    assert entry.client_order_id not in sent, "an entry reached an account the preflight refused"
    assert opened.client_order_id in sent
    assert (await order_row(pool, entry.client_order_id))["status"] == "REJECTED"
    assert await _link_state(system) == "CONNECTED"

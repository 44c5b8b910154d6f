"""Protective stops on a venue that takes conditional orders only through Binance's Algo Service
(as Binance since 2025-12-09: STOP_MARKET on `/fapi/v1/order` is refused with -4120): the stop
is placed with `algoOrder` under the system's client order id, triggers on a mark-price move, and
the position closes exactly once, its fill booked on the stop (no external order adopted).

Real nats-server, Postgres and the venue simulator started with `--conditional-orders algo`.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from entrypoints.harness.venue import running_venue_sim
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    SYMBOL,
    System,
    assert_venue_matches_system,
    eventually,
    local_position,
    market_order,
    settings_overrides_fixture,
    spike_mark,
    submit,
    system_fixture,
    venue_position,
    wait_status,
)


@pytest.fixture(name="venue_url")
def venue_url_fixture(tmp_path: Path) -> Iterator[str]:
    """The simulator refusing conditional order types outside the Algo Service, whatever its default."""
    with running_venue_sim(tmp_path, "--source", "synthetic", "--conditional-orders", "algo") as url:
        yield url


async def raw_state(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_sim/state") as response:
        state: dict[str, Any] = await response.json()
        return state


async def test_stop_when_venue_takes_conditional_orders_only_as_algo_orders_then_triggers_and_closes_once(
    system: System,
) -> None:
    bus, pool, url = system.bus, system.pool, system.venue_url
    state = await raw_state(url)
    mark = Decimal(state["books"][SYMBOL]["mark_price"])
    stop_loss, take_profit = Decimal(int(mark * Decimal("0.98"))), Decimal(int(mark * Decimal("1.02")))
    entry = msgspec.structs.replace(market_order("algo-entry"), stop_loss=stop_loss, take_profit=take_profit)
    await submit(bus, entry)
    await wait_status(pool, entry.client_order_id, "FILLED")

    async def resting() -> Any:
        algo = [a for a in (await raw_state(url))["algo_orders"] if a["status"] == "NEW"]
        return algo if len(algo) == 2 else None

    algo = {a["type"]: a for a in await eventually(resting, 20)}
    stop, take = algo["STOP_MARKET"], algo["TAKE_PROFIT_MARKET"]
    assert Decimal(stop["trigger_price"]) == stop_loss and Decimal(take["trigger_price"]) == take_profit
    assert stop["working_type"] == "MARK_PRICE" and stop["reduce_only"] and stop["side"] == "SELL"
    assert Decimal(stop["quantity"]) == Decimal("0.01")
    # The system knows them under the same ids, live; nothing it sent was refused (no -4120).
    for placed in (stop, take):
        await wait_status(pool, placed["client_algo_id"], "NEW")
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'REJECTED'") == 0
    assert not [o for o in (await raw_state(url))["orders"] if o["type"] != "MARKET"]

    await spike_mark(url, "down", 5)

    await wait_status(pool, stop["client_algo_id"], "FILLED")
    await wait_status(pool, take["client_algo_id"], "CANCELED")

    async def flat() -> bool:
        return await local_position(pool) == 0 and venue_position(await raw_state(url)) == 0

    await eventually(flat, 20)
    after = await raw_state(url)
    triggered = next(a for a in after["algo_orders"] if a["algo_id"] == stop["algo_id"])
    assert triggered["status"] == "FINISHED" and triggered["actual_order_id"] is not None
    closing = [f for f in after["fills"] if f["order_id"] == triggered["actual_order_id"]]
    assert sum((Decimal(f["quantity"]) for f in closing), Decimal(0)) == Decimal("0.01")
    booked = await pool.fetch("SELECT quantity FROM fills WHERE client_order_id = $1", stop["client_algo_id"])
    assert len(booked) == len(closing)  # each venue fill once, on the stop
    assert sum((f["quantity"] for f in booked), Decimal(0)) == Decimal("0.01")
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE source = 'EXTERNAL'") == 0
    # Only the entry and the stop ever moved the position: one opening, one closing.
    assert await pool.fetchval("SELECT count(*) FROM fills") == len(closing) + len(
        [f for f in after["fills"] if f["client_order_id"] == entry.client_order_id]
    )
    await assert_venue_matches_system(pool, url)

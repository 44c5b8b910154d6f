"""Protective stops (FM-C2): the position service keeps a reduce-only stop and take-profit for a
position opened by an entry that carried them, finds them again after a restart and cancels them
when the position is closed by other means.

Real nats-server, Postgres and the venue simulator; risk and position run in-process.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from proto import subjects
from proto.enums import Side
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    SYMBOL,
    System,
    assert_venue_matches_system,
    eventually,
    market_order,
    settings_overrides_fixture,
    sim_state,
    submit,
    system_fixture,
    venue_url_fixture,
    wait_status,
)


def open_orders(state: dict) -> list[dict]:
    return [o for o in state["orders"] if o["status"] in ("NEW", "PARTIALLY_FILLED")]


async def test_entry_with_stop_and_tp_when_filled_restarted_and_closed_then_one_of_each_and_no_orphans(
    system: System,
) -> None:
    bus, pool, url = system.bus, system.pool, system.venue_url
    book = (await sim_state(url))["books"][SYMBOL]
    stop_loss = Decimal(int(Decimal(book["best_bid"]) * Decimal("0.9")))
    take_profit = Decimal(int(Decimal(book["best_ask"]) * Decimal("1.1")))
    entry = msgspec.structs.replace(market_order("protect-entry"), stop_loss=stop_loss, take_profit=take_profit)
    await submit(bus, entry)
    await wait_status(pool, entry.client_order_id, "FILLED")

    async def protected() -> Any:
        live = open_orders(await sim_state(url))
        return live if len(live) == 2 else None

    live = await eventually(protected, 20)
    by_type = {o["type"]: o for o in live}
    assert set(by_type) == {"STOP_MARKET", "LIMIT"}
    assert all(o["reduce_only"] and o["side"] == "SELL" and Decimal(o["quantity"]) == Decimal("0.01") for o in live)
    assert Decimal(by_type["STOP_MARKET"]["stop_price"]) == stop_loss
    assert Decimal(by_type["LIMIT"]["price"]) == take_profit
    orders_before = len((await sim_state(url))["orders"])

    # Restart: reconciliation finds the same stops (same client order ids), places nothing new.
    await system.stop(subjects.POSITION)
    system.start(subjects.POSITION)
    await system.wait_ready()

    async def reconciled_again() -> Any:
        heartbeat = await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'NEW'")
        return heartbeat == 2

    await eventually(reconciled_again, 20)
    state = await sim_state(url)
    assert len(state["orders"]) == orders_before
    assert len(open_orders(state)) == 2

    # Closed by another order: both protective orders are cancelled, nothing is left at the venue.
    exit_order = msgspec.structs.replace(market_order("protect-exit", side=Side.SELL), reduce_only=True)
    await submit(bus, exit_order)
    await wait_status(pool, exit_order.client_order_id, "FILLED")

    async def bare() -> Any:
        return not open_orders(await sim_state(url))

    await eventually(bare, 20)
    for order in live:
        await wait_status(pool, order["client_order_id"], "CANCELED", "EXPIRED")
    final = await assert_venue_matches_system(pool, url)
    assert len(final["orders"]) == orders_before + 1
    assert await bus.kv_get(f"protection.binance-usdm.{SYMBOL}") is None

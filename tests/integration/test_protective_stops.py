"""Protective stops (FM-C2): the position service keeps a reduce-only stop (STOP_MARKET) and
take-profit (TAKE_PROFIT_MARKET) for a position opened by an entry that carried them, sized to what
is filled; they trigger at the venue on the mark price; the other one is cancelled once flat; they
are found again after a restart and cancelled when the position is closed by other means.

Real nats-server, Postgres and the venue simulator; risk and position run in-process.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from proto import subjects
from proto.enums import Side
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    SYMBOL,
    System,
    add_fault,
    assert_venue_matches_system,
    eventually,
    limit_order,
    local_position,
    market_order,
    open_orders,
    settings_overrides_fixture,
    sim_control,
    sim_state,
    spike_mark,
    submit,
    system_fixture,
    venue_position,
    venue_url_fixture,
    wait_status,
)


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
    assert set(by_type) == {"STOP_MARKET", "TAKE_PROFIT_MARKET"}
    assert all(o["reduce_only"] and o["side"] == "SELL" and Decimal(o["quantity"]) == Decimal("0.01") for o in live)
    assert Decimal(by_type["STOP_MARKET"]["stop_price"]) == stop_loss
    assert Decimal(by_type["TAKE_PROFIT_MARKET"]["stop_price"]) == take_profit
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
    assert await bus.kv_get(subjects.key_protection("binance-usdm", SYMBOL)) is None


def levels(state: dict, below_pct: str = "0.98", above_pct: str = "1.02") -> tuple[Decimal, Decimal]:
    """A stop-loss below and a take-profit above the current mark, on the tick grid."""
    mark = Decimal(state["books"][SYMBOL]["mark_price"])
    return Decimal(int(mark * Decimal(below_pct))), Decimal(int(mark * Decimal(above_pct)))


async def protected_by(url: str, quantity: str) -> list[dict]:
    """The venue's open reduce-only orders once they are exactly one stop and one take-profit of `quantity`."""

    async def check() -> Any:
        live = [o for o in open_orders(await sim_state(url)) if o["reduce_only"]]
        kinds = sorted(o["type"] for o in live)
        sized = all(Decimal(o["quantity"]) == Decimal(quantity) for o in live)
        return live if kinds == ["STOP_MARKET", "TAKE_PROFIT_MARKET"] and sized else None

    live: list[dict] = await eventually(check, 20)
    return live


async def assert_flat_and_consistent(system: System, triggered: dict, other: dict) -> None:
    """After a protective order triggered at the venue: venue and system flat, the other one
    cancelled, and the system's orders and positions equal `/_sim/state`."""
    pool, url = system.pool, system.venue_url
    await wait_status(pool, triggered["client_order_id"], "FILLED")
    await wait_status(pool, other["client_order_id"], "CANCELED", "EXPIRED")

    async def flat() -> bool:
        return await local_position(pool) == 0 and venue_position(await sim_state(url)) == 0

    await eventually(flat, 20)
    state = await assert_venue_matches_system(pool, url)
    assert not open_orders(state)
    venue = {o["client_order_id"]: o for o in state["orders"]}
    assert venue[triggered["client_order_id"]]["status"] == "FILLED"
    assert venue[other["client_order_id"]]["status"] == "CANCELED"

    async def protection_cleared() -> bool:
        return await system.bus.kv_get(subjects.key_protection("binance-usdm", SYMBOL)) is None

    await eventually(protection_cleared, 10)


async def test_stop_loss_when_mark_falls_through_it_then_venue_and_system_flat_and_take_profit_cancelled(
    system: System,
) -> None:
    url = system.venue_url
    stop_loss, take_profit = levels(await sim_state(url))
    entry = msgspec.structs.replace(market_order("stop-hit-entry"), stop_loss=stop_loss, take_profit=take_profit)
    await submit(system.bus, entry)
    await wait_status(system.pool, entry.client_order_id, "FILLED")
    by_type = {o["type"]: o for o in await protected_by(url, "0.01")}

    await spike_mark(url, "down", 5)

    await assert_flat_and_consistent(system, by_type["STOP_MARKET"], by_type["TAKE_PROFIT_MARKET"])


async def test_take_profit_when_mark_rises_through_it_then_venue_and_system_flat_and_stop_cancelled(
    system: System,
) -> None:
    url = system.venue_url
    stop_loss, take_profit = levels(await sim_state(url))
    entry = msgspec.structs.replace(market_order("tp-hit-entry"), stop_loss=stop_loss, take_profit=take_profit)
    await submit(system.bus, entry)
    await wait_status(system.pool, entry.client_order_id, "FILLED")
    by_type = {o["type"]: o for o in await protected_by(url, "0.01")}

    await spike_mark(url, "up", 5)

    await assert_flat_and_consistent(system, by_type["TAKE_PROFIT_MARKET"], by_type["STOP_MARKET"])


async def test_entry_when_partially_filled_then_protection_sized_to_fills_resized_and_stop_closes_all(
    system: System,
) -> None:
    bus, pool, url = system.bus, system.pool, system.venue_url
    # Market paused: nothing rests-fills until resumed, so the first partial fill is observable.
    await sim_control(url, "pause")
    state = await sim_state(url)
    stop_loss, take_profit = levels(state)
    price = Decimal(int(Decimal(state["books"][SYMBOL]["best_ask"]) * Decimal("1.003")))
    await add_fault(url, {"kind": "partial_fill", "symbol": SYMBOL, "params": {"ratio": "0.5"}})
    entry = msgspec.structs.replace(limit_order("partial-entry", price), stop_loss=stop_loss, take_profit=take_profit)
    await submit(bus, entry)
    await wait_status(pool, entry.client_order_id, "PARTIALLY_FILLED")
    first = await protected_by(url, "0.005")
    assert await local_position(pool) == Decimal("0.005")

    # The rest of the entry fills on the next book update: the protection follows the position.
    await sim_control(url, "resume")
    await wait_status(pool, entry.client_order_id, "FILLED")
    resized = {o["type"]: o for o in await protected_by(url, "0.01")}
    for old in first:
        await wait_status(pool, old["client_order_id"], "CANCELED")
    state = await assert_venue_matches_system(pool, url)
    protective = [o for o in state["orders"] if o["reduce_only"]]
    assert len(protective) == 4, protective  # two sized 0.005 (cancelled), two sized 0.01 (open)

    await spike_mark(url, "down", 5)

    await assert_flat_and_consistent(system, resized["STOP_MARKET"], resized["TAKE_PROFIT_MARKET"])


@pytest.mark.parametrize(
    ("stop_pct", "take_profit_pct", "refused_type"),
    [("1.02", "1.10", "STOP_MARKET"), ("0.90", "0.98", "TAKE_PROFIT_MARKET")],
    ids=["stop-already-passed", "take-profit-already-passed"],
)
async def test_protective_order_when_mark_already_past_its_level_then_position_closed_at_market(
    system: System, stop_pct: str, take_profit_pct: str, refused_type: str
) -> None:
    bus, pool, url = system.bus, system.pool, system.venue_url
    # The market is paused so the mark stays where the levels were set from: a long whose stop is
    # above the mark (or whose take-profit is below it) would trigger at once; the venue refuses it (-2021).
    await sim_control(url, "pause")
    stop_loss, take_profit = levels(await sim_state(url), stop_pct, take_profit_pct)
    entry = msgspec.structs.replace(market_order("passed-entry"), stop_loss=stop_loss, take_profit=take_profit)
    await submit(bus, entry)
    await wait_status(pool, entry.client_order_id, "FILLED")

    async def flat() -> bool:
        state = await sim_state(url)
        return await local_position(pool) == 0 and venue_position(state) == 0 and not open_orders(state)

    await eventually(flat, 20)
    refused = await pool.fetchrow(
        "SELECT * FROM orders WHERE type = $1 AND status = 'REJECTED' AND reduce_only", refused_type
    )
    assert refused is not None and refused["reason"].startswith("would trigger immediately")
    state = await assert_venue_matches_system(pool, url)
    closes = [o for o in state["orders"] if o["type"] == "MARKET" and o["reduce_only"]]
    assert [(o["side"], Decimal(o["executed_qty"]), o["status"]) for o in closes] == [
        ("SELL", Decimal("0.01"), "FILLED")
    ]
    assert not await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'REJECTED' AND reason NOT LIKE 'would%'")

    async def protection_cleared() -> bool:
        return await bus.kv_get(subjects.key_protection("binance-usdm", SYMBOL)) is None

    await eventually(protection_cleared, 10)

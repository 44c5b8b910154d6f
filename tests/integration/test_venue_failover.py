"""FM-N6 failover to a configured backup venue: risk and one position process per venue (as their
mains run them) against two venue simulators, on real nats-server and Postgres.

The rule under test (docs/risk.md "Venue routing"): a flat symbol goes to the backup while the main
venue's order link is DISCONNECTED; a symbol's position stays on the venue that holds it, so its
exits go there (also after the main venue is back), and an order in a symbol held on the down main
venue waits there as PENDING_SUBMISSION and is sent once when it returns. Each venue ends with
exactly the orders the system believes it placed there.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from entrypoints.harness.venue import running_venue_sim
from libs.bus import Bus
from libs.runtime.service import run_service
from proto import subjects
from proto.enums import Side
from proto.messages import SubmitOrder
from services.position.main import setup as position_setup
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    VENUE,
    System,
    add_fault,
    assert_venue_matches_system,
    clear_faults,
    consumer_bound,
    market_order,
    order_row,
    sim_state,
    submit,
    system_fixture,
    venue_url_fixture,
    wait_status,
)
from tests.support.polling import eventually

BACKUP_VENUE = "binance-usdm-backup"
FAST = {"venue_breaker_open_s": 1.0, "order_safety_poll_s": 1.0}


@pytest.fixture(name="backup_url")
def backup_url_fixture(tmp_path: Path) -> Iterator[str]:
    """The backup venue: a second simulator with its own account and state."""
    folder = tmp_path / "backup"
    folder.mkdir()
    with running_venue_sim(folder, "--source", "synthetic") as url:
        yield url


@pytest.fixture(name="settings_overrides")
def settings_overrides_fixture(backup_url: str) -> dict[str, Any]:
    return {
        **FAST,
        "backup_venue": BACKUP_VENUE,
        "backup_venue_rest_url": backup_url,
        "backup_venue_ws_url": backup_url.replace("http://", "ws://"),
    }


@pytest_asyncio.fixture(name="backup")
async def backup_fixture(system: System) -> str:
    """The backup venue's position process (`position-<venue>`), started like the main one."""
    component = subjects.position_component(BACKUP_VENUE, VENUE)
    settings = dataclasses.replace(system.settings, position_venue=BACKUP_VENUE)
    system.tasks[component] = asyncio.create_task(
        run_service(component, position_setup, needs_db=True, settings=settings)
    )

    async def bound() -> bool:
        return await consumer_bound(system.bus, f"{component}-orders")

    await eventually(bound, 30)
    return component


async def _link(bus: Bus, venue: str) -> str | None:
    entry = await bus.kv_get(subjects.key_link(venue, subjects.ORDER_LINK))
    return msgspec.json.decode(entry[0])["state"] if entry else None


async def _wait_link(bus: Bus, venue: str, state: str, timeout_s: float = 30.0) -> None:
    async def reached() -> bool:
        return await _link(bus, venue) == state

    await eventually(reached, timeout_s)


def _exit(key: str, quantity: str = "0.01") -> SubmitOrder:
    return msgspec.structs.replace(market_order(key, quantity, side=Side.SELL), reduce_only=True)


async def _venue_orders(url: str, coid: str) -> list[dict]:
    return [order for order in (await sim_state(url))["orders"] if order["client_order_id"] == coid]


async def _filled_on(system: System, order: SubmitOrder, venue: str) -> None:
    row = await wait_status(system.pool, order.client_order_id, "FILLED", timeout_s=30)
    assert row["venue"] == venue, (order.idempotency_key, row["venue"])


async def _submit_filled_on(system: System, order: SubmitOrder, venue: str) -> None:
    await submit(system.bus, order)
    await _filled_on(system, order, venue)


async def _main_venue_down(system: System) -> None:
    """The main venue's REST API down (its market data flowing) until its order link says so."""
    await add_fault(system.venue_url, {"kind": "rest_outage"})
    await _wait_link(system.bus, VENUE, "DISCONNECTED")


async def test_failover_when_main_venue_down_then_flat_symbol_trades_on_backup_and_stays_there(
    system: System, backup: str, backup_url: str
) -> None:
    bus, pool, main_url = system.bus, system.pool, system.venue_url
    # Each position process says its order link is up once it reconciled at start: risk reads it.
    await _wait_link(bus, VENUE, "CONNECTED")
    await _wait_link(bus, BACKUP_VENUE, "CONNECTED")

    # Main venue up: orders go there.
    opened = market_order("failover-main-open")
    await _submit_filled_on(system, opened, VENUE)
    closed = _exit("failover-main-close")
    await _submit_filled_on(system, closed, VENUE)

    # Main venue down, the symbol flat: an entry goes to the backup and fills there, once.
    await _main_venue_down(system)
    failover = market_order("failover-backup-open")
    await _submit_filled_on(system, failover, BACKUP_VENUE)
    assert len(await _venue_orders(backup_url, failover.client_order_id)) == 1

    # Main venue back: the position is on the backup, so its exit goes there too.
    await clear_faults(main_url)
    await _wait_link(bus, VENUE, "CONNECTED")
    back = _exit("failover-backup-close")
    await _submit_filled_on(system, back, BACKUP_VENUE)

    # Flat everywhere again: the next entry is the main venue's.
    again = market_order("failover-main-again")
    await _submit_filled_on(system, again, VENUE)

    # Main venue down with the symbol held there: the exit waits on the main venue (never the
    # backup, which would open a short there) and is sent once when it returns.
    await _main_venue_down(system)
    held = _exit("failover-main-held-exit")
    await submit(bus, held)
    row = await wait_status(pool, held.client_order_id, "PENDING_SUBMISSION")
    assert row["venue"] == VENUE
    await asyncio.sleep(2.0)
    assert (await order_row(pool, held.client_order_id))["status"] == "PENDING_SUBMISSION"
    await clear_faults(main_url)
    await _filled_on(system, held, VENUE)

    await _wait_link(bus, VENUE, "CONNECTED")
    await asyncio.sleep(1.0)
    main_state = await assert_venue_matches_system(pool, main_url, VENUE)
    backup_state = await assert_venue_matches_system(pool, backup_url, BACKUP_VENUE)
    main_ids = {o["client_order_id"] for o in main_state["orders"]}
    backup_ids = {o["client_order_id"] for o in backup_state["orders"]}
    assert backup_ids == {failover.client_order_id, back.client_order_id}
    assert {opened.client_order_id, closed.client_order_id, again.client_order_id, held.client_order_id} <= main_ids
    assert not main_ids & backup_ids
    positions = {row["venue"]: row["quantity"] for row in await pool.fetch("SELECT venue, quantity FROM positions")}
    assert positions.get(VENUE, Decimal(0)) == 0 and positions.get(BACKUP_VENUE, Decimal(0)) == 0

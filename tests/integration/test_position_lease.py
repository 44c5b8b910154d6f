"""Single writer (SPEC §8): two position-service instances, one lease; only its holder talks to the
venue, and the standby takes over (exactly once per order) when the holder stops.

Real nats-server, Postgres and the venue simulator; risk and both position instances in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

import msgspec

from libs.lease import LEASE_BUCKET, lease_key
from libs.runtime.service import run_service
from proto import subjects
from services.position.main import setup as position_setup
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
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

STANDBY = "position-standby-b"


async def lease_holder(system: System) -> str | None:
    entry = await system.bus.kv_get(lease_key("position"), bucket=LEASE_BUCKET)
    return None if entry is None else str(msgspec.json.decode(entry[0])["holder"])


async def test_two_instances_when_holder_stops_then_standby_takes_over_and_no_order_is_sent_twice(
    system: System,
) -> None:
    bus, pool, url = system.bus, system.pool, system.venue_url
    first_holder = await lease_holder(system)
    assert first_holder is not None and first_holder != STANDBY
    settings = dataclasses.replace(system.settings, instance_id=STANDBY)
    standby = asyncio.create_task(run_service(subjects.POSITION, position_setup, needs_db=True, settings=settings))
    try:
        await asyncio.sleep(1.0)  # let the standby try (and fail) to take the lease
        orders = [market_order(f"lease-{n}") for n in range(3)]
        for order in orders:
            await submit(bus, order)
        for order in orders:
            await wait_status(pool, order.client_order_id, "FILLED")
        assert await lease_holder(system) == first_holder
        state = await sim_state(url)
        coids = [o["client_order_id"] for o in state["orders"]]
        assert sorted(coids) == sorted(o.client_order_id for o in orders)

        # The holder stops (releases the lease): the standby acquires, reconciles and serves.
        await system.stop(subjects.POSITION)

        async def taken_over() -> bool:
            return await lease_holder(system) == STANDBY

        await eventually(taken_over, 30)
        late = market_order("lease-after-takeover")
        await submit(bus, late)
        await wait_status(pool, late.client_order_id, "FILLED", timeout_s=30)
        state = await assert_venue_matches_system(pool, url)
        coids = [o["client_order_id"] for o in state["orders"]]
        assert sorted(coids) == sorted([o.client_order_id for o in orders] + [late.client_order_id])
        fills: Any = await pool.fetchval("SELECT count(*) FROM fills WHERE client_order_id = $1", late.client_order_id)
        assert fills >= 1
        assert len({(f["client_order_id"], f["trade_id"]) for f in state["fills"]}) == len(state["fills"])
    finally:
        standby.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await standby

"""A protective stop the venue leaves in TRIGGERING (the simulator's `stop_stuck_triggering` fault):
its level is crossed, the Algo Service reports it triggering, but no MARKET order ever closes the
position. Within `BULWARK_STOP_TRIGGER_TIMEOUT_S` the position service sees it, raises the
`protection-stuck` alert, closes the position with a reduce-only MARKET order as the stop would have,
and gives the stuck order up (CANCELED here, with the reason); the venue and the system agree afterwards.

Real nats-server, Postgres and the venue simulator (Algo Service mode); risk and position in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from entrypoints.harness.venue import running_venue_sim
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    SYMBOL,
    System,
    add_fault,
    eventually,
    local_position,
    market_order,
    raised_alerts,
    sim_state,
    spike_mark,
    submit,
    system_fixture,
    venue_position,
    wait_status,
)

TIMEOUT_S = 2.0


@pytest.fixture(name="venue_url")
def venue_url_fixture(tmp_path: Path) -> Iterator[str]:
    with running_venue_sim(tmp_path, "--source", "synthetic", "--conditional-orders", "algo") as url:
        yield url


@pytest.fixture(name="settings_overrides")
def settings_overrides_fixture() -> dict[str, Any]:
    return {"stop_trigger_timeout_s": TIMEOUT_S}


async def test_stop_when_venue_leaves_it_triggering_then_alerted_position_closed_at_market_and_stop_given_up(
    system: System,
) -> None:
    bus, pool, url = system.bus, system.pool, system.venue_url
    mark = Decimal((await sim_state(url))["books"][SYMBOL]["mark_price"])
    stop_loss, take_profit = Decimal(int(mark * Decimal("0.98"))), Decimal(int(mark * Decimal("1.02")))
    entry = msgspec.structs.replace(market_order("stuck-entry"), stop_loss=stop_loss, take_profit=take_profit)
    await submit(bus, entry)
    await wait_status(pool, entry.client_order_id, "FILLED")

    async def resting() -> Any:
        algo = [a for a in (await sim_state(url))["algo_orders"] if a["status"] == "NEW"]
        return algo if len(algo) == 2 else None

    algo = {a["type"]: a for a in await eventually(resting, 20)}
    stop, take = algo["STOP_MARKET"], algo["TAKE_PROFIT_MARKET"]
    await wait_status(pool, stop["client_algo_id"], "NEW")

    await add_fault(url, {"kind": "stop_stuck_triggering", "symbol": SYMBOL})
    await spike_mark(url, "down", 5)

    async def stuck() -> Any:
        found = next(a for a in (await sim_state(url))["algo_orders"] if a["algo_id"] == stop["algo_id"])
        return found if found["status"] == "TRIGGERING" else None

    held = await eventually(stuck, 20)
    assert held["actual_order_id"] is None  # the venue never placed the MARKET order
    assert venue_position(await sim_state(url)) == Decimal("0.01")  # so nothing closed the position

    # The system answers: the stop given up with the reason, the position closed at market.
    row = await wait_status(pool, stop["client_algo_id"], "CANCELED", timeout_s=TIMEOUT_S + 15)
    assert "stuck in the venue's trigger" in row["reason"]

    async def flat() -> bool:
        return await local_position(pool) == 0 and venue_position(await sim_state(url)) == 0

    await eventually(flat, 20)
    closes = await pool.fetch(
        "SELECT client_order_id, type, side, reduce_only, status, filled_quantity FROM orders "
        "WHERE idempotency_key LIKE 'protect-close:%'"
    )
    assert [(c["type"], c["side"], c["reduce_only"], c["status"], c["filled_quantity"]) for c in closes] == [
        ("MARKET", "SELL", True, "FILLED", Decimal("0.01"))
    ]
    await wait_status(pool, take["client_algo_id"], "CANCELED")
    alerts = [a for a in await raised_alerts(system) if a["key"] == f"protection-stuck:{SYMBOL}"]
    assert len(alerts) == 1 and alerts[0]["severity"] == "P1"
    assert alerts[0]["details"]["coid"] == stop["client_algo_id"]
    assert float(alerts[0]["details"]["stuck_s"]) >= TIMEOUT_S
    # Still stuck at the venue (the one order the system has given up on); every fill at the venue is
    # booked once on the order that made it, and nothing else moved the position.
    after = await sim_state(url)
    assert next(a for a in after["algo_orders"] if a["algo_id"] == stop["algo_id"])["status"] == "TRIGGERING"
    venue_fills = sorted((f["client_order_id"], Decimal(f["quantity"])) for f in after["fills"])
    booked = sorted((f["client_order_id"], f["quantity"]) for f in await pool.fetch("SELECT * FROM fills"))
    assert venue_fills == booked and {coid for coid, _ in booked} == {
        entry.client_order_id,
        closes[0]["client_order_id"],
    }
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE source = 'EXTERNAL'") == 0

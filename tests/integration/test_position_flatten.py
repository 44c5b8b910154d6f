"""Emergency stop through the position service (SPEC §5): in HARD_SHUTDOWN / EMERGENCY_MODE every
venue position is closed at market (reduce-only), no entry order stays open at the venue, no new
entry is sent, and the protective stops are cancelled only once the position is flat.

The emergency stop is applied as the gateway's `POST /v1/emergency-stop` does it (event, KV level,
halt request to risk). Real nats-server, Postgres and the venue simulator; risk and position run
in-process.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from proto import subjects
from proto.enums import DegradationLevel
from proto.messages import DegradationLevelChanged
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    SYMBOL,
    System,
    assert_venue_matches_system,
    eventually,
    limit_order,
    local_position,
    market_order,
    open_orders,
    settings_overrides_fixture,
    sim_state,
    submit,
    system_fixture,
    venue_position,
    venue_url_fixture,
    wait_status,
)


async def emergency_stop(system: System, *, halt: bool = True) -> None:
    """What the gateway's emergency stop does: HARD_SHUTDOWN event and KV level, then a halt."""
    event = DegradationLevelChanged(previous=None, current=DegradationLevel.HARD_SHUTDOWN, reason="test emergency")
    await system.bus.publish(subjects.EVT_DEGRADATION, event)
    record = {"level": "HARD_SHUTDOWN", "reason": event.reason, "operator": "test", "ts_ns": event.ts_event_ns}
    await system.bus.kv_put(subjects.KEY_DEGRADATION_LEVEL, msgspec.json.encode(record))
    if halt:
        payload = msgspec.json.encode({"operator": "test", "reason": "emergency"})
        await system.bus.request(subjects.SVC_RISK_HALT, payload, timeout_s=5.0)


async def open_position_with_stops_and_resting_entry(system: System) -> tuple[list[dict], Any]:
    """A protected long of 0.01 and a resting entry far below the market; returns the protective
    venue orders and the resting entry."""
    url = system.venue_url
    book = (await sim_state(url))["books"][SYMBOL]
    mark = Decimal(book["mark_price"])
    entry = msgspec.structs.replace(
        market_order("flat-entry"),
        stop_loss=Decimal(int(mark * Decimal("0.97"))),
        take_profit=Decimal(int(mark * Decimal("1.03"))),
    )
    await submit(system.bus, entry)
    await wait_status(system.pool, entry.client_order_id, "FILLED")
    resting = limit_order("flat-resting", Decimal(int(Decimal(book["best_bid"]) * Decimal("0.97"))))
    await submit(system.bus, resting)
    await wait_status(system.pool, resting.client_order_id, "NEW")

    async def protected() -> Any:
        live = [o for o in open_orders(await sim_state(url)) if o["reduce_only"]]
        return live if len(live) == 2 else None

    stops: list[dict] = await eventually(protected, 20)
    return stops, resting


async def assert_flattened(system: System, stops: list[dict], resting: Any) -> dict:
    """Venue and system flat, nothing open at the venue, stops cancelled no earlier than the close."""
    pool, url = system.pool, system.venue_url

    async def flat_and_bare() -> Any:
        state = await sim_state(url)
        return state if venue_position(state) == 0 and not open_orders(state) else None

    state = await eventually(flat_and_bare, 30)
    await wait_status(pool, resting.client_order_id, "CANCELED")
    for stop in stops:
        await wait_status(pool, stop["client_order_id"], "CANCELED")

    async def locally_flat() -> bool:
        return await local_position(pool) == 0

    await eventually(locally_flat, 20)
    state = await assert_venue_matches_system(pool, url)
    closing = [f for f in state["fills"] if f["symbol"] == SYMBOL and f["side"] == "SELL"]
    assert closing, "the position was not closed by a sell at the venue"
    closed_at = max(f["time"] for f in closing)
    venue_orders = {o["client_order_id"]: o for o in state["orders"]}
    for stop in stops:
        assert venue_orders[stop["client_order_id"]]["update_time"] >= closed_at, "stop cancelled before flat"
    return state


async def test_emergency_stop_when_protected_position_and_resting_entry_then_flat_bare_and_no_new_entry(
    system: System,
) -> None:
    stops, resting = await open_position_with_stops_and_resting_entry(system)

    await emergency_stop(system)

    state = await assert_flattened(system, stops, resting)
    # No new entry reaches the venue afterwards.
    late = market_order("flat-late-entry")
    await submit(system.bus, late)
    await wait_status(system.pool, late.client_order_id, "DENIED", "CANCELED")
    after = await sim_state(system.venue_url)
    assert len(after["orders"]) == len(state["orders"])
    assert venue_position(after) == 0


async def test_hard_shutdown_when_risk_is_down_then_position_service_flattens_by_itself(system: System) -> None:
    stops, resting = await open_position_with_stops_and_resting_entry(system)
    await system.stop(subjects.RISK)  # nobody else will send the flatten orders

    await emergency_stop(system, halt=False)

    state = await assert_flattened(system, stops, resting)
    flatten = [o for o in state["orders"] if o["type"] == "MARKET" and o["reduce_only"]]
    assert len(flatten) == 1 and flatten[0]["status"] == "FILLED"

"""Every order-side venue fault, driven through the running position service (+ risk) against the
venue simulator on real NATS and Postgres: afterwards the venue holds exactly the orders the
system believes it placed, each in the status the system shows (SPEC FM-N6, FM-N7, FM-N8, §6)."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from entrypoints.infra import free_port
from libs.binance.client import BinanceRestClient
from libs.ratelimit import RateBudget, SharedBans
from proto import subjects
from proto.codec import decode
from proto.messages import DeadLettered, OrderApproved
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    SYMBOL,
    VENUE,
    System,
    add_fault,
    assert_venue_matches_system,
    clear_faults,
    eventually,
    limit_order,
    market_order,
    order_row,
    raised_alerts,
    settings_overrides_fixture,
    sim_state,
    submit,
    system_fixture,
    venue_url_fixture,
    wait_status,
)

FAST = {"venue_breaker_open_s": 1.0, "order_safety_poll_s": 1.0}


@pytest.fixture(autouse=True)
def short_venue_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 s venue timeout, so that the simulator's slow answers are timeouts (ambiguous)."""
    monkeypatch.setattr("services.position.main.VENUE_TIMEOUT_S", 1.0)


async def _dead_letter_for(system: System, coid: str) -> DeadLettered:
    message = await system.bus.js.get_last_msg(subjects.STREAM_DLQ.name, subjects.dlq("position-orders"))
    letter = decode(message.data or b"")
    assert isinstance(letter, DeadLettered)
    approved = decode(letter.payload.encode())
    assert isinstance(approved, OrderApproved) and approved.order.client_order_id == coid
    return letter


async def _alerts(system: System) -> list[dict[str, Any]]:
    return await raised_alerts(system)


ORDER_FAULTS = [
    pytest.param({"kind": "order_timeout_placed", "params": {"ms": 1500}}, "FILLED", id="timeout-placed"),
    pytest.param({"kind": "order_timeout_not_placed", "params": {"ms": 1500}}, "FILLED", id="timeout-not-placed"),
    pytest.param({"kind": "order_http_5xx", "params": {"status": 502, "placed": True}}, "FILLED", id="5xx-placed"),
    pytest.param({"kind": "order_http_5xx", "params": {"status": 503}}, "FILLED", id="5xx-not-placed"),
    pytest.param({"kind": "clock_skew", "params": {"offset_ms": 10_000}}, "FILLED", id="clock-1021"),
    pytest.param({"kind": "partial_fill", "params": {"ratio": "0.5"}}, "EXPIRED", id="partial-fill"),
    pytest.param({"kind": "delayed_fill", "params": {"ms": 1500}}, "FILLED", id="delayed-fill"),
    pytest.param(
        {
            "kind": "order_reject",
            "params": {"code": -2015, "status": 401, "msg": "Invalid API-key, IP, or permissions"},
        },
        "REJECTED",
        id="auth-2015",
    ),
    pytest.param({"kind": "order_reject", "params": {"code": -2019}}, "REJECTED", id="insufficient-2019"),
]


@pytest.mark.parametrize("settings_overrides", [FAST])
@pytest.mark.parametrize(("fault", "final"), ORDER_FAULTS)
async def test_order_fault_when_injected_then_venue_and_system_agree_on_every_order(
    system: System, fault: dict[str, Any], final: str
) -> None:
    await add_fault(system.venue_url, {"symbol": SYMBOL, **fault})
    order = market_order(f"fault-{fault['kind']}-{final}")
    await submit(system.bus, order)
    row = await wait_status(system.pool, order.client_order_id, final, timeout_s=30)
    await asyncio.sleep(2.0)  # past every delayed answer of the simulator: nothing else may appear
    state = await assert_venue_matches_system(system.pool, system.venue_url)
    venue = [o for o in state["orders"] if o["client_order_id"] == order.client_order_id]
    match final:
        case "FILLED":
            assert len(venue) == 1 and row["filled_quantity"] == Decimal("0.01")
        case "EXPIRED":
            assert len(venue) == 1 and row["filled_quantity"] == Decimal("0.005")
        case "REJECTED":
            assert venue == []
            letter = await _dead_letter_for(system, order.client_order_id)
            assert "PERMANENT" in letter.reason
            alerts = {alert["key"]: alert for alert in await _alerts(system)}
            if fault["params"]["code"] == -2015:
                assert alerts[f"venue-auth:{VENUE}"]["severity"] == "P1"
            else:
                assert f"order-rejected:{order.client_order_id}" in alerts


@pytest.mark.parametrize("settings_overrides", [FAST])
async def test_submit_when_client_order_id_already_at_venue_then_adopts_venue_state_and_no_duplicate(
    system: System,
) -> None:
    best_bid = Decimal((await sim_state(system.venue_url))["books"][SYMBOL]["best_bid"])
    far = (best_bid * Decimal("0.97")).quantize(Decimal("0.1"))
    order = limit_order("fault-duplicate", far)
    # An earlier attempt landed at the venue, but the system never heard of it.
    async with BinanceRestClient(system.venue_url, "bulwark-sim-key", "bulwark-sim-secret") as client:
        await client.place_order(
            symbol=SYMBOL,
            side="BUY",
            type="LIMIT",
            quantity="0.01",
            price=str(far),
            timeInForce="GTC",
            newClientOrderId=order.client_order_id,
        )
    await submit(system.bus, order)
    row = await wait_status(system.pool, order.client_order_id, "NEW")
    assert row["venue_order_id"] is not None
    await asyncio.sleep(1.0)
    state = await assert_venue_matches_system(system.pool, system.venue_url)
    assert len([o for o in state["orders"] if o["client_order_id"] == order.client_order_id]) == 1


async def _link_state(system: System) -> str | None:
    entry = await system.bus.kv_get(subjects.key_link(VENUE, subjects.ORDER_LINK))
    return msgspec.json.decode(entry[0])["state"] if entry else None


@pytest.mark.parametrize("settings_overrides", [FAST])
async def test_venue_outage_when_orders_arrive_then_pending_and_sent_once_after_return(system: System) -> None:
    bus, pool, venue_url = system.bus, system.pool, system.venue_url
    fault_id = await add_fault(venue_url, {"kind": "outage"})
    # One order races the outage (its outcome may be ambiguous), one arrives once the link is known down.
    racing = market_order("outage-racing")
    await submit(bus, racing)

    async def down() -> bool:
        return await _link_state(system) == "DISCONNECTED"

    await eventually(down, 30)
    queued = market_order("outage-queued")
    await submit(bus, queued)
    row = await wait_status(pool, queued.client_order_id, "PENDING_SUBMISSION")
    assert "queued" in row["reason"]
    await asyncio.sleep(2.0)  # the breaker probes, fails again, and still nothing is sent
    row = await order_row(pool, queued.client_order_id)
    assert row["status"] == "PENDING_SUBMISSION"
    await clear_faults(venue_url)
    assert fault_id

    await wait_status(pool, queued.client_order_id, "FILLED", timeout_s=30)
    await wait_status(pool, racing.client_order_id, "FILLED", timeout_s=30)

    async def up() -> bool:
        return await _link_state(system) == "CONNECTED"

    await eventually(up, 10)
    await asyncio.sleep(1.0)
    state = await assert_venue_matches_system(pool, venue_url)
    for coid in (racing.client_order_id, queued.client_order_id):
        assert len([o for o in state["orders"] if o["client_order_id"] == coid]) == 1
    position = await pool.fetchrow("SELECT quantity FROM positions WHERE symbol = $1", SYMBOL)
    assert position["quantity"] == Decimal("0.02")
    alerts = {alert["key"] for alert in await _alerts(system)}
    assert f"venue-order-link:{VENUE}" in alerts


_DEAD = f"127.0.0.1:{free_port()}"  # nothing listens here: connections are refused
BACKUP = {
    **FAST,
    "venue_rest_url": f"http://{_DEAD}",
    "venue_ws_url": f"ws://{_DEAD}",
    "venue_rest_alternates": lambda url: (url,),
    "venue_ws_alternates": lambda url: (url.replace("http://", "ws://"),),
}


@pytest.mark.parametrize("settings_overrides", [BACKUP])
async def test_backup_endpoint_when_main_unreachable_then_orders_and_user_stream_go_through_it(system: System) -> None:
    """FM-N4/N6: the position service's main venue endpoint refuses connections from the start; the
    configured backup endpoint carries its reconciliation, its orders (exactly once) and its
    user-data stream. Nothing is sent twice: a refused connection carries no request."""
    heartbeats: list[dict[str, Any]] = []

    async def on_heartbeat(message: Any) -> None:
        heartbeats.append(msgspec.json.decode(message.data))

    await system.bus.subscribe_core(subjects.heartbeat(subjects.POSITION), on_heartbeat)

    async def stream_up() -> bool:
        return any(beat.get("details", {}).get("user_stream") for beat in heartbeats)

    await eventually(stream_up, 30)
    order = market_order("backup-endpoint")
    await submit(system.bus, order)
    await wait_status(system.pool, order.client_order_id, "FILLED", timeout_s=15)
    state = await assert_venue_matches_system(system.pool, system.venue_url)
    assert len([o for o in state["orders"] if o["client_order_id"] == order.client_order_id]) == 1


@pytest.mark.parametrize("settings_overrides", [{**FAST, "countdown_cancel_s": 3.0, "countdown_refresh_s": 0.5}])
async def test_position_service_when_dead_then_venue_cancels_its_orders_after_countdown(system: System) -> None:
    pool, venue_url = system.pool, system.venue_url
    best_bid = Decimal((await sim_state(venue_url))["books"][SYMBOL]["best_bid"])
    order = limit_order("countdown-resting", (best_bid * Decimal("0.97")).quantize(Decimal("0.1")))
    await submit(system.bus, order)
    await wait_status(pool, order.client_order_id, "NEW")
    await asyncio.sleep(5.0)  # longer than the countdown: re-arming keeps the order alive

    async def venue_status() -> str:
        state = await sim_state(venue_url)
        return next(o["status"] for o in state["orders"] if o["client_order_id"] == order.client_order_id)

    assert await venue_status() == "NEW"
    await system.stop(subjects.POSITION)  # the system dies: nobody re-arms any more

    async def cancelled_at_venue() -> bool:
        return await venue_status() == "CANCELED"

    await eventually(cancelled_at_venue, 15)
    system.start(subjects.POSITION)
    await system.wait_ready()
    await wait_status(pool, order.client_order_id, "CANCELED")
    await assert_venue_matches_system(pool, venue_url)


@pytest.mark.parametrize("settings_overrides", [FAST])
async def test_order_when_another_process_got_418_then_held_until_the_ban_expires_then_sent_once(
    system: System,
) -> None:
    # FM-N2: Binance bans the IP, not the process. market-data's 418 (here: another budget writing
    # the shared ban record, as its SharedBans does) must stop the position service's orders too.
    other = RateBudget(VENUE, time.time_ns)
    shared = SharedBans(system.bus, other, origin="market-data:test", clock_ns=time.time_ns)
    await shared.start()
    try:
        other.on_banned(4.0)  # what BinanceRestClient does with a 418 answer carrying Retry-After: 4
        await shared.flush()
        banned_at = time.monotonic()
        order = market_order("banned-elsewhere")
        await submit(system.bus, order)
        row = await wait_status(system.pool, order.client_order_id, "PENDING_SUBMISSION", timeout_s=10)
        assert "queued" in (row["reason"] or ""), row["reason"]
        while time.monotonic() - banned_at < 3.0:  # nothing reaches the venue while the ban lasts
            orders = (await sim_state(system.venue_url))["orders"]
            assert [o for o in orders if o["client_order_id"] == order.client_order_id] == []
            await asyncio.sleep(0.2)
        await wait_status(system.pool, order.client_order_id, "FILLED", timeout_s=30)
        assert time.monotonic() - banned_at >= 4.0 - 0.5  # not before Retry-After (clock granularity aside)
        await asyncio.sleep(1.0)
        state = await assert_venue_matches_system(system.pool, system.venue_url)
        assert len([o for o in state["orders"] if o["client_order_id"] == order.client_order_id]) == 1
    finally:
        await shared.close()

"""Bounded position-service memory (issue 4): with a long history of finished orders in the
projections and on the ORDERS stream, a restart loads a bounded number of orders (snapshot mode and
projections mode), and an approval of an old order that left memory, delivered again, is still never
sent to the venue a second time (projection lookup).

Real nats-server, Postgres and the venue simulator; risk and position run in-process.
"""

from __future__ import annotations

import dataclasses
import time
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from entrypoints.harness.history import FILLER_SYMBOL, copy_history, filler_rows
from libs.ids import client_order_id_for
from proto import subjects
from proto.enums import Side
from proto.messages import OrderApproved, OrderSubmitted
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    SYMBOL,
    VENUE,
    System,
    eventually,
    market_order,
    settings_overrides_fixture,
    sim_state,
    system_fixture,
    venue_position,
    venue_url_fixture,
)
from tests.integration.test_position_snapshot import position_state, quantities, restart_position, trade

FILLER_ROWS = 50_000
RETAIN_MAX = 50
BOUNDED = {
    "position_retain_terminal_s": 2.0,
    "position_retain_terminal_max": RETAIN_MAX,
    "snapshot_every_events": 200,
    "snapshot_interval_s": 3600.0,
}
"""Finished orders leave memory 2 s after their last update (at most 50 stay); a snapshot whenever the
ORDERS stream grew by 200 messages."""
OLD_KEYS = ("old-buy-1", "old-buy-2", "old-sell")


async def insert_filler_projection(system: System, count: int) -> None:
    """`count` finished filler orders, each with one fill, straight into the projections (as
    bench/recovery_position.py does): months of trading history."""
    now = time.time_ns()
    rows = [filler_rows(number, Side.BUY if number % 2 == 0 else Side.SELL, VENUE, now) for number in range(count)]
    await copy_history(system.pool, [order for order, _ in rows], [fill for _, fill in rows])


async def publish_filler_events(system: System, count: int) -> int:
    """`count` filler events on the ORDERS stream (orders nobody here approved); returns the last sequence."""
    seqs: list[int] = []
    for start in range(0, count, 500):
        items: list[tuple[str, Any, str | None]] = []
        for number in range(start, min(count, start + 500)):
            coid = client_order_id_for(f"filler-event-{number}")
            event = OrderSubmitted(client_order_id=coid, symbol=FILLER_SYMBOL, venue=VENUE)
            items.append((subjects.evt_order("submitted", VENUE, FILLER_SYMBOL), event, f"submitted:{coid}"))
        seqs += await system.bus.publish_many(items, timeout_s=30.0)
    return max(seqs)


async def old_orders_left_memory(system: System) -> dict[str, Any]:
    """Three filled orders (position 0.01 long), a long history, then wait until they left memory
    and a snapshot covers the history; returns the service's state."""
    for key, side in zip(OLD_KEYS, (Side.BUY, Side.BUY, Side.SELL), strict=True):
        await trade(system, key, side)
    await insert_filler_projection(system, FILLER_ROWS)
    last = await publish_filler_events(system, 1000)
    old = {market_order(key).client_order_id for key in OLD_KEYS}

    async def evicted_and_snapshotted() -> Any:
        state = await position_state(system.bus)
        snapshot_seq = await system.pool.fetchval("SELECT max(stream_seq) FROM snapshots WHERE component = 'position'")
        gone = not old & set(state["orders"]) and state["memory"]["evicted"] >= len(OLD_KEYS)
        return state if gone and (snapshot_seq or 0) >= last - 200 else None

    state: dict[str, Any] = await eventually(evicted_and_snapshotted, 30)
    assert quantities(state["positions"]) == {SYMBOL: Decimal("0.01")}
    return state


async def redeliver_approval_and_wait(system: System, key: str) -> None:
    """The approval of an old order on the stream again (as a redelivery after the de-duplication
    window, or a consumer redelivery, would bring it); returns once position-orders handled it."""
    approval = OrderApproved(order=market_order(key))
    seq = await system.bus.publish(
        subjects.evt_order("approved", VENUE, SYMBOL), approval, msg_id=f"again:{key}:{time.time_ns()}"
    )

    async def handled() -> bool:
        info = await system.bus.js.consumer_info(subjects.STREAM_ORDERS.name, "position-orders")
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        return bool(floor >= seq and not info.num_pending and not info.num_ack_pending)

    await eventually(handled, 20)


async def assert_sent_once(system: System, keys: tuple[str, ...], venue_orders: int) -> None:
    """Each old order exactly once at the venue, nothing new there, and the service neither took the
    old order back as a new one nor counted its fills twice."""
    service = await position_state(system.bus)
    for key in keys:
        assert market_order(key).client_order_id not in service["orders"], key
    assert quantities(service["positions"]) == {SYMBOL: Decimal("0.01")}
    state = await sim_state(system.venue_url)
    coids = [o["client_order_id"] for o in state["orders"]]
    for key in keys:
        assert coids.count(market_order(key).client_order_id) == 1, key
    assert len(coids) == venue_orders
    assert venue_position(state) == Decimal("0.01")
    level = await system.bus.kv_get(subjects.KEY_DEGRADATION_LEVEL)
    assert level is None or msgspec.json.decode(level[0])["level"] != "HARD_SHUTDOWN"  # invariants held


@pytest.mark.parametrize("settings_overrides", [BOUNDED])
async def test_restart_when_long_history_then_bounded_orders_loaded_and_old_approval_not_resent(
    system: System,
) -> None:
    await old_orders_left_memory(system)
    venue_orders = len((await sim_state(system.venue_url))["orders"])

    after = await restart_position(system)

    recovery = after["recovery"]
    assert recovery["mode"] == "snapshot"
    assert recovery["replayed"] < 400, recovery  # the tail after a snapshot, not the history
    assert recovery["orders_loaded"] <= RETAIN_MAX, recovery
    assert after["memory"]["orders"] <= RETAIN_MAX
    assert quantities(recovery["positions"]) == {SYMBOL: Decimal("0.01")}
    assert quantities(after["positions"]) == {SYMBOL: Decimal("0.01")}

    await redeliver_approval_and_wait(system, OLD_KEYS[0])

    await assert_sent_once(system, OLD_KEYS, venue_orders)


@pytest.mark.parametrize("settings_overrides", [BOUNDED])
async def test_restart_when_no_snapshot_and_log_truncated_then_projections_loaded_bounded_and_no_resend(
    system: System,
) -> None:
    await old_orders_left_memory(system)
    venue_orders = len((await sim_state(system.venue_url))["orders"])
    await system.stop(subjects.POSITION)
    await system.pool.execute("DELETE FROM snapshots WHERE component = 'position'")
    _, last = await system.bus.stream_bounds(subjects.STREAM_ORDERS.name)
    # The log no longer starts at 1: the stream's retention limit dropped all but its newest messages
    # (no bus user may purge a stream, the admin included: `proto.permissions`).
    info = await system.bus.js.stream_info(subjects.STREAM_ORDERS.name)
    await system.bus.js.update_stream(dataclasses.replace(info.config, max_msgs=11))
    first, _ = await system.bus.stream_bounds(subjects.STREAM_ORDERS.name)
    assert first == last - 10

    system.start(subjects.POSITION)
    await system.wait_ready()

    async def serving() -> Any:
        try:
            state = await position_state(system.bus)
        except Exception:  # not serving yet
            return None
        return state if state["reconciled"] else None

    after: dict[str, Any] = await eventually(serving, 30)
    recovery = after["recovery"]
    assert recovery["mode"] == "projections"
    # 50 000 finished filler orders in the projection: only the newest RETAIN_MAX (and live ones) are read.
    assert recovery["orders_loaded"] <= RETAIN_MAX, recovery
    assert quantities(after["positions"]) == {SYMBOL: Decimal("0.01")}

    await redeliver_approval_and_wait(system, OLD_KEYS[1])

    await assert_sent_once(system, OLD_KEYS, venue_orders)

"""Position snapshots (SPEC §8, FM-C9): the position service snapshots its orders, positions and
protective levels with the ORDERS sequence they cover, and a restart loads the latest valid snapshot
and folds only the tail after it; a corrupt snapshot falls back to an older one or the whole log.

Real nats-server, Postgres and the venue simulator; risk and position run in-process.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from libs.bus import Bus
from proto import subjects
from proto.enums import Side
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    System,
    eventually,
    market_order,
    settings_overrides_fixture,
    submit,
    system_fixture,
    venue_url_fixture,
    wait_status,
)

SNAPSHOT_EVERY = {"snapshot_every_events": 8, "snapshot_interval_s": 3600.0}
"""A snapshot after every 8 ORDERS events the service publishes (an order is about 4), none by time."""


async def position_state(bus: Bus) -> dict[str, Any]:
    """`svc.position.state` of the running position service."""
    reply = await bus.request(subjects.svc_position_state(subjects.POSITION), timeout_s=3.0)
    state: dict[str, Any] = msgspec.json.decode(reply)
    return state


def quantities(positions: dict[str, str]) -> dict[str, Decimal]:
    """Non-zero positions as numbers (their text may differ in trailing zeros)."""
    return {symbol: Decimal(q) for symbol, q in positions.items() if Decimal(q)}


def orders_view(orders: dict[str, Any]) -> dict[str, tuple[str, Decimal]]:
    return {coid: (o["status"], Decimal(o["filled_quantity"])) for coid, o in orders.items()}


async def trade(system: System, key: str, side: Side) -> None:
    order = market_order(key, side=side)
    await submit(system.bus, order)
    await wait_status(system.pool, order.client_order_id, "FILLED")


async def snapshots(system: System) -> list[Any]:
    return await system.pool.fetch("SELECT id, stream_seq FROM snapshots WHERE component = 'position' ORDER BY id DESC")


async def restart_position(system: System) -> dict[str, Any]:
    """Stop and start the position service; its state once it answers again after reconciling."""
    await system.stop(subjects.POSITION)
    system.start(subjects.POSITION)
    await system.wait_ready()

    async def answered() -> Any:
        try:
            state = await position_state(system.bus)
        except Exception:  # not serving yet
            return None
        return state if state["reconciled"] else None

    state: dict[str, Any] = await eventually(answered, 30)
    return state


async def build_history(system: System) -> dict[str, Any]:
    """Five filled orders with snapshots taken along the way, then one more after the last snapshot
    (a tail to replay); returns the service's state."""
    for n, side in enumerate((Side.BUY, Side.BUY, Side.SELL, Side.BUY, Side.BUY)):
        await trade(system, f"snap-{n}", side)

    _, last = await system.bus.stream_bounds(subjects.STREAM_ORDERS.name)

    async def snapshotted() -> Any:
        # One that covers all but the policy's last budget (8 events) of these five trades.
        taken = await snapshots(system)
        return taken if taken and max(row["stream_seq"] for row in taken) >= last - 8 else None

    await eventually(snapshotted, 20)
    await trade(system, "snap-tail", Side.SELL)
    before = await position_state(system.bus)
    assert quantities(before["positions"]) == {"BTCUSDT": Decimal("0.02")}
    return before


@pytest.mark.parametrize("settings_overrides", [SNAPSHOT_EVERY])
async def test_restart_when_snapshots_exist_then_same_state_and_only_the_tail_replayed(system: System) -> None:
    before = await build_history(system)
    _, last = await system.bus.stream_bounds(subjects.STREAM_ORDERS.name)

    after = await restart_position(system)

    recovery = after["recovery"]
    assert recovery["mode"] == "snapshot"
    assert recovery["corrupt_snapshots"] == 0
    # Bounded: only what follows the snapshot, far fewer than the whole stream.
    assert recovery["replayed"] <= last - recovery["snapshot_seq"]
    assert recovery["replayed"] < last / 2, (recovery, last)
    assert quantities(recovery["positions"]) == {"BTCUSDT": Decimal("0.02")}  # before reconciliation
    assert orders_view(after["orders"]) == orders_view(before["orders"])
    assert quantities(after["positions"]) == quantities(before["positions"])


@pytest.mark.parametrize("settings_overrides", [SNAPSHOT_EVERY])
async def test_restart_when_newest_snapshot_corrupt_then_older_one_or_log_and_same_state(system: System) -> None:
    before = await build_history(system)
    newest = (await snapshots(system))[0]
    await system.pool.execute("UPDATE snapshots SET state = $1 WHERE id = $2", b"not a snapshot", newest["id"])

    after = await restart_position(system)

    recovery = after["recovery"]
    assert recovery["corrupt_snapshots"] >= 1
    assert recovery["mode"] in ("snapshot", "full-replay")
    if recovery["mode"] == "snapshot":
        assert recovery["snapshot_seq"] <= newest["stream_seq"]
    assert quantities(recovery["positions"]) == {"BTCUSDT": Decimal("0.02")}
    assert orders_view(after["orders"]) == orders_view(before["orders"])
    assert quantities(after["positions"]) == quantities(before["positions"])


@pytest.mark.parametrize("settings_overrides", [SNAPSHOT_EVERY])
async def test_restart_when_every_snapshot_corrupt_then_whole_log_folded_and_same_state(system: System) -> None:
    before = await build_history(system)
    await system.pool.execute("UPDATE snapshots SET state = $1 WHERE component = 'position'", b"\x00garbage")

    after = await restart_position(system)

    recovery = after["recovery"]
    assert recovery["mode"] == "full-replay" and recovery["snapshot_seq"] is None
    assert recovery["corrupt_snapshots"] >= 1
    assert quantities(recovery["positions"]) == {"BTCUSDT": Decimal("0.02")}
    assert orders_view(after["orders"]) == orders_view(before["orders"])
    assert quantities(after["positions"]) == quantities(before["positions"])

"""One position process per venue (FM-N6 failover to a backup venue): the main venue's process and
the backup venue's, each against its own venue simulator, on one real nats-server and Postgres.

Approvals are published as risk publishes them (`evt.order.approved.<venue>.<symbol>`, the order's
`venue` naming where it goes), so these tests pin the position side of the contract alone: each
process places, cancels, recovers and leases for its own venue only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from nats.js.api import ConsumerConfig

from entrypoints.harness.embedded import EmbeddedInfra
from entrypoints.harness.venue import running_venue_sim
from libs.bus import Bus, Delivery
from libs.errors import TransientError
from libs.lease import LEASE_BUCKET, lease_key
from libs.logging import get_logger
from libs.projections import Projections
from libs.ratelimit import Priority, RateBudget, SharedBans
from libs.runtime.service import run_service
from libs.settings import Settings
from proto import subjects
from proto.codec import decode
from proto.messages import CancelOrder, Heartbeat, OrderApproved, SubmitOrder
from services.position.cancels import CANCEL_DELIVERIES, CANCEL_WAIT_S
from services.position.handlers import PositionService
from services.position.main import setup as position_setup
from tests.integration.order_system import (
    SYMBOL,
    consumer_bound,
    eventually,
    limit_order,
    market_order,
    order_row,
    sim_state,
    wait_status,
)

MAIN = "binance-usdm"
BACKUP = "binance-backup"
BACKUP_COMPONENT = f"position-{BACKUP}"
ORDERS = subjects.STREAM_ORDERS.name


@dataclass
class Venues:
    """The two position processes (in-process, as their mains run them), restartable one by one."""

    bus: Bus
    pool: Any
    urls: dict[str, str]
    settings: dict[str, Settings]
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    @staticmethod
    def component(venue: str) -> str:
        return subjects.position_component(venue, MAIN)

    def start(self, venue: str) -> None:
        coro = run_service(self.component(venue), position_setup, needs_db=True, settings=self.settings[venue])
        self.tasks[venue] = asyncio.create_task(coro, name=self.component(venue))

    async def stop(self, venue: str) -> None:
        task = self.tasks.pop(venue)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def wait_ready(self, venue: str) -> None:
        """Until the process consumes approvals (it recovered and reconciled)."""

        async def bound() -> bool:
            return await consumer_bound(self.bus, f"{self.component(venue)}-orders")

        await eventually(bound, 40)

    async def start_all(self) -> None:
        for venue in (MAIN, BACKUP):
            self.start(venue)
        for venue in (MAIN, BACKUP):
            await self.wait_ready(venue)

    async def state(self, venue: str) -> dict[str, Any]:
        """`svc.<component>.state` of one process, once it answers reconciled."""

        async def answered() -> Any:
            try:
                reply = await self.bus.request(subjects.svc_position_state(self.component(venue)), timeout_s=1.0)
            except Exception:  # not serving yet
                return None
            state = msgspec.json.decode(reply)
            return state if state["reconciled"] else None

        state: dict[str, Any] = await eventually(answered, 30)
        return state


@pytest_asyncio.fixture(name="venues")
async def venues_fixture(nats_url: str, pg_pool: Any, infra: EmbeddedInfra, tmp_path: Path) -> AsyncIterator[Venues]:
    """Both venues' simulators and settings; the processes are started by the test."""
    (tmp_path / "main").mkdir()
    (tmp_path / "backup").mkdir()
    with (
        running_venue_sim(tmp_path / "main", "--source", "synthetic") as main_url,
        running_venue_sim(tmp_path / "backup", "--source", "synthetic") as backup_url,
    ):
        base = Settings(
            nats_url=nats_url,
            pg_dsn=infra.pg_dsn,
            venue=MAIN,
            venue_rest_url=main_url,
            venue_ws_url=main_url.replace("http://", "ws://"),
            backup_venue=BACKUP,
            backup_venue_rest_url=backup_url,
            backup_venue_ws_url=backup_url.replace("http://", "ws://"),
            symbols=(SYMBOL, "ETHUSDT"),
            snapshot_every_events=6,
            snapshot_interval_s=3600.0,
        )
        settings = {
            MAIN: dataclasses.replace(base, instance_id="position-main-a"),
            BACKUP: dataclasses.replace(base, position_venue=BACKUP, instance_id="position-backup-a"),
        }
        bus = Bus("test")
        await bus.connect(nats_url)
        await bus.ensure_streams()
        venues = Venues(bus=bus, pool=pg_pool, urls={MAIN: main_url, BACKUP: backup_url}, settings=settings)
        try:
            yield venues
        finally:
            await asyncio.gather(*(venues.stop(venue) for venue in list(venues.tasks)))
            await bus.close()


def on_venue(order: SubmitOrder, venue: str) -> SubmitOrder:
    return msgspec.structs.replace(order, venue=venue)


async def approve(bus: Bus, order: SubmitOrder) -> None:
    """Publish the approval as risk does: on the order's venue's subject, de-duplicated by id."""
    subject = subjects.evt_order("approved", order.venue, order.symbol)
    await bus.publish(subject, OrderApproved(order=order), msg_id=f"approved:{order.client_order_id}")


async def cancel(bus: Bus, coid: str) -> None:
    await bus.publish(subjects.CMD_ORDER_CANCEL, CancelOrder(client_order_id=coid, operator="test"), msg_id=f"c:{coid}")


async def venue_orders(venues: Venues, venue: str) -> dict[str, str]:
    """Client order id -> status of every order the venue's simulator holds."""
    state = await sim_state(venues.urls[venue])
    return {o["client_order_id"]: o["status"] for o in state["orders"]}


async def far_price(venues: Venues, venue: str) -> Decimal:
    best_bid = Decimal((await sim_state(venues.urls[venue]))["books"][SYMBOL]["best_bid"])
    return (best_bid * Decimal("0.97")).quantize(Decimal("0.1"))


async def position_row(pool: Any, venue: str) -> Decimal | None:
    return await pool.fetchval("SELECT quantity FROM positions WHERE venue = $1 AND symbol = $2", venue, SYMBOL)


async def test_approvals_when_two_venues_then_each_placed_once_on_its_own_venue_only(venues: Venues) -> None:
    await venues.start_all()
    main_order = on_venue(market_order("venues-main-1"), MAIN)
    backup_orders = [on_venue(market_order(f"venues-backup-{n}"), BACKUP) for n in range(2)]
    for order in (main_order, *backup_orders):
        await approve(venues.bus, order)
    for order in (main_order, *backup_orders):
        row = await wait_status(venues.pool, order.client_order_id, "FILLED")
        assert row["venue"] == order.venue
    await approve(venues.bus, backup_orders[0])  # risk's approval again (a redelivery): not placed twice
    await asyncio.sleep(1.5)

    assert await venue_orders(venues, MAIN) == {main_order.client_order_id: "FILLED"}
    assert await venue_orders(venues, BACKUP) == {o.client_order_id: "FILLED" for o in backup_orders}
    assert await position_row(venues.pool, MAIN) == Decimal("0.01")
    assert await position_row(venues.pool, BACKUP) == Decimal("0.02")
    main_state, backup_state = await venues.state(MAIN), await venues.state(BACKUP)
    assert set(main_state["orders"]) == {main_order.client_order_id}
    assert set(backup_state["orders"]) == {o.client_order_id for o in backup_orders}
    assert Decimal(backup_state["positions"][SYMBOL]) == Decimal("0.02")
    for venue, component in ((MAIN, "position"), (BACKUP, BACKUP_COMPONENT)):
        info = await venues.bus.js.consumer_info(ORDERS, f"{component}-orders")
        assert info.config.filter_subject == f"evt.order.approved.{venue}.>"
        assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_leases_and_heartbeats_when_two_venues_then_each_process_holds_its_own(venues: Venues) -> None:
    beats: dict[str, Heartbeat] = {}

    async def on_beat(msg: Any) -> None:
        beat = decode(msg.data)
        if isinstance(beat, Heartbeat):
            beats[beat.component] = beat

    await venues.bus.subscribe_core("hb.>", on_beat)
    await venues.start_all()
    leases = await venues.bus.kv(LEASE_BUCKET)
    holders = {
        name: msgspec.json.decode((await leases.get(lease_key(name))).value or b"{}")["holder"]
        for name in ("position", BACKUP_COMPONENT)
    }
    assert holders == {"position": "position-main-a", BACKUP_COMPONENT: "position-backup-a"}

    async def both_beating() -> bool:
        return all(beats.get(c) is not None and beats[c].details.get("lease") == "held" for c in holders)

    await eventually(both_beating, 10)

    # Stopping one releases its lease only; the other keeps writing.
    await venues.stop(BACKUP)
    assert (await leases.get(lease_key("position"))).value is not None
    order = on_venue(market_order("venues-lease-main"), MAIN)
    await approve(venues.bus, order)
    await wait_status(venues.pool, order.client_order_id, "FILLED")


async def test_cancel_when_order_on_backup_then_canceled_there_and_main_never_sees_it(venues: Venues) -> None:
    await venues.start_all()
    resting = on_venue(limit_order("venues-rest-backup", await far_price(venues, BACKUP)), BACKUP)
    main_resting = on_venue(limit_order("venues-rest-main", await far_price(venues, MAIN)), MAIN)
    await approve(venues.bus, resting)
    await approve(venues.bus, main_resting)
    await wait_status(venues.pool, resting.client_order_id, "NEW")
    await wait_status(venues.pool, main_resting.client_order_id, "NEW")

    await cancel(venues.bus, resting.client_order_id)
    await wait_status(venues.pool, resting.client_order_id, "CANCELED")
    assert (await venue_orders(venues, BACKUP))[resting.client_order_id] == "CANCELED"
    assert await venue_orders(venues, MAIN) == {main_resting.client_order_id: "NEW"}  # untouched

    await cancel(venues.bus, main_resting.client_order_id)
    await wait_status(venues.pool, main_resting.client_order_id, "CANCELED")
    assert (await venue_orders(venues, MAIN))[main_resting.client_order_id] == "CANCELED"
    # Both processes handled both cancels (each its own, the other's ignored): nothing left pending.
    for component in ("position", BACKUP_COMPONENT):

        async def drained(component: str = component) -> bool:
            info = await venues.bus.js.consumer_info(ORDERS, f"{component}-cancels")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(drained, 10)


async def test_cancel_when_backup_process_down_then_applied_at_its_restart_not_lost(venues: Venues) -> None:
    await venues.start_all()
    await venues.stop(BACKUP)
    # Approved and cancelled while the backup venue's process is down: the main process sees the
    # cancel and leaves it alone; the backup's own durable keeps it (its recovery folds the
    # approval from the log first, so the cancel finds the order queued and cancels it unsent).
    resting = on_venue(limit_order("venues-down-backup", await far_price(venues, BACKUP)), BACKUP)
    await approve(venues.bus, resting)
    await cancel(venues.bus, resting.client_order_id)
    await asyncio.sleep(1.0)
    assert await order_row(venues.pool, resting.client_order_id) is None

    venues.start(BACKUP)
    await venues.wait_ready(BACKUP)
    await wait_status(venues.pool, resting.client_order_id, "CANCELED")

    async def nothing_open() -> bool:
        return all(status != "NEW" for status in (await venue_orders(venues, BACKUP)).values())

    await eventually(nothing_open, 10)
    assert resting.client_order_id not in await venue_orders(venues, MAIN)


async def test_restart_when_backup_process_restarts_then_recovers_its_venue_only(venues: Venues) -> None:
    await venues.start_all()
    for n in range(3):  # enough events for a snapshot of each process (every 6 events)
        for venue in (MAIN, BACKUP):
            order = on_venue(market_order(f"venues-hist-{venue}-{n}"), venue)
            await approve(venues.bus, order)
            await wait_status(venues.pool, order.client_order_id, "FILLED")
    resting = on_venue(limit_order("venues-hist-rest", await far_price(venues, BACKUP)), BACKUP)
    await approve(venues.bus, resting)
    await wait_status(venues.pool, resting.client_order_id, "NEW")
    before = await venues.state(BACKUP)

    async def snapshotted() -> bool:
        rows = await venues.pool.fetch("SELECT DISTINCT component FROM snapshots")
        return {row["component"] for row in rows} >= {"position", BACKUP_COMPONENT}

    await eventually(snapshotted, 20)
    await venues.stop(BACKUP)
    later = on_venue(market_order("venues-hist-main-later"), MAIN)  # the main venue trades meanwhile
    await approve(venues.bus, later)
    await wait_status(venues.pool, later.client_order_id, "FILLED")

    venues.start(BACKUP)
    await venues.wait_ready(BACKUP)
    after = await venues.state(BACKUP)

    backup_coids = {f"{o}" for o in before["orders"]}
    assert set(after["orders"]) == backup_coids
    assert all(coid in backup_coids for coid in after["orders"])
    assert after["orders"][resting.client_order_id]["status"] == "NEW"
    assert {s: Decimal(q) for s, q in after["positions"].items() if Decimal(q)} == {SYMBOL: Decimal("0.03")}
    recovery = after["recovery"]
    assert recovery["mode"] == "snapshot", recovery
    assert {s: Decimal(q) for s, q in recovery["positions"].items()} == {SYMBOL: Decimal("0.03")}
    main_state = await venues.state(MAIN)
    assert {s: Decimal(q) for s, q in main_state["positions"].items() if Decimal(q)} == {SYMBOL: Decimal("0.04")}
    assert not set(main_state["orders"]) & backup_coids
    # Nothing was placed twice, and nothing of one venue went to the other.
    assert set(await venue_orders(venues, BACKUP)) == backup_coids
    assert not set(await venue_orders(venues, MAIN)) & backup_coids
    assert await position_row(venues.pool, BACKUP) == Decimal("0.03")
    assert await position_row(venues.pool, MAIN) == Decimal("0.04")


async def test_upgrade_when_main_durable_has_the_all_venues_filter_then_narrowed_and_pending_approval_placed_once(
    venues: Venues,
) -> None:
    """A deployment from before backup venues has `position-orders` filtering every venue's
    approvals, with an approval still pending in it: the new process narrows the durable to its
    venue in place and places that approval exactly once."""
    await venues.bus.js.add_consumer(
        ORDERS,
        ConsumerConfig(durable_name="position-orders", filter_subject="evt.order.approved.>", max_deliver=6),
    )
    pending = on_venue(market_order("venues-upgrade-pending"), MAIN)
    await approve(venues.bus, pending)
    venues.start(MAIN)
    await venues.wait_ready(MAIN)
    await wait_status(venues.pool, pending.client_order_id, "FILLED")
    info = await venues.bus.js.consumer_info(ORDERS, "position-orders")
    assert info.config.filter_subject == f"evt.order.approved.{MAIN}.>"
    backup = on_venue(market_order("venues-upgrade-backup"), BACKUP)
    await approve(venues.bus, backup)  # no backup process runs: it waits in the backup's stream
    await asyncio.sleep(1.5)
    assert await order_row(venues.pool, backup.client_order_id) is None
    assert await venue_orders(venues, MAIN) == {pending.client_order_id: "FILLED"}
    info = await venues.bus.js.consumer_info(ORDERS, "position-orders")
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_cancel_when_its_venue_approval_not_handled_yet_then_waits_for_it_then_left_alone(
    nats_url: str, pg_pool: Any
) -> None:
    """A cancel of an order this process does not hold waits (is redelivered) while an approval of
    its venue before it is still unhandled, since that may be the order; once the approvals are
    handled, or after `CANCEL_WAIT_S`, it is left to the venue that holds the order."""
    bus = Bus("test")
    await bus.connect(nats_url)
    try:
        await bus.ensure_streams()
        service = PositionService(
            bus, get_logger("test"), Projections(pg_pool), None, BACKUP, time.time_ns, component=BACKUP_COMPONENT
        )
        approvals = await bus.js.pull_subscribe(
            f"evt.order.approved.{BACKUP}.>", durable=f"{BACKUP_COMPONENT}-orders", stream=ORDERS
        )
        order = on_venue(market_order("venues-cancel-early"), BACKUP)
        await approve(bus, order)
        await approve(bus, on_venue(market_order("venues-cancel-main"), MAIN))  # another venue's: not waited for
        command = CancelOrder(client_order_id=order.client_order_id)
        seq = await bus.publish(subjects.CMD_ORDER_CANCEL, command)

        def delivery(num_delivered: int = 1, age_s: float = 0.0) -> Delivery:
            stored_ns = time.time_ns() - int(age_s * 1e9)
            return Delivery(subjects.CMD_ORDER_CANCEL, seq, num_delivered, {}, stored_ns=stored_ns)

        with pytest.raises(TransientError):
            await service.on_cancel(command, delivery())
        # Waiting is bounded, in time and in deliveries (the bus dead-letters after the last one).
        await service.on_cancel(command, delivery(age_s=CANCEL_WAIT_S + 1))
        await service.on_cancel(command, delivery(num_delivered=CANCEL_DELIVERIES))
        (approval,) = await approvals.fetch(1, timeout=5)
        with pytest.raises(TransientError):  # delivered, not handled yet
            await service.on_cancel(command, delivery(num_delivered=2))
        await approval.ack_sync()
        await service.on_cancel(command, delivery(num_delivered=3))  # handled: not this venue's order
    finally:
        await bus.close()


async def test_shared_ban_when_main_venue_bans_then_backup_venue_processes_not_held_back(nats_url: str) -> None:
    """A 418 from the main venue stops every process of the main venue (SharedBans), never the
    backup venue's position process: bans are keyed by venue."""
    bus = Bus("test")
    await bus.connect(nats_url)
    budgets = {name: RateBudget(venue, time.time_ns) for name, venue in (("a", MAIN), ("b", MAIN), ("x", BACKUP))}
    shared = [SharedBans(bus, budget, origin=name, clock_ns=time.time_ns) for name, budget in budgets.items()]
    try:
        await bus.ensure_streams()
        for one in shared:
            await one.start()
        budgets["a"].on_banned(30.0)  # what BinanceRestClient does with a 418 answer

        async def main_held_back() -> bool:
            return not budgets["b"].admit(Priority.ORDER).allowed

        await eventually(main_held_back, 10)
        await shared[0].flush()
        for one in shared:
            await one.refresh()
        assert budgets["x"].admit(Priority.ORDER).allowed
        assert await bus.kv_get(subjects.key_ratelimit_ban(BACKUP)) is None
    finally:
        for one in shared:
            await one.close()
        await bus.close()

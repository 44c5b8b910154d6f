"""Watchdog against real nats-server and Postgres: heartbeats stop -> component DOWN -> alert in
the audit log, health in the KV bucket; dead letters land in `dead_letters`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from libs.bus import Bus
from libs.logging import get_logger
from libs.runtime import infra as infra_commands
from libs.runtime.service import ServiceContext
from libs.settings import Settings
from libs.testing.infra import EmbeddedInfra
from proto import subjects
from proto.enums import ComponentState
from proto.messages import DeadLettered, Heartbeat, OrderSubmitted
from services.watchdog.main import expected_components, setup


@contextlib.asynccontextmanager
async def running_watchdog(nats_url: str, pool: Any) -> AsyncIterator[ServiceContext]:
    settings = Settings(nats_url=nats_url, heartbeat_timeout_s=1.0, strategies=("imbalance",))
    bus = Bus("watchdog")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    ctx = ServiceContext(component="watchdog", settings=settings, log=get_logger("watchdog"), bus=bus, pool=pool)
    await setup(ctx)
    try:
        yield ctx
    finally:
        for task in ctx._tasks:
            task.cancel()
        await bus.close()


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 8.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_heartbeats_stop_then_component_down_alert_audited_and_health_red(
    infra: EmbeddedInfra, nats_url: str, pg_pool: Any
) -> None:
    peer = Bus("standins")
    await peer.connect(nats_url)
    beating = {name for name in expected_components(Settings(strategies=("imbalance",))) if name != "watchdog"}

    async def beat() -> None:
        while True:
            for name in sorted(beating):
                heartbeat = Heartbeat(component=name, pid=1, state=ComponentState.READY, started_ns=1)
                await peer.publish_core(subjects.heartbeat(name), heartbeat)
            await asyncio.sleep(0.2)

    beater = asyncio.create_task(beat())
    try:
        async with running_watchdog(nats_url, pg_pool):

            async def health() -> Any:
                entry = await peer.kv_get(subjects.KEY_HEALTH)
                return json.loads(entry[0]) if entry else None

            assert (await eventually(health))["health"] == "GREEN"
            beating.discard("risk")

            async def risk_alert() -> Any:
                return await pg_pool.fetchrow(
                    "SELECT payload FROM audit_events WHERE type = 'AlertRaised' AND payload->>'key' = $1",
                    "component_down:risk",
                )

            alert = json.loads((await eventually(risk_alert))["payload"])
            assert alert["severity"] == "P1" and alert["component"] == "risk"
            red = await eventually(lambda: _health_is(peer, "RED"))
            assert red["reasons"] == ["risk down"]
            down = await pg_pool.fetchval(
                "SELECT count(*) FROM audit_events WHERE type = 'ComponentStatusChanged' "
                "AND payload->>'component' = 'risk' AND payload->>'current' = 'DOWN'"
            )
            assert down == 1
            level = json.loads((await peer.kv_get(subjects.KEY_DEGRADATION_LEVEL))[0])
            assert level["level"] == "REDUCED_FUNCTIONALITY"

            beating.add("risk")

            async def resolved() -> Any:
                return await pg_pool.fetchval(
                    "SELECT count(*) FROM audit_events WHERE type = 'AlertResolved' AND payload->>'key' = $1",
                    "component_down:risk",
                )

            assert await eventually(resolved) == 1
            await eventually(lambda: _health_is(peer, "GREEN"))
    finally:
        beater.cancel()
        await peer.close()


async def _none_left(pool: Any, query: str) -> bool:
    return await pool.fetchval(query) == 0


async def _health_is(bus: Bus, value: str) -> Any:
    entry = await bus.kv_get(subjects.KEY_HEALTH)
    record = json.loads(entry[0]) if entry else {}
    return record if record.get("health") == value else None


async def test_audit_and_dlq_writers_then_rows_in_postgres_once(
    infra: EmbeddedInfra, nats_url: str, pg_pool: Any
) -> None:
    await pg_pool.execute(
        "INSERT INTO dead_letters (stream_seq, consumer, subject, reason, deliveries, payload, created_ns, "
        "updated_ns) VALUES (NULL, 'old', 's', 'r', 1, '{}', 1, 1)"
    )  # older than 30 days: purged at start
    async with running_watchdog(nats_url, pg_pool) as ctx:
        submitted = OrderSubmitted(client_order_id="bw1", symbol="BTCUSDT", venue="binance-usdm")
        await ctx.bus.publish(subjects.evt_order("submitted", "binance-usdm", "BTCUSDT"), submitted)
        await ctx.bus.publish(subjects.evt_order("submitted", "binance-usdm", "BTCUSDT"), submitted)  # deduplicated
        letter = DeadLettered(
            consumer="risk-orders", subject="cmd.order.submit", reason="permanent: x", deliveries=1, payload="{}"
        )
        await ctx.bus.publish(subjects.dlq("risk-orders"), letter)

        async def audited() -> Any:
            return await pg_pool.fetch("SELECT stream, type, payload FROM audit_events WHERE type = 'OrderSubmitted'")

        rows = await eventually(audited)
        await eventually(lambda: pg_pool.fetchval("SELECT count(*) FROM dead_letters WHERE consumer = 'risk-orders'"))
        await eventually(lambda: _none_left(pg_pool, "SELECT count(*) FROM dead_letters WHERE consumer = 'old'"))
        letters = await pg_pool.fetch("SELECT consumer, status, reason FROM dead_letters")

    assert len(rows) == 1 and rows[0]["stream"] == "ORDERS"
    assert json.loads(rows[0]["payload"])["client_order_id"] == "bw1"
    assert [(r["consumer"], r["status"], r["reason"]) for r in letters] == [("risk-orders", "PENDING", "permanent: x")]


async def test_audit_when_postgres_down_then_redelivered_after_it_returns(
    infra: EmbeddedInfra, nats_url: str, pg_pool: Any
) -> None:
    dead_port = infra_commands.free_port("127.0.0.1")
    dead = await asyncpg.create_pool(
        f"postgresql://bulwark@127.0.0.1:{dead_port}/bulwark", min_size=0, max_size=1, timeout=0.5
    )
    try:
        async with running_watchdog(nats_url, dead) as ctx:
            submitted = OrderSubmitted(client_order_id="bw2", symbol="BTCUSDT", venue="binance-usdm")
            await ctx.bus.publish(subjects.evt_order("submitted", "binance-usdm", "BTCUSDT"), submitted)
            await asyncio.sleep(1.0)  # delivered, failed, nak'ed
            assert await pg_pool.fetchval("SELECT count(*) FROM audit_events") == 0

            ctx.pool = pg_pool  # Postgres is back

            async def audited() -> Any:
                return await pg_pool.fetchval("SELECT count(*) FROM audit_events WHERE type = 'OrderSubmitted'")

            assert await eventually(audited) == 1
            assert await pg_pool.fetchval("SELECT count(*) FROM dead_letters") == 0
    finally:
        await dead.close()


async def test_hard_shutdown_in_kv_then_kept_while_components_go_down(
    infra: EmbeddedInfra, nats_url: str, pg_pool: Any
) -> None:
    peer = Bus("standins")
    await peer.connect(nats_url)
    await peer.ensure_streams()
    shutdown = {"level": "HARD_SHUTDOWN", "reason": "operator emergency stop", "ts_ns": 1}
    await peer.kv_put(subjects.KEY_DEGRADATION_LEVEL, json.dumps(shutdown).encode())
    try:
        async with running_watchdog(nats_url, pg_pool):
            await eventually(lambda: _health_is(peer, "RED"))  # nobody heartbeats
            await asyncio.sleep(1.2)  # at least one more evaluation

            level = json.loads((await peer.kv_get(subjects.KEY_DEGRADATION_LEVEL))[0])
    finally:
        await peer.close()

    assert level == shutdown

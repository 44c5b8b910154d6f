"""Watchdog against real nats-server and Postgres: heartbeats stop -> component DOWN -> alert in
the audit log, health in the KV bucket; dead letters land in `dead_letters`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from entrypoints import infra as infra_commands
from entrypoints.harness.embedded import EmbeddedInfra
from libs.bus import Bus
from libs.heartbeat import expected_components
from libs.logging import get_logger
from libs.runtime.service import ServiceContext
from libs.settings import Settings
from proto import subjects
from proto.codec import encode
from proto.enums import BreakerState, ComponentState, HotStateStatus
from proto.kv import BreakerValue, encode_value
from proto.messages import (
    AlertRaised,
    AlertResolved,
    DeadLettered,
    Heartbeat,
    LinkStateChanged,
    OrderSubmitted,
    SymbolHotState,
    SymbolsReply,
)
from services.watchdog.main import setup
from tests.support.http_server import LocalHttpServer
from tests.support.polling import eventually as poll_until


@contextlib.asynccontextmanager
async def running_watchdog(
    infra: EmbeddedInfra, nats_url: str, pool: Any, **overrides: Any
) -> AsyncIterator[ServiceContext]:
    # The test's own Postgres for everything the watchdog opens itself (its snapshot store), never a
    # default port that may be another server's.
    settings = Settings(
        nats_url=nats_url, pg_dsn=infra.pg_dsn, heartbeat_timeout_s=1.0, strategies=("imbalance",), **overrides
    )
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
        for cleanup in ctx.cleanups:
            await cleanup()
        await bus.close()


eventually = functools.partial(poll_until, timeout_s=8.0)


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
        async with running_watchdog(infra, nats_url, pg_pool):

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
    async with running_watchdog(infra, nats_url, pg_pool) as ctx:
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
        async with running_watchdog(infra, nats_url, dead) as ctx:
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
        async with running_watchdog(infra, nats_url, pg_pool):
            await eventually(lambda: _health_is(peer, "RED"))  # nobody heartbeats
            await asyncio.sleep(1.2)  # at least one more evaluation

            level = json.loads((await peer.kv_get(subjects.KEY_DEGRADATION_LEVEL))[0])
    finally:
        await peer.close()

    assert level == shutdown


@contextlib.asynccontextmanager
async def all_components_beating(peer: Bus) -> AsyncIterator[set[str]]:
    """Heartbeats for every expected component (except the watchdog) until the block ends."""
    beating = {name for name in expected_components(Settings(strategies=("imbalance",))) if name != "watchdog"}

    async def beat() -> None:
        while True:
            for name in sorted(beating):
                heartbeat = Heartbeat(component=name, pid=1, state=ComponentState.READY, started_ns=1)
                await peer.publish_core(subjects.heartbeat(name), heartbeat)
            await asyncio.sleep(0.2)

    task = asyncio.create_task(beat())
    try:
        yield beating
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _level(bus: Bus) -> str | None:
    entry = await bus.kv_get(subjects.KEY_DEGRADATION_LEVEL)
    return json.loads(entry[0])["level"] if entry else None


async def test_symbol_stale_over_10s_then_emergency_persisted_audited_and_back_to_normal_when_fresh(
    infra: EmbeddedInfra, nats_url: str, pg_pool: Any
) -> None:
    peer = Bus("standins")
    await peer.connect(nats_url)
    hot = {"BTCUSDT": (HotStateStatus.VALID, 5), "ETHUSDT": (HotStateStatus.VALID, 5)}

    async def symbols(_: bytes) -> bytes:  # the state-builder's answer, as it would give it
        views = {
            symbol: SymbolHotState(symbol=symbol, hot_state=status, age_ms=age_ms, last_update_id=None)
            for symbol, (status, age_ms) in hot.items()
        }
        return encode(SymbolsReply(symbols=views))

    await peer.serve(subjects.SVC_STATE_BUILDER_SYMBOLS, symbols)
    try:
        async with (
            all_components_beating(peer),
            running_watchdog(infra, nats_url, pg_pool, watchdog_recovery_hold_s=0.5),
        ):
            assert await eventually(lambda: _is(_level(peer), "NORMAL"))

            hot["BTCUSDT"] = (HotStateStatus.STALE, 1500)
            assert await eventually(lambda: _is(_level(peer), "REDUCED_FUNCTIONALITY"))
            hot["BTCUSDT"] = (HotStateStatus.STALE, 10_500)
            assert await eventually(lambda: _is(_level(peer), "EMERGENCY_MODE"))
            health = json.loads((await peer.kv_get(subjects.KEY_HEALTH))[0])
            assert health["health"] == "RED" and health["checks"]["hot_state_fresh"] is False

            hot["BTCUSDT"] = (HotStateStatus.VALID, 5)
            assert await eventually(lambda: _is(_level(peer), "NORMAL"))

            async def levels() -> Any:
                rows = await pg_pool.fetch(
                    "SELECT payload->>'current' AS current FROM audit_events "
                    "WHERE type = 'DegradationLevelChanged' ORDER BY id"
                )
                found = [row["current"] for row in rows]
                return found if found[-1:] == ["NORMAL"] and len(found) >= 4 else None

            assert await eventually(levels) == ["NORMAL", "REDUCED_FUNCTIONALITY", "EMERGENCY_MODE", "NORMAL"]
            stale_alert = await pg_pool.fetchrow(
                "SELECT payload FROM audit_events WHERE type = 'AlertRaised' AND payload->>'key' = $1",
                "data_stale_long:BTCUSDT",
            )
            assert json.loads(stale_alert["payload"])["severity"] == "P1"
    finally:
        await peer.close()


async def test_link_degraded_event_then_emergency_mode(infra: EmbeddedInfra, nats_url: str, pg_pool: Any) -> None:
    peer = Bus("standins")
    await peer.connect(nats_url)
    await peer.ensure_streams()
    try:
        async with all_components_beating(peer), running_watchdog(infra, nats_url, pg_pool):
            assert await eventually(lambda: _is(_level(peer), "NORMAL"))  # no state-builder answer: KV has nothing
            degraded = LinkStateChanged(
                venue="binance-usdm", link="market-ws", previous=None, current="DEGRADED", reason="5 failed attempts"
            )
            await peer.publish(subjects.evt_link("binance-usdm", "market-ws"), degraded)

            assert await eventually(lambda: _is(_level(peer), "EMERGENCY_MODE"))
            record = json.loads((await peer.kv_get(subjects.KEY_DEGRADATION_LEVEL))[0])
            assert "persistent connection loss" in record["reason"]
    finally:
        await peer.close()


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return (await value) == expected


async def _pages_of(hooks: WebhookRecorder, key: str) -> list[str]:
    return [page["event_action"] for page in hooks.received["pagerduty"] if page["dedup_key"] == key]


class WebhookRecorder:
    """A real local HTTP server standing in for Slack and PagerDuty."""

    def __init__(self) -> None:
        self.received: dict[str, list[dict[str, Any]]] = {"slack": [], "pagerduty": []}
        self.server: LocalHttpServer | None = None
        self.port = 0

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.received[request.match_info["name"]].append(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/{name}", hook)
        self.server = LocalHttpServer(app)
        await self.server.start()
        self.port = self.server.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()


async def test_alerts_then_delivered_to_webhooks_once_while_open_and_resolved_once(
    infra: EmbeddedInfra, nats_url: str, pg_pool: Any
) -> None:
    hooks = WebhookRecorder()
    await hooks.start()
    peer = Bus("standins")
    await peer.connect(nats_url)
    await peer.ensure_streams()
    settings = {
        "alert_slack_webhook_url": f"http://127.0.0.1:{hooks.port}/slack",
        "alert_pagerduty_url": f"http://127.0.0.1:{hooks.port}/pagerduty",
        "alert_pagerduty_routing_key": "rk",
        "alert_webhook_timeout_s": 2.0,
    }
    breaker = AlertRaised(key="breaker.CB-2", severity="P1", component="risk", title="CB-2 Consecutive losses tripped")
    try:
        async with running_watchdog(infra, nats_url, pg_pool, **settings), all_components_beating(peer):
            raised = AlertRaised(key="gap:BTCUSDT", severity="P1", component="market-data", title="possible data gap")
            minor = AlertRaised(key="minor", severity="P3", component="risk", title="fyi")
            for message in (raised, raised, minor):
                await peer.publish(subjects.EVT_ALERT_RAISED, message)
            await peer.publish(subjects.EVT_ALERT_RESOLVED, AlertResolved(key="gap:BTCUSDT", component="market-data"))

            async def delivered() -> Any:
                return len(hooks.received["slack"]) >= 3 and len(hooks.received["pagerduty"]) >= 2

            await eventually(delivered)
            await asyncio.sleep(0.5)  # nothing else arrives
            first_slack, first_pages = list(hooks.received["slack"]), list(hooks.received["pagerduty"])

            # A condition alert whose raiser never resolves it (the breaker closed, its resolve lost):
            # the watchdog sees the breaker CLOSED in KV and resolves it, at every sink and in the audit log.
            record = BreakerValue(breaker="CB-2", title="Consecutive losses", state=BreakerState.OPEN)
            await peer.kv_put(subjects.key_breaker("CB-2"), encode_value(record))
            await peer.publish(subjects.EVT_ALERT_RAISED, breaker)
            await eventually(lambda: _is(_pages_of(hooks, breaker.key), ["trigger"]))
            await asyncio.sleep(1.5)  # OPEN: stays open
            assert await _pages_of(hooks, breaker.key) == ["trigger"]
            closed = msgspec.structs.replace(record, state=BreakerState.CLOSED)
            await peer.kv_put(subjects.key_breaker("CB-2"), encode_value(closed))
            await eventually(lambda: _is(_pages_of(hooks, breaker.key), ["trigger", "resolve"]))

            async def audited_resolve() -> Any:
                return await pg_pool.fetchrow(
                    "SELECT payload FROM audit_events WHERE type = 'AlertResolved' AND payload->>'key' = $1",
                    breaker.key,
                )

            assert json.loads((await eventually(audited_resolve))["payload"])["reason"] == "breaker CB-2 CLOSED"
    finally:
        await peer.close()
        await hooks.stop()

    breaker_slack = [m["text"] for m in hooks.received["slack"] if "CB-2" in m["text"]]
    assert breaker_slack == [
        ":red_circle: [P1] risk: CB-2 Consecutive losses tripped",
        ":white_check_mark: [RESOLVED] risk: CB-2 Consecutive losses tripped",
    ]
    hooks.received = {"slack": first_slack, "pagerduty": first_pages}
    slack = [message["text"] for message in hooks.received["slack"]]
    assert slack == [
        ":red_circle: [P1] market-data: possible data gap",
        ":information_source: [P3] risk: fyi",
        ":white_check_mark: [RESOLVED] market-data: possible data gap",
    ]
    pages = hooks.received["pagerduty"]
    assert [(page["event_action"], page["dedup_key"]) for page in pages] == [
        ("trigger", "gap:BTCUSDT"),
        ("resolve", "gap:BTCUSDT"),
    ]  # P3 is below the paging minimum (P1)
    assert pages[0]["payload"]["severity"] == "error" and pages[0]["routing_key"] == "rk"


async def test_alert_when_webhook_unreachable_then_logged_and_watchdog_keeps_running(
    infra: EmbeddedInfra, nats_url: str, pg_pool: Any
) -> None:
    dead = f"http://127.0.0.1:{infra_commands.free_port('127.0.0.1')}/slack"
    peer = Bus("standins")
    await peer.connect(nats_url)
    await peer.ensure_streams()
    try:
        async with running_watchdog(infra, nats_url, pg_pool, alert_slack_webhook_url=dead) as ctx:
            await peer.publish(
                subjects.EVT_ALERT_RAISED, AlertRaised(key="x", severity="P0", component="risk", title="boom")
            )

            async def audited() -> Any:
                return await pg_pool.fetchval("SELECT count(*) FROM audit_events WHERE type = 'AlertRaised'")

            assert await eventually(audited) == 1
            await asyncio.sleep(0.5)
            assert not ctx.stopping.is_set()  # no task crashed
            info = await peer.js.consumer_info(subjects.STREAM_CONTROL.name, subjects.WATCHDOG_ALERTS_CONSUMER)
            assert info.num_ack_pending == 0 and info.num_pending == 0  # handled and acknowledged, not redelivered
    finally:
        await peer.close()


async def test_backup_venue_position_process_silent_then_expected_down_reduced_yellow_and_back_to_normal(
    infra: EmbeddedInfra, nats_url: str, pg_pool: Any
) -> None:
    backup = "position-binance-usdm-backup"
    peer = Bus("standins")
    await peer.connect(nats_url)
    await peer.ensure_streams()
    try:
        # Every core component beats; the backup venue's position process never did (expected all the same).
        async with (
            all_components_beating(peer) as beating,
            running_watchdog(
                infra, nats_url, pg_pool, backup_venue="binance-usdm-backup", watchdog_recovery_hold_s=0.2
            ),
        ):
            assert await eventually(lambda: _is(_level(peer), "REDUCED_FUNCTIONALITY"))
            yellow = await eventually(lambda: _health_is(peer, "YELLOW"))
            assert yellow["reasons"] == [f"{backup} down"]

            async def backup_alert() -> Any:
                return await pg_pool.fetchrow(
                    "SELECT payload FROM audit_events WHERE type = 'AlertRaised' AND payload->>'key' = $1",
                    f"component_down:{backup}",
                )

            alert = json.loads((await eventually(backup_alert))["payload"])
            assert (alert["severity"], alert["component"]) == ("P2", backup)

            beating.add(backup)
            assert await eventually(lambda: _is(_level(peer), "NORMAL"))
            await eventually(lambda: _health_is(peer, "GREEN"))
    finally:
        await peer.close()

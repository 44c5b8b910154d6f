"""Gateway against real nats-server, Postgres and Valkey, with small stand-ins for risk,
state-builder and position on the real bus (never mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import pytest_asyncio

from entrypoints import infra as infra_commands
from entrypoints.harness.embedded import EmbeddedInfra
from libs import cache, db
from libs.bus import Bus, Delivery
from libs.logging import get_logger
from libs.runtime.service import ServiceContext
from libs.settings import Settings
from proto import subjects
from proto.codec import decode, encode
from proto.enums import ComponentState, OrderStatus
from proto.envelope import Message
from proto.messages import (
    AlertRaised,
    AlertResolved,
    CancelOrder,
    Heartbeat,
    OperatorActionTaken,
    OrderAccepted,
    OrderDenied,
    SubmitOrder,
    TradingStateChanged,
)
from services.gateway.app import create_app
from services.gateway.context import Gateway, GatewayConfig
from services.gateway.entry_gates import RISK_SILENT, position_blockers
from services.gateway.main import bind_socket, start_http
from tests.support.polling import eventually

ADMIN, OPERATOR, VIEWER = "admin-token", "operator-token", "viewer-token"
ALICE_TOKEN = "alice-s3cret"
ALICE = {"Authorization": f"Bearer {ALICE_TOKEN}"}
OP = {"Authorization": f"Bearer {OPERATOR}"}
VIEW = {"Authorization": f"Bearer {VIEWER}"}
ORDER = {"symbol": "btcusdt", "side": "BUY", "type": "LIMIT", "quantity": "0.010", "price": "65000"}


def make_settings(infra: EmbeddedInfra, nats_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "pg_dsn": infra.pg_dsn,
        "redis_url": infra.redis_url,
        "admin_token": ADMIN,
        "operator_token": OPERATOR,
        "viewer_token": VIEWER,
        "api_tokens": f"alice:operator:{ALICE_TOKEN}",
        "symbols": ("BTCUSDT", "ETHUSDT"),
        "strategies": ("imbalance",),
    }
    values.update(overrides)
    return Settings(**values)


class Harness:
    """A gateway app plus the stand-ins a test needs, on one real nats-server."""

    def __init__(self, ctx: ServiceContext, gateway: Gateway, client: httpx.AsyncClient, peer: Bus) -> None:
        self.ctx = ctx
        self.gateway = gateway
        self.client = client
        self.peer = peer
        self.tasks: list[asyncio.Task[None]] = []

    def heartbeat(self, component: str, period_s: float = 0.2) -> asyncio.Task[None]:
        """Keep `component` heartbeating until the task is cancelled."""

        async def beat() -> None:
            started = time.time_ns()
            while True:
                heartbeat = Heartbeat(component=component, pid=4242, state=ComponentState.READY, started_ns=started)
                await self.peer.publish_core(subjects.heartbeat(component), heartbeat)
                await asyncio.sleep(period_s)

        task = asyncio.create_task(beat())
        self.tasks.append(task)
        return task

    async def risk_standin(self, decide: Any, delay_s: float = 0.0) -> list[SubmitOrder]:
        """A durable consumer on `cmd.order.submit` (as risk) answering each order with `decide(order)`."""
        seen: list[SubmitOrder] = []

        async def handle(message: Message, delivery: Delivery) -> None:
            assert isinstance(message, SubmitOrder)
            seen.append(message)
            await asyncio.sleep(delay_s)
            subject, event = decide(message)
            await self.peer.publish(subject, event)

        await self.peer.consume(
            stream=subjects.STREAM_ORDERS.name,
            durable="risk-standin",
            filter_subjects=[subjects.CMD_ORDER_SUBMIT],
            handler=handle,
        )
        return seen

    async def submit_orders_in_stream(self) -> int:
        info = await self.peer.js.stream_info(subjects.STREAM_ORDERS.name, subjects_filter=subjects.CMD_ORDER_SUBMIT)
        return int((info.state.subjects or {}).get(subjects.CMD_ORDER_SUBMIT, 0))


@contextlib.asynccontextmanager
async def harness(
    settings: Settings, pool: Any, redis_client: Any, config: GatewayConfig | None = None
) -> AsyncIterator[Harness]:
    bus = Bus("gateway")
    await bus.connect(settings.nats_url)
    await bus.ensure_streams()
    peer = Bus("standins")
    await peer.connect(settings.nats_url)
    ctx = ServiceContext(
        component="gateway", settings=settings, log=get_logger("gateway"), bus=bus, pool=pool, cache=redis_client
    )
    gateway = Gateway(ctx, config or GatewayConfig(outcome_timeout_s=2.0))
    await gateway.start()
    app = create_app(gateway)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
    h = Harness(ctx, gateway, client, peer)
    try:
        yield h
    finally:
        for task in h.tasks:
            task.cancel()
        await client.aclose()
        await peer.close()
        await bus.close()


def accept(order: SubmitOrder) -> tuple[str, Message]:
    event = OrderAccepted(
        client_order_id=order.client_order_id, venue_order_id=7, symbol=order.symbol, status=OrderStatus.NEW
    )
    return subjects.evt_order("accepted", order.venue, order.symbol), event


def deny(order: SubmitOrder) -> tuple[str, Message]:
    return subjects.evt_order("denied", order.venue, order.symbol), OrderDenied(order=order, reason="trading HALTED")


@pytest_asyncio.fixture
async def gw(infra: EmbeddedInfra, nats_url: str, pg_pool: Any, redis_client: Any) -> AsyncIterator[Harness]:
    async with harness(make_settings(infra, nats_url), pg_pool, redis_client) as h:
        yield h


# --------------------------------------------------------------------------- trading, book, status


async def test_halt_and_resume_when_risk_answers_then_state_round_trips(gw: Harness) -> None:
    state = {"current": "ACTIVE"}
    requests: list[dict[str, Any]] = []

    def responder(target: str):
        async def handle(payload: bytes) -> bytes:
            body = json.loads(payload)
            requests.append(body)
            previous, state["current"] = state["current"], target
            return json.dumps({"trading_state": target, "previous": previous}).encode()

        return handle

    await gw.peer.serve("svc.risk.halt", responder("HALTED"))
    await gw.peer.serve("svc.risk.resume", responder("ACTIVE"))
    await gw.peer.nc.flush()

    halted = await gw.client.post("/v1/trading/halt", headers=OP, json={"reason": "maintenance"})
    resumed = await gw.client.post("/v1/trading/resume", headers=OP)
    viewer_try = await gw.client.post("/v1/trading/halt", headers=VIEW)

    assert halted.status_code == 200, halted.text
    assert halted.json() == {"trading_state": "HALTED", "previous": "ACTIVE"}
    assert resumed.json() == {"trading_state": "ACTIVE", "previous": "HALTED"}
    assert requests[0] == {"operator": "operator", "reason": "maintenance"}
    assert viewer_try.status_code == 403


async def test_halt_when_risk_not_answering_then_503_with_retry_after(gw: Harness) -> None:
    response = await gw.client.post("/v1/trading/halt", headers=OP)

    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.json()["error"]["code"] == "dependency_unavailable"


async def test_resume_when_risk_refuses_then_409_with_risk_error(gw: Harness) -> None:
    async def refuse(_: bytes) -> bytes:
        return json.dumps({"error": {"code": "invalid_transition", "message": "ACTIVE -> ACTIVE"}}).encode()

    await gw.peer.serve("svc.risk.resume", refuse)
    await gw.peer.nc.flush()

    response = await gw.client.post("/v1/trading/resume", headers=OP, json={"reason": "x"})

    assert response.status_code == 409 and response.json()["error"]["code"] == "invalid_transition"


async def test_emergency_stop_then_hard_shutdown_persisted_published_and_halt_requested(gw: Harness) -> None:
    halts: list[dict[str, Any]] = []

    async def halt(payload: bytes) -> bytes:
        halts.append(json.loads(payload))
        return json.dumps({"trading_state": "HALTED", "previous": "ACTIVE"}).encode()

    await gw.peer.serve("svc.risk.halt", halt)
    await gw.peer.kv_put(subjects.key_breaker("CB-1"), json.dumps({"state": "OPEN"}).encode())
    await gw.peer.nc.flush()

    response = await gw.client.post("/v1/emergency-stop", headers=OP, json={"reason": "fat finger"})
    breakers = await gw.client.get("/v1/breakers", headers=VIEW)
    reset = await gw.client.post("/v1/breakers/CB-1/reset", headers=OP)

    assert response.status_code == 200, response.text
    assert response.json() == {"degradation_level": "HARD_SHUTDOWN", "previous": None, "trading_state": "HALTED"}
    level = json.loads((await gw.peer.kv_get(subjects.KEY_DEGRADATION_LEVEL))[0])
    assert level["level"] == "HARD_SHUTDOWN"
    assert halts == [{"operator": "operator", "reason": "fat finger"}]
    info = await gw.peer.js.stream_info("CONTROL", subjects_filter=subjects.EVT_DEGRADATION)
    assert (info.state.subjects or {}).get(subjects.EVT_DEGRADATION) == 1
    page = decode((await gw.peer.js.get_last_msg("CONTROL", subjects.EVT_ALERT_RAISED)).data)
    assert isinstance(page, AlertRaised) and page.severity == "P0" and page.key == "degradation:HARD_SHUTDOWN"
    assert await count_on(gw.peer, "CONTROL", subjects.evt_operator("emergency_stop")) == 1
    assert breakers.json() == {"breakers": {"CB-1": {"state": "OPEN"}}}
    assert reset.status_code == 503  # risk does not answer breaker resets in this test


async def test_book_when_state_builder_answers_then_passthrough_with_decimal_strings(gw: Harness) -> None:
    asked: list[dict[str, Any]] = []

    async def book(payload: bytes) -> bytes:
        body = json.loads(payload)
        asked.append(body)
        if body["symbol"] != "BTCUSDT":
            return json.dumps({"error": {"code": "not_found", "message": "no book"}}).encode()
        return json.dumps(
            {
                "symbol": "BTCUSDT",
                "status": "VALID",
                "last_update_id": 99,
                "bids": [["65000.1", "1.5"]],
                "asks": [["65000.2", "0.25"]],
            }
        ).encode()

    await gw.peer.serve("svc.state-builder.book", book)
    await gw.peer.nc.flush()

    ok = await gw.client.get("/v1/book/btcusdt?depth=5", headers=VIEW)
    missing = await gw.client.get("/v1/book/ETHUSDT", headers=VIEW)
    unknown = await gw.client.get("/v1/book/DOGEUSDT", headers=VIEW)
    bad_depth = await gw.client.get("/v1/book/BTCUSDT?depth=0", headers=VIEW)

    assert ok.status_code == 200
    assert ok.json() == {
        "symbol": "BTCUSDT",
        "status": "VALID",
        "last_update_id": 99,
        "bids": [["65000.1", "1.5"]],
        "asks": [["65000.2", "0.25"]],
    }
    assert asked[0] == {"symbol": "BTCUSDT", "depth": 5}
    assert missing.status_code == 404 and unknown.status_code == 404
    assert bad_depth.status_code == 422 and bad_depth.json()["error"]["code"] == "validation_error"


async def test_book_when_state_builder_down_then_503(gw: Harness) -> None:
    response = await gw.client.get("/v1/book/BTCUSDT", headers=VIEW)

    assert response.status_code == 503 and "Retry-After" in response.headers


async def test_status_when_components_beat_then_components_kv_and_symbols_shown(gw: Harness) -> None:
    gw.heartbeat("position")

    async def symbols(_: bytes) -> bytes:
        return json.dumps(
            {
                "symbols": {
                    "BTCUSDT": {
                        "symbol": "BTCUSDT",  # SymbolHotState as state-builder sends it
                        "hot_state": "VALID",
                        "age_ms": 12,
                        "last_update_id": 5,
                        "mark_price": "1",
                    }
                }
            }
        ).encode()

    await gw.peer.serve("svc.state-builder.symbols", symbols)
    await gw.peer.kv_put(subjects.KEY_TRADING_STATE, json.dumps({"state": "HALTED"}).encode())
    await gw.peer.kv_put(subjects.KEY_HEALTH, json.dumps({"health": "YELLOW", "reasons": []}).encode())
    await gw.peer.kv_put(subjects.key_link("binance-usdm", "ws"), json.dumps({"state": "CONNECTED"}).encode())
    await asyncio.sleep(0.4)

    response = await gw.client.get("/v1/status", headers=VIEW)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["trading_state"] == "HALTED"
    assert body["degradation_level"] == "NORMAL"
    assert body["health"] == "YELLOW"
    assert body["components"]["position"]["state"] == "READY"
    assert body["components"]["position"]["pid"] == 4242
    assert body["components"]["risk"]["state"] == "DOWN"
    assert set(body["components"]) >= {*subjects.CORE_COMPONENTS, "strategy-imbalance"}
    # Risk is DOWN: no entry is approved; the position process beats READY and reports no gate of its own.
    risk_silent = [{"gate": "risk", "reason": RISK_SILENT.reason, "since_ns": None}]
    entry = {
        "can_enter": False,
        "blocked_by": risk_silent,
        "entry_venue": "binance-usdm",
        "venues": {"binance-usdm": {"can_enter": False, "blocked_by": risk_silent}},
    }
    assert body["symbols"] == {"BTCUSDT": {"hot_state": "VALID", "age_ms": 12, "last_update_id": 5, **entry}}
    assert body["links"] == {"binance-usdm.ws": {"state": "CONNECTED"}}
    assert body["breakers"] == {}


async def test_status_when_nothing_answers_then_fallbacks_and_trading_halted(gw: Harness) -> None:
    stale = {"status": "STALE", "reason": "no update for 5 s"}  # HotStateRecord as state-builder writes it
    await gw.peer.kv_put(subjects.key_hot_state("BTCUSDT"), json.dumps(stale).encode())

    body = (await gw.client.get("/v1/status", headers=VIEW)).json()

    assert body["trading_state"] == "HALTED"  # no risk, no trading state: nothing would be approved
    assert body["health"] == "UNKNOWN"
    assert body["symbols"]["BTCUSDT"] == {
        "hot_state": "STALE",
        "age_ms": None,
        "last_update_id": None,
        "can_enter": False,
        "blocked_by": [
            {"gate": "risk", "reason": RISK_SILENT.reason, "since_ns": None},
            {"gate": "position", "reason": position_blockers("binance-usdm", "position", None, None)[0].reason}
            | {"since_ns": None},
        ],
        "entry_venue": "binance-usdm",
        "venues": {"binance-usdm": {"can_enter": False, "blocked_by": body["symbols"]["BTCUSDT"]["blocked_by"]}},
    }


# --------------------------------------------------------------------------- orders


async def test_post_order_twice_with_same_key_then_same_response_and_one_submit(gw: Harness) -> None:
    gw.heartbeat("position")
    seen = await gw.risk_standin(deny)
    await asyncio.sleep(0.3)
    headers = {**OP, "Idempotency-Key": "key-1"}

    first = await gw.client.post("/v1/orders", headers=headers, json=ORDER)
    second = await gw.client.post("/v1/orders", headers=headers, json={**ORDER, "quantity": "0.01"})
    reused = await gw.client.post("/v1/orders", headers=headers, json={**ORDER, "quantity": "0.02"})

    assert first.status_code == 201, first.text
    body = first.json()
    assert body["status"] == "DENIED" and body["reason"] == "trading HALTED"
    assert body["order_id"] == body["client_order_id"] and body["client_order_id"].startswith("bw")
    assert body["symbol"] == "BTCUSDT" and body["quantity"] == "0.01" and body["filled_quantity"] == "0"
    assert (second.status_code, second.json()) == (201, body)
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused"
    assert await gw.submit_orders_in_stream() == 1
    assert len(seen) == 1 and seen[0].idempotency_key == "key-1"

    # FM-C8: a restarted gateway (fresh process state, same stores) answers the retry the same way.
    restarted = create_app(Gateway(gw.ctx, GatewayConfig(outcome_timeout_s=0.5)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=restarted), base_url="http://g") as client:
        after_restart = await client.post("/v1/orders", headers=headers, json=ORDER)
    assert (after_restart.status_code, after_restart.json()) == (201, body)
    assert await gw.submit_orders_in_stream() == 1


async def test_post_order_when_stale_in_progress_key_then_taken_over_and_no_second_order(
    gw: Harness, redis_client: Any
) -> None:
    gw.heartbeat("position")
    await gw.risk_standin(accept)
    await asyncio.sleep(0.3)
    headers = {**OP, "Idempotency-Key": "crashed"}
    first = await gw.client.post("/v1/orders", headers=headers, json=ORDER)
    # A gateway that crashed mid-request leaves its claim behind; after a minute it is taken over.
    record = json.loads(await redis_client.get("idem:crashed"))
    stale = {"state": "in_progress", "fingerprint": record["fingerprint"], "started_ns": time.time_ns() - 120 * 10**9}
    await redis_client.set("idem:crashed", json.dumps(stale))
    await gw.ctx.pool.execute("UPDATE idempotency_keys SET status = 'in_progress', created_ns = 0")
    coid = first.json()["client_order_id"]
    await insert_order(gw.ctx.pool, coid, 1, "PARTIALLY_FILLED")
    await gw.ctx.pool.execute("UPDATE orders SET filled_quantity = 0.005 WHERE client_order_id = $1", coid)

    retry = await gw.client.post("/v1/orders", headers=headers, json=ORDER)

    assert first.status_code == 201 and first.json()["status"] == "NEW"
    assert retry.status_code == 201, retry.text
    assert retry.json() | {"status": "NEW", "filled_quantity": "0"} == first.json()
    assert (retry.json()["status"], retry.json()["filled_quantity"]) == ("PARTIALLY_FILLED", "0.005")
    assert await gw.submit_orders_in_stream() == 1


async def test_post_order_when_accepted_then_201_with_venue_status(gw: Harness) -> None:
    gw.heartbeat("position")
    await gw.risk_standin(accept)
    await asyncio.sleep(0.3)

    response = await gw.client.post("/v1/orders", headers={**OP, "Idempotency-Key": "acc"}, json=ORDER)

    assert response.status_code == 201 and response.json()["status"] == "NEW"


async def test_post_order_when_nothing_decides_then_202_pending(
    infra: EmbeddedInfra, nats_url: str, pg_pool: Any, redis_client: Any
) -> None:
    async with harness(
        make_settings(infra, nats_url), pg_pool, redis_client, GatewayConfig(outcome_timeout_s=0.3)
    ) as h:
        h.heartbeat("position")
        await asyncio.sleep(0.3)

        response = await h.client.post("/v1/orders", headers={**OP, "Idempotency-Key": "slow"}, json=ORDER)

        assert response.status_code == 202 and response.json()["status"] == "PENDING_SUBMISSION"
        assert await h.submit_orders_in_stream() == 1


async def test_concurrent_duplicates_then_exactly_one_409(gw: Harness) -> None:
    gw.heartbeat("position")
    await gw.risk_standin(accept, delay_s=0.5)
    await asyncio.sleep(0.3)
    headers = {**OP, "Idempotency-Key": "race"}

    responses = await asyncio.gather(*(gw.client.post("/v1/orders", headers=headers, json=ORDER) for _ in range(2)))

    codes = sorted(response.status_code for response in responses)
    assert codes == [201, 409]
    conflict = next(response for response in responses if response.status_code == 409)
    assert conflict.json()["error"]["code"] == "request_in_progress"
    assert await gw.submit_orders_in_stream() == 1


async def test_post_order_when_position_down_then_503_and_nothing_published(gw: Harness) -> None:
    response = await gw.client.post("/v1/orders", headers={**OP, "Idempotency-Key": "k"}, json=ORDER)
    gw.heartbeat("position")
    await asyncio.sleep(0.3)
    await gw.risk_standin(accept)
    retry = await gw.client.post("/v1/orders", headers={**OP, "Idempotency-Key": "k"}, json=ORDER)

    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.json()["error"]["details"] == {"dependency": "position"}
    assert retry.status_code == 201  # the key was released: the retry is processed
    assert await gw.submit_orders_in_stream() == 1


async def test_post_order_validation_then_422_with_details(gw: Harness) -> None:
    headers = {**OP, "Idempotency-Key": "v"}
    no_price = await gw.client.post("/v1/orders", headers=headers, json={**ORDER, "price": None})
    unknown = await gw.client.post("/v1/orders", headers=headers, json={**ORDER, "symbol": "DOGEUSDT"})
    no_key = await gw.client.post("/v1/orders", headers=OP, json=ORDER)

    assert no_price.status_code == 422 and no_price.json()["error"]["details"]
    assert unknown.status_code == 422 and unknown.json()["error"]["details"][0]["loc"] == ["body", "symbol"]
    assert no_key.status_code == 400 and no_key.json()["error"]["code"] == "missing_idempotency_key"


async def test_post_order_when_valkey_down_then_postgres_fallback_gives_one_order(
    infra: EmbeddedInfra, nats_url: str, pg_pool: Any, tmp_path: Path
) -> None:
    valkey = EmbeddedInfra(tmp_path / "valkey").start(("valkey",))
    client = cache.create_client(valkey.redis_url)
    try:
        assert await client.ping()
        valkey.stop_one("valkey")  # stopped by pid
        async with harness(make_settings(infra, nats_url), pg_pool, client) as h:
            h.heartbeat("position")
            await h.risk_standin(deny)
            await asyncio.sleep(0.3)
            headers = {**OP, "Idempotency-Key": "no-cache"}

            first = await h.client.post("/v1/orders", headers=headers, json=ORDER)
            second = await h.client.post("/v1/orders", headers=headers, json=ORDER)

            assert first.status_code == 201, first.text
            assert second.json() == first.json()
            assert await h.submit_orders_in_stream() == 1
            stored = await pg_pool.fetchrow("SELECT status, http_status FROM idempotency_keys WHERE key = 'no-cache'")
            assert (stored["status"], stored["http_status"]) == ("done", 201)
    finally:
        await client.aclose()
        valkey.stop()


async def insert_order(pool: Any, coid: str, created_ns: int, status: str = "NEW") -> None:
    await pool.execute(
        "INSERT INTO orders (client_order_id, idempotency_key, source, venue, symbol, side, type, quantity, price, "
        "status, filled_quantity, created_ns, updated_ns) VALUES ($1, $1, 'OPERATOR', 'binance-usdm', 'BTCUSDT', "
        "'BUY', 'LIMIT', 0.010, 65000.50, $2, 0, $3, $3)",
        coid,
        status,
        created_ns,
    )


async def test_orders_reads_then_pagination_get_and_cancel(gw: Harness, pg_pool: Any) -> None:
    for index in range(5):
        await insert_order(pg_pool, f"o{index}", 1000 + index, "FILLED" if index == 0 else "NEW")
    await pg_pool.execute(
        "INSERT INTO positions (venue, symbol, quantity, average_entry_price, realized_pnl, updated_ns) "
        "VALUES ('binance-usdm', 'BTCUSDT', -0.5, 65000.10, 1.5, 7)"
    )

    async def symbols(_: bytes) -> bytes:  # SymbolHotState as state-builder sends it
        view = {"symbol": "BTCUSDT", "hot_state": "VALID", "age_ms": 1, "last_update_id": 2, "mark_price": "64900.1"}
        return json.dumps({"symbols": {"BTCUSDT": view}}).encode()

    await gw.peer.serve("svc.state-builder.symbols", symbols)

    page1 = (await gw.client.get("/v1/orders?limit=2", headers=VIEW)).json()
    page2 = (await gw.client.get(f"/v1/orders?limit=2&cursor={page1['next_cursor']}", headers=VIEW)).json()
    page3 = (await gw.client.get(f"/v1/orders?limit=2&cursor={page2['next_cursor']}", headers=VIEW)).json()
    filled = (await gw.client.get("/v1/orders?status=filled", headers=VIEW)).json()
    bad_status = await gw.client.get("/v1/orders?status=NOPE", headers=VIEW)
    bad_cursor = await gw.client.get("/v1/orders?cursor=zzz", headers=VIEW)
    one = await gw.client.get("/v1/orders/o3", headers=VIEW)
    missing = await gw.client.get("/v1/orders/nope", headers=VIEW)
    cancel = await gw.client.delete("/v1/orders/o3", headers=OP)
    terminal = await gw.client.delete("/v1/orders/o0", headers=OP)
    cancel_missing = await gw.client.delete("/v1/orders/nope", headers=OP)
    positions = (await gw.client.get("/v1/positions", headers=VIEW)).json()

    assert [o["order_id"] for o in page1["orders"] + page2["orders"] + page3["orders"]] == [
        "o4",
        "o3",
        "o2",
        "o1",
        "o0",
    ]
    assert page3["next_cursor"] is None
    assert [o["order_id"] for o in filled["orders"]] == ["o0"]
    assert bad_status.status_code == 422 and bad_cursor.status_code == 400
    assert one.json()["quantity"] == "0.01" and one.json()["price"] == "65000.5"
    assert missing.status_code == 404
    assert cancel.status_code == 202 and cancel.json()["status"] == "PENDING_CANCEL"
    assert terminal.status_code == 409 and cancel_missing.status_code == 404
    info = await gw.peer.js.stream_info("ORDERS", subjects_filter=subjects.CMD_ORDER_CANCEL)
    assert (info.state.subjects or {}).get(subjects.CMD_ORDER_CANCEL) == 1
    assert positions == {
        "positions": [
            {
                "venue": "binance-usdm",
                "symbol": "BTCUSDT",
                "quantity": "-0.5",
                "average_entry_price": "65000.1",
                "realized_pnl": "1.5",
                "updated_ns": 7,
                # short 0.5 from 65000.1, marked at 64900.1: (64900.1 - 65000.1) x -0.5 = +50
                "mark_price": "64900.1",
                "mark_source": "mark_price",
                "unrealized_pnl": "50",
            }
        ]
    }


async def test_postgres_reads_when_postgres_unreachable_then_503(gw: Harness, infra: EmbeddedInfra) -> None:
    dead_port = infra_commands.free_port("127.0.0.1")
    dead = await asyncpg.create_pool(
        f"postgresql://bulwark@127.0.0.1:{dead_port}/bulwark", min_size=0, max_size=1, timeout=1.0
    )
    try:
        gw.ctx.pool = dead
        app = create_app(gw.gateway)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g") as client:
            for path in ("/v1/orders", "/v1/orders/x", "/v1/positions", "/v1/events", "/v1/alerts", "/v1/dlq"):
                response = await client.get(path, headers=VIEW)
                assert response.status_code == 503, path
                assert response.headers["Retry-After"]
                assert "postgres" in response.json()["error"]["message"]
            ready = await client.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["reasons"]
    finally:
        await dead.close()


# --------------------------------------------------------------------------- strategies, audit, dlq


async def test_strategies_enable_disable_then_commands_published(gw: Harness) -> None:
    await gw.peer.kv_put(subjects.key_strategy("imbalance"), json.dumps({"state": "SCANNING"}).encode())

    listed = (await gw.client.get("/v1/strategies", headers=VIEW)).json()
    enabled = await gw.client.post("/v1/strategies/imbalance/enable", headers=OP)
    disabled = await gw.client.post("/v1/strategies/imbalance/disable", headers=OP)
    unknown = await gw.client.post("/v1/strategies/nope/enable", headers=OP)

    assert listed["strategies"][0]["name"] == "imbalance" and listed["strategies"][0]["state"] == "SCANNING"
    assert enabled.status_code == 202 and disabled.status_code == 202 and unknown.status_code == 404
    info = await gw.peer.js.stream_info("SIGNALS", subjects_filter="cmd.strategy.>")
    assert (info.state.subjects or {}) == {"cmd.strategy.imbalance.enable": 1, "cmd.strategy.imbalance.disable": 1}


async def test_strategy_enable_when_hard_shutdown_then_409_and_nothing_published(gw: Harness) -> None:
    await gw.peer.kv_put(subjects.KEY_DEGRADATION_LEVEL, json.dumps({"level": "HARD_SHUTDOWN"}).encode())

    refused = await gw.client.post("/v1/strategies/imbalance/enable", headers=OP)
    disabled = await gw.client.post("/v1/strategies/imbalance/disable", headers=OP)

    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "hard_shutdown" and "restarted by hand" in refused.text
    assert disabled.status_code == 202  # stopping a strategy is always allowed
    info = await gw.peer.js.stream_info("SIGNALS", subjects_filter="cmd.strategy.>")
    assert (info.state.subjects or {}) == {"cmd.strategy.imbalance.disable": 1}


async def insert_event(pool: Any, seq: int, message: Message, subject: str) -> None:
    await pool.execute(
        "INSERT INTO audit_events (stream, stream_seq, subject, type, message_id, ts_event_ns, payload) "
        "VALUES ('CONTROL', $1, $2, $3, $4, $5, $6::jsonb)",
        seq,
        subject,
        type(message).__name__,
        message.message_id,
        message.ts_event_ns,
        msgspec.json.encode(message).decode(),
    )


async def test_events_and_alerts_then_filtered_newest_first(gw: Harness, pg_pool: Any) -> None:
    raised_a = AlertRaised(key="a", severity="P1", component="risk", title="A")
    raised_b = AlertRaised(key="b", severity="P2", component="risk", title="B")
    await insert_event(pg_pool, 1, raised_a, subjects.EVT_ALERT_RAISED)
    await insert_event(pg_pool, 2, raised_b, subjects.EVT_ALERT_RAISED)
    await insert_event(pg_pool, 3, AlertResolved(key="a", component="risk"), subjects.EVT_ALERT_RESOLVED)
    await insert_event(
        pg_pool, 4, TradingStateChanged(previous=None, current="HALTED", reason="x"), subjects.EVT_TRADING_STATE
    )

    everything = (await gw.client.get("/v1/events?limit=3", headers=VIEW)).json()
    rest = (await gw.client.get(f"/v1/events?cursor={everything['next_cursor']}", headers=VIEW)).json()
    typed = (await gw.client.get("/v1/events?type=AlertRaised", headers=VIEW)).json()
    alerts = (await gw.client.get("/v1/alerts", headers=VIEW)).json()

    assert [e["stream_seq"] for e in everything["events"]] == [4, 3, 2]
    assert [e["stream_seq"] for e in rest["events"]] == [1] and rest["next_cursor"] is None
    assert [e["payload"]["key"] for e in typed["events"]] == ["b", "a"]
    assert [alert["key"] for alert in alerts["alerts"]] == ["b"]
    assert alerts["alerts"][0]["runbook_url"] == "docs/runbooks/README.md"  # "b" is no known alert kind


async def test_events_when_filtered_by_component_time_correlation_and_subject_then_matching_rows(
    gw: Harness, pg_pool: Any
) -> None:
    first = AlertRaised(key="a", severity="P1", component="risk", title="A", ts_event_ns=100, correlation_id="c-1")
    second = AlertRaised(key="b", severity="P2", component="position", title="B", ts_event_ns=200)
    third = TradingStateChanged(previous=None, current="HALTED", reason="x", operator="alice", ts_event_ns=300)
    await insert_event(pg_pool, 1, first, subjects.EVT_ALERT_RAISED)
    await insert_event(pg_pool, 2, second, subjects.EVT_ALERT_RAISED)
    await insert_event(pg_pool, 3, third, subjects.EVT_TRADING_STATE)

    async def seqs(query: str) -> list[int]:
        response = await gw.client.get(f"/v1/events?{query}", headers=VIEW)
        assert response.status_code == 200, response.text
        return [event["stream_seq"] for event in response.json()["events"]]

    assert await seqs("component=risk") == [1]
    assert await seqs("since_ns=150&until_ns=300") == [2]
    assert await seqs("correlation_id=c-1") == [1]
    assert await seqs("subject=evt.trading.") == [3]
    assert await seqs("type=TradingStateChanged,AlertRaised&limit=2") == [3, 2]
    assert await seqs("operator=alice&stream=control") == [3]
    assert await seqs("component=nobody") == []


async def test_dlq_list_stats_retry_delete(gw: Harness, pg_pool: Any) -> None:
    payload = encode(CancelOrder(client_order_id="bw-dead", operator="x", reason="r")).decode()
    for seq, consumer in ((1, "risk-orders"), (2, "position-approved")):
        await pg_pool.execute(
            "INSERT INTO dead_letters (stream_seq, consumer, subject, reason, deliveries, payload, created_ns, "
            "updated_ns) VALUES ($1, $2, $3, 'permanent: boom', 5, $4, $1, $1)",
            seq,
            consumer,
            subjects.CMD_ORDER_CANCEL,
            payload,
        )

    listed = (await gw.client.get("/v1/dlq?consumer=risk-orders&reason=BOOM", headers=VIEW)).json()
    retried = await gw.client.post("/v1/dlq/1/retry", headers=OP)
    again = await gw.client.post("/v1/dlq/1/retry", headers=OP)
    stats = (await gw.client.get("/v1/dlq/stats", headers=VIEW)).json()
    deleted = await gw.client.delete("/v1/dlq/2", headers=OP)
    gone = await gw.client.delete("/v1/dlq/2", headers=OP)
    viewer_delete = await gw.client.delete("/v1/dlq/1", headers=VIEW)

    assert [letter["id"] for letter in listed["dead_letters"]] == [1]
    assert retried.status_code == 200 and retried.json()["outcome"] == "retried"
    assert retried.json()["dead_letter"]["status"] == "RETRIED"
    assert again.status_code == 200 and again.json()["outcome"] == "already_retried"  # idempotent, no re-publish
    assert stats["total"] == 2 and stats["by_status"] == {"PENDING": 1, "RETRIED": 1}
    assert stats["by_reason"] == {"permanent": 2} and stats["pending"] == 1
    assert deleted.status_code == 200 and gone.status_code == 404 and viewer_delete.status_code == 403
    assert await count_on(gw.peer, "ORDERS", subjects.CMD_ORDER_CANCEL) == 1


async def test_dlq_retry_when_subject_owned_by_another_component_then_409_and_the_letter_kept(
    gw: Harness, pg_pool: Any
) -> None:
    # Least privilege: only risk publishes the trading state; the bus would drop the gateway's publish.
    payload = msgspec.json.encode(TradingStateChanged(previous=None, current="HALTED", reason="x"))
    letter = await insert_dead_letter(pg_pool, subjects.EVT_TRADING_STATE, payload)

    answer = await gw.client.post(f"/v1/dlq/{letter}/retry", headers=OP)

    assert answer.status_code == 409 and answer.json()["error"]["code"] == "not_retriable", answer.text
    assert "may not publish" in answer.json()["error"]["message"]
    assert await pg_pool.fetchval("SELECT status FROM dead_letters WHERE id = $1", letter) == "PENDING"
    assert await count_on(gw.peer, "CONTROL", subjects.EVT_TRADING_STATE) == 0


async def insert_dead_letter(
    pool: Any, subject: str, payload: bytes, *, consumer: str = "risk-orders", created_ns: int = 1, reason: str = ""
) -> int:
    return await pool.fetchval(
        "INSERT INTO dead_letters (stream_seq, consumer, subject, reason, deliveries, payload, created_ns, "
        "updated_ns) VALUES (NULL, $1, $2, $3, 5, $4, $5, $5) RETURNING id",
        consumer,
        subject,
        reason or "permanent: venue said no",
        payload.decode(),
        created_ns,
    )


async def count_on(bus: Bus, stream: str, subject: str) -> int:
    info = await bus.js.stream_info(stream, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def test_dlq_retry_when_repeated_and_concurrent_then_lands_once_on_its_subject_and_is_audited(
    gw: Harness, pg_pool: Any
) -> None:
    payload = encode(CancelOrder(client_order_id="bw-dead", operator="x", reason="r"))
    letter = await insert_dead_letter(pg_pool, subjects.CMD_ORDER_CANCEL, payload)

    answers = await asyncio.gather(*(gw.client.post(f"/v1/dlq/{letter}/retry", headers=ALICE) for _ in range(3)))
    later = await gw.client.post(f"/v1/dlq/{letter}/retry", headers=OP)

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert sorted(answer.json()["outcome"] for answer in answers) == ["already_retried", "already_retried", "retried"]
    assert later.json()["outcome"] == "already_retried"
    assert await count_on(gw.peer, "ORDERS", subjects.CMD_ORDER_CANCEL) == 1
    stored = await gw.peer.js.get_last_msg("ORDERS", subjects.CMD_ORDER_CANCEL)
    assert stored.data == payload  # the original payload, byte for byte
    assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == f"dlq-retry:{letter}"
    assert await pg_pool.fetchval("SELECT status FROM dead_letters WHERE id = $1", letter) == "RETRIED"
    audit_subject = subjects.evt_operator("dlq_retry")
    assert await count_on(gw.peer, "CONTROL", audit_subject) == 1
    action = decode((await gw.peer.js.get_last_msg("CONTROL", audit_subject)).data)
    assert isinstance(action, OperatorActionTaken)
    assert (action.operator, action.role, action.target) == ("alice", "operator", str(letter))


async def test_dlq_retry_many_when_by_filter_then_by_ids_then_each_lands_exactly_once(
    gw: Harness, pg_pool: Any
) -> None:
    letters = [
        await insert_dead_letter(
            pg_pool, subjects.CMD_ORDER_CANCEL, encode(CancelOrder(client_order_id=f"bw-{n}")), consumer=consumer
        )
        for n, consumer in enumerate(("risk-orders", "risk-orders", "position-approved"))
    ]
    core_only = await insert_dead_letter(pg_pool, "svc.risk.halt", b"{}", consumer="other")

    by_filter = await gw.client.post("/v1/dlq/retry", headers=ALICE, json={"consumer": "risk-orders"})
    by_ids = await gw.client.post("/v1/dlq/retry", headers=ALICE, json={"ids": [*letters, 999]})
    single_core = await gw.client.post(f"/v1/dlq/{core_only}/retry", headers=OP)
    pending = (await gw.client.get("/v1/dlq?status=pending", headers=VIEW)).json()

    assert by_filter.status_code == 200, by_filter.text
    assert by_filter.json()["retried"] == 2
    assert [result["id"] for result in by_filter.json()["results"]] == letters[:2]
    outcomes = [(result["id"], result["outcome"]) for result in by_ids.json()["results"]]
    assert outcomes == [
        (letters[0], "already_retried"),
        (letters[1], "already_retried"),
        (letters[2], "retried"),
        (999, "not_found"),
    ]
    assert single_core.status_code == 409 and single_core.json()["error"]["code"] == "not_retriable"
    assert await count_on(gw.peer, "ORDERS", subjects.CMD_ORDER_CANCEL) == 3
    assert [letter["id"] for letter in pending["dead_letters"]] == [core_only]


async def test_dlq_list_when_filtered_by_time_operation_and_paged_then_matching_letters(
    gw: Harness, pg_pool: Any
) -> None:
    for n in range(5):
        subject = subjects.CMD_ORDER_SUBMIT if n % 2 == 0 else subjects.EVT_TRADING_STATE
        await insert_dead_letter(pg_pool, subject, b"{}", created_ns=100 + n, reason=f"TimeoutError: {n}")

    page1 = (await gw.client.get("/v1/dlq?limit=2", headers=VIEW)).json()
    page2 = (await gw.client.get(f"/v1/dlq?limit=2&cursor={page1['next_cursor']}", headers=VIEW)).json()
    window = (await gw.client.get("/v1/dlq?since_ns=101&until_ns=104", headers=VIEW)).json()
    operation = (await gw.client.get("/v1/dlq?operation=cmd.order", headers=VIEW)).json()
    by_consumer = (await gw.client.get("/v1/dlq?operation=risk-orders&reason=timeout", headers=VIEW)).json()
    one = await gw.client.get("/v1/dlq/3", headers=VIEW)
    bad = await gw.client.get("/v1/dlq?status=LOST", headers=VIEW)

    assert [letter["id"] for letter in page1["dead_letters"] + page2["dead_letters"]] == [5, 4, 3, 2]
    assert [letter["created_ns"] for letter in window["dead_letters"]] == [103, 102, 101]
    assert [letter["id"] for letter in operation["dead_letters"]] == [5, 3, 1]
    assert len(by_consumer["dead_letters"]) == 5 and by_consumer["next_cursor"] is None
    assert one.json()["subject"] == subjects.CMD_ORDER_SUBMIT and bad.status_code == 422


async def test_postgres_stopped_then_reads_503_kv_reads_answer_and_orders_still_accepted(
    infra: EmbeddedInfra, nats_url: str, redis_client: Any, tmp_path: Path
) -> None:
    own = EmbeddedInfra(tmp_path / "pg")
    dead_valkey = cache.create_client(f"redis://127.0.0.1:{infra_commands.free_port('127.0.0.1')}/0")
    pool: Any = None
    try:
        await asyncio.to_thread(own.start, ("postgres",))  # start() runs its own event loop
        pool = await db.create_pool(own.pg_dsn)
        await db.migrate(pool)
        async with harness(make_settings(infra, nats_url), pool, redis_client) as h:
            h.heartbeat("position")
            await h.risk_standin(accept)
            await h.peer.kv_put(subjects.KEY_TRADING_STATE, json.dumps({"state": "ACTIVE"}).encode())
            await h.peer.kv_put(subjects.key_breaker("CB-2"), json.dumps({"state": "CLOSED"}).encode())
            await asyncio.sleep(0.3)
            assert (await h.client.get("/v1/orders", headers=VIEW)).status_code == 200

            own.stop_one("postgres")  # by pid

            for path in ("/v1/orders", "/v1/orders/x", "/v1/positions", "/v1/events", "/v1/alerts", "/v1/dlq"):
                response = await h.client.get(path, headers=VIEW)
                assert response.status_code == 503, (path, response.text)
                assert response.headers["Retry-After"] == "5"
                error = response.json()["error"]
                assert error["code"] == "dependency_unavailable" and "FM-C3" in error["message"]
                assert error["details"]["dependency"] == "postgres" and error["details"]["reason"]
            status = await h.client.get("/v1/status", headers=VIEW)
            breakers = await h.client.get("/v1/breakers", headers=VIEW)
            order = await h.client.post("/v1/orders", headers={**OP, "Idempotency-Key": "pg-down"}, json=ORDER)

            assert status.status_code == 200 and status.json()["trading_state"] == "ACTIVE"
            assert status.json()["dependencies"] == {"nats": "UP", "postgres": "DOWN", "valkey": "UP"}
            assert breakers.json() == {"breakers": {"CB-2": {"state": "CLOSED"}}}
            assert order.status_code == 201, order.text  # Valkey holds the key; the log holds the order
            assert await h.submit_orders_in_stream() == 1

            h.ctx.cache = dead_valkey
            h.gateway.idempotency.cache = dead_valkey
            both_down = await h.client.post("/v1/orders", headers={**OP, "Idempotency-Key": "none"}, json=ORDER)

            assert both_down.status_code == 503 and both_down.headers["Retry-After"]
            assert both_down.json()["error"]["details"]["dependency"] == "valkey+postgres"
            assert await h.submit_orders_in_stream() == 1  # never an order without an idempotency record
    finally:
        if pool is not None:
            pool.terminate()
        await dead_valkey.aclose()
        own.stop()


# --------------------------------------------------------------------------- real HTTP server


@contextlib.asynccontextmanager
async def real_server(h: Harness) -> AsyncIterator[httpx.AsyncClient]:
    """The harness's gateway served by uvicorn on a free port (as in production), and a client of it."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = await start_http(h.ctx, h.gateway, sock)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(50):
                if server.started:
                    break
                await asyncio.sleep(0.05)
            yield client
    finally:
        server.should_exit = True
        for cleanup in h.ctx.cleanups:
            await cleanup()


async def test_real_server_serves_metrics_and_sse_stream(gw: Harness) -> None:
    async with real_server(gw) as client:
        assert (await client.get("/health/live")).status_code == 200
        lines: list[str] = []
        async with client.stream("GET", "/v1/events/stream", headers=VIEW) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            iterator = stream.aiter_lines()
            assert (await anext(iterator)).startswith(":")
            await gw.peer.publish(
                subjects.EVT_TRADING_STATE, TradingStateChanged(previous=None, current="HALTED", reason="x")
            )
            async with asyncio.timeout(3):
                while not any(line.startswith("data:") for line in lines):
                    lines.append(await anext(iterator))
        metrics = (await client.get("/metrics")).text
    assert "event: TradingStateChanged" in lines
    assert f"subject: {subjects.EVT_TRADING_STATE}" in lines
    data = json.loads(next(line for line in lines if line.startswith("data:"))[5:])
    assert data["current"] == "HALTED"
    assert 'bulwark_gateway_http_requests_total{method="GET",route="/health/live",status="200"}' in metrics
    assert "bulwark_component_up" in metrics


def test_gateway_process_when_port_busy_then_exits_non_zero(infra: EmbeddedInfra, nats_url: str) -> None:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    env = {
        **os.environ,
        **infra.env(),
        "BULWARK_NATS_URL": nats_url,
        "BULWARK_GATEWAY_PORT": str(port),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    try:
        result = subprocess.run(
            [sys.executable, "-m", "services.gateway.main"], env=env, capture_output=True, timeout=60, check=False
        )
    finally:
        sock.close()
    assert result.returncode != 0
    assert b"gateway_bind_failed" in result.stdout


@pytest.mark.parametrize("path", ["/v1/status", "/v1/orders", "/v1/dlq/stats"])
async def test_reads_without_token_then_401(gw: Harness, path: str) -> None:
    response = await gw.client.get(path)

    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"


# --------------------------------------------------------------------------- backup venue (FM-N6)

BACKUP = "binance-usdm-backup"


@pytest_asyncio.fixture
async def gw_backup(infra: EmbeddedInfra, nats_url: str, pg_pool: Any, redis_client: Any) -> AsyncIterator[Harness]:
    async with harness(make_settings(infra, nats_url, backup_venue=BACKUP), pg_pool, redis_client) as h:
        yield h


async def test_status_when_backup_venue_then_each_venue_with_role_order_link_and_position_process(
    gw_backup: Harness,
) -> None:
    gw_backup.heartbeat("position")
    gw_backup.heartbeat(f"position-{BACKUP}")
    down = {"state": "DISCONNECTED", "reason": "venue breaker open: 5 failures", "ts_ns": 1}
    await gw_backup.peer.kv_put(subjects.key_link("binance-usdm", subjects.ORDER_LINK), json.dumps(down).encode())
    await gw_backup.peer.kv_put(
        subjects.key_link(BACKUP, subjects.ORDER_LINK), json.dumps({"state": "CONNECTED", "ts_ns": 2}).encode()
    )
    await asyncio.sleep(0.4)

    body = (await gw_backup.client.get("/v1/status", headers=VIEW)).json()

    assert body["components"][f"position-{BACKUP}"]["state"] == "READY"
    assert body["components"]["position"]["state"] == "READY"
    assert body["venues"] == {
        "binance-usdm": {
            "role": "main",
            "order_link": "DISCONNECTED",
            "order_link_reason": "venue breaker open: 5 failures",
            "position_component": "position",
            "position_state": "READY",
            "mode": "LIVE",
        },
        BACKUP: {
            "role": "backup",
            "order_link": "CONNECTED",
            "order_link_reason": None,
            "position_component": f"position-{BACKUP}",
            "position_state": "READY",
            "mode": "LIVE",
        },
    }
    assert body["links"][f"{BACKUP}.orders"]["state"] == "CONNECTED"  # the raw record as before


async def test_status_when_backup_position_process_never_heartbeats_then_listed_down(gw_backup: Harness) -> None:
    body = (await gw_backup.client.get("/v1/status", headers=VIEW)).json()

    assert body["components"][f"position-{BACKUP}"] == {
        "state": "DOWN",
        "pid": None,
        "last_heartbeat_age_ms": None,
        "metrics_url": None,
        "restarts": 0,
        "last_restart_ns": None,
        "started_ns": None,
        "restarts_since_ns": gw_backup.gateway.restarts.counting_since_ns,
    }
    assert body["venues"][BACKUP]["position_state"] == "DOWN"
    assert body["venues"][BACKUP]["order_link"] is None  # never reported


async def test_status_when_no_backup_venue_then_only_the_main_venue(gw: Harness) -> None:
    body = (await gw.client.get("/v1/status", headers=VIEW)).json()

    assert list(body["venues"]) == ["binance-usdm"]
    assert not any(name.startswith("position-") for name in body["components"])


async def test_post_order_when_only_backup_position_process_down_then_accepted(gw_backup: Harness) -> None:
    gw_backup.heartbeat("position")
    await gw_backup.risk_standin(accept)
    await asyncio.sleep(0.3)

    response = await gw_backup.client.post("/v1/orders", headers={**OP, "Idempotency-Key": "b1"}, json=ORDER)

    assert response.status_code == 201, response.text


async def test_post_order_when_main_position_down_and_backup_up_then_503(gw_backup: Harness) -> None:
    gw_backup.heartbeat(f"position-{BACKUP}")
    await asyncio.sleep(0.3)

    response = await gw_backup.client.post("/v1/orders", headers={**OP, "Idempotency-Key": "b2"}, json=ORDER)

    assert response.status_code == 503
    assert response.json()["error"]["details"] == {"dependency": "position"}
    assert await gw_backup.submit_orders_in_stream() == 0


async def test_orders_and_positions_when_on_both_venues_then_each_row_names_its_venue(
    gw_backup: Harness, pg_pool: Any
) -> None:
    await insert_order(pg_pool, "main-1", 1000)
    await insert_order(pg_pool, "backup-1", 1001)
    await pg_pool.execute("UPDATE orders SET venue = $1 WHERE client_order_id = 'backup-1'", BACKUP)
    await pg_pool.execute(
        "INSERT INTO positions (venue, symbol, quantity, average_entry_price, realized_pnl, updated_ns) "
        "VALUES ('binance-usdm', 'BTCUSDT', 0.5, 65000, 0, 7), ($1, 'BTCUSDT', -0.2, 64000, 0, 8)",
        BACKUP,
    )

    orders = (await gw_backup.client.get("/v1/orders", headers=VIEW)).json()["orders"]
    backup_order = (await gw_backup.client.get("/v1/orders/backup-1", headers=VIEW)).json()
    positions = (await gw_backup.client.get("/v1/positions", headers=VIEW)).json()["positions"]

    assert [(order["order_id"], order["venue"]) for order in orders] == [
        ("backup-1", BACKUP),
        ("main-1", "binance-usdm"),
    ]
    assert backup_order["venue"] == BACKUP
    assert [(row["venue"], row["symbol"], row["quantity"]) for row in positions] == [
        ("binance-usdm", "BTCUSDT", "0.5"),
        (BACKUP, "BTCUSDT", "-0.2"),
    ]


async def test_strategies_when_process_heartbeats_then_its_crashes_pid_and_restarts_listed(gw: Harness) -> None:
    component = subjects.strategy_component("imbalance")

    async def beat(pid: int, started_ns: int) -> None:
        heartbeat = Heartbeat(
            component=component,
            pid=pid,
            state=ComponentState.READY,
            started_ns=started_ns,
            details={"state": "SCANNING", "crashes_in_window": 2},  # services/strategy/runner.py details()
        )
        await gw.peer.publish_core(subjects.heartbeat(component), heartbeat)

    async def listed() -> dict[str, Any]:
        return (await gw.client.get("/v1/strategies", headers=VIEW)).json()["strategies"][0]

    await beat(101, 1)
    first = await eventually(lambda: _pid_listed(listed, 101))
    gw.gateway.restarts.timeout_ns = 0  # the old process counts as gone at the next beat of another
    await beat(202, 2)
    second = await eventually(lambda: _pid_listed(listed, 202))

    assert first["crashes_in_window"] == 2 and first["crash_window_s"] == 600 and first["restarts"] == 0
    assert second["restarts"] == 1 and second["component_state"] == "READY"


async def _pid_listed(listed: Any, pid: int) -> dict[str, Any] | None:
    strategy: dict[str, Any] = await listed()
    return strategy if strategy["pid"] == pid else None

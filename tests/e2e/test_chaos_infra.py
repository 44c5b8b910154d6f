"""Infrastructure chaos (issue 4): NATS, Postgres and Valkey killed (`kill -9` by the pid supervisord
reports) or held down while operator orders flow. `bulwark up` runs them as supervisord programs
with autorestart, on the same port and data dir. Afterwards nothing is lost or duplicated; while
NATS is down trading is HALTED, while Postgres is down reads answer 503 with a reason and orders
still reach the venue, while Valkey is down a repeated key never submits twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from entrypoints.harness import load
from entrypoints.harness.system import RunningSystem, start_load_system, stop_system
from libs.ids import client_order_id_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # long chaos/bench runs: `pytest -m slow` before a release
_log = logging.getLogger(__name__)
BODY = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.002"}


@pytest.fixture(scope="module")
def system() -> Iterator[RunningSystem]:
    with tempfile.TemporaryDirectory(prefix="bulwark-chaos-infra-", ignore_cleanup_errors=True) as name:
        folder = Path(name)
        running = start_load_system(folder / "data", folder / "up.log", folder)
        try:
            running.wait_all_ready(timeout_s=150)
            yield running
        finally:
            stop_system(running)


@pytest_asyncio.fixture
async def client(system: RunningSystem) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {system.operator_token}"}
    async with httpx.AsyncClient(base_url=system.gateway, headers=headers, timeout=30) as http:
        assert await load.wait_system_ready(http, 120) is not None, "system not ready before the test"
        yield http


async def _venue_orders(system: RunningSystem, key: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as venue:
        state = (await venue.get(f"{system.venue}/_sim/state")).json()
    return [order for order in state["orders"] if order["client_order_id"] == client_order_id_for(key)]


async def _until_one_venue_order(system: RunningSystem, key: str, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    orders = await _venue_orders(system, key)
    while not orders and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        orders = await _venue_orders(system, key)
    await asyncio.sleep(1.0)  # a duplicate would land right behind the first
    return await _venue_orders(system, key)


async def test_infra_kill_9_when_nats_postgres_valkey_killed_under_load_then_nothing_lost_or_duplicated(
    system: RunningSystem,
) -> None:
    prices = await load.reference_prices(system.venue)
    script = load.build_script(36, 11, prices, key_prefix=f"infra-{uuid.uuid4().hex[:8]}")
    kills = [load.KillPlan(4, "valkey", 0.05), load.KillPlan(14, "nats", 0.1), load.KillPlan(24, "postgres", 0.05)]

    async def infra_pid(name: str) -> int | None:
        return await asyncio.to_thread(system.program_pid, name)

    run = await load.run_checked(
        system.gateway, system.operator_token, system.venue, script, kills, infra_pid=infra_pid, log=_log.info
    )
    _log.info("infra-kill: %s", json.dumps(run.summary(), default=str))
    assert [kill.target for kill in run.report.kills] == ["valkey", "nats", "postgres"]
    for kill in run.report.kills:
        assert kill.new_pid is not None and kill.system_ready_s is not None, kill.as_dict()
    assert run.problems == [], run.problems
    assert run.server_errors == [], run.server_errors
    assert run.book_problems == [], run.book_problems
    assert load.differences(load.comparable(run.outcome, run.report), load.expected_outcome(script)) == []


async def test_nats_down_when_held_down_then_orders_refused_trading_halted_and_back_after(
    system: RunningSystem, client: httpx.AsyncClient
) -> None:
    key = f"nats-down-{uuid.uuid4()}"
    await asyncio.to_thread(system.stop_program, "nats")
    try:
        await asyncio.sleep(4.0)  # past the 3 s heartbeat timeout
        refused = await client.post("/v1/orders", json=BODY, headers={"Idempotency-Key": key})
        status = (await client.get("/v1/status")).json()
    finally:
        await asyncio.to_thread(system.start_program, "nats")
    assert refused.status_code == 503, refused.text
    assert "Retry-After" in refused.headers
    assert await load.wait_system_ready(client, 90) is not None, "not back after NATS returned"
    assert await _venue_orders(system, key) == []
    again = await client.post("/v1/orders", json=BODY, headers={"Idempotency-Key": key})
    assert again.status_code in (201, 202), again.text
    assert len(await _until_one_venue_order(system, key, 30)) == 1
    # FM-C6: every service detects the bus loss and trading is HALTED (fail closed), visibly so.
    assert status["trading_state"] == "HALTED", {k: status.get(k) for k in ("trading_state", "dependencies")}


async def test_postgres_down_when_held_down_then_reads_503_with_reason_and_orders_reach_the_venue_once(
    system: RunningSystem, client: httpx.AsyncClient
) -> None:
    key = f"pg-down-{uuid.uuid4()}"
    await asyncio.to_thread(system.stop_program, "postgres")
    try:
        read = await client.get("/v1/orders", params={"limit": 5})
        placed = await client.post("/v1/orders", json=BODY, headers={"Idempotency-Key": key})
        await asyncio.sleep(6.0)  # longer than the consumers' bounded redeliveries
    finally:
        await asyncio.to_thread(system.start_program, "postgres")
    assert read.status_code == 503, read.text
    error = read.json()["error"]
    assert error["details"]["dependency"] == "postgres" and error["details"].get("reason"), error
    assert placed.status_code in (201, 202), placed.text
    assert await load.wait_system_ready(client, 90) is not None, "not back after Postgres returned"
    # FM-C3: trading continues on the durable log; nothing is lost while Postgres is down.
    orders = await _until_one_venue_order(system, key, 30)
    assert len(orders) == 1, orders
    projected = await client.get(f"/v1/orders/{client_order_id_for(key)}")
    assert projected.status_code == 200 and projected.json()["status"] == orders[0]["status"], projected.text


async def test_valkey_down_when_held_down_then_repeated_keys_answer_the_same_and_submit_once(
    system: RunningSystem, client: httpx.AsyncClient
) -> None:
    key = f"valkey-down-{uuid.uuid4()}"
    await asyncio.to_thread(system.stop_program, "valkey")
    try:
        first, second = await asyncio.gather(
            client.post("/v1/orders", json=BODY, headers={"Idempotency-Key": key}),
            client.post("/v1/orders", json=BODY, headers={"Idempotency-Key": key}),
        )
        third = await client.post("/v1/orders", json=BODY, headers={"Idempotency-Key": key})
    finally:
        await asyncio.to_thread(system.start_program, "valkey")
    answers = sorted([first, second], key=lambda r: r.status_code)
    assert answers[0].status_code in (201, 202), answers[0].text
    assert answers[1].status_code in (201, 202, 409), answers[1].text  # a concurrent duplicate may get 409
    assert third.status_code == answers[0].status_code and third.json() == answers[0].json()
    orders = await _until_one_venue_order(system, key, 30)
    assert len(orders) == 1, orders
    assert Decimal(orders[0]["executed_qty"]) == Decimal(BODY["quantity"])
    after = await client.post("/v1/orders", json=BODY, headers={"Idempotency-Key": key})
    assert after.json()["client_order_id"] == client_order_id_for(key)
    assert len(await _venue_orders(system, key)) == 1

"""Whole-system chaos (issue 4): `kill -9` of each stateful service while operator orders flow and the
simulator replays real recordings; afterwards the venue, `/v1/orders`, `/v1/positions` and the books
agree, and equal an uninterrupted run of the same script. A HALTED system restarted as a whole
comes back HALTED.

What is compared between runs (and with `entrypoints.harness.load.expected_outcome`): per script step the
final venue status and executed quantity, the set of client order ids on the venue, and the signed
positions. Fill prices are not: they depend on where the replayed market was when an order arrived.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from entrypoints.harness import load
from entrypoints.harness.system import RunningSystem, start_load_system, stop_system
from libs.ids import client_order_id_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # long chaos/bench runs: `pytest -m slow` before a release
_log = logging.getLogger(__name__)
SEED = int(os.environ.get("BULWARK_CHAOS_SEED", "4"))


@dataclass
class Holder:
    """The module's system; a test that restarts it puts the new one here (teardown stops it)."""

    system: RunningSystem
    folder: Path


@pytest.fixture(scope="module")
def held() -> Iterator[Holder]:
    # Not under pytest's numbered temp dirs: another pytest session may prune them while Postgres runs.
    with tempfile.TemporaryDirectory(prefix="bulwark-chaos-", ignore_cleanup_errors=True) as name:
        folder = Path(name)
        holder = Holder(start_load_system(folder / "data", folder / "up.log", folder), folder)
        try:
            holder.system.wait_all_ready(timeout_s=150)
            yield holder
        finally:
            stop_system(holder.system)


def _report(name: str, run: load.CheckedRun) -> None:
    _log.info("%s: %s", name, json.dumps(run.summary(), default=str))


def _assert_clean(run: load.CheckedRun, script: load.Script) -> None:
    assert run.problems == [], run.problems
    assert run.server_errors == [], run.server_errors
    assert run.book_problems == [], run.book_problems
    assert load.differences(load.comparable(run.outcome, run.report), load.expected_outcome(script)) == []


async def test_kill_9_when_services_killed_during_order_flow_then_venue_gateway_and_model_agree(held: Holder) -> None:
    system = held.system
    prices = await load.reference_prices(system.venue)
    script = load.build_script(26, SEED, prices, key_prefix=f"ci-{uuid.uuid4().hex[:8]}")
    kills = [
        load.KillPlan(3, "position", 0.05),
        load.KillPlan(9, "state-builder", 0.1),
        load.KillPlan(15, "risk", 0.05),
        # Between requests: a gateway killed with a request in flight blocks that key for 60 s
        # (test_gateway_killed_when_order_in_flight_... covers it).
        load.KillPlan(21, "gateway", between_requests=True),
    ]
    run = await load.run_checked(system.gateway, system.operator_token, system.venue, script, kills, log=_log.info)
    _report("ci-kill", run)
    assert [kill.target for kill in run.report.kills] == ["position", "state-builder", "risk", "gateway"]
    for kill in run.report.kills:
        assert kill.new_pid is not None and kill.system_ready_s is not None, kill.as_dict()
    state_builder = next(kill for kill in run.report.kills if kill.target == "state-builder")
    assert state_builder.events.get("valid.BTCUSDT") is not None, state_builder.as_dict()
    _assert_clean(run, script)


async def test_gateway_killed_when_order_in_flight_then_same_key_retry_gets_the_order_within_20s(
    held: Holder,
) -> None:
    # FM-C8: the client retries with the same idempotency key and gets the original outcome.
    system = held.system
    async with httpx.AsyncClient(
        base_url=system.gateway, headers={"Authorization": f"Bearer {system.operator_token}"}, timeout=30
    ) as client:
        assert await load.wait_system_ready(client, 120) is not None
        async with httpx.AsyncClient(timeout=10) as venue:
            # Every venue call takes 3 s for a while: the order is in flight when its gateway dies.
            fault = await venue.post(
                f"{system.venue}/_sim/faults", json={"kind": "latency", "params": {"ms": 3000}, "duration_s": 8}
            )
            assert fault.status_code == 200, fault.text
        pid = system.status()["components"]["gateway"]["pid"]
        key = f"inflight-{uuid.uuid4()}"
        body = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.002"}

        async def kill_soon() -> None:
            await asyncio.sleep(1.0)
            os.kill(pid, 9)

        killer = asyncio.create_task(kill_soon())
        with pytest.raises(httpx.HTTPError):
            await client.post("/v1/orders", json=body, headers={"Idempotency-Key": key})
        await killer
        killed = time.monotonic()
        answer: httpx.Response | None = None
        while time.monotonic() - killed < 90:
            try:
                answer = await client.post("/v1/orders", json=body, headers={"Idempotency-Key": key})
            except httpx.HTTPError:
                answer = None
            if answer is not None and answer.status_code in (200, 201, 202):
                break
            await asyncio.sleep(0.5)
        waited = time.monotonic() - killed
        assert answer is not None and answer.status_code in (200, 201, 202), answer.text if answer else None
        assert answer.json()["client_order_id"] == client_order_id_for(key)
        async with httpx.AsyncClient(timeout=10) as venue:
            state = (await venue.get(f"{system.venue}/_sim/state")).json()
        assert len([o for o in state["orders"] if o["client_order_id"] == client_order_id_for(key)]) == 1
        # A restarted gateway answers in seconds; the retry must not wait for a stale in-progress marker.
        assert waited < 20, f"retry with the same key answered only after {waited:.1f}s"


def test_halted_when_whole_system_restarted_then_comes_back_halted(held: Holder) -> None:
    system = held.system
    with system.client(system.operator_token) as client:
        halted = client.post("/v1/trading/halt", json={"reason": "chaos: whole-system restart"})
        assert halted.status_code == 200, halted.text
        assert client.get("/v1/status").json()["trading_state"] == "HALTED"
    assert stop_system(system) == 0
    held.system = start_load_system(system.data_dir, held.folder / "up-2.log", held.folder)
    restarted = held.system
    status = restarted.wait_all_ready(timeout_s=150)
    assert status["trading_state"] == "HALTED", status["trading_state"]
    with restarted.client(restarted.operator_token) as client:
        key = f"after-restart-{uuid.uuid4()}"
        body = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.002"}
        denied = client.post("/v1/orders", json=body, headers={"Idempotency-Key": key})
        assert denied.json().get("status") == "DENIED", denied.text
        assert client.post("/v1/trading/resume", json={"reason": "chaos test done"}).status_code == 200
    venue = httpx.get(f"{restarted.venue}/_sim/state", timeout=10).json()
    assert [o for o in venue["orders"] if o["client_order_id"] == client_order_id_for(key)] == []


@pytest.mark.slow
async def test_kill_9_when_random_schedule_over_every_service_then_equals_an_uninterrupted_run(held: Holder) -> None:
    system = held.system
    components = sorted(system.wait_all_ready(timeout_s=150)["components"])
    prices = await load.reference_prices(system.venue)
    script = load.build_script(90, SEED, prices, key_prefix=f"slow-{SEED}")
    kills = load.random_kill_plan(SEED, len(script.steps), components)
    chaos = await load.run_checked(system.gateway, system.operator_token, system.venue, script, kills, log=_log.info)
    _report("slow-kill", chaos)
    assert {kill.target for kill in chaos.report.kills} == set(components)
    with tempfile.TemporaryDirectory(prefix="bulwark-calm-", ignore_cleanup_errors=True) as name:
        folder = Path(name)
        calm_system = start_load_system(folder / "data", folder / "up.log", folder)
        try:
            calm_system.wait_all_ready(timeout_s=150)
            calm = await load.run_checked(
                calm_system.gateway, calm_system.operator_token, calm_system.venue, script, log=_log.info
            )
        finally:
            stop_system(calm_system)
    _report("slow-uninterrupted", calm)
    assert calm.problems == [] and calm.server_errors == [], (calm.problems, calm.server_errors)
    assert load.differences(load.comparable(calm.outcome, calm.report), load.expected_outcome(script)) == []
    _assert_clean(chaos, script)
    assert (
        load.differences(load.comparable(chaos.outcome, chaos.report), load.comparable(calm.outcome, calm.report)) == []
    )

"""The venue preflight through the real REST client against the simulator over HTTP: the account-mode
endpoints answer as Binance does, and the checks pass, fail and pass again as the account changes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from entrypoints.harness.venue import PROJECT_ROOT, running_venue_sim
from libs.binance.client import BinanceRestClient
from libs.binance.errors import VenueError
from libs.binance.preflight import PreflightConfig, run_preflight
from libs.logging import get_logger
from libs.ratelimit import RateBudget
from services.position.preflight import START, PreflightRunner
from services.venue_sim.adapters.synthetic import SyntheticSource
from services.venue_sim.config import SimConfig
from services.venue_sim.main import build_simulator
from tests.unit.test_position_preflight_runner import FakeBus

KEY, SECRET = "bulwark-sim-key", "bulwark-sim-secret"
CONFIG = PreflightConfig(symbols=("BTCUSDT", "ETHUSDT"), leverage={"BTCUSDT": 10, "ETHUSDT": 5})


@pytest.fixture
async def venue() -> AsyncIterator[tuple[str, BinanceRestClient]]:
    simulator = build_simulator(SimConfig(speed=1, seed=3), SyntheticSource(["BTCUSDT", "ETHUSDT"], seed=3), "test")
    server = TestServer(simulator.build_app(), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    client = BinanceRestClient(base, KEY, SECRET)
    await client.start()
    try:
        yield base, client
    finally:
        await client.close()
        await server.close()


async def _control(base: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(f"{base}/_sim/account_modes", json=body) as answer:
        return answer.status, await answer.json()


async def test_preflight_when_simulator_account_as_configured_then_every_check_passes(venue: Any) -> None:
    _, client = venue
    report = await run_preflight(client, CONFIG, time.time_ns)
    assert report.ok, report.reason()
    assert {"leverage.BTCUSDT", "margin_type.ETHUSDT", "rate_limits", "balance"} <= {c.name for c in report.checks}
    # Run again: the margin type is already CROSSED (-4046), which passes.
    again = await run_preflight(client, CONFIG, time.time_ns)
    assert again.ok, again.reason()
    assert "already CROSSED" in next(c.message for c in again.checks if c.name == "margin_type.BTCUSDT")


async def test_preflight_when_switched_to_hedge_mode_then_fails_and_the_named_call_fixes_it(venue: Any) -> None:
    base, client = venue
    status, modes = await _control(base, {"dualSidePosition": True})
    assert status == 200 and modes["dualSidePosition"] is True
    assert (await client.position_mode()) == {"dualSidePosition": True}
    report = await run_preflight(client, CONFIG, time.time_ns)
    assert [check.name for check in report.failures()] == ["position_mode"]
    assert "dualSidePosition=false" in report.reason()
    # The call the message names, as an operator would send it.
    await client._request("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": "false"}, signed=True)
    with pytest.raises(VenueError) as unchanged:
        await client._request("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": "false"}, signed=True)
    assert unchanged.value.code == -4059
    assert (await run_preflight(client, CONFIG, time.time_ns)).ok


async def test_preflight_when_multi_assets_differs_or_symbol_unknown_then_those_checks_fail(venue: Any) -> None:
    base, client = venue
    assert (await _control(base, {"multiAssetsMargin": True}))[0] == 200
    config = PreflightConfig(symbols=("BTCUSDT", "DOGEUSDT"))
    report = await run_preflight(client, config, time.time_ns)
    assert {check.name for check in report.failures()} == {"multi_assets_mode", "symbol.DOGEUSDT"}


async def test_preflight_when_simulator_has_its_own_order_limits_then_budget_takes_the_accounts_and_says_so() -> None:
    simulator = build_simulator(
        SimConfig(speed=1, seed=3, order_limit_10s=40, order_limit_1m=500),
        SyntheticSource(["BTCUSDT", "ETHUSDT"], seed=3),
        "test",
    )
    server = TestServer(simulator.build_app(), host="127.0.0.1")
    await server.start_server()
    client = BinanceRestClient(str(server.make_url("")).rstrip("/"), KEY, SECRET)
    await client.start()
    try:
        # Binance's `GET /fapi/v1/rateLimit/order` answer: the account's ORDERS rows.
        assert await client.order_rate_limits() == [
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 40},
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 500},
        ]
        bus, budget = FakeBus(), RateBudget("binance-usdm", time.time_ns)
        runner = PreflightRunner(
            bus,
            get_logger("test"),
            client,
            CONFIG,
            venue_name="binance-usdm",
            component="position",
            profile="sim",
            budget=budget,
            clock=time.time_ns,
        )
        report = await runner.run(START)
    finally:
        await client.close()
        await server.close()
    assert report.ok, report.reason()
    assert (budget.order_limit_10s, budget.order_limit_1m, budget.weight_limit_1m) == (40, 500, 2400)
    shown = next(check for check in bus.preflight().checks if check.name == "rate_limits")
    assert "the account's own order limits applied (rateLimit/order: order_limit_10s=40, order_limit_1m=500)" in (
        shown.message
    ), shown.message


async def test_account_modes_control_when_bad_body_then_400_and_nothing_changes(venue: Any) -> None:
    base, client = venue
    status, answer = await _control(base, {"dualSidePosition": "yes", "hedge": True})
    assert status == 400 and "hedge" in answer["error"]
    assert (await client.position_mode()) == {"dualSidePosition": False}
    with pytest.raises(VenueError) as refused:
        await client.set_margin_type("BTCUSDT", "SOMETIMES")
    assert refused.value.code == -1116


def _preflight_cli(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BULWARK_")}
    env |= {"BULWARK_VENUE_REST_URL": url, "BULWARK_VENUE_API_KEY": KEY, "BULWARK_VENUE_API_SECRET": SECRET}
    done = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "preflight", "--direct", "--json", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {"stderr": done.stderr}


async def test_preflight_cli_direct_when_all_ok_then_exit_0_and_when_hedge_mode_then_exit_1(tmp_path: Path) -> None:
    with running_venue_sim(tmp_path, "--source", "synthetic") as url:
        code, shown = await asyncio.to_thread(_preflight_cli, url)
        assert code == 0 and shown["ok"] is True and shown["trigger"] == "direct", shown
        limits = next(check for check in shown["checks"] if check["name"] == "rate_limits")
        assert "order limits applied (rateLimit/order: order_limit_10s=300, order_limit_1m=1200)" in limits["message"]
        assert (await _control(url, {"dualSidePosition": True}))[0] == 200
        code, shown = await asyncio.to_thread(_preflight_cli, url)
        assert code == 1 and [c["name"] for c in shown["checks"] if not c["ok"]] == ["position_mode"], shown
        code, shown = await asyncio.to_thread(_preflight_cli, url, "--venue", "custom")
        assert code == 2 and "--venue-rest-url" in shown["stderr"], shown

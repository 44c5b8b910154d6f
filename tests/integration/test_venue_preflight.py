"""The venue preflight through the real REST client against the simulator over HTTP: the account-mode
endpoints answer as Binance does, and the checks pass, fail and pass again as the account changes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from libs.binance.client import BinanceRestClient
from libs.binance.errors import VenueError
from libs.binance.preflight import PreflightConfig, run_preflight
from services.venue_sim.adapters.synthetic import SyntheticSource
from services.venue_sim.config import SimConfig
from services.venue_sim.main import build_simulator

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


async def test_account_modes_control_when_bad_body_then_400_and_nothing_changes(venue: Any) -> None:
    base, client = venue
    status, answer = await _control(base, {"dualSidePosition": "yes", "hedge": True})
    assert status == 400 and "hedge" in answer["error"]
    assert (await client.position_mode()) == {"dualSidePosition": False}
    with pytest.raises(VenueError) as refused:
        await client.set_margin_type("BTCUSDT", "SOMETIMES")
    assert refused.value.code == -1116

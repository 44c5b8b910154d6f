"""The simulator's control API (`/_sim/*`) belongs to the holder of its token: a simulator given
`BULWARK_SIM_CONTROL_TOKEN` refuses fault injection and state reads without it, the harness URL
(`http://sim:TOKEN@host:port`) passes it through the test helpers, and Binance's own endpoints are
unaffected. A simulator started without a token stays open and says so in its log."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import httpx

from entrypoints.harness.venue import running_venue_sim
from tests.integration.order_system import add_fault, clear_faults, sim_state

TOKEN = "0123456789abcdef" * 3


async def test_sim_when_token_configured_then_control_api_needs_it(tmp_path: Path) -> None:
    with running_venue_sim(tmp_path, "--source", "synthetic", control_token=TOKEN) as url:
        parts = urlsplit(url)
        bare = f"http://{parts.hostname}:{parts.port}"
        assert parts.password == TOKEN
        async with httpx.AsyncClient(base_url=bare, timeout=10) as client:
            for method, path in (
                ("GET", "/_sim/state"),
                ("POST", "/_sim/faults"),
                ("DELETE", "/_sim/faults"),
                ("POST", "/_sim/pause"),
                ("GET", "/_sim/book/BTCUSDT"),
                ("POST", "/_sim/account_modes"),
            ):
                refused = await client.request(method, path, json={"kind": "outage"})
                assert refused.status_code == 401, (method, path, refused.text)
                assert "token" in refused.json()["error"]
            wrong = await client.get("/_sim/state", headers={"Authorization": "Bearer not-the-token"})
            assert wrong.status_code == 401
            # Nothing was injected by the refused requests, and Binance's endpoints need no token.
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            assert (await client.get("/_sim/faults", headers=bearer)).json()["faults"] == []
            assert (await client.get("/fapi/v1/ping")).status_code == 200
            assert (await client.get("/_sim/state", headers={"X-Bulwark-Sim-Token": TOKEN})).status_code == 200
        # The helpers of the tests take the URL with the token and work unchanged (aiohttp, httpx).
        fault_id = await add_fault(url, {"kind": "latency", "params": {"ms": 1}, "duration_s": 60})
        state = await sim_state(url)
        assert "books" in state and "BTCUSDT" in state["books"]
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            listed = (await client.get("/_sim/faults")).json()["faults"]
        assert [f["id"] for f in listed] == [fault_id]
        await clear_faults(url)
    log = (tmp_path / "venue_sim.log").read_text()
    assert "sim_control_refused" in log
    assert "sim_control_unauthenticated" not in log
    assert TOKEN not in log


async def test_sim_when_no_token_then_open_with_a_warning_at_start(tmp_path: Path) -> None:
    with running_venue_sim(tmp_path, "--source", "synthetic") as url:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/_sim/state") as response:
            assert response.status == 200
    assert "sim_control_unauthenticated" in (tmp_path / "venue_sim.log").read_text()

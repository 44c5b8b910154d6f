"""`bulwark up --venue custom` against a simulator started on its own, as an external venue: no
simulator among the system's processes, preflight all ok in `/v1/status` and `bulwark preflight
--json`, an operator order fills there and the position matches; switched to hedge mode, the next
preflight fails, trading is HALTED with the reason, orders are refused and nothing crashes; the
venue key appears in no log, no file of the data dir and no process's command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from entrypoints.harness.system import RunningSystem, quiet_strategy_args
from entrypoints.harness.venue import PROJECT_ROOT
from proto.subjects import CORE_COMPONENTS
from tests.support.external_venue import ACCOUNT_ENV, KEY, SECRET, system_on_venue
from tests.support.external_venue import venue_fixture as venue_fixture  # the `venue` fixture

pytestmark = pytest.mark.slow

FAST_ENV = {
    **ACCOUNT_ENV,
    "BULWARK_VENUE_BREAKER_OPEN_S": "1",
    "BULWARK_VENUE_LEVERAGE": "5",
}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, venue: str) -> Iterator[RunningSystem]:
    base = tmp_path_factory.mktemp("custom-venue")
    with system_on_venue(base, venue, quiet_strategy_args(base), FAST_ENV) as running:
        running.venue = venue
        yield running


def _wait(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout_s}s; last: {last}")


def _preflight_cli(system: RunningSystem) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "preflight", "--json", "--gateway", system.gateway],
        cwd=PROJECT_ROOT,
        env={**os.environ, "BULWARK_ADMIN_TOKEN": system.admin_token},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {"stderr": done.stderr}


def _sim_state(system: RunningSystem) -> dict[str, Any]:
    return dict(httpx.get(f"{system.venue}/_sim/state", timeout=10).json())


def _reconnect_order_link(system: RunningSystem) -> None:
    """Take the venue away until the order link is down, then give it back until it is up."""
    fault = httpx.post(f"{system.venue}/_sim/faults", json={"kind": "outage"}, timeout=10)
    assert fault.status_code == 200, fault.text

    def order_link(state: str) -> bool:
        venue = system.status().get("venues", {}).get("binance-usdm") or {}
        return venue.get("order_link") == state

    _wait(lambda: order_link("DISCONNECTED"), 60, "order link DISCONNECTED")
    httpx.delete(f"{system.venue}/_sim/faults", timeout=10).raise_for_status()
    _wait(lambda: order_link("CONNECTED"), 60, "order link CONNECTED")


def test_custom_venue_when_up_then_no_simulator_and_preflight_all_ok(system: RunningSystem) -> None:
    programs = {info["name"] for info in system._supervisor("getAllProcessInfo")}
    assert "position" in programs and not [name for name in programs if "venue" in name], programs
    preflight = _wait(lambda: system.status().get("preflight"), 30, "preflight published")
    assert preflight["ok"] is True and preflight["profile"] == "custom", preflight
    assert {"api_key", "position_mode", "leverage.BTCUSDT", "symbol.ETHUSDT"} <= {
        c["name"] for c in preflight["checks"]
    }
    code, shown = _preflight_cli(system)
    assert code == 0 and shown["ok"] is True, shown


def test_custom_venue_when_operator_orders_then_fills_at_that_venue_and_positions_match(system: RunningSystem) -> None:
    body = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01"}
    with system.client(system.operator_token) as client:
        answer = client.post("/v1/orders", json=body, headers={"Idempotency-Key": f"e2e-{uuid.uuid4()}"}).json()
        coid = answer["client_order_id"]
        at_venue = _wait(
            lambda: [
                o for o in _sim_state(system)["orders"] if o["client_order_id"] == coid and o["status"] == "FILLED"
            ],
            30,
            "order FILLED at the external venue",
        )
        assert len(at_venue) == 1

        def matches() -> bool:
            venue = {p["symbol"]: Decimal(p["quantity"]) for p in _sim_state(system)["positions"]}
            ours = {p["symbol"]: Decimal(p["quantity"]) for p in client.get("/v1/positions").json()["positions"]}
            return venue.get("BTCUSDT") == ours.get("BTCUSDT") == Decimal("0.01")

        _wait(matches, 30, "system position equal to the venue's")


def test_custom_venue_when_switched_to_hedge_mode_then_halted_orders_refused_nothing_crashes(
    system: RunningSystem,
) -> None:
    pids = {name: system.status()["components"][name]["pid"] for name in CORE_COMPONENTS}
    switched = httpx.post(f"{system.venue}/_sim/account_modes", json={"dualSidePosition": True}, timeout=10)
    assert switched.status_code == 200, switched.text
    _reconnect_order_link(system)

    def failed() -> dict[str, Any] | None:
        preflight = system.status().get("preflight") or {}
        return preflight if preflight.get("ok") is False else None

    preflight = _wait(failed, 60, "preflight failed")
    assert [c["name"] for c in preflight["checks"] if not c["ok"]] == ["position_mode"], preflight
    status = _wait(lambda: (s := system.status())["trading_state"] == "HALTED" and s, 30, "trading HALTED")
    assert status["trading_state"] == "HALTED"
    code, shown = _preflight_cli(system)
    assert code == 1 and shown["ok"] is False
    with system.client(system.operator_token) as client:
        trading = client.get("/v1/status").json()
        body = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01"}
        refused = client.post("/v1/orders", json=body, headers={"Idempotency-Key": f"e2e-{uuid.uuid4()}"})
        assert refused.json()["status"] == "DENIED", refused.text
        events = client.get("/v1/events", params={"type": "TradingStateChanged", "limit": 50}).json()["events"]
    assert any("position_mode" in e["payload"]["reason"] for e in events), events
    assert trading["preflight"]["ok"] is False
    # Nothing crashed: every core component still READY with the same process.
    ready = system.wait_all_ready(components=CORE_COMPONENTS, timeout_s=30)
    assert {name: ready["components"][name]["pid"] for name in CORE_COMPONENTS} == pids


def test_custom_venue_when_running_then_key_in_no_log_no_file_and_no_command_line(system: RunningSystem) -> None:
    for path in [*system.data_dir.rglob("*"), system.log_path]:
        if path.is_file():
            text = path.read_bytes()
            assert KEY.encode() not in text and SECRET.encode() not in text, path
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert KEY.encode() not in cmdline and SECRET.encode() not in cmdline, proc

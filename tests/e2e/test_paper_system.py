"""`bulwark up --paper` against a venue (a simulator started on its own, as `--venue custom`): real
market data from the venue, orders filled by the paper simulator against its live book. An
operator order shows FILLED in the system and the venue's own record holds not a single order of
the system's; `/v1/status` and `bulwark status` say PAPER; the venue's key is not in the order
link's environment; a strategy is enabled on paper through the API, strictly validated and audited."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from entrypoints.harness.system import RunningSystem, quiet_strategy_args
from entrypoints.harness.venue import PROJECT_ROOT
from entrypoints.launcher import PAPER_VENUE_PROGRAM
from tests.support.external_venue import ACCOUNT_ENV, KEY, SECRET, system_on_venue
from tests.support.external_venue import venue_fixture as venue_fixture  # the `venue` fixture
from tests.support.polling import eventually_blocking

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, venue: str) -> Iterator[RunningSystem]:
    base = tmp_path_factory.mktemp("paper")
    # The venue's key in the environment, as a user trading it live would have it: paper must not use it.
    with system_on_venue(base, venue, ["--paper", *quiet_strategy_args(base)], ACCOUNT_ENV) as running:
        yield running


def _sim_state(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/_sim/state", timeout=10).json())


def test_paper_when_operator_orders_then_filled_in_the_system_and_not_one_order_at_the_venue(
    system: RunningSystem, venue: str
) -> None:
    body = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01"}
    with system.client(system.operator_token) as client:
        answer = client.post("/v1/orders", json=body, headers={"Idempotency-Key": f"paper-{uuid.uuid4()}"})
        assert answer.status_code in (200, 201), answer.text
        coid = answer.json()["client_order_id"]
        order = eventually_blocking(
            lambda: (o := client.get(f"/v1/orders/{coid}").json()).get("status") == "FILLED" and o, timeout_s=30
        )
        assert Decimal(order["filled_quantity"]) == Decimal("0.01"), order
        eventually_blocking(
            lambda: (
                {p["symbol"]: Decimal(p["quantity"]) for p in client.get("/v1/positions").json()["positions"]}.get(
                    "BTCUSDT"
                )
                == Decimal("0.01")
            ),
            timeout_s=30,
        )
    # `system.venue` is the paper simulator (`--venue-port`): the fill is there, never at the venue.
    assert [o["status"] for o in _sim_state(system.venue)["orders"] if o["client_order_id"] == coid] == ["FILLED"]
    at_venue = _sim_state(venue)
    assert at_venue["orders"] == [] and at_venue["positions"] in ([], [{"symbol": "BTCUSDT", "quantity": "0"}])
    assert _sim_state(system.venue)["source"] == f"mirror:{venue}"


def test_paper_when_running_then_status_and_cli_say_paper_and_the_order_link_has_no_venue_key(
    system: RunningSystem,
) -> None:
    status = system.status()
    assert status["mode"] == "PAPER" and status["paper"] is True
    assert {name: v["mode"] for name, v in status["venues"].items()} == {"binance-usdm": "PAPER"}
    assert system.program(PAPER_VENUE_PROGRAM)["statename"] == "RUNNING"
    shown = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "status", "--gateway", system.gateway],
        cwd=PROJECT_ROOT,
        env={**os.environ, "BULWARK_ADMIN_TOKEN": system.admin_token},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and "mode PAPER" in shown.stdout, shown.stdout + shown.stderr
    position_pid = status["components"]["position"]["pid"]
    environ = Path(f"/proc/{position_pid}/environ").read_bytes()
    assert KEY.encode() not in environ and SECRET.encode() not in environ


def test_paper_when_strategy_enabled_on_paper_then_mode_shown_and_audited(system: RunningSystem) -> None:
    with system.client(system.operator_token) as client:
        name = client.get("/v1/strategies").json()["strategies"][0]["name"]
        typo = client.post(f"/v1/strategies/{name}/enable", json={"mode": "paper", "overide": True})
        assert typo.status_code == 422 and "overide" in typo.text, typo.text
        enabled = client.post(f"/v1/strategies/{name}/enable", json={"mode": "paper"})
        assert enabled.status_code == 202 and enabled.json()["mode"] == "paper", enabled.text
        listed = {s["name"]: s for s in client.get("/v1/strategies").json()["strategies"]}
        assert listed[name]["mode"] == "paper"
        audited = eventually_blocking(
            lambda: [
                e
                for e in client.get("/v1/events", params={"type": "EnableStrategy", "limit": 20}).json()["events"]
                if e["payload"].get("strategy") == name and e["payload"].get("mode") == "paper"
            ],
            timeout_s=30,
        )
        assert audited

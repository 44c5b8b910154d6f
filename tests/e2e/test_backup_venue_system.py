"""`bulwark up --backup-venue` as a user runs it (FM-N6): a second venue simulator with its own
account and state, the backup venue's position process `position-<venue>` READY like any other
component, `/v1/status` listing both venues with their order links, and the failover: with the
main venue's REST API down (its market data still flowing) an operator's entry in a flat symbol is
filled on the backup venue, and its exit goes there too.

The same system runs a paper order link beside live (`--paper-link`): a strategy enabled on paper
has its order filled on the paper venue while the venue's own record holds none of it, and a live
strategy trading the same symbol at the same time still trades live.

One system for the module (synthetic market, ~10 s to start); the outage test runs last.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from entrypoints.harness.system import RunningSystem, start_system, stop_system
from libs.bus import Bus
from libs.ids import client_order_id_for
from proto import subjects
from proto.enums import OrderType, Side
from proto.messages import SignalGenerated

pytestmark = pytest.mark.e2e

BACKUP = "binance-usdm-backup"
POSITION_BACKUP = f"position-{BACKUP}"
PAPER = "binance-usdm-paper"
POSITION_PAPER = f"position-{PAPER}"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    base = tmp_path_factory.mktemp("backup-venue")
    running = start_system(
        base / "data", base / "bulwark-up.log", ["--backup-venue", "--paper-link", "--venue-source", "synthetic"]
    )
    try:
        running.wait_all_ready(("gateway", "position", POSITION_BACKUP, POSITION_PAPER, "risk", "watchdog"))
        yield running
    finally:
        stop_system(running)


def _poll(check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.25)


def _sim_state(url: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{url}/_sim/state", timeout=10).json()
    return state


def test_up_when_backup_venue_then_both_venues_listed_and_the_backup_position_process_ready(
    system: RunningSystem,
) -> None:
    status = system.wait_all_ready()  # every core component and strategy, and the market, too

    assert system.backup_venue_name == BACKUP
    assert system.backup_venue and system.backup_venue != system.venue
    component = status["components"][POSITION_BACKUP]
    assert component["state"] == "READY" and component["pid"] != status["components"]["position"]["pid"]
    assert component["pid"] == system.program_pid(POSITION_BACKUP)
    # Each position process announces its order link once it reconciled at start.
    assert status["venues"]["binance-usdm"] == {
        "role": "main",
        "order_link": "CONNECTED",
        "order_link_reason": "venue reachable and reconciled",
        "position_component": "position",
        "position_state": "READY",
        "mode": "LIVE",
    }
    assert status["venues"][BACKUP]["role"] == "backup"
    assert status["venues"][BACKUP]["order_link"] == "CONNECTED"
    assert status["venues"][BACKUP]["position_component"] == POSITION_BACKUP
    assert status["venues"][BACKUP]["position_state"] == "READY"
    assert system.program("venue-sim-backup")["statename"] == "RUNNING"
    # Another account: its own state, the same market.
    main, backup = _sim_state(system.venue), _sim_state(system.backup_venue)
    assert set(backup["books"]) == set(main["books"]) >= {"BTCUSDT", "ETHUSDT"}
    assert backup["orders"] == []
    assert all(Decimal(str(position["quantity"])) == 0 for position in backup["positions"])
    # A backup process that just runs is no degradation.
    assert status["degradation_level"] == "NORMAL"


def test_up_when_backup_venue_then_the_printout_and_endpoints_name_the_backup_simulator(
    system: RunningSystem,
) -> None:
    printed = system.log_path.read_text(errors="replace")

    endpoints = json.loads((system.data_dir / "endpoints.json").read_text())

    assert f"backup venue     {endpoints['backup_venue']}" in printed
    assert system.backup_venue.endswith(endpoints["backup_venue"].partition("://")[2])
    assert POSITION_BACKUP in printed


def _order(client: httpx.Client, key: str, **body: Any) -> dict[str, Any]:
    answer = client.post("/v1/orders", json=body, headers={"Idempotency-Key": key})
    assert answer.status_code in (200, 201, 202), answer.text
    created: dict[str, Any] = answer.json()
    return created


def _filled_on(client: httpx.Client, order: dict[str, Any], venue: str) -> None:
    def filled() -> dict[str, Any] | None:
        row: dict[str, Any] = client.get(f"/v1/orders/{order['order_id']}").json()
        return row if row.get("status") == "FILLED" else None

    row = _poll(filled, timeout_s=20.0)
    assert row["venue"] == venue, row


async def _signal(system: RunningSystem, strategy: str, side: Side = Side.BUY) -> str:
    """Publish a strategy's MARKET signal in BTCUSDT as its process would; the client order id of its order."""
    bus = Bus(f"e2e-{strategy}")
    await bus.connect(system.nats_url)
    try:
        signal = SignalGenerated(
            strategy=strategy,
            symbol="BTCUSDT",
            side=side,
            order_type=OrderType.MARKET,
            quantity=Decimal("0.002"),
            reason="e2e paper beside live",
            confidence=Decimal(1),
        )
        await bus.publish(subjects.evt_signal(strategy, "BTCUSDT"), signal, msg_id=signal.message_id)
    finally:
        await bus.close()
    return client_order_id_for(signal.message_id)


def test_paper_link_when_strategy_enabled_on_paper_then_filled_on_paper_never_at_the_venue_and_live_still_live(
    system: RunningSystem,
) -> None:
    status = system.wait_all_ready()
    assert system.paper_venue_name == PAPER and system.paper_venue
    assert status["venues"][PAPER] == {
        "role": "paper",
        "order_link": "CONNECTED",
        "order_link_reason": "venue reachable and reconciled",
        "position_component": POSITION_PAPER,
        "position_state": "READY",
        "mode": "PAPER",
    }
    assert status["venues"]["binance-usdm"]["mode"] == "LIVE"
    with system.client() as client:
        enabled = client.post("/v1/strategies/trend/enable", json={"mode": "paper", "reason": "try it on paper"})
        assert enabled.status_code == 202, enabled.text
        # At once: risk reads the mode the gateway persisted before the enable went out.
        paper_id = asyncio.run(_signal(system, "trend"))
        live_id = asyncio.run(_signal(system, "cascade-fade"))

        def filled(client_order_id: str) -> dict[str, Any] | None:
            row: dict[str, Any] = client.get(f"/v1/orders/{client_order_id}").json()
            return row if row.get("status") == "FILLED" else None

        paper_row = _poll(lambda: filled(paper_id), timeout_s=30.0)
        live_row = _poll(lambda: filled(live_id), timeout_s=30.0)
        assert paper_row["venue"] == PAPER, paper_row
        assert live_row["venue"] == "binance-usdm", live_row  # a paper holder does not block it, nor send it to paper
        main, paper = _sim_state(system.venue), _sim_state(system.paper_venue)
        assert paper_id in {o["client_order_id"] for o in paper["orders"]}
        assert paper_id not in {o["client_order_id"] for o in main["orders"]}  # the venue never saw it
        assert live_id in {o["client_order_id"] for o in main["orders"]}
        assert live_id not in {o["client_order_id"] for o in paper["orders"]}
        backup = _sim_state(system.backup_venue)
        assert not {paper_id, live_id} & {o["client_order_id"] for o in backup["orders"]}
        # Back live, as the other tests expect the strategies.
        back = client.post("/v1/strategies/trend/enable", json={"mode": "live"})
        assert back.status_code == 202, back.text


def test_main_order_path_down_when_backup_configured_then_a_flat_symbol_trades_on_the_backup_and_exits_there(
    system: RunningSystem,
) -> None:
    """FM-N6 as an operator sees it: the main venue's REST API down, its market data still flowing."""
    with system.client() as client:
        fault = httpx.post(f"{system.venue}/_sim/faults", json={"kind": "rest_outage"}, timeout=10)
        assert fault.status_code in (200, 201), fault.text

        def main_link_down() -> dict[str, Any] | None:
            status: dict[str, Any] = client.get("/v1/status").json()
            return status if status["venues"]["binance-usdm"]["order_link"] == "DISCONNECTED" else None

        status = _poll(main_link_down, timeout_s=20.0)
        assert "venue breaker open" in status["venues"]["binance-usdm"]["order_link_reason"]
        assert status["venues"][BACKUP]["order_link"] == "CONNECTED"
        assert status["components"][POSITION_BACKUP]["state"] == "READY"

        entry = _order(client, "backup-venue-entry", symbol="ETHUSDT", side="BUY", type="MARKET", quantity="0.02")
        _filled_on(client, entry, BACKUP)
        httpx.delete(f"{system.venue}/_sim/faults/{fault.json()['id']}", timeout=10)
        rows = client.get("/v1/positions").json()["positions"]
        held = {(row["venue"], row["symbol"]): Decimal(row["quantity"]) for row in rows}
        assert held[(BACKUP, "ETHUSDT")] == Decimal("0.02")
        # The position is on the backup: its exit goes there, whatever the main venue does now.
        exit_order = _order(
            client, "backup-venue-exit", symbol="ETHUSDT", side="SELL", type="MARKET", quantity="0.02", reduce_only=True
        )
        _filled_on(client, exit_order, BACKUP)

    main, backup = _sim_state(system.venue), _sim_state(system.backup_venue)
    ours = [entry["client_order_id"], exit_order["client_order_id"]]
    assert [o["client_order_id"] for o in backup["orders"]] == ours
    assert not {o["client_order_id"] for o in main["orders"]} & set(ours)
    assert all(Decimal(str(p["quantity"])) == 0 for p in backup["positions"])

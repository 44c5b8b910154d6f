"""The whole system, as a user runs it: every component up, the book right, orders exactly once,
halt obeyed, crashed processes restarted."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest

from entrypoints import ops_cli
from entrypoints.cli import build_parser
from entrypoints.harness.system import RunningSystem
from libs.bus import Bus
from libs.ids import client_order_id_for
from libs.metrics import ORDER_STAGES, STAGE_SIGNAL_TO_RISK
from proto import subjects
from proto.enums import Side
from proto.messages import Liquidation, Trade
from proto.subjects import CORE_COMPONENTS
from tests.e2e.observe import Collector, ReceivedSpan, place_filled_order, scrape, value
from tests.support.polling import eventually_blocking as eventually

BULWARK = [sys.executable, "-m", "entrypoints.cli"]

pytestmark = pytest.mark.e2e


def _levels(levels: list[list[str]]) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(price), Decimal(qty)) for price, qty in levels]


def _venue_orders(system: RunningSystem, client_order_id: str) -> list[dict[str, Any]]:
    state = httpx.get(f"{system.venue}/_sim/state", timeout=10).json()
    return [order for order in state["orders"] if order["client_order_id"] == client_order_id]


def _order_body(quantity: str = "0.002") -> dict[str, str]:
    return {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": quantity}


def test_status_when_system_up_then_every_component_heartbeats_with_its_pid(system: RunningSystem) -> None:
    status = system.wait_all_ready()
    strategies = [name for name in status["components"] if name.startswith("strategy-")]
    assert strategies, status["components"]
    for name in (*CORE_COMPONENTS, *strategies):
        component = status["components"][name]
        assert component["state"] == "READY"
        assert isinstance(component["pid"], int) and component["pid"] > 0
        assert component["last_heartbeat_age_ms"] < 3000
    assert status["trading_state"] in ("ACTIVE", "REDUCING", "HALTED")
    assert set(status["symbols"]) >= {"BTCUSDT", "ETHUSDT"}


def test_book_when_served_by_gateway_then_equals_venue_book_at_same_update_id(system: RunningSystem) -> None:
    deadline = time.monotonic() + 60
    compared = 0
    with system.client(system.viewer_token) as client:
        while compared < 3 and time.monotonic() < deadline:
            book = client.get("/v1/book/BTCUSDT", params={"depth": 20}).json()
            if book.get("status") != "VALID":
                time.sleep(0.5)
                continue
            venue = httpx.get(
                f"{system.venue}/_sim/book/BTCUSDT",
                params={"depth": 20, "update_id": book["last_update_id"]},
                timeout=10,
            ).json()
            assert len(book["bids"]) == 20 and len(book["asks"]) == 20
            assert _levels(book["bids"]) == _levels(venue["bids"])
            assert _levels(book["asks"]) == _levels(venue["asks"])
            compared += 1
            time.sleep(1.0)
    assert compared == 3, "book never VALID long enough to compare"


def test_orders_when_same_idempotency_key_twice_then_same_answer_and_one_venue_order(system: RunningSystem) -> None:
    key = f"e2e-{uuid.uuid4()}"
    with system.client(system.operator_token) as client:
        first = client.post("/v1/orders", json=_order_body(), headers={"Idempotency-Key": key})
        second = client.post("/v1/orders", json=_order_body(), headers={"Idempotency-Key": key})
    assert first.status_code in (200, 201, 202), first.text
    assert second.status_code == first.status_code
    assert second.json() == first.json()
    answer = first.json()
    if answer["status"] == "FILLED":
        assert Decimal(answer["filled_quantity"]) == Decimal(answer["quantity"]), answer
    client_order_id = answer["client_order_id"]
    deadline = time.monotonic() + 20
    while not _venue_orders(system, client_order_id) and time.monotonic() < deadline:
        time.sleep(0.3)
    time.sleep(1.0)
    assert len(_venue_orders(system, client_order_id)) == 1


def test_halt_when_trading_halted_then_new_orders_refused_and_resume_allows_them(system: RunningSystem) -> None:
    with system.client(system.operator_token) as client:
        halted = client.post("/v1/trading/halt", json={"reason": "e2e"})
        assert halted.status_code == 200, halted.text
        assert halted.json()["trading_state"] == "HALTED"
        assert client.get("/v1/status").json()["trading_state"] == "HALTED"
        denied = client.post("/v1/orders", json=_order_body(), headers={"Idempotency-Key": f"e2e-{uuid.uuid4()}"})
        assert denied.json()["status"] == "DENIED", denied.text
        time.sleep(1.0)
        assert _venue_orders(system, denied.json()["client_order_id"]) == []

        resumed = client.post("/v1/trading/resume", json={"reason": "e2e"})
        assert resumed.status_code == 200 and resumed.json()["trading_state"] == "ACTIVE"
        allowed = client.post("/v1/orders", json=_order_body(), headers={"Idempotency-Key": f"e2e-{uuid.uuid4()}"})
        assert allowed.json()["status"] not in ("DENIED", "REJECTED"), allowed.text
        deadline = time.monotonic() + 20
        while not _venue_orders(system, allowed.json()["client_order_id"]) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert len(_venue_orders(system, allowed.json()["client_order_id"])) == 1


def _cli(system: RunningSystem, *args: str) -> tuple[int, Any]:
    """`bulwark ARGS --json --data-dir <the system's>` (in this process: the token and the gateway's
    URL come from the data dir, as for an operator): its exit code and its JSON, or its stderr."""
    parsed = build_parser().parse_args([*args, "--json", "--data-dir", str(system.data_dir)])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = ops_cli.run(parsed, environ={})
    return code, json.loads(out.getvalue()) if out.getvalue().strip() else err.getvalue()


def _blocked(status: dict[str, Any], symbol: str) -> list[str]:
    return [f"{b['gate']}: {b['reason']}" for b in status["symbols"][symbol]["blocked_by"]]


def test_cockpit_when_stream_reconnects_then_can_enter_false_for_suspect_and_cli_steers(system: RunningSystem) -> None:
    """Issue 16: `/v1/status` said ACTIVE while entries were DENIED for a SUSPECT market stream. Now
    `can_enter` says so, with the reason, and clears with the clean window; the CLI halts, shows the
    state, resumes, places, lists and cancels an order."""
    system.wait_all_ready()
    suspect = "market data stream SUSPECT: clean window after a reconnect"
    seen: list[list[str]] = []
    # The link reason shows while the books are VALID again inside the 3 s clean window; on a loaded
    # machine a rebuild can outlast the window (then the hot state is the reason): reconnect again.
    for _ in range(3):
        fault = httpx.post(f"{system.venue}/_sim/faults", json={"kind": "ws_close"}, timeout=10)
        assert fault.status_code in (200, 201), fault.text
        deadline, closed = time.monotonic() + 15, False
        while time.monotonic() < deadline:
            status = system.status()
            blocked = _blocked(status, "BTCUSDT") if status["symbols"]["BTCUSDT"]["can_enter"] is False else []
            if blocked and blocked not in seen:
                seen.append(blocked)
            closed = closed or bool(blocked)
            if any(suspect in reason for reason in blocked) or (closed and not blocked):
                break  # seen, or the window passed unseen
            time.sleep(0.1)
        if any(suspect in reason for reason in blocked):
            break
    assert any(reason.startswith("link: ") and suspect in reason for reason in blocked), seen
    assert status["trading_state"] == "ACTIVE"  # what the issue saw: ACTIVE, yet no entry allowed
    deadline = time.monotonic() + 30
    while not (status := system.status())["symbols"]["BTCUSDT"]["can_enter"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status["symbols"]["BTCUSDT"]["can_enter"] is True, _blocked(status, "BTCUSDT")

    code, halted = _cli(system, "halt", "--reason", "cockpit e2e")
    assert code == 0 and halted["trading_state"] == "HALTED", halted
    code, status = _cli(system, "status")
    assert code == 0 and status["trading_state"] == "HALTED"
    assert "trading_state: trading HALTED: no new orders" in _blocked(status, "BTCUSDT")
    code, resumed = _cli(system, "resume", "--reason", "cockpit e2e")
    assert code == 0 and resumed["trading_state"] == "ACTIVE", resumed

    with system.client(system.viewer_token) as client:
        book = client.get("/v1/book/BTCUSDT", params={"depth": 1}).json()
    price = (Decimal(book["bids"][0][0]) * Decimal("0.97")).quantize(Decimal("0.1"))  # rests, inside the band
    code, placed = _cli(system, "submit", "BTCUSDT", "BUY", "0.003", "--type", "LIMIT", "--price", str(price))
    assert code == 0 and placed["status"] not in ("DENIED", "REJECTED"), placed
    order_id = placed["order_id"]
    deadline = time.monotonic() + 20
    while (listed := _cli(system, "orders", "--status", "NEW"))[0] == 0 and time.monotonic() < deadline:
        if order_id in [order["order_id"] for order in listed[1]["orders"]]:
            break
        time.sleep(0.5)
    assert order_id in [order["order_id"] for order in listed[1]["orders"]], (placed, listed)
    code, canceled = _cli(system, "cancel", order_id)
    assert code == 0 and canceled["status"] == "PENDING_CANCEL", canceled
    deadline = time.monotonic() + 20
    while (shown := _cli(system, "order", order_id))[1]["status"] != "CANCELED" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert shown == (0, shown[1]) and shown[1]["status"] == "CANCELED", shown
    assert _cli(system, "cancel", order_id)[0] == 3  # already final: refused
    assert _cli(system, "order", "bw-no-such-order")[0] == 4


def test_projections_verify_when_orders_placed_then_log_rebuild_equals_live_tables(system: RunningSystem) -> None:
    # Runs after the order tests above: the rebuilt projections must equal what the services wrote.
    result = subprocess.run(
        [*BULWARK, "projections", "verify", "--json", "--data-dir", str(system.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["consistent"] is True, report
    assert report["rebuild"], report


def test_order_when_filled_then_one_trace_across_processes_and_stage_latencies_counted(
    system: RunningSystem, collector: Collector
) -> None:
    client_order_id = place_filled_order(system)

    deadline = time.monotonic() + 20
    trace: list[ReceivedSpan] = []
    wanted = {"gateway.submit", "risk.decision", "position.submit", "venue.ack", "order.fill"}
    while time.monotonic() < deadline:
        spans = collector.snapshot()
        roots = [
            s
            for s in spans
            if s.name == "gateway.submit" and s.attributes.get("bulwark.client_order_id") == client_order_id
        ]
        trace = [s for s in spans if roots and s.trace_id == roots[0].trace_id]
        if wanted <= {s.name for s in trace}:
            break
        time.sleep(0.3)
    assert wanted <= {s.name for s in trace}, sorted((s.service, s.name) for s in trace)
    assert {s.service for s in trace} >= {"gateway", "risk", "position"}
    assert {s.attributes.get("bulwark.client_order_id") for s in trace if s.name == "order.fill"} == {client_order_id}

    components = system.status()["components"]
    risk = scrape(components["risk"]["metrics_url"])
    position = scrape(components["position"]["metrics_url"])
    stages = {stage for stage in ORDER_STAGES if stage != STAGE_SIGNAL_TO_RISK}
    counted = {
        stage
        for stage in stages
        if value(risk, "bulwark_order_stage_latency_seconds_count", stage=stage)
        + value(position, "bulwark_order_stage_latency_seconds_count", stage=stage)
        > 0
    }
    assert counted == stages
    assert value(risk, "bulwark_decision_latency_seconds_count", kind="risk") >= 1


async def _cascade(system: RunningSystem, symbol: str, mid: Decimal) -> None:
    """Feed the strategies a short-liquidation cascade in `symbol`, on the MARKET_DATA stream as
    market-data publishes it: a trade 1% below `mid`, then three forced buys 0.4% above it. The
    price displacement makes it a cascade; two quiet seconds later cascade-fade fades it (SELL,
    its stop above the forced buys, its target half-way back, the market's mid in between)."""
    bus = Bus("e2e-market")
    await bus.connect(system.nats_url)
    venue, at = "binance-usdm", time.time_ns()
    low, high = (mid * Decimal("0.99")).quantize(mid), (mid * Decimal("1.004")).quantize(mid)
    trade = Trade(
        venue=venue, symbol=symbol, trade_id=at, price=low, quantity=Decimal(1), buyer_is_maker=True, ts_init_ns=at
    )
    forced = [
        Liquidation(venue=venue, symbol=symbol, side=Side.BUY, price=high, quantity=Decimal(1), ts_init_ns=at + n)
        for n in (1_000_000, 2_000_000, 3_000_000)
    ]
    try:
        await bus.publish_many(
            [(subjects.md_trade(venue, symbol), trade, None)]
            + [(subjects.md_liquidation(venue, symbol), liquidation, None) for liquidation in forced]
        )
    finally:
        await bus.close()


def test_strategy_order_when_a_market_tick_triggers_it_then_one_trace_from_tick_to_fill(
    system: RunningSystem, collector: Collector
) -> None:
    """Issue 16: one trace from the market tick behind a strategy's signal through the hot state it
    read, risk's decision, the submit, the venue's acknowledgement and the fill, across the strategy,
    risk and position processes. ETHUSDT: the operator orders above hold a BTCUSDT position."""
    symbol = "ETHUSDT"
    with system.client(system.viewer_token) as client:

        def valid_book() -> dict[str, Any] | None:
            book: dict[str, Any] = client.get(f"/v1/book/{symbol}", params={"depth": 1}).json()
            return book if book.get("status") == "VALID" else None

        book = eventually(valid_book, timeout_s=30)
    bid, ask = Decimal(book["bids"][0][0]), Decimal(book["asks"][0][0])
    asyncio.run(_cascade(system, symbol, ((bid + ask) / 2).quantize(bid)))

    wanted = {
        "market.tick",
        "state.hot_state",
        "strategy.signal",
        "risk.decision",
        "position.submit",
        "venue.ack",
        "order.fill",
    }

    def traced() -> list[ReceivedSpan] | None:
        spans = collector.snapshot()
        signals = [
            s
            for s in spans
            if s.name == "strategy.signal"
            and s.attributes.get("bulwark.strategy") == "cascade-fade"
            and s.attributes.get("bulwark.symbol") == symbol
        ]
        trace = [s for s in spans if signals and s.trace_id == signals[0].trace_id]
        return trace if wanted <= {s.name for s in trace} else None

    try:
        trace = eventually(traced, timeout_s=40)
    except AssertionError:
        seen = sorted({(s.service, s.name, s.attributes.get("bulwark.symbol", "")) for s in collector.snapshot()})
        raise AssertionError(f"no trace from a cascade-fade {symbol} signal to its fill; spans seen: {seen}") from None
    by_name = {s.name: s for s in trace}
    roots = [s for s in trace if not s.parent_span_id]
    assert [s.name for s in roots] == ["market.tick"], sorted((s.service, s.name, s.parent_span_id) for s in trace)
    span_ids = {s.span_id for s in trace}
    assert all(s.parent_span_id in span_ids for s in trace if s is not roots[0]), "a span's parent is missing"
    assert by_name["market.tick"].attributes["bulwark.symbol"] == symbol
    assert by_name["state.hot_state"].attributes["bulwark.hot_state"] == "VALID"
    assert {s.service for s in trace} >= {"strategy-cascade-fade", "risk", "position"}
    signal_id = by_name["strategy.signal"].attributes["bulwark.signal_id"]
    fills = {s.attributes.get("bulwark.client_order_id") for s in trace if s.name == "order.fill"}
    assert fills == {client_order_id_for(signal_id)}


def test_status_when_system_up_then_every_component_metrics_url_answers_its_key_metrics(system: RunningSystem) -> None:
    components = system.wait_all_ready()["components"]
    strategies = [name for name in components if name.startswith("strategy-")]
    scraped = {}
    for name in (*CORE_COMPONENTS, *strategies):
        url = components[name]["metrics_url"]
        assert url and url.startswith("http://127.0.0.1:"), (name, url)
        samples = scrape(url)
        assert value(samples, "bulwark_process_resident_memory_bytes", component=name) > 0, name
        assert value(samples, "bulwark_process_cpu_seconds_total", component=name) > 0, name
        assert value(samples, "bulwark_bus_connected", component=name) == 1, name
        scraped[name] = samples
    assert len({components[name]["metrics_url"] for name in scraped}) == len(scraped), "two services on one port"

    market_data, state_builder = scraped["market-data"], scraped["state-builder"]
    assert value(market_data, "bulwark_bus_messages_published_total", subject="md.depth.>") > 0
    assert value(state_builder, "bulwark_bus_messages_received_total", subject="md.depth.>") > 0
    assert value(state_builder, "bulwark_tick_to_hot_state_seconds_count") > 0
    ages = {labels["symbol"]: value for labels, value in state_builder["bulwark_book_age_seconds"]}
    assert set(ages) >= {"BTCUSDT", "ETHUSDT"} and all(0 <= age < 30 for age in ages.values()), ages
    assert "bulwark_consumer_pending_messages" in state_builder
    watchdog_families = httpx.get(components["watchdog"]["metrics_url"], timeout=10).text
    assert "# TYPE bulwark_dlq_messages gauge" in watchdog_families


@pytest.mark.parametrize("component", [c for c in CORE_COMPONENTS if c != "gateway"] + ["strategy-*", "gateway"])
def test_kill_9_when_service_crashes_then_supervisor_restarts_it(system: RunningSystem, component: str) -> None:
    components = system.wait_all_ready()["components"]
    if component == "strategy-*":
        component = min(name for name in components if name.startswith("strategy-"))
    old_pid = components[component]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            current = system.status()["components"][component]
        except (httpx.HTTPError, KeyError):
            time.sleep(0.3)
            continue
        if current["pid"] != old_pid and current["state"] == "READY":
            return
        time.sleep(0.3)
    raise AssertionError(f"{component} (pid {old_pid}) was not restarted within 60 s")

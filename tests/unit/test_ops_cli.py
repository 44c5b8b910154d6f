"""The operator verbs of `bulwark` (`entrypoints/ops_cli.py`) against an in-memory gateway: what they
ask, which token they send, what they print (tables, `--json`) and their exit codes."""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from entrypoints import operator_api, ops_cli
from entrypoints.cli import build_parser
from services.gateway import api_models

NOW_NS = 1_700_000_100 * 10**9
SUSPECT = "trading HALTED for new entries: market data stream SUSPECT: clean window after a reconnect (FM-N1)"
STATUS = {
    "trading_state": "ACTIVE",
    "degradation_level": "NORMAL",
    "health": "GREEN",
    "components": {"risk": {"state": "READY", "pid": 7, "last_heartbeat_age_ms": 120}},
    "symbols": {
        "BTCUSDT": {
            "can_enter": False,
            "entry_venue": "binance-usdm",
            "blocked_by": [{"gate": "link", "reason": SUSPECT, "since_ns": NOW_NS - 75 * 10**9}],
            "venues": {"binance-usdm": {"can_enter": False, "blocked_by": []}},
            "hot_state": "VALID",
            "age_ms": 40,
            "last_update_id": 9,
        },
        "ETHUSDT": {"can_enter": True, "entry_venue": "binance-usdm", "blocked_by": [], "hot_state": "VALID"},
    },
    "breakers": {},
    "links": {},
    "venues": {},
    "preflight": {"ok": True, "checks": []},
}


class Gateway:
    """Answers requests from a table `(method, path) -> (status, body)` and records them."""

    def __init__(self, answers: dict[tuple[str, str], tuple[int, Any]]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, body = self.answers.get((request.method, request.url.path), (404, {"error": {"code": "x"}}))
        return httpx.Response(status, json=body)


def bulwark(
    argv: list[str], gateway: Gateway | httpx.MockTransport, tmp_path: Path, env: dict[str, str] | None = None
) -> tuple[int, str]:
    args = build_parser().parse_args([*argv, "--data-dir", str(tmp_path)])
    console = Console(file=io.StringIO(), width=200, color_system=None)
    transport = gateway if isinstance(gateway, httpx.MockTransport) else httpx.MockTransport(gateway)
    code = ops_cli.run(args, environ=env or {}, console=console, transport=transport)
    assert isinstance(console.file, io.StringIO)
    return code, console.file.getvalue()


def credentials(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text(json.dumps({"viewer_token": "view-t", "operator_token": "op-t"}))


def test_status_when_an_entry_is_blocked_then_can_enter_first_with_reason_and_since(tmp_path: Path) -> None:
    gateway = Gateway({("GET", "/v1/status"): (200, STATUS)})
    args = build_parser().parse_args(["status", "--data-dir", str(tmp_path)])
    assert ops_cli.handles(args)
    shown = ops_cli.render_status(STATUS, NOW_NS)
    console = Console(file=io.StringIO(), width=220, color_system=None)
    console.print(shown)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert text.index("can enter") < text.index("trading ACTIVE") < text.index("components")
    btc = next(line for line in text.splitlines() if "BTCUSDT" in line)
    assert "NO" in btc and "market data stream SUSPECT: clean window after a reconnect" in btc
    assert "(1m 15s ago)" in btc
    eth = next(line for line in text.splitlines() if "ETHUSDT" in line)
    assert "yes" in eth
    code, _ = bulwark(["status"], gateway, tmp_path)
    assert code == ops_cli.EXIT_OK


def test_status_json_when_asked_then_only_the_api_json(tmp_path: Path) -> None:
    code, out = bulwark(["status", "--json"], Gateway({("GET", "/v1/status"): (200, STATUS)}), tmp_path)
    assert code == 0 and json.loads(out) == STATUS


def test_status_watch_when_counted_then_every_refresh_shown(tmp_path: Path) -> None:
    gateway = Gateway({("GET", "/v1/status"): (200, STATUS)})
    code, out = bulwark(["status", "--watch", "0", "--count", "3", "--json"], gateway, tmp_path)
    assert code == 0 and [json.loads(line)["trading_state"] for line in out.splitlines()] == ["ACTIVE"] * 3
    code, out = bulwark(["status", "--watch", "0", "--count", "2"], gateway, tmp_path)
    assert code == 0 and out.count("can enter") == 2 and len(gateway.requests) == 5


@pytest.mark.parametrize(
    ("http_status", "exit_code"),
    [(400, 3), (409, 3), (422, 3), (404, 4), (401, 6), (403, 6), (429, 7), (503, 7), (500, 1), (502, 1)],
)
def test_exit_code_when_the_gateway_refuses_then_distinct_code_and_its_message(
    tmp_path: Path, http_status: int, exit_code: int
) -> None:
    body = {"error": {"code": "invalid_transition", "message": "already HALTED", "details": None}}
    gateway = Gateway({("POST", "/v1/trading/halt"): (http_status, body)})
    code, out = bulwark(["halt", "--reason", "test"], gateway, tmp_path)
    assert code == exit_code
    assert f"invalid_transition: already HALTED (HTTP {http_status})" in out


def test_exit_code_when_no_gateway_answers_then_unreachable(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    code, out = bulwark(["orders"], httpx.MockTransport(refuse), tmp_path)
    assert code == ops_cli.EXIT_UNREACHABLE and "is `bulwark up` running?" in out


def test_actions_when_tokens_in_the_data_dir_then_operator_acts_and_viewer_reads(tmp_path: Path) -> None:
    credentials(tmp_path)
    gateway = Gateway(
        {
            ("POST", "/v1/trading/halt"): (200, {"trading_state": "HALTED", "previous": "ACTIVE"}),
            ("GET", "/v1/orders"): (200, {"orders": [], "next_cursor": None}),
        }
    )
    code, out = bulwark(["halt", "--reason", "night"], gateway, tmp_path)
    assert code == 0 and "halt: trading ACTIVE -> HALTED" in out
    code, _ = bulwark(["orders", "--status", "FILLED"], gateway, tmp_path)
    halt, orders = gateway.requests
    assert halt.headers["Authorization"] == "Bearer op-t" and json.loads(halt.content) == {"reason": "night"}
    assert orders.headers["Authorization"] == "Bearer view-t" and orders.url.params["status"] == "FILLED"
    bulwark(["orders"], gateway, tmp_path, env={"BULWARK_TOKEN": "env-t"})
    assert gateway.requests[-1].headers["Authorization"] == "Bearer env-t"


def test_gateway_url_when_bulwark_up_wrote_endpoints_then_used_unless_given(tmp_path: Path) -> None:
    (tmp_path / "endpoints.json").write_text(json.dumps({"gateway": "http://127.0.0.1:18481/"}))
    assert operator_api.gateway_url(None, tmp_path, {}) == "http://127.0.0.1:18481"
    assert operator_api.gateway_url(None, tmp_path, {"BULWARK_GATEWAY_URL": "http://g:1"}) == "http://g:1"
    assert operator_api.gateway_url("http://x:2", tmp_path, {}) == "http://x:2"
    assert operator_api.gateway_url(None, tmp_path / "none", {}) == operator_api.DEFAULT_GATEWAY


@pytest.mark.parametrize(
    ("argv", "method", "path", "body"),
    [
        (["resume", "--reason", "r"], "POST", "/v1/trading/resume", {"reason": "r"}),
        (["emergency-stop", "--reason", "r", "--yes"], "POST", "/v1/emergency-stop", {"reason": "r"}),
        (["order", "bw-1"], "GET", "/v1/orders/bw-1", None),
        (["cancel", "bw-1"], "DELETE", "/v1/orders/bw-1", None),
        (["positions"], "GET", "/v1/positions", None),
        (["breakers"], "GET", "/v1/breakers", None),
        (["breaker", "reset", "CB-1", "--reason", "checked"], "POST", "/v1/breakers/CB-1/reset", {"reason": "checked"}),
        (["strategies"], "GET", "/v1/strategies", None),
        (["strategy", "enable", "trend", "--mode", "paper"], "POST", "/v1/strategies/trend/enable", {"mode": "paper"}),
        (["strategy", "disable", "trend"], "POST", "/v1/strategies/trend/disable", None),
        (["dlq", "list", "--status", "PENDING"], "GET", "/v1/dlq", None),
        (["dlq", "stats"], "GET", "/v1/dlq/stats", None),
        (["dlq", "retry", "3", "4"], "POST", "/v1/dlq/retry", {"ids": [3, 4]}),
        (["dlq", "remove", "3"], "DELETE", "/v1/dlq/3", None),
        (["alerts"], "GET", "/v1/alerts", None),
        (["events", "--type", "OrderFilled"], "GET", "/v1/events", None),
    ],
)
def test_verb_when_run_then_the_endpoint_of_the_same_name(
    tmp_path: Path, argv: list[str], method: str, path: str, body: Any
) -> None:
    gateway = Gateway({(method, path): (200, {"events": [], "orders": [], "alerts": []})})
    code, _ = bulwark([*argv, "--json"], gateway, tmp_path)
    (request,) = gateway.requests
    assert (code, request.method, request.url.path) == (0, method, path)
    assert (json.loads(request.content) if request.content else None) == body


def test_submit_when_denied_then_refused_with_reason_and_the_key_sent(tmp_path: Path) -> None:
    credentials(tmp_path)
    denied = {"order_id": "bw-7", "client_order_id": "bw-7", "status": "DENIED", "reason": "trading HALTED"}
    gateway = Gateway({("POST", "/v1/orders"): (201, denied)})
    argv = ["submit", "btcusdt", "buy", "0.002", "--type", "limit", "--price", "100.5", "--key", "k-1"]
    code, out = bulwark(argv, gateway, tmp_path)
    (request,) = gateway.requests
    assert code == ops_cli.EXIT_REFUSED and "order bw-7 DENIED: trading HALTED" in out
    assert request.headers["Idempotency-Key"] == "k-1" and request.headers["Authorization"] == "Bearer op-t"
    assert json.loads(request.content) == {
        "symbol": "BTCUSDT",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": "0.002",
        "price": "100.5",
    }
    gateway.answers[("POST", "/v1/orders")] = (201, {**denied, "status": "NEW", "reason": None})
    assert bulwark(["submit", "BTCUSDT", "SELL", "0.002", "--reduce-only"], gateway, tmp_path)[0] == ops_cli.EXIT_OK
    assert json.loads(gateway.requests[-1].content)["reduce_only"] is True


def test_order_when_unknown_then_not_found(tmp_path: Path) -> None:
    body = {"error": {"code": "not_found", "message": "unknown order bw-9"}}
    code, out = bulwark(["order", "bw-9"], Gateway({("GET", "/v1/orders/bw-9"): (404, body)}), tmp_path)
    assert code == ops_cli.EXIT_NOT_FOUND and "unknown order bw-9" in out


def test_tables_when_answers_then_rows_a_person_reads(tmp_path: Path) -> None:
    orders = {
        "orders": [
            {"order_id": "bw-1", "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.01"}
            | {"filled_quantity": "0", "price": "100", "status": "NEW", "venue": "binance-usdm"}
        ],
        "next_cursor": "abc",
    }
    code, out = bulwark(["orders"], Gateway({("GET", "/v1/orders"): (200, orders)}), tmp_path)
    row = next(line for line in out.splitlines() if "bw-1" in line)
    assert code == 0 and all(cell in row for cell in ("BTCUSDT", "BUY", "LIMIT", "0.01", "100", "NEW"))
    assert "--cursor abc" in out
    alerts = {"alerts": [{"severity": "P1", "key": "md.gap", "component": "market-data", "title": "gap"}]}
    _, out = bulwark(["alerts"], Gateway({("GET", "/v1/alerts"): (200, alerts)}), tmp_path)
    assert "P1" in out and "md.gap" in out


def test_parse_sse_when_stream_then_events_with_json_data() -> None:
    lines = [": connected", "", "event: OrderFilled", "id: m1", 'data: {"symbol": "BTCUSDT"}', "", ": keep-alive", ""]
    assert list(ops_cli.parse_sse(iter(lines))) == [{"event": "OrderFilled", "id": "m1", "data": {"symbol": "BTCUSDT"}}]


def test_events_follow_when_the_stream_sends_then_one_json_line_each(tmp_path: Path) -> None:
    body = 'event: TradingStateChanged\nid: 1\ndata: {"current": "HALTED"}\n\n'

    def stream(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/events/stream" and request.url.params["type"] == "TradingStateChanged"
        return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})

    code, out = bulwark(
        ["events", "--follow", "--type", "TradingStateChanged", "--json"], httpx.MockTransport(stream), tmp_path
    )
    assert code == 0 and json.loads(out) == {"event": "TradingStateChanged", "id": "1", "data": {"current": "HALTED"}}


def test_strategy_parser_when_another_module_made_it_first_then_both_verbs_live(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="bulwark")
    commands = parser.add_subparsers(dest="command", required=True)
    strategy = commands.add_parser("strategy")
    strategy.add_subparsers(dest="strategy_command", required=True).add_parser("new").add_argument("name")
    ops_cli.add_parser(commands, tmp_path)
    assert parser.parse_args(["strategy", "new", "x"]).strategy_command == "new"
    enabled = parser.parse_args(["strategy", "enable", "x", "--mode", "live"])
    assert enabled.ops_verb == "strategy enable" and enabled.mode == "live"


def rendered(shown: Any) -> str:
    console = Console(file=io.StringIO(), width=240, color_system=None)
    console.print(shown)
    return console.file.getvalue()  # type: ignore[attr-defined]


def cells(line: str) -> list[str]:
    """The cells of one drawn table line (rich draws columns with │, the header with ┃)."""
    return [cell.strip() for cell in re.split("[│┃]", line.strip())[1:-1]]


def row_cells(text: str, key: str) -> list[str]:
    """The cells of the first table row with a cell `key`."""
    return next(found for line in text.splitlines() if key in (found := cells(line)))


def header_cells(text: str, first: str) -> list[str]:
    return row_cells(text, first)


def test_positions_table_when_marked_then_mark_and_unrealized_pnl_beside_entry_and_realized(tmp_path: Path) -> None:
    body = {
        "positions": [
            {"venue": "binance-usdm", "symbol": "BTCUSDT", "quantity": "0.002", "average_entry_price": "65000"}
            | {"realized_pnl": "1.5", "updated_ns": NOW_NS, "mark_price": "65100.5", "mark_source": "mark_price"}
            | {"unrealized_pnl": "0.201"},
            {"venue": "binance-usdm", "symbol": "ETHUSDT", "quantity": "-0.1", "average_entry_price": "3000"}
            | {"realized_pnl": "0", "updated_ns": NOW_NS, "mark_price": "2990", "mark_source": "book_mid"}
            | {"unrealized_pnl": "1.0"},
            {"venue": "backup", "symbol": "SOLUSDT", "quantity": "1", "average_entry_price": "150"}
            | {"realized_pnl": "-2", "updated_ns": NOW_NS},
        ]
    }
    api_models.PositionList.model_validate(body)  # the sample is what the API answers
    code, out = bulwark(["positions"], Gateway({("GET", "/v1/positions"): (200, body)}), tmp_path)
    assert code == 0
    columns = ["venue", "symbol", "quantity", "entry", "mark", "unrealized pnl", "realized pnl", "updated"]
    assert header_cells(out, "venue") == columns
    btc = dict(zip(columns, row_cells(out, "BTCUSDT"), strict=True))
    assert btc | {"updated": ""} == {
        "venue": "binance-usdm",
        "symbol": "BTCUSDT",
        "quantity": "0.002",
        "entry": "65000",
        "mark": "65100.5",
        "unrealized pnl": "0.201",
        "realized pnl": "1.5",
        "updated": "",
    }
    eth = dict(zip(columns, row_cells(out, "ETHUSDT"), strict=True))
    assert (eth["mark"], eth["unrealized pnl"], eth["realized pnl"]) == ("2990 (mid)", "1.0", "0")
    sol = dict(zip(columns, row_cells(out, "SOLUSDT"), strict=True))
    assert (sol["mark"], sol["unrealized pnl"], sol["realized pnl"]) == ("", "", "-2")
    assert "no mark" in out
    code, out = bulwark(["positions", "--json"], Gateway({("GET", "/v1/positions"): (200, body)}), tmp_path)
    assert code == 0 and json.loads(out) == body


def test_strategies_table_when_listed_then_mode_state_crashes_restarts_and_pid(tmp_path: Path) -> None:
    body = {
        "strategies": [
            {"name": "trend", "component": "strategy-trend", "state": "ENABLED", "component_state": "READY"}
            | {"mode": "paper", "crashes_in_window": 2, "crash_window_s": 600, "restarts": 3, "pid": 4242}
            | {"last_crash_ns": NOW_NS},
            {"name": "fade", "component": "strategy-fade", "state": "FAILED", "component_state": "DOWN"}
            | {"mode": "live", "crashes_in_window": None, "restarts": 0, "pid": None},
        ]
    }
    api_models.StrategyList.model_validate(body)
    code, out = bulwark(["strategies"], Gateway({("GET", "/v1/strategies"): (200, body)}), tmp_path)
    assert code == 0
    columns = ["strategy", "mode", "state", "process", "crashes", "restarts", "pid", "last crash"]
    assert header_cells(out, "strategy") == columns
    trend = dict(zip(columns, row_cells(out, "trend"), strict=True))
    assert trend == {
        "strategy": "trend",
        "mode": "paper",
        "state": "ENABLED",
        "process": "READY",
        "crashes": "2 in 600s",
        "restarts": "3",
        "pid": "4242",
        "last crash": "2023-11-14 22:15:00Z",
    }
    fade = dict(zip(columns, row_cells(out, "fade"), strict=True))
    assert (fade["mode"], fade["state"], fade["crashes"], fade["restarts"], fade["pid"]) == (
        "live",
        "FAILED",
        "?",
        "0",
        "",
    )
    code, out = bulwark(["strategies", "--json"], Gateway({("GET", "/v1/strategies"): (200, body)}), tmp_path)
    assert code == 0 and json.loads(out) == body


def test_status_components_when_restarted_then_restarts_and_heartbeat_age_shown() -> None:
    components = {
        "risk": {"state": "READY", "pid": 7, "last_heartbeat_age_ms": 850, "restarts": 0},
        "position": {"state": "READY", "pid": 8, "last_heartbeat_age_ms": 12_345, "restarts": 2}
        | {"last_restart_ns": NOW_NS - 125 * 10**9},
        "strategy-trend": {"state": "DOWN", "pid": None, "last_heartbeat_age_ms": 245_000, "restarts": 1},
        "venue-sim": {"state": "STARTING", "pid": None, "last_heartbeat_age_ms": None},
    }
    status = STATUS | {"components": components}
    for component in components.values():
        api_models.ComponentStatus.model_validate(component)
    text = rendered(ops_cli.render_status(status, NOW_NS))
    columns = ["component", "state", "pid", "heartbeat age", "restarts", "last restart"]
    assert header_cells(text, "component") == columns
    shown = {name: dict(zip(columns, row_cells(text, name), strict=True)) for name in components}
    assert shown["risk"] | {"component": ""} == {
        "component": "",
        "state": "READY",
        "pid": "7",
        "heartbeat age": "850 ms",
        "restarts": "0",
        "last restart": "",
    }
    assert (shown["position"]["heartbeat age"], shown["position"]["restarts"]) == ("12.3 s", "2")
    assert shown["position"]["last restart"].endswith("(2m 5s ago)")
    assert (shown["strategy-trend"]["heartbeat age"], shown["strategy-trend"]["restarts"]) == ("4m 5s", "1")
    assert (shown["venue-sim"]["heartbeat age"], shown["venue-sim"]["restarts"]) == ("", "0")

"""The operator's verbs of `bulwark`, named after the gateway's API (SPEC §10): `status [--watch]`,
`halt`, `resume`, `emergency-stop`, `submit`, `orders`, `order`, `cancel`, `positions`, `breakers`,
`breaker reset`, `strategies`, `strategy enable|disable`, `dlq list|stats|retry|remove`, `alerts`,
`events [--follow]`.

Each one calls the running system's REST API (`docs/operations.md`, "The command line"): the
gateway from `--gateway`, `BULWARK_GATEWAY_URL`, or the endpoints file `bulwark up` wrote into the
data folder; the bearer token from `BULWARK_TOKEN`, the role's own variable, or the data folder's
`credentials.json` (the viewer's token to read, the operator's to act). Tables for a person (rich),
`--json` for a program: only the API's JSON on stdout, nothing else. The exit code says what
happened (`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from entrypoints.operator_api import gateway_url

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_NOT_FOUND = 4
EXIT_UNREACHABLE = 5
EXIT_UNAUTHORIZED = 6
EXIT_UNAVAILABLE = 7
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done (for `status`: answered, whatever the system's state)",
    EXIT_FAILED: "the gateway failed (5xx) or answered something unreadable",
    EXIT_USAGE: "bad command line",
    EXIT_REFUSED: "the system refused the request (400, 409, 422: bad input, invalid transition, order already final)",
    EXIT_NOT_FOUND: "no such order, breaker, strategy or dead letter (404)",
    EXIT_UNREACHABLE: "no gateway answering at the URL (not running, wrong port, timeout)",
    EXIT_UNAUTHORIZED: "no token, or the token's role may not do this (401, 403)",
    EXIT_UNAVAILABLE: "a dependency of the gateway is down or the caller is rate limited (503, 429): try again",
}
STATUS_EXIT = {400: EXIT_REFUSED, 409: EXIT_REFUSED, 422: EXIT_REFUSED, 404: EXIT_NOT_FOUND}
STATUS_EXIT |= {401: EXIT_UNAUTHORIZED, 403: EXIT_UNAUTHORIZED, 429: EXIT_UNAVAILABLE, 503: EXIT_UNAVAILABLE}
PIPED_WIDTH = 160
"""Table width when stdout is not a terminal (a pipe, a file): rows stay on one line for grep."""
READ, ACT = "viewer", "operator"
"""The role whose token a verb uses: reading needs a viewer, acting an operator."""


class CliError(Exception):
    """A verb that could not do its work: the message for stderr and the exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def exit_code_of(http_status: int) -> int:
    """The exit code of a gateway answer with this HTTP status."""
    if http_status < 400:
        return EXIT_OK
    return STATUS_EXIT.get(http_status, EXIT_FAILED)


def error_message(http_status: int, body: str) -> str:
    """The gateway's error envelope as one line (`code: message`), else the start of the body."""
    try:
        error = json.loads(body)["error"]
        return f"{error['code']}: {error['message']} (HTTP {http_status})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {http_status}: {body[:300]}"


def token_for(role: str, data_dir: Path, environ: dict[str, str]) -> str:
    """The bearer token for `role` (`viewer` or `operator`): `BULWARK_TOKEN`, `BULWARK_<ROLE>_TOKEN`,
    `BULWARK_ADMIN_TOKEN`, else the data folder's `credentials.json`; "" when none is found."""
    for name in ("BULWARK_TOKEN", f"BULWARK_{role.upper()}_TOKEN", "BULWARK_ADMIN_TOKEN"):
        if environ.get(name):
            return environ[name]
    try:
        stored = json.loads((data_dir / "credentials.json").read_text())
    except (OSError, ValueError):
        return ""
    return str(stored.get(f"{role}_token") or "") if isinstance(stored, dict) else ""


@dataclass
class Api:
    """The gateway's REST API as one verb uses it."""

    base_url: str
    data_dir: Path
    environ: dict[str, str]
    timeout_s: float = 10.0
    transport: httpx.BaseTransport | None = None
    """Tests answer in memory; None: the network."""

    def call(
        self,
        method: str,
        path: str,
        role: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One request; the decoded JSON answer.

        Raises:
            CliError: unreachable, refused, not found, not allowed, unavailable, failed.
        """
        token = token_for(role, self.data_dir, self.environ)
        sent = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
        query = {key: value for key, value in (params or {}).items() if value is not None}
        try:
            with httpx.Client(timeout=self.timeout_s, transport=self.transport) as client:
                response = client.request(method, self.base_url + path, params=query, json=body, headers=sent)
        except httpx.TransportError as exc:
            raise CliError(
                EXIT_UNREACHABLE,
                f"gateway not reachable at {self.base_url} ({type(exc).__name__}: {exc}); is `bulwark up` running?",
            ) from exc
        if response.status_code >= 400:
            hint = (
                " (no token found: set BULWARK_TOKEN or --data-dir)"
                if response.status_code == 401 and not token
                else ""
            )
            raise CliError(
                exit_code_of(response.status_code), error_message(response.status_code, response.text) + hint
            )
        try:
            return response.json()
        except ValueError as exc:
            raise CliError(EXIT_FAILED, f"the gateway's answer is not JSON: {response.text[:200]}") from exc

    def stream(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Server-sent events of `path` as `{"event", "id", "data"}`, until the connection ends."""
        token = token_for(READ, self.data_dir, self.environ)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        query = {key: value for key, value in params.items() if value is not None}
        timeout = httpx.Timeout(self.timeout_s, read=None)  # a quiet stream is not a dead one (keep-alives)
        try:
            with (
                httpx.Client(timeout=timeout, transport=self.transport) as client,
                client.stream("GET", self.base_url + path, params=query, headers=headers) as response,
            ):
                if response.status_code >= 400:
                    response.read()
                    raise CliError(
                        exit_code_of(response.status_code), error_message(response.status_code, response.text)
                    )
                yield from parse_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise CliError(
                EXIT_UNREACHABLE, f"event stream of {self.base_url} ended: {type(exc).__name__}: {exc}"
            ) from exc


def parse_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Server-sent events from their lines (comments skipped; `data` decoded as JSON when it is)."""
    event: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in event:
                try:
                    data: Any = json.loads(event["data"])
                except ValueError:
                    data = event["data"]
                yield {"event": event.get("event", "message"), "id": event.get("id", ""), "data": data}
            event = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        event[field] = event[field] + "\n" + value if field == "data" and "data" in event else value


# --------------------------------------------------------------------------- rendering (pure)


def ago(since_ns: int | None, now_ns: int) -> str:
    """`since 12:03:04Z (5m 2s ago)`; "" when not known."""
    if not since_ns:
        return ""
    seconds = max(0, (now_ns - since_ns) // 1_000_000_000)
    span = f"{seconds // 3600}h {seconds // 60 % 60}m" if seconds >= 3600 else f"{seconds // 60}m {seconds % 60}s"
    clock = time.strftime("%H:%M:%SZ", time.gmtime(since_ns / 1e9))
    return f"since {clock} ({span if seconds >= 60 else f'{seconds}s'} ago)"


def when(ns: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ns / 1e9)) if ns else ""


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    """A table of text cells (None shown empty)."""
    shown = Table(title=title, title_justify="left", expand=False)
    for column in columns:
        shown.add_column(column)
    for row in rows:
        shown.add_row(*(cell if isinstance(cell, Text) else Text("" if cell is None else str(cell)) for cell in row))
    return shown


def yes_no(flag: Any) -> Text:
    if flag is None:
        return Text("?", style="yellow")
    return Text("yes", style="bold green") if flag else Text("NO", style="bold red")


def entry_rows(symbols: dict[str, Any], now_ns: int) -> list[list[Any]]:
    """One row per symbol (and per blocking reason): can it enter, where, and what blocks it since when."""
    rows: list[list[Any]] = []
    for name, symbol in sorted(symbols.items()):
        blocked = symbol.get("blocked_by") or []
        first = [name, yes_no(symbol.get("can_enter")), symbol.get("entry_venue")]
        if not blocked:
            rows.append([*first, "", ""])
        for index, blocker in enumerate(blocked):
            lead = first if index == 0 else ["", "", ""]
            rows.append(
                [*lead, f"{blocker.get('gate')}: {blocker.get('reason')}", ago(blocker.get("since_ns"), now_ns)]
            )
        others = [
            f"{venue}: {'yes' if view.get('can_enter') else 'no'}"
            for venue, view in sorted((symbol.get("venues") or {}).items())
            if venue != symbol.get("entry_venue")
        ]
        if others:
            rows.append(["", "", "", "other venues: " + ", ".join(others), ""])
    return rows


def render_status(status: dict[str, Any], now_ns: int) -> Group:
    """`bulwark status`: can a new entry go out (first), then states, components, venues, books."""
    symbols = status.get("symbols") or {}
    summary = Text.assemble(
        ("trading ", "bold"),
        (str(status.get("trading_state")), "bold red" if status.get("trading_state") != "ACTIVE" else "bold green"),
        ("   level ", "bold"),
        str(status.get("degradation_level")),
        ("   health ", "bold"),
        str(status.get("health")),
        ("   mode ", "bold"),
        "PAPER (no order reaches the venue)" if status.get("paper") else str(status.get("mode") or "LIVE"),
    )
    preflight = status.get("preflight")
    failed = [c.get("name") for c in (preflight or {}).get("checks") or [] if not c.get("ok")]
    preflight_text = (
        "preflight: not run yet"
        if not preflight
        else "preflight: all ok"
        if preflight.get("ok")
        else f"preflight: FAILED {', '.join(map(str, failed))}"
    )
    components = [
        [
            *(name, c.get("state"), c.get("pid")),
            age_ms(c.get("last_heartbeat_age_ms")),
            c.get("restarts", 0),
            ago(c.get("last_restart_ns"), now_ns),
        ]
        for name, c in sorted((status.get("components") or {}).items())
    ]
    venues = [
        [
            *(name, v.get("role"), v.get("order_link") or "UNKNOWN", v.get("order_link_reason")),
            f"{v.get('position_component')}={v.get('position_state')}",
        ]
        for name, v in (status.get("venues") or {}).items()
    ]
    books = [
        [name, s.get("hot_state"), s.get("age_ms"), s.get("last_update_id")] for name, s in sorted(symbols.items())
    ]
    open_breakers = [
        [key, b.get("state"), b.get("reason")]
        for key, b in sorted((status.get("breakers") or {}).items())
        if isinstance(b, dict) and b.get("state") not in (None, "CLOSED")
    ]
    parts: list[Any] = [
        table("can enter", ["symbol", "can_enter", "venue", "blocked by", "since"], entry_rows(symbols, now_ns)),
        summary,
        Text(preflight_text),
    ]
    if open_breakers:
        parts.append(table("breakers not CLOSED", ["breaker", "state", "reason"], open_breakers))
    parts += [
        table("components", ["component", "state", "pid", "heartbeat age", "restarts", "last restart"], components),
        table("venues", ["venue", "role", "order link", "reason", "position"], venues),
        table("books", ["symbol", "hot state", "age ms", "last update id"], books),
    ]
    return Group(*parts)


def render_orders(answer: dict[str, Any]) -> Table:
    columns = ["order_id", "symbol", "side", "type", "quantity", "filled", "price", "status", "venue", "reason"]
    rows = [
        [
            o.get("order_id"),
            o.get("symbol"),
            o.get("side"),
            o.get("type"),
            o.get("quantity"),
            o.get("filled_quantity"),
            o.get("price") or o.get("stop_price"),
            o.get("status"),
            o.get("venue"),
            o.get("reason"),
        ]
        for o in answer.get("orders") or []
    ]
    shown = table("orders", columns, rows)
    if answer.get("next_cursor"):
        shown.caption = f"more: --cursor {answer['next_cursor']}"
    return shown


def render_order(order: dict[str, Any]) -> Table:
    return table(f"order {order.get('order_id')}", ["field", "value"], [[k, v] for k, v in order.items()])


def render_positions(answer: dict[str, Any]) -> Table:
    """`bulwark positions`: per venue and symbol, the quantity, its entry, the mark now and both PnLs."""
    columns = ["venue", "symbol", "quantity", "entry", "mark", "unrealized pnl", "realized pnl", "updated"]
    positions = answer.get("positions") or []
    rows = [
        [
            *(p.get(key) for key in ("venue", "symbol", "quantity", "average_entry_price")),
            mark(p),
            p.get("unrealized_pnl"),
            p.get("realized_pnl"),
            when(p.get("updated_ns")),
        ]
        for p in positions
    ]
    shown = table("positions", columns, rows)
    if any(p.get("mark_price") is None for p in positions):
        shown.caption = "no mark (and no unrealized pnl) where the state-builder has no price for the symbol"
    return shown


def mark(position: dict[str, Any]) -> str | None:
    """The mark price, `(mid)` after it when it is the book's mid rather than the venue's mark."""
    price = position.get("mark_price")
    if price is None:
        return None
    return f"{price} (mid)" if position.get("mark_source") == "book_mid" else str(price)


def age_ms(milliseconds: int | None) -> str:
    """A heartbeat age for a person: `850 ms`, `12.3 s`, `4m 5s`; "" when never heard."""
    if milliseconds is None:
        return ""
    if milliseconds < 1000:
        return f"{milliseconds} ms"
    if milliseconds < 60_000:
        return f"{milliseconds / 1000:.1f} s"
    seconds = milliseconds // 1000
    return f"{seconds // 60}m {seconds % 60}s"


def render_breakers(answer: dict[str, Any]) -> Table:
    rows = []
    for key, b in sorted((answer.get("breakers") or {}).items()):
        b = b if isinstance(b, dict) else {"state": b}
        rows.append([key, b.get("state"), b.get("reason"), when(b.get("tripped_at_ns")), b.get("reset_mode")])
    return table("breakers", ["breaker", "state", "reason", "tripped at", "reset"], rows)


def render_strategies(answer: dict[str, Any]) -> Table:
    """`bulwark strategies`: mode, state, crashes in the FM-C2 window, restarts and the process."""
    columns = ["strategy", "mode", "state", "process", "crashes", "restarts", "pid", "last crash"]
    rows = [
        [
            *(s.get("name"), s.get("mode"), s.get("state"), s.get("component_state")),
            crashes(s),
            s.get("restarts", 0),
            s.get("pid"),
            when(s.get("last_crash_ns")),
        ]
        for s in answer.get("strategies") or []
    ]
    return table("strategies", columns, rows)


def crashes(strategy: dict[str, Any]) -> str:
    """`2 in 600s` (crashes inside the FM-C2 window); `?` when the gateway knows no count."""
    count = strategy.get("crashes_in_window")
    return "?" if count is None else f"{count} in {strategy.get('crash_window_s', 600)}s"


def render_dead_letters(answer: dict[str, Any]) -> Table:
    rows = [
        [
            *(d.get(key) for key in ("id", "consumer", "subject", "status", "deliveries", "reason")),
            when(d.get("created_ns")),
        ]
        for d in answer.get("dead_letters") or []
    ]
    return table("dead letters", ["id", "consumer", "subject", "status", "deliveries", "reason", "created"], rows)


def render_dlq_stats(answer: dict[str, Any]) -> Table:
    rows: list[list[Any]] = [["total", answer.get("total")], ["pending", answer.get("pending")]]
    rows.append(["oldest pending", when(answer.get("oldest_pending_created_ns"))])
    for dimension in ("by_consumer", "by_status", "by_reason"):
        rows += [
            [f"{dimension.removeprefix('by_')} {key}", count] for key, count in (answer.get(dimension) or {}).items()
        ]
    return table("dead letter stats", ["", "count"], rows)


def render_alerts(answer: dict[str, Any]) -> Table:
    rows = [
        [a.get("severity"), a.get("key"), a.get("component"), a.get("title"), when(a.get("ts_event_ns"))]
        for a in answer.get("alerts") or []
    ]
    shown = table("open alerts", ["severity", "key", "component", "title", "raised"], rows)
    if not rows:
        shown.caption = "no open alert"
    return shown


def event_line(kind: str, ts_ns: int | None, payload: Any) -> str:
    """One audit or live event as a line: time, type and its telling fields."""
    fields = payload if isinstance(payload, dict) else {}
    telling = ("symbol", "client_order_id", "component", "current", "state", "reason", "title", "action", "operator")
    detail = " ".join(f"{key}={fields[key]}" for key in telling if fields.get(key) not in (None, ""))
    return f"{when(ts_ns or fields.get('ts_event_ns'))}  {kind:<24} {detail}".rstrip()


def render_events(answer: dict[str, Any]) -> Table:
    rows = [
        [e.get("id"), event_line(e.get("type", "?"), e.get("ts_event_ns"), e.get("payload"))] for e in answer["events"]
    ]
    return table("events (newest first)", ["id", "event"], rows)


def render_action(verb: str, answer: dict[str, Any]) -> Text:
    """One line saying what an action changed."""
    if "trading_state" in answer and "previous" in answer and "degradation_level" not in answer:
        return Text(f"{verb}: trading {answer.get('previous')} -> {answer['trading_state']}")
    if "degradation_level" in answer:
        return Text(
            f"{verb}: level {answer.get('previous')} -> {answer['degradation_level']}, "
            f"trading {answer.get('trading_state')}"
        )
    return Text(f"{verb}: " + ", ".join(f"{key}={value}" for key, value in answer.items()))


# --------------------------------------------------------------------------- verbs


@dataclass
class Verb:
    """What one verb asks and how its answer is shown."""

    method: str
    path: Callable[[argparse.Namespace], str]
    role: str
    render: Callable[[dict[str, Any]], Any]
    params: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}
    body: Callable[[argparse.Namespace], Any] = lambda args: None
    headers: Callable[[argparse.Namespace], dict[str, str]] = lambda args: {}
    outcome: Callable[[dict[str, Any]], int] = lambda answer: EXIT_OK
    """The exit code of an answer the gateway gave with success (a DENIED order is refused)."""


def _reason(args: argparse.Namespace) -> dict[str, str]:
    return {"reason": args.reason}


def _action(verb: str) -> Callable[[dict[str, Any]], Any]:
    return lambda answer: render_action(verb, answer)


def order_body(args: argparse.Namespace) -> dict[str, Any]:
    """`POST /v1/orders` of `bulwark submit`: decimals stay the strings typed."""
    body: dict[str, Any] = {
        "symbol": args.symbol.upper(),
        "side": args.side,
        "type": args.type,
        "quantity": args.quantity,
    }
    body |= {"price": args.price} if args.price else {}
    body |= {"stop_price": args.stop_price} if args.stop_price else {}
    return body | ({"reduce_only": True} if args.reduce_only else {})


def order_outcome(answer: dict[str, Any]) -> int:
    """A submitted order that risk denied or the venue rejected is refused (exit 3)."""
    return EXIT_REFUSED if answer.get("status") in ("DENIED", "REJECTED") else EXIT_OK


def render_submitted(answer: dict[str, Any]) -> Text:
    reason = f": {answer['reason']}" if answer.get("reason") else ""
    return Text(f"order {answer.get('order_id')} {answer.get('status')}{reason}")


VERBS: dict[str, Verb] = {
    "halt": Verb("POST", lambda a: "/v1/trading/halt", ACT, _action("halt"), body=_reason),
    "resume": Verb("POST", lambda a: "/v1/trading/resume", ACT, _action("resume"), body=_reason),
    "emergency-stop": Verb("POST", lambda a: "/v1/emergency-stop", ACT, _action("emergency-stop"), body=_reason),
    "orders": Verb(
        "GET",
        lambda a: "/v1/orders",
        READ,
        render_orders,
        params=lambda a: {"status": a.status, "limit": a.limit, "cursor": a.cursor},
    ),
    "submit": Verb(
        "POST",
        lambda a: "/v1/orders",
        ACT,
        render_submitted,
        body=order_body,
        headers=lambda a: {"Idempotency-Key": a.key},
        outcome=order_outcome,
    ),
    "order": Verb("GET", lambda a: f"/v1/orders/{a.id}", READ, render_order),
    "cancel": Verb("DELETE", lambda a: f"/v1/orders/{a.id}", ACT, _action("cancel")),
    "positions": Verb("GET", lambda a: "/v1/positions", READ, render_positions),
    "breakers": Verb("GET", lambda a: "/v1/breakers", READ, render_breakers),
    "breaker reset": Verb("POST", lambda a: f"/v1/breakers/{a.id}/reset", ACT, _action("breaker reset"), body=_reason),
    "strategies": Verb("GET", lambda a: "/v1/strategies", READ, render_strategies),
    "strategy enable": Verb(
        "POST",
        lambda a: f"/v1/strategies/{a.name}/enable",
        ACT,
        _action("strategy enable"),
        body=lambda a: {"mode": a.mode} if a.mode else None,
    ),
    "strategy disable": Verb("POST", lambda a: f"/v1/strategies/{a.name}/disable", ACT, _action("strategy disable")),
    "dlq list": Verb(
        "GET",
        lambda a: "/v1/dlq",
        READ,
        render_dead_letters,
        params=lambda a: {"operation": a.operation, "reason": a.reason, "status": a.status, "limit": a.limit},
    ),
    "dlq stats": Verb("GET", lambda a: "/v1/dlq/stats", READ, render_dlq_stats),
    "dlq retry": Verb(
        "POST", lambda a: "/v1/dlq/retry", ACT, _action("dlq retry"), body=lambda a: {"ids": [int(i) for i in a.ids]}
    ),
    "dlq remove": Verb("DELETE", lambda a: f"/v1/dlq/{a.id}", ACT, _action("dlq remove")),
    "alerts": Verb("GET", lambda a: "/v1/alerts", READ, render_alerts),
    "events": Verb(
        "GET", lambda a: "/v1/events", READ, render_events, params=lambda a: {"type": a.type, "limit": a.limit}
    ),
}


def _common(data_dir: Path) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="the API's JSON only (for programs)")
    common.add_argument("--gateway", help="gateway URL (default: BULWARK_GATEWAY_URL, else the data dir's system)")
    common.add_argument("--data-dir", type=Path, default=data_dir, help="the data dir of `bulwark up` (token, URL)")
    return common


def _verb(commands: Any, name: str, verb: str, common: argparse.ArgumentParser, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, parents=[common], help=text, description=text)
    parser.set_defaults(ops_verb=verb)
    return parser


def _subcommands(parser: argparse.ArgumentParser, dest: str) -> Any:
    """The sub-commands of `parser`, made when it has none yet (another module may add to them too)."""
    for action in parser._actions:  # argparse keeps no public handle on them
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest=dest, required=True)


def add_parser(commands: Any, data_dir: Path) -> None:
    """Register the operator verbs on `bulwark`'s sub-commands (`status` gets `--watch` from `add_status_flags`)."""
    common = _common(data_dir)
    for name, text in (("halt", "halt trading"), ("resume", "resume trading"), ("emergency-stop", "HARD_SHUTDOWN")):
        parser = _verb(commands, name, name, common, text + " (risk owns the state)")
        parser.add_argument("--reason", required=True, help="why (audited)")
        if name == "emergency-stop":
            parser.add_argument("--yes", action="store_true", help="do not ask for confirmation on a terminal")
    orders = _verb(commands, "orders", "orders", common, "orders, newest first")
    orders.add_argument("--status", help="only this status (e.g. NEW, FILLED, PENDING_SUBMISSION)")
    orders.add_argument("--limit", type=int, default=50)
    orders.add_argument("--cursor", help="the next page (`next_cursor` of the previous one)")
    submit = _verb(commands, "submit", "submit", common, "submit an order (POST /v1/orders); exit 3 when DENIED")
    submit.add_argument("symbol")
    submit.add_argument("side", type=str.upper, choices=("BUY", "SELL"))
    submit.add_argument("quantity", help="decimal, e.g. 0.002")
    submit.add_argument("--type", type=str.upper, choices=("MARKET", "LIMIT", "STOP_MARKET"), default="MARKET")
    submit.add_argument("--price", help="LIMIT price")
    submit.add_argument("--stop-price", help="STOP_MARKET trigger price")
    submit.add_argument("--reduce-only", action="store_true")
    submit.add_argument(
        "--key",
        default=f"cli-{uuid.uuid4()}",
        help="Idempotency-Key (default: a new one); the same key again returns the first answer",
    )
    _verb(commands, "order", "order", common, "one order").add_argument("id")
    _verb(commands, "cancel", "cancel", common, "cancel an order").add_argument("id")
    _verb(commands, "positions", "positions", common, "positions per venue")
    _verb(commands, "breakers", "breakers", common, "circuit breakers")
    breaker = commands.add_parser("breaker", help="one circuit breaker")
    reset = _verb(_subcommands(breaker, "breaker_command"), "reset", "breaker reset", common, "reset a breaker by hand")
    reset.add_argument("id", help="e.g. CB-1")
    reset.add_argument("--reason", required=True, help="why (audited; SPEC §4 requires one)")
    _verb(commands, "strategies", "strategies", common, "strategies and their states")
    strategy = commands.choices.get("strategy") or commands.add_parser("strategy", help="one strategy")
    strategy_verbs = _subcommands(strategy, "strategy_command")
    enable = _verb(strategy_verbs, "enable", "strategy enable", common, "enable a strategy")
    enable.add_argument("name")
    enable.add_argument("--mode", choices=("paper", "live"), help="paper or live trading, where the system offers it")
    _verb(strategy_verbs, "disable", "strategy disable", common, "disable a strategy").add_argument("name")
    dlq = _subcommands(commands.add_parser("dlq", help="dead letters"), "dlq_command")
    listing = _verb(dlq, "list", "dlq list", common, "dead letters, newest first")
    listing.add_argument("--operation", help="consumer or subject prefix")
    listing.add_argument("--reason", help="substring of the reason")
    listing.add_argument("--status", help="PENDING or RETRIED")
    listing.add_argument("--limit", type=int, default=50)
    _verb(dlq, "stats", "dlq stats", common, "dead letter counts")
    _verb(dlq, "retry", "dlq retry", common, "re-publish dead letters").add_argument("ids", nargs="+", type=int)
    _verb(dlq, "remove", "dlq remove", common, "remove a dead letter").add_argument("id", type=int)
    _verb(commands, "alerts", "alerts", common, "open alerts")
    events = _verb(commands, "events", "events", common, "audit events (newest first), or live with --follow")
    events.add_argument("--type", help="message type(s), e.g. OrderFilled (live: one type)")
    events.add_argument("--limit", type=int, default=50)
    events.add_argument("--follow", action="store_true", help="live events until Ctrl-C")


def add_status_flags(status: argparse.ArgumentParser) -> None:
    """`bulwark status --watch [SECONDS] [--count N]`."""
    status.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS", help="refresh (default 2 s)")
    status.add_argument("--count", type=int, help="with --watch: stop after N refreshes")
    status.set_defaults(ops_verb="status")


def handles(args: argparse.Namespace) -> bool:
    """Is this one of the verbs of this module?"""
    return getattr(args, "ops_verb", None) is not None


def run(
    args: argparse.Namespace,
    environ: dict[str, str] | None = None,
    console: Console | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Do the verb `args` names; its exit code (`EXIT_CODES`)."""
    env = dict(os.environ if environ is None else environ)
    out = console or Console()
    if console is None and not out.is_terminal and "COLUMNS" not in env:
        out.width = PIPED_WIDTH
    errors = Console(stderr=True, soft_wrap=True) if console is None else console
    api = Api(gateway_url(args.gateway, args.data_dir, env), args.data_dir, env, transport=transport)
    try:
        if args.ops_verb == "status":
            return _status(api, args, out)
        if args.ops_verb == "events" and args.follow:
            return _follow(api, args, out)
        if args.ops_verb == "emergency-stop" and not _confirmed(args, out):
            errors.print("bulwark emergency-stop: not confirmed; nothing done")
            return EXIT_REFUSED
        verb = VERBS[args.ops_verb]
        answer = api.call(
            verb.method,
            verb.path(args),
            verb.role,
            params=verb.params(args),
            body=verb.body(args),
            headers=verb.headers(args),
        )
    except CliError as exc:
        errors.print(Text(f"bulwark {args.ops_verb}: {exc.message}"))
        return exc.code
    _show(out, args, answer, verb.render)
    return verb.outcome(answer)


def _show(out: Console, args: argparse.Namespace, answer: Any, render: Callable[[dict[str, Any]], Any]) -> None:
    if args.json:
        print_plain(out, json.dumps(answer, indent=2, sort_keys=True))
    else:
        out.print(render(answer))


def print_plain(out: Console, text: str) -> None:
    """Text exactly as given (no markup, no wrapping): what `--json` writes for a program."""
    out.file.write(text + "\n")
    out.file.flush()


def _confirmed(args: argparse.Namespace, out: Console) -> bool:
    """An emergency stop on a terminal is confirmed by typing `yes` (unless `--yes`); a program is not asked."""
    if args.yes or not sys.stdin.isatty():
        return True
    out.print(
        Text("Emergency stop: HARD_SHUTDOWN flattens every position and stops trading until a restart.", "bold red")
    )
    return input("Type yes to go on: ").strip().lower() == "yes"


def _status(api: Api, args: argparse.Namespace, out: Console) -> int:
    """`bulwark status`, once or `--watch`ed (`--json`: one JSON document per refresh)."""
    if args.watch is None:
        status = api.call("GET", "/v1/status", READ)
        _show(out, args, status, lambda s: render_status(s, time.time_ns()))
        return EXIT_OK
    shown = 0
    try:
        if args.json:
            while args.count is None or shown < args.count:
                print_plain(out, json.dumps(api.call("GET", "/v1/status", READ)))
                shown += 1
                if args.count is None or shown < args.count:
                    time.sleep(args.watch)
            return EXIT_OK
        # On a terminal the view is redrawn in place; into a pipe or file every refresh is appended.
        live = Live(Text("asking the gateway..."), console=out, auto_refresh=False) if out.is_terminal else None
        with live if live is not None else contextlib.nullcontext():
            while args.count is None or shown < args.count:
                try:
                    view: Any = render_status(api.call("GET", "/v1/status", READ), time.time_ns())
                except CliError as exc:  # keep watching through a restart of the gateway
                    view = Text(f"{time.strftime('%H:%M:%S')}  {exc.message}", style="bold red")
                if live is not None:
                    live.update(view, refresh=True)
                else:
                    out.print(Text(time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())), view)
                shown += 1
                if args.count is None or shown < args.count:
                    time.sleep(args.watch)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _follow(api: Api, args: argparse.Namespace, out: Console) -> int:
    """`bulwark events --follow`: live events until Ctrl-C (`--json`: one JSON object per line)."""
    try:
        for event in api.stream("/v1/events/stream", {"type": args.type}):
            if args.json:
                print_plain(out, json.dumps(event))
            else:
                out.print(Text(event_line(event["event"], None, event["data"])))
    except KeyboardInterrupt:
        pass
    return EXIT_OK

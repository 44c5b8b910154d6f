"""The gateway's reading of other services' replies and KV values, pinned by its operator API.

The bytes fed here are what the senders write (risk, state-builder, watchdog, strategy,
market-data, position), encoded with the proto structs or, where a sender still writes a dict,
with the same keys. The answers are compared whole, so a change in how the gateway decodes them
cannot change the API; a reply or value that does not decode never gives a 500.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any, cast

import httpx
import msgspec
import pytest
import pytest_asyncio
from nats.errors import NoRespondersError

from libs.logging import get_logger
from libs.runtime.service import ServiceContext
from libs.settings import Settings
from proto import subjects
from proto.codec import encode
from proto.enums import BreakerState, HotStateStatus, StrategyState, TradingState
from proto.kv import BreakerValue, StrategyCrashesValue, StrategyStateValue, TradingStateValue, encode_value
from proto.messages import DegradationLevelChanged, HotStateRecord, SymbolHotState, SymbolsReply
from proto.replies import error_reply
from services.gateway.app import create_app
from services.gateway.context import Gateway

OP = {"Authorization": "Bearer o"}
VIEW = {"Authorization": "Bearer v"}

Handler = Callable[[bytes], Awaitable[bytes]]


class PeerBus:
    """The bus as the gateway sees it, in memory: KV entries, `svc.*` answerers, published messages."""

    def __init__(self) -> None:
        self.connected = True
        self.kv: dict[str, bytes] = {}
        self.handlers: dict[str, Handler] = {}
        self.requests: list[tuple[str, Any]] = []
        self.published: list[tuple[str, Any]] = []

    def answer(self, subject: str, reply: bytes | Handler) -> None:
        async def constant(_: bytes) -> bytes:
            assert isinstance(reply, bytes)
            return reply

        self.handlers[subject] = reply if callable(reply) else constant

    async def request(self, subject: str, payload: bytes = b"{}", *, timeout_s: float = 3.0) -> bytes:
        self.requests.append((subject, msgspec.json.decode(payload)))
        handler = self.handlers.get(subject)
        if handler is None:
            raise NoRespondersError
        return await handler(payload)

    async def kv_get(self, key: str, bucket: str = subjects.KV_STATE) -> tuple[bytes, int] | None:
        return (self.kv[key], 1) if key in self.kv else None

    async def kv_keys(self, prefix: str = "", bucket: str = subjects.KV_STATE) -> list[str]:
        return [key for key in self.kv if key.startswith(prefix)]

    async def kv_put(self, key: str, value: bytes, bucket: str = subjects.KV_STATE) -> int:
        self.kv[key] = value
        return 1

    async def publish(self, subject: str, message: Any, *, msg_id: str | None = None) -> int:
        self.published.append((subject, message))
        return len(self.published)


@pytest_asyncio.fixture
async def peer() -> PeerBus:
    return PeerBus()


@pytest_asyncio.fixture
async def client(peer: PeerBus) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        admin_token="a",
        operator_token="o",
        viewer_token="v",
        symbols=("BTCUSDT", "ETHUSDT"),
        strategies=("imbalance",),
    )
    ctx = ServiceContext(component="gateway", settings=settings, log=get_logger("gateway"), bus=cast(Any, peer))
    app = create_app(Gateway(ctx))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        yield http


def json_bytes(value: Any) -> bytes:
    return msgspec.json.encode(value)


RISK_BREAKER = BreakerValue(
    breaker="CB-1",
    title="rapid loss",
    state=BreakerState.OPEN,
    reason="loss 3.1% in 5 min",
    tripped_at_ns=11,
    trips=1,
    details={"loss_pct": "3.1"},
    ts_ns=11,
)
VENUE_BREAKER = {"state": "OPEN", "reason": "5 failures in 10 s: timeout", "ts_ns": 12}  # libs.breaker record
MARKET_LINK = {"state": "DEGRADED", "reason": "clock skew", "causes": ["clock"], "ts_ns": 13}  # market-data
ORDER_LINK = {"state": "CONNECTED", "reason": "reconciled", "ts_ns": 14}  # position: no causes
WATCHDOG_LEVEL = {"level": "REDUCED_FUNCTIONALITY", "reason": "cpu", "previous": "NORMAL", "ts_ns": 15}
WATCHDOG_HEALTH = {"health": "YELLOW", "reasons": ["cpu 91%"], "checks": {"cpu": {"percent": 91}}, "ts_ns": 16}


def store_everything(peer: PeerBus) -> None:
    peer.kv[subjects.KEY_TRADING_STATE] = encode_value(
        TradingStateValue(state=TradingState.REDUCING, reason="CB-4", operator=None, ts_ns=10)
    )
    peer.kv[subjects.KEY_DEGRADATION_LEVEL] = json_bytes(WATCHDOG_LEVEL)
    peer.kv[subjects.KEY_HEALTH] = json_bytes(WATCHDOG_HEALTH)
    peer.kv[subjects.key_breaker("CB-1")] = encode_value(RISK_BREAKER)
    peer.kv[subjects.key_breaker("venue.binance-usdm")] = json_bytes(VENUE_BREAKER)
    peer.kv[subjects.key_link("binance-usdm", subjects.MARKET_WS_LINK)] = json_bytes(MARKET_LINK)
    peer.kv[subjects.key_link("binance-usdm", subjects.ORDER_LINK)] = json_bytes(ORDER_LINK)


def symbols_reply() -> bytes:
    view = SymbolHotState(
        symbol="BTCUSDT",
        hot_state=HotStateStatus.VALID,
        age_ms=12,
        last_update_id=5,
        mark_price=Decimal("65000.1"),
        best_bid=Decimal("65000.0"),
        best_ask=Decimal("65000.2"),
    )
    return encode(SymbolsReply(symbols={"BTCUSDT": view}))


# --------------------------------------------------------------------------- status and breakers

NO_RISK_NO_POSITION: dict[str, Any] = {
    # Risk does not answer `svc.risk.entry_gates` here and no position process heartbeats.
    "can_enter": False,
    "entry_venue": "binance-usdm",
    "blocked_by": [
        {
            "gate": "risk",
            "reason": "risk is not answering: no order is approved until it does (FM-C6)",
            "since_ns": None,
        },
        {
            "gate": "position",
            "reason": "position is DOWN (no heartbeat): orders for binance-usdm wait until it is back (FM-C9)",
            "since_ns": None,
        },
    ],
}
NO_RISK_NO_POSITION["venues"] = {
    "binance-usdm": {"can_enter": False, "blocked_by": NO_RISK_NO_POSITION["blocked_by"]},
}


async def test_status_when_every_record_written_then_body_unchanged(peer: PeerBus, client: httpx.AsyncClient) -> None:
    store_everything(peer)
    peer.answer(subjects.SVC_STATE_BUILDER_SYMBOLS, symbols_reply())

    response = await client.get("/v1/status", headers=VIEW)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["trading_state"] == "REDUCING"
    assert body["degradation_level"] == "REDUCED_FUNCTIONALITY"
    assert body["health"] == "YELLOW"
    assert body["symbols"] == {
        "BTCUSDT": {"hot_state": "VALID", "age_ms": 12, "last_update_id": 5, **NO_RISK_NO_POSITION}
    }
    assert body["breakers"] == {
        "CB-1": msgspec.json.decode(encode_value(RISK_BREAKER)),
        "venue.binance-usdm": VENUE_BREAKER,
    }
    assert body["links"] == {"binance-usdm.market-ws": MARKET_LINK, "binance-usdm.orders": ORDER_LINK}
    assert body["venues"] == {
        "binance-usdm": {
            "role": "main",
            "order_link": "CONNECTED",
            "order_link_reason": "reconciled",
            "position_component": "position",
            "position_state": "DOWN",
            "mode": "LIVE",
        }
    }


async def test_status_when_nothing_stored_and_only_risk_answers_then_its_state_and_kv_hot_state(
    peer: PeerBus, client: httpx.AsyncClient
) -> None:
    peer.kv[subjects.key_hot_state("BTCUSDT")] = encode(
        HotStateRecord(status=HotStateStatus.STALE, reason="no update for 5 s", last_update_id=7, ts_ns=1)
    )
    risk_state = {
        "trading_state": "HALTED",
        "reason": "operator",
        "operator": "ops",
        "ts_ns": 3,
        "degradation_level": None,
        "positions": {"BTCUSDT": "0.010"},
        "pending": {"BTCUSDT": ["0", "0"]},
        "hot_state": {"BTCUSDT": "STALE"},
        "breakers": {"CB-1": "CLOSED"},
        "entries_halted": None,
        "recovery": None,
        "orders_seq": 4,
    }  # services/risk serve_state
    peer.answer(subjects.SVC_RISK_STATE, json_bytes(risk_state))

    body = (await client.get("/v1/status", headers=VIEW)).json()

    assert body["trading_state"] == "HALTED"
    assert body["degradation_level"] == "NORMAL"
    assert body["health"] == "UNKNOWN"
    assert body["symbols"] == {
        "BTCUSDT": {"hot_state": "STALE", "age_ms": None, "last_update_id": 7, **NO_RISK_NO_POSITION},
        "ETHUSDT": {"hot_state": "UNKNOWN", "age_ms": None, "last_update_id": None, **NO_RISK_NO_POSITION},
    }
    assert body["breakers"] == {} and body["links"] == {}
    assert body["venues"]["binance-usdm"]["order_link"] is None
    assert (subjects.SVC_RISK_STATE, {}) in peer.requests


@pytest.mark.parametrize(
    "reply",
    [b"not json", b'{"trading_state": "MAYBE"}', b"[]", error_reply("internal", "boom")],
    ids=["not-json", "unknown-state", "not-an-object", "error"],
)
async def test_status_when_risk_reply_unreadable_then_halted_not_500(
    peer: PeerBus, client: httpx.AsyncClient, reply: bytes
) -> None:
    peer.answer(subjects.SVC_RISK_STATE, reply)
    peer.answer(subjects.SVC_STATE_BUILDER_SYMBOLS, b'{"symbols": 3}')

    response = await client.get("/v1/status", headers=VIEW)

    assert response.status_code == 200, response.text
    assert response.json()["trading_state"] == "HALTED"
    assert response.json()["symbols"]["BTCUSDT"]["hot_state"] == "UNKNOWN"


async def test_status_when_kv_values_unreadable_then_left_out_or_defaults_not_500(
    peer: PeerBus, client: httpx.AsyncClient
) -> None:
    peer.kv[subjects.KEY_TRADING_STATE] = b"{{{"
    peer.kv[subjects.KEY_DEGRADATION_LEVEL] = b"[1, 2]"
    peer.kv[subjects.KEY_HEALTH] = b"not json"
    peer.kv[subjects.key_breaker("CB-2")] = b"\xff"
    peer.kv[subjects.key_link("binance-usdm", subjects.ORDER_LINK)] = b"}"
    peer.kv[subjects.key_hot_state("BTCUSDT")] = b"nope"

    response = await client.get("/v1/status", headers=VIEW)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["trading_state"], body["degradation_level"], body["health"]) == ("HALTED", "NORMAL", "UNKNOWN")
    assert body["breakers"] == {} and body["links"] == {}
    assert body["symbols"]["BTCUSDT"]["hot_state"] == "UNKNOWN"


async def test_breakers_when_risk_and_venue_breakers_then_each_as_stored(
    peer: PeerBus, client: httpx.AsyncClient
) -> None:
    store_everything(peer)

    response = await client.get("/v1/breakers", headers=VIEW)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "breakers": {"CB-1": msgspec.json.decode(encode_value(RISK_BREAKER)), "venue.binance-usdm": VENUE_BREAKER}
    }


# --------------------------------------------------------------------------- book


BOOK = {
    "symbol": "BTCUSDT",
    "status": "VALID",
    "last_update_id": 99,
    "bids": [["65000.10", "1.5"], ["65000.0", "2"]],
    "asks": [["65000.2", "0.25"]],
}  # services/state_builder/queries.py book_reply


async def test_book_when_state_builder_answers_then_levels_as_strings(peer: PeerBus, client: httpx.AsyncClient) -> None:
    peer.answer(subjects.SVC_STATE_BUILDER_BOOK, json_bytes(BOOK))

    response = await client.get("/v1/book/btcusdt?depth=2", headers=VIEW)

    assert response.status_code == 200, response.text
    assert response.json() == BOOK
    book_query = subjects.SVC_STATE_BUILDER_BOOK
    assert peer.requests == [(book_query, {"symbol": "BTCUSDT", "depth": 2})]


async def test_book_when_state_builder_errors_then_404_or_503(peer: PeerBus, client: httpx.AsyncClient) -> None:
    async def book(payload: bytes) -> bytes:
        if msgspec.json.decode(payload)["symbol"] == "BTCUSDT":
            return error_reply("not_found", "unknown symbol BTCUSDT")
        return error_reply("bad_request", "depth must be 1..1000")

    peer.answer(subjects.SVC_STATE_BUILDER_BOOK, book)

    missing = await client.get("/v1/book/BTCUSDT", headers=VIEW)
    refused = await client.get("/v1/book/ETHUSDT", headers=VIEW)

    assert missing.status_code == 404
    assert missing.json()["error"] == {"code": "not_found", "message": "unknown symbol BTCUSDT", "details": {}}
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert refused.json()["error"] == {
        "code": "dependency_unavailable",
        "message": "state-builder error: depth must be 1..1000",
        "details": {"dependency": "state-builder"},
    }


# --------------------------------------------------------------------------- trading controls


async def test_halt_and_resume_when_risk_answers_then_state_and_previous(
    peer: PeerBus, client: httpx.AsyncClient
) -> None:
    peer.answer(subjects.SVC_RISK_HALT, b'{"trading_state":"HALTED","previous":"ACTIVE"}')
    peer.answer(subjects.SVC_RISK_RESUME, b'{"trading_state":"ACTIVE","previous":"HALTED"}')

    halted = await client.post("/v1/trading/halt", headers=OP, json={"reason": "maintenance"})
    resumed = await client.post("/v1/trading/resume", headers=OP)

    assert (halted.status_code, halted.json()) == (200, {"trading_state": "HALTED", "previous": "ACTIVE"})
    assert (resumed.status_code, resumed.json()) == (200, {"trading_state": "ACTIVE", "previous": "HALTED"})
    assert peer.requests == [
        (subjects.SVC_RISK_HALT, {"operator": "operator", "reason": "maintenance"}),
        (subjects.SVC_RISK_RESUME, {"operator": "operator", "reason": "operator resume"}),
    ]


@pytest.mark.parametrize(
    ("code", "status"), [("bad_request", 400), ("not_found", 404), ("invalid_transition", 409), ("blocked", 409)]
)
async def test_resume_when_risk_refuses_then_matching_status_with_risk_error(
    peer: PeerBus, client: httpx.AsyncClient, code: str, status: int
) -> None:
    peer.answer(subjects.SVC_RISK_RESUME, error_reply(code, "no"))

    response = await client.post("/v1/trading/resume", headers=OP, json={"reason": "x"})

    assert response.status_code == status
    assert response.json() == {
        "error": {"code": code, "message": "no", "details": {"risk": {"code": code, "message": "no"}}}
    }


@pytest.mark.parametrize("reply", [b"not json", b'{"trading_state": 3}', b"[]", b'{"previous": "ACTIVE"}'], ids=str)
async def test_halt_when_risk_reply_unreadable_then_502_with_reason(
    peer: PeerBus, client: httpx.AsyncClient, reply: bytes
) -> None:
    peer.answer(subjects.SVC_RISK_HALT, reply)

    response = await client.post("/v1/trading/halt", headers=OP)

    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_gateway" and error["message"].startswith("risk answered")
    assert error["details"]["dependency"] == "risk" and error["details"]["reason"]


async def test_emergency_stop_then_hard_shutdown_written_with_previous_level_and_halt(
    peer: PeerBus, client: httpx.AsyncClient
) -> None:
    peer.kv[subjects.KEY_DEGRADATION_LEVEL] = json_bytes(WATCHDOG_LEVEL)
    peer.answer(subjects.SVC_RISK_HALT, b'{"trading_state":"HALTED","previous":"ACTIVE"}')

    response = await client.post("/v1/emergency-stop", headers=OP, json={"reason": "fat finger"})

    assert response.status_code == 200, response.text
    assert response.json() == {
        "degradation_level": "HARD_SHUTDOWN",
        "previous": "REDUCED_FUNCTIONALITY",
        "trading_state": "HALTED",
    }
    event = next(message for subject, message in peer.published if subject == subjects.EVT_DEGRADATION)
    assert isinstance(event, DegradationLevelChanged) and event.previous == "REDUCED_FUNCTIONALITY"
    record = msgspec.json.decode(peer.kv[subjects.KEY_DEGRADATION_LEVEL])
    assert record == {
        "level": "HARD_SHUTDOWN",
        "reason": "fat finger (by operator)",  # who stopped it, as the event says it
        "previous": "REDUCED_FUNCTIONALITY",
        "ts_ns": event.ts_event_ns,
    }
    assert peer.requests == [(subjects.SVC_RISK_HALT, {"operator": "operator", "reason": "fat finger"})]


async def test_emergency_stop_when_risk_reply_unreadable_then_still_stopped(
    peer: PeerBus, client: httpx.AsyncClient
) -> None:
    peer.answer(subjects.SVC_RISK_HALT, b"{}")

    response = await client.post("/v1/emergency-stop", headers=OP)

    assert response.status_code == 200, response.text
    assert response.json() == {"degradation_level": "HARD_SHUTDOWN", "previous": None, "trading_state": None}


# --------------------------------------------------------------------------- breaker reset


@pytest.mark.parametrize("note", [None, "breaker cleared; trading stays HALTED until an operator resumes it"])
async def test_breaker_reset_when_risk_answers_then_its_reply(
    peer: PeerBus, client: httpx.AsyncClient, note: str | None
) -> None:
    reply: dict[str, Any] = {"breaker": "CB-1", "state": "CLOSED", "previous": "OPEN", "trading_state": "HALTED"}
    if note is not None:
        reply["note"] = note  # services/risk/breaker_effects.py reset_breaker
    peer.answer(subjects.SVC_RISK_BREAKER_RESET, json_bytes(reply))

    response = await client.post("/v1/breakers/CB-1/reset", headers=OP, json={"reason": " checked "})

    assert response.status_code == 200, response.text
    assert response.json() == reply
    assert peer.requests == [
        (
            subjects.SVC_RISK_BREAKER_RESET,
            {"breaker": "CB-1", "operator": "operator", "reason": "checked"},
        )
    ]


async def test_breaker_reset_when_risk_refuses_then_matching_status(peer: PeerBus, client: httpx.AsyncClient) -> None:
    async def reset(payload: bytes) -> bytes:
        request = msgspec.json.decode(payload)
        if not request["reason"]:
            return error_reply("bad_request", "a reason is required")
        if request["breaker"] != "CB-1":
            return error_reply("not_found", f"unknown breaker {request['breaker']}")
        return error_reply("not_tripped", "CB-1 is CLOSED")

    peer.answer(subjects.SVC_RISK_BREAKER_RESET, reset)

    no_reason = await client.post("/v1/breakers/CB-1/reset", headers=OP)
    unknown = await client.post("/v1/breakers/CB-9/reset", headers=OP, json={"reason": "x"})
    closed = await client.post("/v1/breakers/CB-1/reset", headers=OP, json={"reason": "x"})

    assert (no_reason.status_code, no_reason.json()["error"]["code"]) == (400, "bad_request")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")
    assert closed.status_code == 409
    assert closed.json()["error"] == {
        "code": "not_tripped",
        "message": "CB-1 is CLOSED",
        "details": {"risk": {"code": "not_tripped", "message": "CB-1 is CLOSED"}},
    }


async def test_breaker_reset_when_risk_reply_unreadable_then_502(peer: PeerBus, client: httpx.AsyncClient) -> None:
    peer.answer(subjects.SVC_RISK_BREAKER_RESET, b'{"breaker": "CB-1"}')

    response = await client.post("/v1/breakers/CB-1/reset", headers=OP, json={"reason": "x"})

    assert response.status_code == 502 and response.json()["error"]["code"] == "bad_gateway"


# --------------------------------------------------------------------------- strategies


async def test_strategies_when_state_stored_then_state_and_record(peer: PeerBus, client: httpx.AsyncClient) -> None:
    record = StrategyStateValue(state=StrategyState.SCANNING, reason="enabled", symbol="BTCUSDT", ts_ns=3, kind="x")
    peer.kv[subjects.key_strategy("imbalance")] = encode_value(record)
    now = time.time_ns()  # the gateway's wall clock counts the FM-C2 window back from now
    crashes = StrategyCrashesValue(crashes=[now - 700 * 10**9, now - 60 * 10**9], running="1-2")
    peer.kv[subjects.key_strategy_crashes("imbalance")] = encode_value(crashes)  # services/strategy

    body = (await client.get("/v1/strategies", headers=VIEW)).json()

    assert body == {
        "strategies": [
            {
                "name": "imbalance",
                "component": "strategy-imbalance",
                "state": "SCANNING",
                "component_state": "DOWN",
                "details": msgspec.json.decode(encode_value(record)),
                "mode": "live",
                # The process is silent: its persisted history answers, only the crash inside the window.
                "crashes_in_window": 1,
                "crash_window_s": 600,
                "last_crash_ns": now - 60 * 10**9,
                "restarts": 0,
                "pid": None,
            }
        ]
    }


async def test_strategy_enable_when_hard_shutdown_stored_then_409(peer: PeerBus, client: httpx.AsyncClient) -> None:
    peer.kv[subjects.KEY_DEGRADATION_LEVEL] = json_bytes({"level": "HARD_SHUTDOWN", "reason": "stop", "ts_ns": 1})

    refused = await client.post("/v1/strategies/imbalance/enable", headers=OP)

    assert refused.status_code == 409 and refused.json()["error"]["details"] == {"degradation_level": "HARD_SHUTDOWN"}

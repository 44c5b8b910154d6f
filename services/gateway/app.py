"""The operator REST API (SPEC §10) as a FastAPI app bound to one service context.

`Gateway` holds what routes share (service context, heartbeat tracker, idempotency store,
metrics); `create_app(gateway)` builds the FastAPI app. Errors always answer
`{"error": {"code", "message", "details"}}`; a dependency that is down answers 503 with `Retry-After`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import time
import types
import typing
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from typing import Annotated, Any

import asyncpg
import msgspec
import pydantic
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.bus import HEADER_MSG_ID, HEADER_TYPE
from libs.heartbeat import HeartbeatTracker, expected_components
from libs.ids import client_order_id_for
from libs.runtime.service import ServiceContext
from libs.settings import Settings
from proto import messages as proto_messages
from proto import subjects
from proto.codec import decode, decode_as
from proto.enums import (
    TERMINAL_ORDER_STATUSES,
    AlertSeverity,
    ComponentState,
    DegradationLevel,
    OrderSource,
    OrderStatus,
    TradingState,
)
from proto.messages import (
    AlertRaised,
    CancelOrder,
    DegradationLevelChanged,
    DisableStrategy,
    EnableStrategy,
    Heartbeat,
    OperatorActionTaken,
    SubmitOrder,
)
from services.gateway import adapters
from services.gateway.adapters import IdempotencyStore, jsonable, pg_call
from services.gateway.domain import (
    ApiError,
    ControlRequest,
    DeadLetterFilter,
    DeadLetterRetryRequest,
    OrderRequest,
    OrderResponse,
    Outcome,
    Principal,
    Role,
    TokenTable,
    authorize,
    decode_cursor,
    encode_cursor,
    error_body,
    fingerprint,
    is_settled,
    outcome_of,
    parse_control_body,
    parse_dead_letter_status,
    parse_order_status,
    reason_class,
    unavailable,
    verdict_error,
)
from services.gateway.metrics import GatewayMetrics, MetricsMiddleware

BUS_ERRORS: tuple[type[BaseException], ...] = (NatsError, asyncio.TimeoutError, OSError, RuntimeError)
PING_ERRORS: tuple[type[BaseException], ...] = (*adapters.PG_ERRORS, RedisError, *BUS_ERRORS)


@dataclass
class GatewayConfig:
    """Timeouts of the gateway's calls (seconds)."""

    outcome_timeout_s: float = 5.0
    symbols_timeout_s: float = 0.5
    request_timeout_s: float = 3.0
    ready_timeout_s: float = 1.0
    ping_timeout_s: float = 0.5


@dataclass
class Gateway:
    """What every route needs, built once per process."""

    ctx: ServiceContext
    config: GatewayConfig = field(default_factory=GatewayConfig)
    tracker: HeartbeatTracker = field(init=False)
    idempotency: IdempotencyStore = field(init=False)
    tokens: TokenTable = field(init=False)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)

    def __post_init__(self) -> None:
        self.tokens = TokenTable(self.ctx.settings)  # a malformed BULWARK_API_TOKENS stops the start-up
        self.tracker = HeartbeatTracker(
            timeout_ns=int(self.ctx.settings.heartbeat_timeout_s * 1e9), expected=expected_components(self.ctx.settings)
        )
        self.idempotency = IdempotencyStore(self.ctx.cache, self.ctx.pool, self.ctx.log)

    async def start(self) -> None:
        """Track heartbeats (core subscription on `hb.>`)."""

        async def on_heartbeat(msg: Msg) -> None:
            try:
                heartbeat = decode_as(msg.data, Heartbeat)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.ctx.log.warning("heartbeat_invalid", subject=msg.subject, error=str(exc)[:200])
                return
            self.tracker.record(heartbeat, time.time_ns())

        await self.ctx.bus.subscribe_core(subjects.HEARTBEAT_ALL, on_heartbeat)

    def component_state(self, name: str) -> ComponentState:
        """The state of a component as the heartbeats tell it."""
        view = self.tracker.view(time.time_ns()).get(name)
        return view.state if view is not None else ComponentState.DOWN

    async def request_json(self, subject: str, payload: dict[str, Any], timeout_s: float, dependency: str) -> Any:
        """Request/reply over the bus with JSON in and out.

        Raises:
            ApiError: 503 when nobody answers in time or the bus is down.
        """
        if not self.ctx.bus.connected:
            raise unavailable("nats", "the message bus is disconnected")
        try:
            reply = await self.ctx.bus.request(subject, msgspec.json.encode(payload), timeout_s=timeout_s)
        except NoRespondersError as exc:
            raise unavailable(dependency, f"{dependency} is not answering (no responders on {subject})") from exc
        except (TimeoutError, NatsTimeoutError) as exc:
            raise unavailable(dependency, f"{dependency} did not answer within {timeout_s:g} s") from exc
        except BUS_ERRORS as exc:
            raise unavailable("nats", f"bus request failed: {type(exc).__name__}: {exc}"[:300]) from exc
        try:
            return msgspec.json.decode(reply)
        except msgspec.DecodeError as exc:
            raise ApiError(502, "bad_gateway", f"{dependency} answered with invalid JSON") from exc

    async def dependencies(self) -> dict[str, str]:
        """`UP`/`DOWN` of the stores the gateway uses (quick pings), so an operator sees at once
        which reads will answer 503 (FM-C3) and whether idempotency runs on its fallback (FM-C7)."""

        async def ping(check: Any) -> str:
            try:
                await asyncio.wait_for(check(), self.config.ping_timeout_s)
            except PING_ERRORS:
                return "DOWN"
            return "UP"

        pool, cache = self.ctx.pool, self.ctx.cache
        postgres, valkey = await asyncio.gather(
            ping(lambda: pool.fetchval("SELECT 1")) if pool is not None else _constant("DOWN"),
            ping(lambda: cache.ping()) if cache is not None else _constant("DOWN"),
        )
        return {"nats": "UP" if self.ctx.bus.connected else "DOWN", "postgres": postgres, "valkey": valkey}

    async def kv_json(self, key: str) -> Any:
        """A KV value decoded as JSON, or None (never set, unreadable, or the bus is down)."""
        if not self.ctx.bus.connected:
            return None
        try:
            entry = await asyncio.wait_for(self.ctx.bus.kv_get(key), self.config.request_timeout_s)
        except BUS_ERRORS as exc:
            self.ctx.log.warning("kv_read_failed", key=key, error=str(exc)[:200])
            return None
        if entry is None:
            return None
        try:
            return msgspec.json.decode(entry[0])
        except msgspec.DecodeError:
            self.ctx.log.warning("kv_value_unreadable", key=key)
            return None

    async def kv_prefixed(self, prefix: str) -> dict[str, Any]:
        """Every KV key starting with `prefix` (prefix removed) and its JSON value."""
        if not self.ctx.bus.connected:
            return {}
        try:
            keys = await asyncio.wait_for(self.ctx.bus.kv_keys(prefix), self.config.request_timeout_s)
        except BUS_ERRORS as exc:
            self.ctx.log.warning("kv_keys_failed", prefix=prefix, error=str(exc)[:200])
            return {}
        values: dict[str, Any] = {}
        for key in keys:
            value = await self.kv_json(key)
            if value is not None:  # deleted since
                values[key[len(prefix) :]] = value
        return values


async def _constant(value: str) -> str:
    return value


# --------------------------------------------------------------------------- response models


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorEnvelope(BaseModel):
    """Body of every error answer."""

    error: ErrorDetail


class ComponentStatus(BaseModel):
    state: str
    pid: int | None
    last_heartbeat_age_ms: int | None


class SymbolStatus(BaseModel):
    hot_state: str
    age_ms: int | None
    last_update_id: int | None


class VenueStatus(BaseModel):
    """One venue orders may go to (FM-N6): its role, order link and position process."""

    role: str
    """`main` (BULWARK_VENUE) or `backup` (BULWARK_BACKUP_VENUE)."""
    order_link: str | None
    """State of the position process's order link to it (KV `link.<venue>.orders`); null: never reported."""
    order_link_reason: str | None
    position_component: str
    """The position process trading it (`position`, `position-<venue>`), also under `components`."""
    position_state: str


class StatusResponse(BaseModel):
    trading_state: str
    degradation_level: str
    health: str
    components: dict[str, ComponentStatus]
    symbols: dict[str, SymbolStatus]
    breakers: dict[str, Any]
    links: dict[str, Any]
    dependencies: dict[str, str] = {}
    venues: dict[str, VenueStatus] = {}


class BookResponse(BaseModel):
    symbol: str
    status: str
    last_update_id: int | None
    bids: list[list[str]]
    asks: list[list[str]]


def api_model(struct: type[msgspec.Struct]) -> type[BaseModel]:
    """The OpenAPI/response model of a proto struct, so the REST contract has one definition.

    Decimals travel as strings (as every amount in the API does); enums keep their values.
    """
    fields: dict[str, Any] = {}
    for spec in msgspec.structs.fields(struct):
        members = typing.get_args(spec.type) if isinstance(spec.type, types.UnionType) else (spec.type,)
        mapped = tuple(str if member is Decimal else member for member in members)
        annotation = functools.reduce(operator.or_, mapped) if len(mapped) > 1 else mapped[0]
        fields[spec.name] = (annotation, ... if spec.required else spec.default)
    return pydantic.create_model(struct.__name__, **fields)


OrderView = api_model(proto_messages.OrderView)


class OrderList(BaseModel):
    orders: list[OrderView]
    next_cursor: str | None


class CancelResponse(BaseModel):
    order_id: str
    client_order_id: str
    status: str


class PositionView(BaseModel):
    venue: str
    symbol: str
    quantity: str
    average_entry_price: str
    realized_pnl: str
    updated_ns: int


class PositionList(BaseModel):
    positions: list[PositionView]


class TradingStateResponse(BaseModel):
    trading_state: str
    previous: str | None


class EmergencyStopResponse(BaseModel):
    degradation_level: str
    previous: str | None
    trading_state: str | None


class BreakerList(BaseModel):
    breakers: dict[str, Any]


class StrategyView(BaseModel):
    name: str
    component: str
    state: str
    component_state: str
    details: Any = None


class StrategyList(BaseModel):
    strategies: list[StrategyView]


class StrategyCommandResponse(BaseModel):
    strategy: str
    action: str
    status: str


class EventView(BaseModel):
    id: int
    stream: str
    stream_seq: int
    subject: str
    type: str
    message_id: str
    ts_event_ns: int
    payload: Any


class EventList(BaseModel):
    events: list[EventView]
    next_cursor: str | None


class AlertList(BaseModel):
    """`alerts`: open now (raised, not resolved), newest first; `recent`: the latest raise/resolve events."""

    alerts: list[dict[str, Any]]
    recent: list[dict[str, Any]] = []


class DeadLetterView(BaseModel):
    id: int
    consumer: str
    subject: str
    reason: str
    deliveries: int
    payload: str
    original_message_id: str | None
    status: str
    created_ns: int
    updated_ns: int


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetterView]
    next_cursor: str | None = None


class DeadLetterStats(BaseModel):
    total: int
    pending: int = 0
    by_consumer: dict[str, int]
    by_status: dict[str, int]
    by_subject: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    oldest_created_ns: int | None
    oldest_pending_created_ns: int | None = None


class DeadLetterRetryResult(BaseModel):
    """What a retry did to one dead letter.

    `outcome`: `retried` (re-published now), `already_retried` (nothing re-published: idempotent),
    `not_found`, or `failed` (see `message`; the letter stays PENDING).
    """

    id: int
    outcome: str
    subject: str | None = None
    retry_message_id: str | None = None
    message: str | None = None
    dead_letter: DeadLetterView | None = None


class DeadLetterBulkRetry(BaseModel):
    retried: int
    results: list[DeadLetterRetryResult]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope} for code in (400, 401, 403, 404, 409, 422, 503)
}

# --------------------------------------------------------------------------- helpers

ORDER_COLUMNS = (
    "client_order_id, idempotency_key, source, strategy, venue, symbol, side, type, quantity, price, stop_price, "
    "reduce_only, status, filled_quantity, average_price, venue_order_id, reason, created_ns, updated_ns"
)


def order_view(row: asyncpg.Record) -> dict[str, Any]:
    """An `orders` row as the API shows it (`proto.messages.OrderView`)."""
    fields = {key: row[key] for key in row.keys() if key != "idempotency_key"}
    view = msgspec.convert({**fields, "order_id": row["client_order_id"]}, proto_messages.OrderView)
    return {key: jsonable(value) for key, value in msgspec.to_builtins(view, builtin_types=(Decimal,)).items()}


def _payload(raw: Any) -> Any:
    return msgspec.json.decode(raw) if isinstance(raw, str | bytes) else raw


async def _load_order(gateway: Gateway, order_id: str) -> asyncpg.Record | None:
    return await pg_call(
        gateway.ctx.pool,
        lambda pool: pool.fetchrow(f"SELECT {ORDER_COLUMNS} FROM orders WHERE client_order_id = $1", order_id),
    )


# --------------------------------------------------------------------------- app


def create_app(gateway: Gateway) -> FastAPI:
    """Build the FastAPI app of one gateway."""
    ctx = gateway.ctx
    settings = ctx.settings
    app = FastAPI(
        title="Bulwark gateway",
        version="1.0",
        description="Operator API of the Bulwark trading system (SPEC §10).",
    )
    app.state.gateway = gateway
    app.state.ctx = ctx
    app.add_middleware(MetricsMiddleware, metrics=gateway.metrics)

    # ------------------------------------------------------------------ errors

    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 401: "unauthorized"}
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else code
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {
                "loc": [str(part) for part in error.get("loc", ())],
                "msg": str(error.get("msg")),
                "type": error.get("type"),
            }
            for error in exc.errors()
        ]
        if any(error["type"] == "json_invalid" for error in details):
            return JSONResponse(error_body("invalid_json", "request body is not valid JSON", details), status_code=400)
        return JSONResponse(error_body("validation_error", "request validation failed", details), status_code=422)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        ctx.log.exception("request_failed", exc, path=request.url.path)
        return JSONResponse(error_body("internal", "internal error"), status_code=500)

    # ------------------------------------------------------------------ auth

    def require(role: Role) -> Any:
        async def dependency(authorization: Annotated[str | None, Header()] = None) -> Principal:
            return authorize(authorization, role, gateway.tokens)

        return Depends(dependency)

    async def read_control(request: Request) -> ControlRequest:
        return parse_control_body(await request.body(), request.headers.get("content-type"))

    control_body = Depends(read_control)
    control_openapi: dict[str, Any] = {
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": ControlRequest.model_json_schema()}},
        }
    }

    viewer = require(Role.VIEWER)
    operator = require(Role.OPERATOR)

    # ------------------------------------------------------------------ health and metrics

    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, Any]:
        """The process is up."""
        return {"status": "live", "component": ctx.component}

    @app.get("/health/ready", tags=["health"], responses={503: {"model": ErrorEnvelope}})
    async def ready() -> JSONResponse:
        """Ready when the bus is connected and Postgres answers."""
        reasons: list[str] = []
        if not ctx.bus.connected:
            reasons.append("nats disconnected")
        if ctx.pool is None:
            reasons.append("postgres not connected")
        else:
            try:
                await asyncio.wait_for(ctx.pool.fetchval("SELECT 1"), gateway.config.ready_timeout_s)
            except adapters.PG_ERRORS as exc:
                reasons.append(f"postgres unreachable: {type(exc).__name__}")
        if reasons:
            body = error_body("not_ready", "; ".join(reasons), {"reasons": reasons})
            body.update(status="not_ready", reasons=reasons)
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ready", "reasons": []})

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus exposition."""
        for name, view in gateway.tracker.view(time.time_ns()).items():
            gateway.metrics.component_up.labels(name).set(0 if view.state == ComponentState.DOWN else 1)
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    dashboard_html = (resources.files("services.gateway") / "dashboard.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(dashboard_html)

    # ------------------------------------------------------------------ status

    @app.get("/v1/status", response_model=StatusResponse, responses=ERROR_RESPONSES, tags=["status"])
    async def status(_: Principal = viewer) -> dict[str, Any]:
        """Trading state, degradation, health, components, symbols, breakers and links."""
        components = {name: view.as_dict() for name, view in gateway.tracker.view(time.time_ns()).items()}
        trading, degradation, health, symbols, breakers, links, dependencies = await asyncio.gather(
            gateway.kv_json(subjects.KEY_TRADING_STATE),
            gateway.kv_json(subjects.KEY_DEGRADATION_LEVEL),
            gateway.kv_json(subjects.KEY_HEALTH),
            _symbols(gateway),
            gateway.kv_prefixed("breaker."),
            gateway.kv_prefixed("link."),
            gateway.dependencies(),
        )
        trading_state = _field(trading, "state")
        if trading_state is None:
            trading_state = await _trading_state_from_risk(gateway)
        return {
            "venues": venue_status(settings, components, links),
            "trading_state": trading_state,
            "degradation_level": _field(degradation, "level") or "NORMAL",
            "health": _field(health, "health") or "UNKNOWN",
            "components": components,
            "symbols": symbols,
            "breakers": breakers,
            "links": links,
            "dependencies": dependencies,
        }

    # ------------------------------------------------------------------ book

    @app.get("/v1/book/{symbol}", response_model=BookResponse, responses=ERROR_RESPONSES, tags=["market"])
    async def book(
        symbol: Annotated[str, Path(max_length=32)],
        depth: Annotated[int, Query(ge=1, le=1000)] = 20,
        _: Principal = viewer,
    ) -> dict[str, Any]:
        """The order book of a symbol from the state-builder (decimal strings)."""
        symbol = symbol.upper()
        if symbol not in settings.symbols:
            raise ApiError(404, "not_found", f"unknown symbol {symbol}", {"symbols": list(settings.symbols)})
        reply = await gateway.request_json(
            subjects.service_query(subjects.STATE_BUILDER, "book"),
            {"symbol": symbol, "depth": depth},
            gateway.config.request_timeout_s,
            subjects.STATE_BUILDER,
        )
        if isinstance(reply, dict) and "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            if error.get("code") == "not_found":
                raise ApiError(404, "not_found", error.get("message") or f"no book for {symbol}")
            raise unavailable(subjects.STATE_BUILDER, f"state-builder error: {error.get('message', error)}")
        return {
            "symbol": reply.get("symbol", symbol),
            "status": reply.get("status", "UNKNOWN"),
            "last_update_id": reply.get("last_update_id"),
            "bids": [[str(price), str(qty)] for price, qty in reply.get("bids", [])],
            "asks": [[str(price), str(qty)] for price, qty in reply.get("asks", [])],
        }

    # ------------------------------------------------------------------ orders

    @app.post(
        "/v1/orders",
        status_code=201,
        response_model=OrderResponse,
        responses={**ERROR_RESPONSES, 202: {"model": OrderResponse, "description": "not decided yet"}},
        tags=["orders"],
    )
    async def submit_order(
        body: OrderRequest,
        who: Principal = operator,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> JSONResponse:
        """Submit an order (requires `Idempotency-Key`; a duplicate returns the first response)."""
        if not idempotency_key or not idempotency_key.strip():
            raise ApiError(400, "missing_idempotency_key", "the Idempotency-Key header is required")
        key = idempotency_key.strip()
        if len(key) > 200:
            raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key is longer than 200 characters")
        if body.symbol not in settings.symbols:
            raise ApiError(
                422,
                "validation_error",
                "request validation failed",
                [{"loc": ["body", "symbol"], "msg": f"unknown symbol {body.symbol}", "type": "value_error"}],
            )
        body_fingerprint = fingerprint(body.canonical())
        verdict = await gateway.idempotency.begin(key, body_fingerprint)
        conflict = verdict_error(verdict)
        if conflict is not None:
            raise conflict
        if verdict.action == "replay" and verdict.response is not None:
            return JSONResponse(verdict.response, status_code=verdict.http_status or 201)
        try:
            http_status, response = await _submit(gateway, body, key, who)
        except BaseException:
            await gateway.idempotency.release(key)
            raise
        await gateway.idempotency.finish(key, body_fingerprint, http_status, response)
        gateway.metrics.orders_submitted.labels(response["status"]).inc()
        return JSONResponse(response, status_code=http_status)

    @app.get("/v1/orders/{order_id}", response_model=OrderView, responses=ERROR_RESPONSES, tags=["orders"])
    async def get_order(order_id: Annotated[str, Path(max_length=64)], _: Principal = viewer) -> dict[str, Any]:
        """One order from the `orders` projection, by order id (= client order id)."""
        row = await _load_order(gateway, order_id)
        if row is None:
            raise ApiError(404, "not_found", f"unknown order {order_id}")
        return order_view(row)

    @app.get("/v1/orders", response_model=OrderList, responses=ERROR_RESPONSES, tags=["orders"])
    async def list_orders(
        status: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        cursor: str | None = None,
        _: Principal = viewer,
    ) -> dict[str, Any]:
        """Orders, newest first, with keyset pagination."""
        wanted = parse_order_status(status)
        conditions: list[str] = []
        args: list[Any] = []
        if wanted is not None:
            args.append(wanted.value)
            conditions.append(f"status = ${len(args)}")
        if cursor:
            created_ns, coid = decode_cursor(cursor, (int, str))
            args.extend([created_ns, coid])
            conditions.append(f"(created_ns, client_order_id) < (${len(args) - 1}, ${len(args)})")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        args.append(limit + 1)
        query = (
            f"SELECT {ORDER_COLUMNS} FROM orders {where} "
            f"ORDER BY created_ns DESC, client_order_id DESC LIMIT ${len(args)}"
        )
        rows = await pg_call(ctx.pool, lambda pool: pool.fetch(query, *args))
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1]["created_ns"], page[-1]["client_order_id"]) if len(rows) > limit else None
        return {"orders": [order_view(row) for row in page], "next_cursor": next_cursor}

    @app.delete(
        "/v1/orders/{order_id}",
        status_code=202,
        response_model=CancelResponse,
        responses=ERROR_RESPONSES,
        tags=["orders"],
    )
    async def cancel_order(order_id: Annotated[str, Path(max_length=64)], who: Principal = operator) -> dict[str, Any]:
        """Ask for a cancel (`CancelOrder` on `cmd.order.cancel`)."""
        row = await _load_order(gateway, order_id)
        if row is None:
            raise ApiError(404, "not_found", f"unknown order {order_id}")
        if row["status"] in TERMINAL_ORDER_STATUSES:
            raise ApiError(409, "order_terminal", f"order is already {row['status']}", {"status": row["status"]})
        command = CancelOrder(client_order_id=order_id, operator=who.name, reason="operator cancel")
        await _publish(gateway, subjects.CMD_ORDER_CANCEL, command, msg_id=f"cancel:{order_id}")
        ctx.log.info("order_cancel_requested", client_order_id=order_id, operator=who.name)
        return {"order_id": order_id, "client_order_id": order_id, "status": OrderStatus.PENDING_CANCEL.value}

    @app.get("/v1/positions", response_model=PositionList, responses=ERROR_RESPONSES, tags=["orders"])
    async def positions(_: Principal = viewer) -> dict[str, Any]:
        """Positions from the `positions` projection (decimals as strings)."""
        rows = await pg_call(
            ctx.pool,
            lambda pool: pool.fetch(
                "SELECT venue, symbol, quantity, average_entry_price, realized_pnl, updated_ns FROM positions "
                "ORDER BY venue, symbol"
            ),
        )
        return {"positions": [{key: jsonable(row[key]) for key in row.keys()} for row in rows]}

    # ------------------------------------------------------------------ trading state

    async def _trading(action: str, who: Principal, reason: str) -> dict[str, Any]:
        reply = await gateway.request_json(
            subjects.service_query(subjects.RISK, action),
            {"operator": who.name, "reason": reason or f"operator {action}"},
            gateway.config.request_timeout_s,
            subjects.RISK,
        )
        _raise_for_risk_error(reply)
        ctx.log.info("trading_state_requested", action=action, operator=who.name, role=who.role.label, result=reply)
        return {"trading_state": reply.get("trading_state"), "previous": reply.get("previous")}

    @app.post(
        "/v1/trading/halt",
        response_model=TradingStateResponse,
        responses=ERROR_RESPONSES,
        tags=["trading"],
        openapi_extra=control_openapi,
    )
    async def halt(who: Principal = operator, body: ControlRequest = control_body) -> dict[str, Any]:
        """Halt trading (risk owns the state). Body optional: `{"reason"}` as JSON or form, any content type."""
        return await _trading("halt", who, body.reason)

    @app.post(
        "/v1/trading/resume",
        response_model=TradingStateResponse,
        responses=ERROR_RESPONSES,
        tags=["trading"],
        openapi_extra=control_openapi,
    )
    async def resume(who: Principal = operator, body: ControlRequest = control_body) -> dict[str, Any]:
        """Resume trading (risk validates and owns the state)."""
        return await _trading("resume", who, body.reason)

    @app.post(
        "/v1/emergency-stop",
        response_model=EmergencyStopResponse,
        responses=ERROR_RESPONSES,
        tags=["trading"],
        openapi_extra=control_openapi,
    )
    async def emergency_stop(who: Principal = operator, body: ControlRequest = control_body) -> dict[str, Any]:
        """Operator emergency stop: degradation level HARD_SHUTDOWN (left only by a manual restart) and a halt."""
        reason = body.reason or "operator emergency stop"
        previous = _field(await gateway.kv_json(subjects.KEY_DEGRADATION_LEVEL), "level")
        event = DegradationLevelChanged(
            previous=DegradationLevel(previous)
            if previous is not None and previous in DegradationLevel.__members__
            else None,
            current=DegradationLevel.HARD_SHUTDOWN,
            reason=f"{reason} (by {who.name})",
        )
        await _publish(gateway, subjects.EVT_DEGRADATION, event)
        record = {
            "level": DegradationLevel.HARD_SHUTDOWN.value,
            "reason": event.reason,
            "operator": who.name,
            "ts_ns": event.ts_event_ns,
        }
        try:
            await ctx.bus.kv_put(subjects.KEY_DEGRADATION_LEVEL, msgspec.json.encode(record))
        except BUS_ERRORS as exc:
            raise unavailable("nats", f"could not persist HARD_SHUTDOWN: {type(exc).__name__}: {exc}"[:300]) from exc
        ctx.log.error("emergency_stop", operator=who.name, reason=reason, action_taken="HARD_SHUTDOWN, halt")
        await _record_action(gateway, who, "emergency_stop", "system", reason)
        alert = AlertRaised(
            key=f"degradation:{DegradationLevel.HARD_SHUTDOWN.value}",  # the watchdog's key for a level's alert
            severity=AlertSeverity.P0,
            component=subjects.GATEWAY,
            title=f"emergency stop by {who.name}: HARD_SHUTDOWN",
            details={"reason": reason, "operator": who.name},
        )
        try:
            await ctx.bus.publish(subjects.EVT_ALERT_RAISED, alert)
        except BUS_ERRORS as exc:
            ctx.log.error("emergency_stop_alert_failed", error=str(exc)[:300])
        trading_state: str | None = None
        try:
            trading_state = (await _trading("halt", who, reason))["trading_state"]
        except ApiError as exc:  # the level is persisted; risk halts on its own when it sees it
            ctx.log.warning("emergency_stop_halt_failed", error=exc.message)
        return {
            "degradation_level": DegradationLevel.HARD_SHUTDOWN.value,
            "previous": previous,
            "trading_state": trading_state,
        }

    # ------------------------------------------------------------------ breakers

    @app.get("/v1/breakers", response_model=BreakerList, responses=ERROR_RESPONSES, tags=["trading"])
    async def breakers(_: Principal = viewer) -> dict[str, Any]:
        """Circuit breakers as persisted in the KV bucket (`breaker.<id>`)."""
        return {"breakers": await gateway.kv_prefixed("breaker.")}

    @app.post(
        "/v1/breakers/{breaker_id}/reset", responses=ERROR_RESPONSES, tags=["trading"], openapi_extra=control_openapi
    )
    async def reset_breaker(
        breaker_id: Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")],
        who: Principal = operator,
        body: ControlRequest = control_body,
    ) -> Any:
        """Manual breaker reset, answered by risk (`svc.risk.breaker_reset`); risk records the operator."""
        # A manual reset needs a reason (SPEC §4); risk refuses an empty one with a 400.
        reply = await gateway.request_json(
            subjects.service_query(subjects.RISK, "breaker_reset"),
            {"breaker": breaker_id, "operator": who.name, "reason": (body.reason or "").strip()},
            gateway.config.request_timeout_s,
            subjects.RISK,
        )
        _raise_for_risk_error(reply)
        ctx.log.info("breaker_reset_requested", breaker=breaker_id, operator=who.name)
        return reply

    # ------------------------------------------------------------------ strategies

    def _known_strategy(name: str) -> str:
        if name not in settings.strategies:
            raise ApiError(404, "not_found", f"unknown strategy {name}", {"strategies": list(settings.strategies)})
        return name

    @app.get("/v1/strategies", response_model=StrategyList, responses=ERROR_RESPONSES, tags=["strategies"])
    async def strategies(_: Principal = viewer) -> dict[str, Any]:
        """Every configured strategy with its persisted state."""
        items = []
        for name in settings.strategies:
            value = await gateway.kv_json(subjects.key_strategy(name))
            state = value.get("state") if isinstance(value, dict) else None
            component = subjects.strategy_component(name)
            items.append(
                {
                    "name": name,
                    "component": component,
                    "state": state or "UNKNOWN",
                    "component_state": gateway.component_state(component).value,
                    "details": value,
                }
            )
        return {"strategies": items}

    async def _strategy_command(name: str, action: str, who: Principal) -> dict[str, Any]:
        _known_strategy(name)
        if action == "enable":
            level = _field(await gateway.kv_json(subjects.KEY_DEGRADATION_LEVEL), "level")
            if level == DegradationLevel.HARD_SHUTDOWN.value:
                # SPEC §5: the trading services are stopped; only a manual restart leaves HARD_SHUTDOWN.
                raise ApiError(
                    409,
                    "hard_shutdown",
                    "HARD_SHUTDOWN: the trading services are stopped; a strategy cannot be enabled "
                    "until the system is restarted by hand",
                    {"degradation_level": level},
                )
        command_type = EnableStrategy if action == "enable" else DisableStrategy
        command = command_type(strategy=name, operator=who.name, reason=f"operator {action}")
        await _publish(gateway, subjects.cmd_strategy(name, action), command)
        ctx.log.info("strategy_command", strategy=name, action=action, operator=who.name)
        return {"strategy": name, "action": action, "status": "accepted"}

    @app.post(
        "/v1/strategies/{name}/enable",
        status_code=202,
        response_model=StrategyCommandResponse,
        responses=ERROR_RESPONSES,
        tags=["strategies"],
    )
    async def enable_strategy(name: str, who: Principal = operator) -> dict[str, Any]:
        """Enable a strategy (`EnableStrategy` on `cmd.strategy.<name>.enable`)."""
        return await _strategy_command(name, "enable", who)

    @app.post(
        "/v1/strategies/{name}/disable",
        status_code=202,
        response_model=StrategyCommandResponse,
        responses=ERROR_RESPONSES,
        tags=["strategies"],
    )
    async def disable_strategy(name: str, who: Principal = operator) -> dict[str, Any]:
        """Disable a strategy (`DisableStrategy` on `cmd.strategy.<name>.disable`)."""
        return await _strategy_command(name, "disable", who)

    # ------------------------------------------------------------------ audit, alerts

    @app.get("/v1/events", response_model=EventList, responses=ERROR_RESPONSES, tags=["audit"])
    async def events(
        event_type: Annotated[
            str | None, Query(alias="type", max_length=500, description="message type(s), comma separated")
        ] = None,
        component: Annotated[str | None, Query(max_length=64, description="payload `component`")] = None,
        symbol: Annotated[str | None, Query(max_length=32, description="payload `symbol`")] = None,
        subject: Annotated[str | None, Query(max_length=200, description="subject prefix, e.g. evt.order.")] = None,
        stream: Annotated[str | None, Query(max_length=32)] = None,
        correlation_id: Annotated[str | None, Query(max_length=200)] = None,
        operator_name: Annotated[str | None, Query(alias="operator", max_length=64)] = None,
        since_ns: Annotated[int | None, Query(ge=0, description="ts_event_ns >= since_ns")] = None,
        until_ns: Annotated[int | None, Query(ge=0, description="ts_event_ns < until_ns")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        cursor: str | None = None,
        _: Principal = viewer,
    ) -> dict[str, Any]:
        """The audit log (`audit_events`), newest first, filterable; keyset pagination by `next_cursor`."""
        conditions: list[str] = []
        args: list[Any] = []

        def param(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if event_type:
            types = [item.strip() for item in event_type.split(",") if item.strip()]
            conditions.append(f"type = ANY({param(types)}::text[])")
        for key, value in (
            ("component", component),
            ("symbol", symbol.upper() if symbol else None),
            ("correlation_id", correlation_id),
            ("operator", operator_name),
        ):
            if value:
                conditions.append(f"payload->>'{key}' = {param(value)}")
        if subject:
            conditions.append(f"starts_with(subject, {param(subject)})")
        if stream:
            conditions.append(f"stream = {param(stream.upper())}")
        if since_ns is not None:
            conditions.append(f"ts_event_ns >= {param(since_ns)}")
        if until_ns is not None:
            conditions.append(f"ts_event_ns < {param(until_ns)}")
        if cursor:
            (before_id,) = decode_cursor(cursor, (int,))
            conditions.append(f"id < {param(before_id)}")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        query = (
            "SELECT id, stream, stream_seq, subject, type, message_id, ts_event_ns, payload::text AS payload "
            f"FROM audit_events {where} ORDER BY id DESC LIMIT {param(limit + 1)}"
        )
        rows = await pg_call(ctx.pool, lambda pool: pool.fetch(query, *args))
        page = rows[:limit]
        items = [{**dict(row), "payload": _payload(row["payload"])} for row in page]
        return {"events": items, "next_cursor": encode_cursor(page[-1]["id"]) if len(rows) > limit else None}

    @app.get("/v1/events/stream", tags=["audit"], responses=ERROR_RESPONSES)
    async def event_stream(
        request: Request,
        event_type: Annotated[str | None, Query(alias="type", max_length=64)] = None,
        _: Principal = viewer,
    ) -> StreamingResponse:
        """Live `evt.>` messages as server-sent events (`event:` type, `data:` JSON)."""
        if not ctx.bus.connected:
            raise unavailable("nats", "the message bus is disconnected")
        queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=1000)

        async def on_message(msg: Msg) -> None:
            with contextlib.suppress(asyncio.QueueFull):  # a slow client loses events, never the gateway
                queue.put_nowait(msg)

        subscription = await ctx.bus.subscribe_core("evt.>", on_message)

        async def stream() -> AsyncIterator[str]:
            try:
                yield ": connected\n\n"
                while True:
                    try:
                        msg = await asyncio.wait_for(queue.get(), 15.0)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    kind = (msg.headers or {}).get(HEADER_TYPE) or _message_type(msg.data)
                    if event_type and kind != event_type:
                        continue
                    event_id = (msg.headers or {}).get(HEADER_MSG_ID, "")
                    yield f"event: {kind}\nid: {event_id}\ndata: {msg.data.decode()}\n\n"
            finally:
                with contextlib.suppress(*BUS_ERRORS):
                    await subscription.unsubscribe()

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    @app.get("/v1/alerts", response_model=AlertList, responses=ERROR_RESPONSES, tags=["audit"])
    async def alerts(
        recent: Annotated[int, Query(ge=0, le=500, description="how many recent raise/resolve events")] = 50,
        _: Principal = viewer,
    ) -> dict[str, Any]:
        """Open alerts (raised and not resolved since), newest first, and the recent alert history."""

        async def query(pool: asyncpg.Pool) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
            latest = await pool.fetch(
                "SELECT DISTINCT ON (payload->>'key') id, type, ts_event_ns, payload::text AS payload "
                "FROM audit_events WHERE type IN ('AlertRaised', 'AlertResolved') "
                "ORDER BY payload->>'key', id DESC"
            )
            history = await pool.fetch(
                "SELECT id, type, ts_event_ns, payload::text AS payload FROM audit_events "
                "WHERE type IN ('AlertRaised', 'AlertResolved') ORDER BY id DESC LIMIT $1",
                recent,
            )
            return latest, history

        latest, history = await pg_call(ctx.pool, query)
        active = [{**_payload(row["payload"]), "event_id": row["id"]} for row in latest if row["type"] == "AlertRaised"]
        active.sort(key=lambda alert: alert["event_id"], reverse=True)
        events_seen = [{**_payload(row["payload"]), "event_id": row["id"], "event": row["type"]} for row in history]
        return {"alerts": active, "recent": events_seen}

    # ------------------------------------------------------------------ dead letters

    @app.get("/v1/dlq", response_model=DeadLetterList, responses=ERROR_RESPONSES, tags=["dlq"])
    async def dead_letters(
        consumer: Annotated[str | None, Query(max_length=128)] = None,
        operation: Annotated[str | None, Query(max_length=200, description="consumer or subject prefix")] = None,
        subject: Annotated[str | None, Query(max_length=200, description="subject prefix")] = None,
        reason: Annotated[str | None, Query(max_length=200, description="substring, case-insensitive")] = None,
        status: Annotated[str | None, Query(max_length=16, description="PENDING or RETRIED")] = None,
        since_ns: Annotated[int | None, Query(ge=0)] = None,
        until_ns: Annotated[int | None, Query(ge=0)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        cursor: str | None = None,
        _: Principal = viewer,
    ) -> dict[str, Any]:
        """Dead letters, newest first, filterable by consumer/operation, subject, reason, status and
        time (`created_ns` in [since_ns, until_ns)); keyset pagination through `next_cursor`."""
        before_id = decode_cursor(cursor, (int,))[0] if cursor else None
        selection = DeadLetterFilter(
            consumer=consumer,
            operation=operation,
            subject=subject,
            reason=reason,
            status=parse_dead_letter_status(status),
            since_ns=since_ns,
            until_ns=until_ns,
            before_id=before_id,
        )
        args: list[Any] = []
        where = selection.where(args)
        args.append(limit + 1)
        query = f"SELECT {DLQ_COLUMNS} FROM dead_letters {where} ORDER BY id DESC LIMIT ${len(args)}"
        rows = await pg_call(ctx.pool, lambda pool: pool.fetch(query, *args))
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1]["id"]) if len(rows) > limit else None
        return {"dead_letters": [dict(row) for row in page], "next_cursor": next_cursor}

    @app.get("/v1/dlq/stats", response_model=DeadLetterStats, responses=ERROR_RESPONSES, tags=["dlq"])
    async def dead_letter_stats(_: Principal = viewer) -> dict[str, Any]:
        """Counts of dead letters by consumer, status, subject and kind of reason."""
        rows = await pg_call(
            ctx.pool,
            lambda pool: pool.fetch(
                "SELECT consumer, status, subject, split_part(reason, ':', 1) AS reason_class, count(*) AS n, "
                "min(created_ns) AS oldest FROM dead_letters GROUP BY consumer, status, subject, reason_class"
            ),
        )
        by: dict[str, dict[str, int]] = {"consumer": {}, "status": {}, "subject": {}, "reason": {}}
        for row in rows:
            for dimension, value in (
                ("consumer", row["consumer"]),
                ("status", row["status"]),
                ("subject", row["subject"]),
                ("reason", reason_class(row["reason_class"])),
            ):
                by[dimension][value] = by[dimension].get(value, 0) + row["n"]
        pending = [row for row in rows if row["status"] == "PENDING"]
        return {
            "total": sum(by["status"].values()),
            "pending": by["status"].get("PENDING", 0),
            "by_consumer": by["consumer"],
            "by_status": by["status"],
            "by_subject": by["subject"],
            "by_reason": by["reason"],
            "oldest_created_ns": min((row["oldest"] for row in rows), default=None),
            "oldest_pending_created_ns": min((row["oldest"] for row in pending), default=None),
        }

    @app.get("/v1/dlq/{letter_id}", response_model=DeadLetterView, responses=ERROR_RESPONSES, tags=["dlq"])
    async def dead_letter(letter_id: int, _: Principal = viewer) -> dict[str, Any]:
        """One dead letter with its payload."""
        row = await pg_call(
            ctx.pool, lambda pool: pool.fetchrow(f"SELECT {DLQ_COLUMNS} FROM dead_letters WHERE id = $1", letter_id)
        )
        if row is None:
            raise ApiError(404, "not_found", f"unknown dead letter {letter_id}")
        return dict(row)

    @app.post(
        "/v1/dlq/{letter_id}/retry", response_model=DeadLetterRetryResult, responses=ERROR_RESPONSES, tags=["dlq"]
    )
    async def retry_dead_letter(letter_id: int, who: Principal = operator) -> dict[str, Any]:
        """Re-publish a dead letter's payload to its original subject (new `Nats-Msg-Id`
        `dlq-retry:<id>`) and mark it RETRIED. Idempotent: a letter already retried is not
        re-published again (`outcome: already_retried`)."""
        result = await _retry_dead_letter(gateway, letter_id, who)
        if result["outcome"] == "not_found":
            raise ApiError(404, "not_found", f"unknown dead letter {letter_id}")
        if result["outcome"] == "failed":
            raise ApiError(409, "not_retriable", result["message"] or "cannot re-publish", {"id": letter_id})
        return result

    @app.post("/v1/dlq/retry", response_model=DeadLetterBulkRetry, responses=ERROR_RESPONSES, tags=["dlq"])
    async def retry_dead_letters(body: DeadLetterRetryRequest, who: Principal = operator) -> dict[str, Any]:
        """Retry many: explicit `ids`, or every PENDING letter matching a filter (oldest first, up to `limit`)."""
        selection = body.filter()
        if body.ids:
            ids = list(selection.ids)
        else:
            args: list[Any] = []
            where = selection.where(args)
            args.append(body.limit)
            query = f"SELECT id FROM dead_letters {where} ORDER BY id LIMIT ${len(args)}"
            ids = [row["id"] for row in await pg_call(ctx.pool, lambda pool: pool.fetch(query, *args))]
        results = []
        for letter_id in ids:
            try:
                results.append(await _retry_dead_letter(gateway, letter_id, who, audit=False))
            except ApiError as exc:
                if exc.status != 503:
                    raise
                # A dependency went down midway: say what was done and what was not.
                results.append({"id": letter_id, "outcome": "failed", "message": exc.message})
                results.extend(
                    {"id": rest, "outcome": "failed", "message": "not attempted"} for rest in ids[len(results) :]
                )
                break
        retried = [result["id"] for result in results if result["outcome"] == "retried"]
        await _record_action(
            gateway, who, "dlq_retry", ",".join(map(str, retried))[:500], "bulk retry", {"ids": retried}
        )
        return {"retried": len(retried), "results": results}

    @app.delete("/v1/dlq/{letter_id}", responses=ERROR_RESPONSES, tags=["dlq"])
    async def delete_dead_letter(letter_id: int, who: Principal = operator) -> dict[str, Any]:
        """Remove a dead letter (audited with who removed it and what it held)."""
        deleted = await pg_call(
            ctx.pool,
            lambda pool: pool.fetchrow(
                "DELETE FROM dead_letters WHERE id = $1 RETURNING id, consumer, subject, reason, original_message_id",
                letter_id,
            ),
        )
        if deleted is None:
            raise ApiError(404, "not_found", f"unknown dead letter {letter_id}")
        ctx.log.info("dead_letter_removed", id=letter_id, operator=who.name)
        await _record_action(gateway, who, "dlq_remove", str(letter_id), "operator removal", dict(deleted))
        return {"id": letter_id, "deleted": True}

    return app


# --------------------------------------------------------------------------- route helpers


def _field(value: Any, key: str) -> str | None:
    """`value[key]` as a string when `value` is a JSON object holding one, else None."""
    found = value.get(key) if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def _raise_for_risk_error(reply: Any) -> None:
    """Turn an `{"error": ...}` reply of risk into the matching API error."""
    if not isinstance(reply, dict) or "error" not in reply:
        return
    error = reply["error"] if isinstance(reply["error"], dict) else {}
    code = str(error.get("code", "risk_refused"))
    status = {"bad_request": 400, "not_found": 404}.get(code, 409)
    raise ApiError(status, code, str(error.get("message", "risk refused")), {"risk": error})


def _message_type(data: bytes) -> str:
    try:
        return type(decode(data)).__name__
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "unknown"


DLQ_COLUMNS = "id, consumer, subject, reason, deliveries, payload, original_message_id, status, created_ns, updated_ns"
NOT_RETRIABLE_PREFIXES = ("dlq.", "hb.", "svc.")


async def _retry_dead_letter(gateway: Gateway, letter_id: int, who: Principal, *, audit: bool = True) -> dict[str, Any]:
    """Re-publish one dead letter and mark it RETRIED, exactly once.

    The row is locked for the duration, so two concurrent retries re-publish once; the
    `Nats-Msg-Id` is derived from the row id, so a crash between the publish and the commit
    is de-duplicated by JetStream when the retry is repeated.

    Raises:
        ApiError: 503 when Postgres or the bus is down (nothing marked as retried).
    """
    ctx = gateway.ctx
    retry_message_id = f"dlq-retry:{letter_id}"

    async def retry(pool: asyncpg.Pool) -> dict[str, Any]:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(f"SELECT {DLQ_COLUMNS} FROM dead_letters WHERE id = $1 FOR UPDATE", letter_id)
            if row is None:
                return {"id": letter_id, "outcome": "not_found"}
            base = {"id": letter_id, "subject": row["subject"], "retry_message_id": retry_message_id}
            if row["status"] == "RETRIED":
                return {**base, "outcome": "already_retried", "dead_letter": dict(row)}
            if row["subject"].startswith(NOT_RETRIABLE_PREFIXES):
                message = f"subject {row['subject']} is not a persisted command or event"
                return {**base, "outcome": "failed", "message": message, "dead_letter": dict(row)}
            payload = row["payload"].encode()
            headers = {HEADER_MSG_ID: retry_message_id}
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                headers[HEADER_TYPE] = type(decode(payload)).__name__
            try:
                await ctx.bus.js.publish(row["subject"], payload, headers=headers)
            except NoStreamResponseError:
                message = f"no stream stores subject {row['subject']}"
                return {**base, "outcome": "failed", "message": message, "dead_letter": dict(row)}
            except BUS_ERRORS as exc:
                raise unavailable("nats", f"re-publish failed: {type(exc).__name__}: {exc}"[:300]) from exc
            updated = await conn.fetchrow(
                f"UPDATE dead_letters SET status = 'RETRIED', updated_ns = $2 WHERE id = $1 RETURNING {DLQ_COLUMNS}",
                letter_id,
                time.time_ns(),
            )
            return {**base, "outcome": "retried", "dead_letter": dict(updated) if updated else dict(row)}

    if not ctx.bus.connected:
        raise unavailable("nats", "the message bus is disconnected")
    result = await pg_call(ctx.pool, retry)
    if result["outcome"] == "retried":
        ctx.log.info("dead_letter_retried", id=letter_id, subject=result["subject"], operator=who.name)
        if audit:
            await _record_action(gateway, who, "dlq_retry", str(letter_id), "operator retry", {"ids": [letter_id]})
    return result


async def _record_action(
    gateway: Gateway, who: Principal, action: str, target: str, reason: str, details: dict[str, Any] | None = None
) -> None:
    """Publish `OperatorActionTaken` (audited by the watchdog). The action itself already happened,
    so a failure here is logged as an error, not answered to the operator as a failure."""
    event = OperatorActionTaken(
        operator=who.name,
        role=who.role.label,
        action=action,
        target=target,
        reason=reason,
        details={key: jsonable(value) for key, value in (details or {}).items()},
    )
    try:
        await gateway.ctx.bus.publish(subjects.evt_operator(action), event)
    except BUS_ERRORS as exc:
        gateway.ctx.log.error(
            "operator_action_not_audited", action=action, target=target, operator=who.name, error=str(exc)[:300]
        )


async def _publish(gateway: Gateway, subject: str, message: Any, *, msg_id: str | None = None) -> None:
    if not gateway.ctx.bus.connected:
        raise unavailable("nats", "the message bus is disconnected")
    try:
        await gateway.ctx.bus.publish(subject, message, msg_id=msg_id)
    except BUS_ERRORS as exc:
        raise unavailable("nats", f"publish failed: {type(exc).__name__}: {exc}"[:300]) from exc


async def _trading_state_from_risk(gateway: Gateway) -> str:
    """Risk's trading state when the KV record cannot be read; HALTED when risk cannot be asked
    either: with the bus or risk gone nothing is approved, so that is what trading is (FM-C6)."""
    try:
        reply = await gateway.request_json(
            subjects.service_query(subjects.RISK, "state"), {}, gateway.config.symbols_timeout_s, subjects.RISK
        )
    except ApiError:
        return TradingState.HALTED.value
    if isinstance(reply, dict):
        value = reply.get("trading_state") or reply.get("state")
        if isinstance(value, str):
            return value
    return TradingState.HALTED.value


def _symbol_status(value: Any) -> dict[str, Any]:
    value = value if isinstance(value, dict) else {}
    hot_state = value.get("hot_state") or value.get("status") or value.get("current") or "UNKNOWN"
    return {
        "hot_state": str(hot_state),
        "age_ms": value.get("age_ms"),
        "last_update_id": value.get("last_update_id"),
    }


async def _symbols(gateway: Gateway) -> dict[str, Any]:
    try:
        reply = await gateway.request_json(
            subjects.service_query(subjects.STATE_BUILDER, "symbols"),
            {},
            gateway.config.symbols_timeout_s,
            subjects.STATE_BUILDER,
        )
    except ApiError:
        reply = None
    if isinstance(reply, dict) and isinstance(reply.get("symbols"), dict):
        return {symbol: _symbol_status(value) for symbol, value in reply["symbols"].items()}
    symbols: dict[str, Any] = {}
    for symbol in gateway.ctx.settings.symbols:
        value = await gateway.kv_json(subjects.key_hot_state(symbol))
        status = _symbol_status(value)
        status["age_ms"] = None
        symbols[symbol] = status
    return symbols


def venue_status(settings: Settings, components: dict[str, Any], links: dict[str, Any]) -> dict[str, Any]:
    """`/v1/status` `venues`: every venue orders may go to, main first (FM-N6).

    `components` and `links` are the status's own (`<venue>.orders` is the order link a venue's
    position process reports).
    """
    venues: dict[str, Any] = {}
    for venue in settings.venues:
        component = subjects.position_component(venue, settings.venue)
        link = links.get(f"{venue}.{subjects.ORDER_LINK}")
        venues[venue] = {
            "role": "main" if venue == settings.venue else "backup",
            "order_link": _field(link, "state"),
            "order_link_reason": _field(link, "reason"),
            "position_component": component,
            "position_state": (components.get(component) or {}).get("state", ComponentState.DOWN.value),
        }
    return venues


async def _submit(gateway: Gateway, body: OrderRequest, key: str, who: Principal) -> tuple[int, dict[str, Any]]:
    """Publish `SubmitOrder` and wait briefly for a decisive outcome (FM-C9 checked first).

    Only the main venue's position process counts for FM-C9: an operator order is for the main
    venue (`BULWARK_VENUE`), and while only the backup venue's process (`position-<venue>`) is
    down, orders are accepted and wait on the durable log for whichever process trades them.
    """
    ctx = gateway.ctx
    if gateway.component_state(subjects.POSITION) == ComponentState.DOWN:
        raise unavailable(subjects.POSITION, "the position service is down; no orders until it is back (FM-C9)")
    if not ctx.bus.connected:
        raise unavailable("nats", "the message bus is disconnected")
    client_order_id = client_order_id_for(key)
    known = await _projected_order(gateway, client_order_id)
    if known is not None:
        # A retry after a gateway crash (FM-C8): the order is on the log and already processed.
        return 201, _order_response(body, client_order_id, known[0], known[1], known[2])
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()

    async def on_event(msg: Msg) -> None:
        try:
            message = decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        outcome = outcome_of(message, client_order_id)
        if outcome is not None:
            outcomes.put_nowait(outcome)

    subscriptions = []
    try:
        for subject in (f"evt.order.*.*.{body.symbol}", f"evt.fill.*.{body.symbol}"):
            subscriptions.append(await ctx.bus.subscribe_core(subject, on_event))
        command = SubmitOrder(
            client_order_id=client_order_id,
            idempotency_key=key,
            source=OrderSource.OPERATOR,
            symbol=body.symbol,
            side=body.side,
            order_type=body.type,
            quantity=body.quantity,
            venue=ctx.settings.venue,
            price=body.price,
            stop_price=body.stop_price,
            reduce_only=body.reduce_only,
            correlation_id=key,
        )
        await _publish(gateway, subjects.CMD_ORDER_SUBMIT, command, msg_id=client_order_id)
        ctx.log.info("order_submitted", client_order_id=client_order_id, symbol=body.symbol, operator=who.name)
        outcome: Outcome | None = None
        deadline = asyncio.get_running_loop().time() + gateway.config.outcome_timeout_s
        while outcome is None or not is_settled(outcome):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                outcome = await asyncio.wait_for(outcomes.get(), remaining)
            except TimeoutError:
                break
    except BUS_ERRORS as exc:
        raise unavailable("nats", f"bus failure: {type(exc).__name__}: {exc}"[:300]) from exc
    finally:
        for subscription in subscriptions:
            with contextlib.suppress(*BUS_ERRORS):
                await subscription.unsubscribe()

    status = outcome.status if outcome is not None else OrderStatus.PENDING_SUBMISSION
    filled = outcome.filled_quantity if outcome is not None and outcome.filled_quantity is not None else Decimal(0)
    reason = outcome.reason if outcome is not None else None
    if outcome is None or not is_settled(outcome):
        projected = await _projected_order(gateway, client_order_id)
        if projected is not None:
            status, filled, reason = projected[0], projected[1], projected[2] or reason
            outcome = outcome or Outcome(status=status)
    response = _order_response(body, client_order_id, status, filled, reason)
    return (201 if outcome is not None else 202), response


async def _projected_order(gateway: Gateway, client_order_id: str) -> tuple[OrderStatus, Decimal, str | None] | None:
    """(status, filled, reason) from the `orders` projection once it is past submission, else None.

    The projection is optional here: Postgres being down just means "not known yet".
    """
    try:
        row = await _load_order(gateway, client_order_id)
    except ApiError:
        return None
    if row is None or row["status"] in (OrderStatus.PENDING_SUBMISSION, OrderStatus.SUBMITTED):
        return None
    try:
        status = OrderStatus(row["status"])
    except ValueError:
        gateway.ctx.log.warning("order_status_unknown_value", client_order_id=client_order_id, status=row["status"])
        return None
    return status, row["filled_quantity"], row["reason"]


def _order_response(
    body: OrderRequest, client_order_id: str, status: OrderStatus, filled: Decimal, reason: str | None
) -> dict[str, Any]:
    response = OrderResponse(
        order_id=client_order_id,
        client_order_id=client_order_id,
        status=status,
        symbol=body.symbol,
        side=body.side,
        type=body.type,
        quantity=jsonable(body.quantity),
        filled_quantity=jsonable(Decimal(filled)),
        price=jsonable(body.price) if body.price is not None else None,
        reason=reason,
    )
    return response.model_dump(mode="json")

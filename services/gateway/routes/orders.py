"""Orders and positions: submit (idempotent), read, list and cancel orders; list positions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse

from proto import subjects
from proto.enums import TERMINAL_ORDER_STATUSES, OrderStatus
from proto.messages import CancelOrder, SymbolsReply
from services.gateway import marks, queries
from services.gateway.api_models import (
    ERROR_RESPONSES,
    CancelResponse,
    OrderList,
    OrderRequest,
    OrderResponse,
    OrderView,
    PositionList,
)
from services.gateway.auth import Principal
from services.gateway.dependencies import OPERATOR, VIEWER, GatewayDep
from services.gateway.domain import (
    decode_cursor,
    encode_cursor,
    fingerprint,
    jsonable,
    parse_order_status,
    request_key,
    verdict_error,
)
from services.gateway.errors import ApiError
from services.gateway.routes.status import quick_query
from services.gateway.submission import submit

router = APIRouter(tags=["orders"])


@router.post(
    "/v1/orders",
    status_code=201,
    response_model=OrderResponse,
    responses={**ERROR_RESPONSES, 202: {"model": OrderResponse, "description": "not decided yet"}},
)
async def submit_order(
    gateway: GatewayDep,
    body: OrderRequest,
    who: Principal = OPERATOR,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    """Submit an order (requires `Idempotency-Key`; a duplicate returns the first response)."""
    if not idempotency_key or not idempotency_key.strip():
        raise ApiError(400, "missing_idempotency_key", "the Idempotency-Key header is required")
    key = request_key(idempotency_key, gateway.ids)
    if body.symbol not in gateway.ctx.settings.symbols:
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
        http_status, response = await submit(gateway, body, key, who)
    except BaseException:
        await gateway.idempotency.release(key)
        raise
    await gateway.idempotency.finish(key, body_fingerprint, http_status, response)
    gateway.metrics.orders_submitted.labels(response["status"]).inc()
    return JSONResponse(response, status_code=http_status)


@router.get("/v1/orders/{order_id}", response_model=OrderView, responses=ERROR_RESPONSES)
async def get_order(
    gateway: GatewayDep, order_id: Annotated[str, Path(max_length=64)], _: Principal = VIEWER
) -> dict[str, Any]:
    """One order from the `orders` projection, by order id (= client order id)."""
    row = await queries.load_order(gateway.ctx.pool, order_id)
    if row is None:
        raise ApiError(404, "not_found", f"unknown order {order_id}")
    return queries.order_view(row)


@router.get("/v1/orders", response_model=OrderList, responses=ERROR_RESPONSES)
async def list_orders(
    gateway: GatewayDep,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
    _: Principal = VIEWER,
) -> dict[str, Any]:
    """Orders, newest first, with keyset pagination."""
    wanted = parse_order_status(status)
    before: tuple[int, str] | None = None
    if cursor:
        created_ns, coid = decode_cursor(cursor, (int, str))
        before = (created_ns, coid)
    rows = await queries.list_orders(gateway.ctx.pool, wanted, before, limit + 1)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]["created_ns"], page[-1]["client_order_id"]) if len(rows) > limit else None
    return {"orders": [queries.order_view(row) for row in page], "next_cursor": next_cursor}


@router.delete("/v1/orders/{order_id}", status_code=202, response_model=CancelResponse, responses=ERROR_RESPONSES)
async def cancel_order(
    gateway: GatewayDep,
    order_id: Annotated[str, Path(max_length=64)],
    who: Principal = OPERATOR,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", description="optional: repeats with the same key are de-duplicated"),
    ] = None,
) -> dict[str, Any]:
    """Ask for a cancel (`CancelOrder` on `cmd.order.cancel`).

    Idempotent per request, not per order: a cancel asked again after one was refused or lost acts
    again; a repeat of the same request (same `Idempotency-Key`) is de-duplicated by the bus.
    """
    key = request_key(idempotency_key, gateway.ids)
    row = await queries.load_order(gateway.ctx.pool, order_id)
    if row is None:
        raise ApiError(404, "not_found", f"unknown order {order_id}")
    if row["status"] in TERMINAL_ORDER_STATUSES:
        raise ApiError(409, "order_terminal", f"order is already {row['status']}", {"status": row["status"]})
    command = CancelOrder(client_order_id=order_id, operator=who.name, reason="operator cancel")
    await gateway.publish(subjects.CMD_ORDER_CANCEL, command, msg_id=f"cancel:{order_id}:{key}")
    gateway.ctx.log.info("order_cancel_requested", client_order_id=order_id, operator=who.name)
    return {"order_id": order_id, "client_order_id": order_id, "status": OrderStatus.PENDING_CANCEL.value}


@router.get("/v1/positions", response_model=PositionList, responses=ERROR_RESPONSES)
async def positions(gateway: GatewayDep, _: Principal = VIEWER) -> dict[str, Any]:
    """Positions from the `positions` projection (decimals as strings), each with the symbol's mark
    now and its unrealized PnL (`marks`; null when the state-builder does not answer)."""
    rows = await queries.list_positions(gateway.ctx.pool)
    hot = None
    if rows:  # only an open book needs pricing; without the state-builder the marks stay null
        hot = await quick_query(gateway, subjects.SVC_STATE_BUILDER_SYMBOLS, subjects.STATE_BUILDER, SymbolsReply)
    return {
        "positions": [
            {**{key: jsonable(row[key]) for key in row.keys()}, **marks.position_marks(dict(row), hot)} for row in rows
        ]
    }

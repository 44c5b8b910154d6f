"""The audit trail: `/v1/events` (the `audit_events` log, filtered and paged), `/v1/events/stream`
(live `evt.>` as server-sent events) and `/v1/alerts` (open alerts and their recent history)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from nats.aio.msg import Msg

from libs.bounds import INT64_MAX
from libs.bus import HEADER_MSG_ID, HEADER_TYPE
from libs.runbooks import runbook_url
from proto import subjects
from proto.codec import decode
from services.gateway import queries
from services.gateway.api_models import ERROR_RESPONSES, JSON_ERROR_RESPONSES, AlertList, EventList
from services.gateway.auth import Principal
from services.gateway.context import BUS_ERRORS
from services.gateway.dependencies import VIEWER, GatewayDep
from services.gateway.domain import decode_cursor, encode_cursor

router = APIRouter(tags=["audit"])

KEEP_ALIVE_S = 15.0
"""A comment line this often keeps proxies from closing a quiet event stream."""


@router.get("/v1/events", response_model=EventList, responses=ERROR_RESPONSES)
async def events(
    gateway: GatewayDep,
    event_type: Annotated[
        str | None, Query(alias="type", max_length=500, description="message type(s), comma separated")
    ] = None,
    component: Annotated[str | None, Query(max_length=64, description="payload `component`")] = None,
    symbol: Annotated[str | None, Query(max_length=32, description="payload `symbol`")] = None,
    subject: Annotated[str | None, Query(max_length=200, description="subject prefix, e.g. evt.order.")] = None,
    stream: Annotated[str | None, Query(max_length=32)] = None,
    correlation_id: Annotated[str | None, Query(max_length=200)] = None,
    operator_name: Annotated[str | None, Query(alias="operator", max_length=64)] = None,
    since_ns: Annotated[int | None, Query(ge=0, le=INT64_MAX, description="ts_event_ns >= since_ns")] = None,
    until_ns: Annotated[int | None, Query(ge=0, le=INT64_MAX, description="ts_event_ns < until_ns")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
    _: Principal = VIEWER,
) -> dict[str, Any]:
    """The audit log (`audit_events`), newest first, filterable; keyset pagination by `next_cursor`."""
    selection = queries.AuditEventFilter(
        types=tuple(item.strip() for item in event_type.split(",") if item.strip()) if event_type else (),
        component=component,
        symbol=symbol.upper() if symbol else None,
        correlation_id=correlation_id,
        operator=operator_name,
        subject=subject,
        stream=stream.upper() if stream else None,
        since_ns=since_ns,
        until_ns=until_ns,
        before_id=decode_cursor(cursor, (int,))[0] if cursor else None,
    )
    rows = await queries.list_audit_events(gateway.ctx.pool, selection, limit + 1)
    page = rows[:limit]
    items = [{**dict(row), "payload": queries.json_column(row["payload"])} for row in page]
    return {"events": items, "next_cursor": encode_cursor(page[-1]["id"]) if len(rows) > limit else None}


class EventStreamResponse(StreamingResponse):
    """Server-sent events: documented as `text/event-stream` in the OpenAPI document."""

    media_type = "text/event-stream"


@router.get(
    "/v1/events/stream",
    response_class=EventStreamResponse,
    responses={
        **JSON_ERROR_RESPONSES,
        200: {
            "description": "server-sent events: `event:` the message type, `id:` its message id, "
            "`subject:` the subject it was published on, `data:` its JSON",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def event_stream(
    gateway: GatewayDep,
    event_type: Annotated[str | None, Query(alias="type", max_length=64)] = None,
    _: Principal = VIEWER,
) -> EventStreamResponse:
    """Live `evt.>` messages as server-sent events (`event:` type, `id:` message id, `subject:` the
    subject, `data:` JSON). `subject` is an extra field: a standard SSE client ignores it."""
    gateway.require_bus()
    queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=1000)

    async def on_message(msg: Msg) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a slow client loses events, never the gateway
            queue.put_nowait(msg)

    subscription = await gateway.ctx.bus.subscribe_core(subjects.EVT_ALL, on_message)

    async def stream() -> AsyncIterator[str]:
        try:
            yield ": connected\n\n"
            while True:
                try:
                    msg = await asyncio.wait_for(queue.get(), KEEP_ALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                kind = (msg.headers or {}).get(HEADER_TYPE) or _message_type(msg.data)
                if event_type and kind != event_type:
                    continue
                event_id = (msg.headers or {}).get(HEADER_MSG_ID, "")
                yield sse_frame(kind, event_id, msg.subject, msg.data)
        finally:
            with contextlib.suppress(*BUS_ERRORS):
                await subscription.unsubscribe()

    return EventStreamResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@router.get("/v1/alerts", response_model=AlertList, responses=ERROR_RESPONSES)
async def alerts(
    gateway: GatewayDep,
    recent: Annotated[int, Query(ge=0, le=500, description="how many recent raise/resolve events")] = 50,
    _: Principal = VIEWER,
) -> dict[str, Any]:
    """Open alerts (raised and not resolved since), newest first, and the recent alert history."""
    latest, history = await queries.alert_events(gateway.ctx.pool, recent)
    active = [
        {**queries.json_column(row["payload"]), "event_id": row["id"]} for row in latest if row["type"] == "AlertRaised"
    ]
    for alert in active:  # the operator's page for each open alert (`libs.runbooks`), as the sinks show it
        base = gateway.ctx.settings.alert_runbook_base_url
        alert["runbook_url"] = alert.get("runbook_url") or runbook_url(str(alert.get("key", "")), base)
    active.sort(key=lambda alert: alert["event_id"], reverse=True)
    events_seen = [
        {**queries.json_column(row["payload"]), "event_id": row["id"], "event": row["type"]} for row in history
    ]
    return {"alerts": active, "recent": events_seen}


def sse_frame(kind: str, event_id: str, subject: str, data: bytes) -> str:
    """One server-sent event. A subject is a NATS token string (no line breaks), but the frame must
    stay one event whatever arrives, so every field is kept to one line."""
    one_line = [value.replace("\r", " ").replace("\n", " ") for value in (kind, event_id, subject)]
    body = data.decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\ndata: ")
    return f"event: {one_line[0]}\nid: {one_line[1]}\nsubject: {one_line[2]}\ndata: {body}\n\n"


def _message_type(data: bytes) -> str:
    try:
        return type(decode(data)).__name__
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "unknown"

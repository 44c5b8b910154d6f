"""The HTTP contract of the gateway as pydantic models: request bodies, response bodies and the
error envelope, so the OpenAPI document shows every shape (SPEC §10).

Request models validate and normalise what an operator sends; response models document what
the routes answer. Orders are shown with `proto.messages.OrderView`, mapped by `api_model`.
"""

from __future__ import annotations

import functools
import json
import operator
import types
import typing
import urllib.parse
from decimal import Decimal
from http import HTTPStatus
from typing import Any

import msgspec
import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from libs.bounds import INT64_MAX, check_json_depth
from proto import messages as proto_messages
from proto.enums import OrderStatus, OrderType, Side
from services.gateway.domain import MAX_BULK_RETRY, decimal_str
from services.gateway.errors import ApiError
from services.gateway.fields import Amount, Int64Id, Text
from services.gateway.queries import DeadLetterFilter

# --------------------------------------------------------------------------- requests


class OrderRequest(BaseModel):
    """Body of `POST /v1/orders`; decimals as strings."""

    model_config = ConfigDict(extra="forbid")

    symbol: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9]+$", examples=["BTCUSDT"])
    side: Side
    type: OrderType
    quantity: Amount = Field(gt=0, examples=["0.01"])
    price: Amount | None = Field(default=None, gt=0, examples=["65000.5"])
    stop_price: Amount | None = Field(default=None, gt=0)
    reduce_only: bool = False

    @field_validator("symbol")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _prices_for_type(self) -> OrderRequest:
        if self.type == OrderType.LIMIT and self.price is None:
            raise ValueError("a LIMIT order needs a price")
        if self.type == OrderType.STOP_MARKET and self.stop_price is None:
            raise ValueError("a STOP_MARKET order needs a stop_price")
        return self

    def canonical(self) -> dict[str, Any]:
        """The request in a normal form: equal orders give equal dicts (`"1.0"` == `"1"`)."""
        return {
            "symbol": self.symbol,
            "side": self.side.value,
            "type": self.type.value,
            "quantity": decimal_str(self.quantity),
            "price": decimal_str(self.price),
            "stop_price": decimal_str(self.stop_price),
            "reduce_only": self.reduce_only,
        }


class ControlRequest(BaseModel):
    """Optional body of halt, resume, emergency stop and breaker reset: why the operator acts."""

    model_config = ConfigDict(extra="forbid")
    reason: Text = Field(default="", max_length=500)


def parse_control_body(raw: bytes, content_type: str | None) -> ControlRequest:
    """Read a control body whatever `Content-Type` the client sent (see `parse_body`)."""
    return parse_body(raw, content_type, ControlRequest)


Body = typing.TypeVar("Body", bound=BaseModel)


def parse_body(raw: bytes, content_type: str | None, model: type[Body]) -> Body:
    """Read an optional action body as `model` whatever `Content-Type` the client sent.

    `curl -d '{"reason": "x"}'` sends `application/x-www-form-urlencoded`; an operator in a hurry
    must not get a 422 for that. Accepted: no body, JSON (any or no content type) and a form with
    a `reason` field.

    Raises:
        ApiError: 415 for multipart bodies, 400 for a body that is neither JSON nor a form,
            422 for unknown fields or a reason that is too long.
    """
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return model()
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type.startswith("multipart/"):
        raise ApiError(415, "unsupported_media_type", 'send JSON like {"reason": "..."} (or no body)')
    data: Any
    if media_type == "application/x-www-form-urlencoded" and not text.startswith("{"):
        form = urllib.parse.parse_qs(text, keep_blank_values=True)
        data = {key: values[-1] for key, values in form.items()}
    else:
        try:
            check_json_depth(text, "body")  # before the recursive parser, which would overflow
            data = json.loads(text)
        except ValueError as exc:  # BoundsError included
            raise ApiError(
                400, "invalid_json", "request body is not valid JSON", {"expected": {"reason": "..."}}
            ) from exc
    if data is None:
        return model()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            {"loc": ["body", *(str(part) for part in error["loc"])], "msg": error["msg"], "type": error["type"]}
            for error in exc.errors()
        ]
        raise ApiError(422, "validation_error", "request validation failed", details) from exc


class DeadLetterRetryRequest(BaseModel):
    """Body of `POST /v1/dlq/retry`: explicit ids, or a filter over PENDING dead letters.

    An empty filter is refused unless `all` is true, so nobody re-publishes the whole queue by accident.
    """

    model_config = ConfigDict(extra="forbid")
    ids: list[Int64Id] = Field(default_factory=list, max_length=MAX_BULK_RETRY)
    consumer: Text | None = Field(default=None, max_length=128)
    operation: Text | None = Field(default=None, max_length=200)
    reason: Text | None = Field(default=None, max_length=200)
    since_ns: int | None = Field(default=None, ge=0, le=INT64_MAX)
    until_ns: int | None = Field(default=None, ge=0, le=INT64_MAX)
    limit: int = Field(default=100, ge=1, le=MAX_BULK_RETRY)
    all: bool = False

    @model_validator(mode="after")
    def _something_selected(self) -> DeadLetterRetryRequest:
        narrowed = (self.consumer, self.operation, self.reason, self.since_ns, self.until_ns)
        if not self.ids and not self.all and all(value is None for value in narrowed):
            raise ValueError(
                'select dead letters: "ids", a filter (consumer, operation, reason, since_ns, until_ns) or "all": true'
            )
        return self

    def filter(self) -> DeadLetterFilter:
        """The selection as a filter (explicit ids select any status; a filter only PENDING ones)."""
        if self.ids:
            return DeadLetterFilter(ids=tuple(dict.fromkeys(self.ids)))
        return DeadLetterFilter(
            consumer=self.consumer,
            operation=self.operation,
            reason=self.reason,
            since_ns=self.since_ns,
            until_ns=self.until_ns,
            status="PENDING",
        )


# --------------------------------------------------------------------------- responses


class OrderResponse(BaseModel):
    """Answer of `POST /v1/orders`."""

    order_id: str
    client_order_id: str
    status: OrderStatus
    symbol: str
    side: Side
    type: OrderType
    quantity: str
    filled_quantity: str
    price: str | None = None
    reason: str | None = None


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
    metrics_url: str | None = None
    restarts: int = 0
    """Processes of the component replaced (restarted, or a standby took over) since `restarts_since_ns`,
    as the gateway heard them on the heartbeats."""
    last_restart_ns: int | None = None
    """Start (UTC ns) of the process that replaced the last one gone; null: none seen."""
    started_ns: int | None = None
    """Start (UTC ns) of the process heard last; null before its first heartbeat."""
    restarts_since_ns: int | None = None
    """Since when restarts are counted (the gateway's own start)."""


class EntryBlockerView(BaseModel):
    """One reason a new entry is not allowed now: the `gate` that blocks it (`trading_state`, `breaker`,
    `dependency`, `link`, `degradation`, `hot_state`, `order_link`, `position`, `lease`,
    `reconciliation`, `preflight`, `risk`), the reason an order refused for it gets, and since when
    (UTC ns; null when not known)."""

    gate: str
    reason: str
    since_ns: int | None = None


class VenueEntryStatus(BaseModel):
    """Whether a new entry in the symbol could go out on this venue now, and every reason it cannot."""

    can_enter: bool
    blocked_by: list[EntryBlockerView] = []


class SymbolStatus(BaseModel):
    can_enter: bool | None = None
    """Would a new entry be allowed now on the venue it goes to (`entry_venue`)? Risk's own checks
    (`svc.risk.entry_gates`) plus the venue's position process; false when risk does not answer."""
    blocked_by: list[EntryBlockerView] = []
    """Every reason it is not, each with since when."""
    entry_venue: str | None = None
    venues: dict[str, VenueEntryStatus] = {}
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
    mode: str = "LIVE"
    """`PAPER`: its orders are filled by the paper simulator against its live book, never sent to it."""


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
    preflight: dict[str, Any] | None = None
    """The main venue's latest preflight (`venue`, `ok`, `checks`: name, ok, message); null before the first."""
    mode: str = "LIVE"
    """`PAPER` when the system trades on paper (`bulwark up --paper`): no order reaches the venue."""
    paper: bool = False


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
    mark_price: str | None = None
    """The symbol's mark now (state-builder): the venue's mark price, else the book's mid; null when
    the state-builder does not answer or has no price."""
    mark_source: str | None = None
    """`mark_price` (the venue's) or `book_mid`; null without a mark."""
    unrealized_pnl: str | None = None
    """`(mark_price - average_entry_price) x quantity` (quantity signed); `0` when flat, null without a mark."""


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
    mode: str = "live"
    """Where its orders go: `live` (the venue) or `paper` (the paper order link)."""
    crashes_in_window: int | None = None
    """Crashes inside the FM-C2 window (`crash_window_s`; more than 3 fail the strategy): the running
    process's own count from its heartbeat, else its persisted crash history; null when neither is known."""
    crash_window_s: int = 600
    last_crash_ns: int | None = None
    """The latest crash in the persisted history (UTC ns); null: none in the window."""
    restarts: int = 0
    """Processes of the strategy replaced since the gateway started (see `/v1/status` components)."""
    pid: int | None = None
    """The process heard last on its heartbeat; null: never heard."""


class StrategyList(BaseModel):
    strategies: list[StrategyView]


class StrategyCommandResponse(BaseModel):
    strategy: str
    action: str
    status: str
    mode: str | None = None
    """An enable's order mode: `live` or `paper`."""


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


ERROR_CODES = (400, 401, 403, 404, 408, 409, 413, 414, 422, 429, 503)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {code: {"model": ErrorEnvelope} for code in ERROR_CODES}
JSON_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {
        "description": HTTPStatus(code).phrase,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
    }
    for code in ERROR_CODES
}
"""The error answers of a route whose own answer is not JSON (the event stream): FastAPI documents a
`model` response in the route's media type, but every error is an `ErrorEnvelope` in JSON."""


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its `$defs` written in place, for an `openapi_extra` request body
    (FastAPI does not move those into `components`, so a `#/$defs/...` reference would not resolve)."""
    schema = model.model_json_schema()
    definitions: dict[str, Any] = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/$defs/"):
                rest = {key: inline(value) for key, value in node.items() if key != "$ref"}
                return {**inline(definitions[reference.removeprefix("#/$defs/")]), **rest}
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return dict(inline(schema))

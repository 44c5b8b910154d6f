"""Pure rules of the gateway: roles, request models and validation, idempotency fingerprints,
pagination cursors, and how order events map onto the status an operator sees.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import urllib.parse
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from libs.decimals import plain
from libs.settings import Settings
from proto.enums import OrderStatus, OrderType, Side
from proto.envelope import Message
from proto.messages import (
    OrderAccepted,
    OrderCanceled,
    OrderDenied,
    OrderFilled,
    OrderRejected,
    OrderStatusUnknown,
)

# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered as `{"error": {"code", "message", "details"}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details if details is not None else {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON error envelope."""
        return error_body(self.code, self.message, self.details)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The error envelope every non-2xx answer uses."""
    return {"error": {"code": code, "message": message, "details": details if details is not None else {}}}


RETRY_AFTER_S = 5


def unavailable(dependency: str, message: str, *, reason: str | None = None) -> ApiError:
    """503 for a dependency that is down (with `Retry-After`); `reason` is the underlying error."""
    details: dict[str, Any] = {"dependency": dependency}
    if reason is not None:
        details["reason"] = reason
    return ApiError(
        503,
        "dependency_unavailable",
        message,
        details,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


# --------------------------------------------------------------------------- auth


class Role(IntEnum):
    """Roles by rank: a higher role can do everything a lower one can."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a name recorded on every action, and the role that limits what they may do."""

    name: str
    role: Role


TOKEN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def parse_api_tokens(spec: str) -> dict[str, Principal]:
    """Parse `BULWARK_API_TOKENS`: `name:role:token` entries, comma separated.

    The token is everything after the second colon, so it may itself contain colons.

    Raises:
        ValueError: an entry is malformed, names an unknown role, or repeats a token.
    """
    tokens: dict[str, Principal] = {}
    for index, raw in enumerate(item.strip() for item in spec.split(",")):
        if not raw:
            continue
        name, _, rest = raw.partition(":")
        role_name, _, token = rest.partition(":")
        if not TOKEN_NAME_PATTERN.match(name) or not token:
            raise ValueError(f"BULWARK_API_TOKENS entry {index + 1}: expected name:role:token")
        try:
            role = Role[role_name.strip().upper()]
        except KeyError as exc:
            raise ValueError(f"BULWARK_API_TOKENS entry {index + 1}: unknown role {role_name!r}") from exc
        if token in tokens:
            raise ValueError(f"BULWARK_API_TOKENS entry {index + 1}: token used twice")
        tokens[token] = Principal(name, role)
    return tokens


class TokenTable:
    """Every bearer token the gateway accepts: the role tokens (named after their role) and the
    named tokens of `BULWARK_API_TOKENS`. Built once; comparisons are constant-time."""

    def __init__(self, settings: Settings) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        for configured, role in (
            (settings.admin_token, Role.ADMIN),
            (settings.operator_token, Role.OPERATOR),
            (settings.viewer_token, Role.VIEWER),
        ):
            if configured:
                self._entries.append((configured.encode(), Principal(role.label, role)))
        for token, principal in parse_api_tokens(settings.api_tokens).items():
            self._entries.append((token.encode(), principal))

    def lookup(self, token: str) -> Principal | None:
        """The principal a bearer token identifies, or None (empty configured tokens never match)."""
        candidate = token.encode()
        found: Principal | None = None
        for configured, principal in self._entries:
            # Check every entry (no early exit) so the answer time does not tell which one matched.
            if hmac.compare_digest(configured, candidate) and found is None:
                found = principal
        return found


def role_for_token(token: str, settings: Settings) -> Role | None:
    """The role a bearer token grants, or None."""
    principal = TokenTable(settings).lookup(token)
    return principal.role if principal is not None else None


def authorize(authorization: str | None, required: Role, tokens: TokenTable | Settings) -> Principal:
    """Check an `Authorization` header against the required role.

    Raises:
        ApiError: 401 when the token is missing or unknown, 403 when its role is too low.
    """
    table = tokens if isinstance(tokens, TokenTable) else TokenTable(tokens)
    if not authorization:
        raise ApiError(401, "unauthorized", "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "unauthorized", "expected 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
        )
    principal = table.lookup(token.strip())
    if principal is None:
        raise ApiError(401, "unauthorized", "invalid token", headers={"WWW-Authenticate": "Bearer"})
    if principal.role < required:
        raise ApiError(
            403,
            "forbidden",
            f"requires role {required.label}",
            {"role": principal.role.label, "required": required.label},
        )
    return principal


# --------------------------------------------------------------------------- orders


class OrderRequest(BaseModel):
    """Body of `POST /v1/orders`; decimals as strings."""

    model_config = ConfigDict(extra="forbid")

    symbol: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9]+$", examples=["BTCUSDT"])
    side: Side
    type: OrderType
    quantity: Decimal = Field(gt=0, examples=["0.01"])
    price: Decimal | None = Field(default=None, gt=0, examples=["65000.5"])
    stop_price: Decimal | None = Field(default=None, gt=0)
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


def decimal_str(value: Decimal | None) -> str | None:
    """A decimal as a plain string without exponent or trailing zeros."""
    return None if value is None else plain(value)


def fingerprint(canonical_body: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a request body (keys sorted, no whitespace)."""
    encoded = json.dumps(canonical_body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


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


class Outcome(BaseModel):
    """What an order event says about the order's status."""

    status: OrderStatus
    filled_quantity: Decimal | None = None
    reason: str | None = None
    decisive: bool = True


def outcome_of(message: Message, client_order_id: str) -> Outcome | None:
    """The outcome an order event reports for `client_order_id`, or None if it is not about it."""
    match message:
        case OrderDenied(order=order, reason=reason) if order.client_order_id == client_order_id:
            return Outcome(status=OrderStatus.DENIED, reason=reason)
        case OrderRejected(client_order_id=coid, reason=reason) if coid == client_order_id:
            return Outcome(status=OrderStatus.REJECTED, reason=reason)
        case OrderAccepted(client_order_id=coid, status=status) if coid == client_order_id:
            return Outcome(status=status)
        case OrderFilled(client_order_id=coid) if coid == client_order_id:
            filled = message.cumulative_quantity
            done = filled >= message.order_quantity
            return Outcome(status=OrderStatus.FILLED if done else OrderStatus.PARTIALLY_FILLED, filled_quantity=filled)
        case OrderStatusUnknown(client_order_id=coid, reason=reason) if coid == client_order_id:
            return Outcome(status=OrderStatus.UNKNOWN, reason=reason)
        case OrderCanceled(client_order_id=coid, reason=reason) if coid == client_order_id:
            return Outcome(status=OrderStatus.CANCELED, reason=reason or None)
    return None


def is_settled(outcome: Outcome) -> bool:
    """True when an outcome can be answered as is: an order reported (partly) filled must also say
    how much, so an acceptance whose status is FILLED waits for its fills."""
    if outcome.status in (OrderStatus.FILLED, OrderStatus.PARTIALLY_FILLED):
        return outcome.filled_quantity is not None
    return True


# --------------------------------------------------------------------------- idempotency


class IdempotencyVerdict(BaseModel):
    """What to do with a request given the stored record of its key."""

    action: str  # "proceed", "replay", "conflict", "in_progress"
    http_status: int | None = None
    response: dict[str, Any] | None = None


def judge_record(record: dict[str, Any] | None, fingerprint_value: str) -> IdempotencyVerdict:
    """Decide from a stored idempotency record (None: no record) how to answer a request.

    A finished record with the same fingerprint replays the stored response; a different
    fingerprint is a reused key (409); a record still in progress is a concurrent duplicate (409).
    """
    if record is None:
        return IdempotencyVerdict(action="proceed")
    if record.get("fingerprint") != fingerprint_value:
        return IdempotencyVerdict(action="conflict")
    if record.get("state") == "done" and record.get("response") is not None:
        return IdempotencyVerdict(
            action="replay", http_status=int(record.get("http_status") or 200), response=record["response"]
        )
    return IdempotencyVerdict(action="in_progress")


def verdict_error(verdict: IdempotencyVerdict) -> ApiError | None:
    """The 409 a conflicting verdict answers with (None for proceed/replay)."""
    if verdict.action == "conflict":
        return ApiError(409, "idempotency_key_reused", "this Idempotency-Key was used with a different request body")
    if verdict.action == "in_progress":
        return ApiError(409, "request_in_progress", "a request with this Idempotency-Key is still being processed")
    return None


# --------------------------------------------------------------------------- pagination


def encode_cursor(*parts: Any) -> str:
    """An opaque cursor for keyset pagination."""
    return base64.urlsafe_b64encode(json.dumps(list(parts), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, types: tuple[type, ...]) -> list[Any]:
    """Decode a cursor made by `encode_cursor` and check the types of its parts.

    Raises:
        ApiError: 400 `invalid_cursor`.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API issued") from exc
    if not isinstance(parts, list) or len(parts) != len(types):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API issued")
    for part, kind in zip(parts, types, strict=True):
        if not isinstance(part, kind) or isinstance(part, bool):
            raise ApiError(400, "invalid_cursor", "cursor is not one this API issued")
    return parts


def parse_order_status(value: str | None) -> OrderStatus | None:
    """Parse a `status` filter.

    Raises:
        ApiError: 422 for a value that is not an order status.
    """
    if value is None or value == "":
        return None
    try:
        return OrderStatus(value.upper())
    except ValueError as exc:
        raise ApiError(
            422,
            "validation_error",
            f"unknown order status {value!r}",
            [{"loc": ["query", "status"], "msg": f"must be one of {[s.value for s in OrderStatus]}", "type": "enum"}],
        ) from exc


# --------------------------------------------------------------------------- operator control bodies


class ControlRequest(BaseModel):
    """Optional body of halt, resume, emergency stop and breaker reset: why the operator acts."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=500)


def parse_control_body(raw: bytes, content_type: str | None) -> ControlRequest:
    """Read a control body whatever `Content-Type` the client sent.

    `curl -d '{"reason": "x"}'` sends `application/x-www-form-urlencoded`; an operator in a hurry
    must not get a 422 for that. Accepted: no body, JSON (any or no content type) and a form with
    a `reason` field.

    Raises:
        ApiError: 415 for multipart bodies, 400 for a body that is neither JSON nor a form,
            422 for unknown fields or a reason that is too long.
    """
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return ControlRequest()
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type.startswith("multipart/"):
        raise ApiError(415, "unsupported_media_type", 'send JSON like {"reason": "..."} (or no body)')
    data: Any
    if media_type == "application/x-www-form-urlencoded" and not text.startswith("{"):
        form = urllib.parse.parse_qs(text, keep_blank_values=True)
        data = {key: values[-1] for key, values in form.items()}
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ApiError(
                400, "invalid_json", "request body is not valid JSON", {"expected": {"reason": "..."}}
            ) from exc
    if data is None:
        return ControlRequest()
    try:
        return ControlRequest.model_validate(data)
    except ValidationError as exc:
        details = [
            {"loc": ["body", *(str(part) for part in error["loc"])], "msg": error["msg"], "type": error["type"]}
            for error in exc.errors()
        ]
        raise ApiError(422, "validation_error", "request validation failed", details) from exc


# --------------------------------------------------------------------------- dead letters

DEAD_LETTER_STATUSES = ("PENDING", "RETRIED")


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a list, stats or bulk retry covers.

    `operation` is what failed: a consumer name (`risk-orders`) or a subject prefix
    (`cmd.order.submit`); `reason` matches a substring, case-insensitively.
    """

    ids: tuple[int, ...] = ()
    consumer: str | None = None
    operation: str | None = None
    subject: str | None = None
    reason: str | None = None
    status: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    before_id: int | None = None

    def where(self, args: list[Any]) -> str:
        """The SQL `WHERE` clause (or "") for this filter; appends its parameters to `args`."""

        def param(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        conditions: list[str] = []
        if self.ids:
            conditions.append(f"id = ANY({param(list(self.ids))}::bigint[])")
        if self.consumer:
            conditions.append(f"consumer = {param(self.consumer)}")
        if self.operation:
            value = param(self.operation)
            conditions.append(f"(consumer = {value} OR starts_with(subject, {value}))")
        if self.subject:
            conditions.append(f"starts_with(subject, {param(self.subject)})")
        if self.reason:
            escaped = self.reason.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(f"reason ILIKE {param(f'%{escaped}%')}")
        if self.status:
            conditions.append(f"status = {param(self.status)}")
        if self.since_ns is not None:
            conditions.append(f"created_ns >= {param(self.since_ns)}")
        if self.until_ns is not None:
            conditions.append(f"created_ns < {param(self.until_ns)}")
        if self.before_id is not None:
            conditions.append(f"id < {param(self.before_id)}")
        return f"WHERE {' AND '.join(conditions)}" if conditions else ""

    @property
    def empty(self) -> bool:
        """True when nothing narrows the selection."""
        return self == DeadLetterFilter()


def parse_dead_letter_status(value: str | None) -> str | None:
    """Parse a dead-letter `status` filter.

    Raises:
        ApiError: 422 for an unknown status.
    """
    if value is None or value == "":
        return None
    if value.upper() not in DEAD_LETTER_STATUSES:
        raise ApiError(
            422,
            "validation_error",
            f"unknown dead-letter status {value!r}",
            [{"loc": ["query", "status"], "msg": f"must be one of {list(DEAD_LETTER_STATUSES)}", "type": "enum"}],
        )
    return value.upper()


MAX_BULK_RETRY = 500


class DeadLetterRetryRequest(BaseModel):
    """Body of `POST /v1/dlq/retry`: explicit ids, or a filter over PENDING dead letters.

    An empty filter is refused unless `all` is true, so nobody re-publishes the whole queue by accident.
    """

    model_config = ConfigDict(extra="forbid")
    ids: list[int] = Field(default_factory=list, max_length=MAX_BULK_RETRY)
    consumer: str | None = Field(default=None, max_length=128)
    operation: str | None = Field(default=None, max_length=200)
    reason: str | None = Field(default=None, max_length=200)
    since_ns: int | None = Field(default=None, ge=0)
    until_ns: int | None = Field(default=None, ge=0)
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


def reason_class(reason: str) -> str:
    """The kind of a dead-letter reason, for stats: the part before the first colon
    (`permanent`, `undecodable`, or an exception name)."""
    head = reason.split(":", 1)[0].strip()
    return head[:64] or "unknown"

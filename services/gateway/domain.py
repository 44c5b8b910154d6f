"""Pure rules of the gateway: roles, request models and validation, idempotency fingerprints,
pagination cursors, and how order events map onto the status an operator sees.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from decimal import Decimal
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


def unavailable(dependency: str, message: str) -> ApiError:
    """503 for a dependency that is down (with `Retry-After`)."""
    return ApiError(
        503,
        "dependency_unavailable",
        message,
        {"dependency": dependency},
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


def role_for_token(token: str, settings: Settings) -> Role | None:
    """The role a bearer token grants, or None (empty configured tokens never match)."""
    candidates = (
        (settings.admin_token, Role.ADMIN),
        (settings.operator_token, Role.OPERATOR),
        (settings.viewer_token, Role.VIEWER),
    )
    for configured, role in candidates:
        if configured and hmac.compare_digest(configured.encode(), token.encode()):
            return role
    return None


def authorize(authorization: str | None, required: Role, settings: Settings) -> Role:
    """Check an `Authorization` header against the required role.

    Raises:
        ApiError: 401 when the token is missing or unknown, 403 when its role is too low.
    """
    if not authorization:
        raise ApiError(401, "unauthorized", "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "unauthorized", "expected 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
        )
    role = role_for_token(token.strip(), settings)
    if role is None:
        raise ApiError(401, "unauthorized", "invalid token", headers={"WWW-Authenticate": "Bearer"})
    if role < required:
        raise ApiError(
            403, "forbidden", f"requires role {required.label}", {"role": role.label, "required": required.label}
        )
    return role


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
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return text


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

"""Pure rules of the gateway: idempotency fingerprints and verdicts, how order events map onto the
status an operator sees, pagination cursors, and the filters' allowed values.

No I/O and no clock here: the HTTP models are in `api_models`, the SQL in `queries`, who may call
in `auth`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from libs.bounds import BoundsError, check_int, check_json_depth, check_text
from libs.decimals import plain
from proto.enums import OrderStatus
from proto.envelope import Message
from proto.messages import (
    OrderAccepted,
    OrderCanceled,
    OrderDenied,
    OrderFilled,
    OrderRejected,
    OrderStatusUnknown,
)
from services.gateway.errors import ApiError

# --------------------------------------------------------------------------- orders


def decimal_str(value: Decimal | None) -> str | None:
    """A decimal as a plain string without exponent or trailing zeros."""
    return None if value is None else plain(value)


def fingerprint(canonical_body: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a request body (keys sorted, no whitespace)."""
    encoded = json.dumps(canonical_body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


def jsonable(value: Any) -> Any:
    """Row values as JSON: decimals as strings."""
    if isinstance(value, Decimal):
        return decimal_str(value)
    return value


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


IDEMPOTENCY_KEY_MAX_CHARS = 200


def request_key(header: str | None, new_id: Callable[[], str]) -> str:
    """The idempotency key of a request: its `Idempotency-Key` header, else a fresh id (`new_id`),
    so a request without one is never taken for an earlier one.

    Raises:
        ApiError: 400 `invalid_idempotency_key` for a key that is too long or not plain text.
    """
    if header is None or not header.strip():
        return new_id()
    key = header.strip()
    try:
        check_text(key, "Idempotency-Key", max_length=IDEMPOTENCY_KEY_MAX_CHARS)
    except BoundsError as exc:
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key {exc.reason}",
            [{"loc": ["header", "Idempotency-Key"], "msg": exc.reason, "type": "value_error"}],
        ) from exc
    return key


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


MAX_CURSOR_CHARS = 256
"""A cursor this API issues is a few dozen characters: an id, or a timestamp and an order id."""


def decode_cursor(cursor: str, types: tuple[type, ...]) -> list[Any]:
    """Decode a cursor made by `encode_cursor` and check the types of its parts.

    Raises:
        ApiError: 400 `invalid_cursor`.
    """
    refused = ApiError(400, "invalid_cursor", "cursor is not one this API issued")
    if len(cursor) > MAX_CURSOR_CHARS:
        raise refused
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii"))
        # A cursor this API issued is one flat list; anything nested is refused before parsing.
        check_json_depth(raw, "cursor", max_depth=1)
        parts = json.loads(raw)
    except (ValueError, binascii.Error) as exc:  # UnicodeError and BoundsError are ValueErrors
        raise refused from exc
    if not isinstance(parts, list) or len(parts) != len(types):
        raise refused
    for part, kind in zip(parts, types, strict=True):
        if not isinstance(part, kind) or isinstance(part, bool):
            raise refused
        try:
            if isinstance(part, int):
                check_int(part, "cursor")
            elif isinstance(part, str):
                check_text(part, "cursor", max_length=MAX_CURSOR_CHARS)
        except BoundsError as exc:
            raise refused from exc
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


# --------------------------------------------------------------------------- dead letters

DEAD_LETTER_STATUSES = ("PENDING", "RETRIED")


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


def reason_class(reason: str) -> str:
    """The kind of a dead-letter reason, for stats: the part before the first colon
    (`permanent`, `undecodable`, or an exception name)."""
    head = reason.split(":", 1)[0].strip()
    return head[:64] or "unknown"

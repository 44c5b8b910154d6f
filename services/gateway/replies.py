"""How the gateway reads what other services answer and store, all through the `proto` contracts.

Replies of the `svc.*` queries are decoded by `Gateway.request` with `proto.replies.decode_reply`;
here an `ErrorReply` becomes the matching API error and a reply body becomes the API's JSON. KV
values are decoded with `proto.kv.decode_value` (and `decode_breaker`, which tells risk's breakers
from dependency and venue breakers); a value that does not decode counts as never written. The
breakers, links and strategy records an operator lists are shown as their owner stored them
(`Stored.shown`) once they decode: the API shows what was written, nothing the gateway filled in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from proto import subjects
from proto.kv import decode_value
from proto.messages import HotStateRecord, SymbolsReply
from proto.replies import BookReply, ErrorReply
from services.gateway.errors import ApiError, unavailable

V = TypeVar("V", bound=msgspec.Struct)
R = TypeVar("R", bound=msgspec.Struct)

RISK_ERROR_STATUS = {"bad_request": 400, "not_found": 404}
"""HTTP status of risk's error codes; any other refusal is a 409."""


@dataclass(frozen=True)
class Stored(Generic[V]):
    """A KV value that decoded: typed for the gateway's own reads, and as stored for the operator."""

    value: V
    raw: bytes

    @property
    def shown(self) -> dict[str, Any]:
        """The JSON object its owner wrote (decoded only for the listings that show it)."""
        shown: dict[str, Any] = msgspec.json.decode(self.raw)
        return shown


def reader(kind: type[V]) -> Callable[[bytes], V | None]:
    """A decoder of one KV value family (`proto.kv`), None for bytes that are not one."""

    def read(raw: bytes) -> V | None:
        return decode_value(kind, raw)

    return read


def stored(raw: bytes, decode: Callable[[bytes], V | None]) -> Stored[V] | None:
    """`raw` decoded with `decode` and as the JSON object its owner wrote; None when it does not decode."""
    value = decode(raw)
    if value is None:
        return None
    return Stored(value=value, raw=raw)


def raise_for_risk_error(reply: R | ErrorReply) -> R:
    """The reply of a risk query, unless risk refused.

    Raises:
        ApiError: 400 (`bad_request`), 404 (`not_found`) or 409 (any other refusal), with risk's error.
    """
    if isinstance(reply, ErrorReply):
        error = reply.error
        status = RISK_ERROR_STATUS.get(error.code, 409)
        raise ApiError(status, error.code, error.message, {"risk": msgspec.to_builtins(error)})
    return reply


def symbols_of(reply: SymbolsReply | None) -> dict[str, Any] | None:
    """Every symbol's entry of `/v1/status` from state-builder's `symbols` reply; None without one."""
    if reply is None:
        return None
    return {
        symbol: {"hot_state": view.hot_state.value, "age_ms": view.age_ms, "last_update_id": view.last_update_id}
        for symbol, view in reply.symbols.items()
    }


def stored_symbol_status(record: HotStateRecord | None) -> dict[str, Any]:
    """A symbol's entry of `/v1/status` from its KV hot-state record (no age: only state-builder knows it)."""
    return {
        "hot_state": record.status.value if record is not None else "UNKNOWN",
        "age_ms": None,
        "last_update_id": record.last_update_id if record is not None else None,
    }


def book_of(reply: BookReply | ErrorReply, symbol: str) -> dict[str, Any]:
    """`/v1/book/<symbol>` from state-builder's `book` reply (prices and sizes as strings).

    Raises:
        ApiError: 404 when state-builder has no book for the symbol, 503 for any other error it answers.
    """
    if isinstance(reply, ErrorReply):
        if reply.error.code == "not_found":
            raise ApiError(404, "not_found", reply.error.message or f"no book for {symbol}")
        raise unavailable(subjects.STATE_BUILDER, f"state-builder error: {reply.error.message}")
    return {
        "symbol": reply.symbol,
        "status": reply.status.value,
        "last_update_id": reply.last_update_id,
        "bids": [[str(price), str(qty)] for price, qty in reply.bids],
        "asks": [[str(price), str(qty)] for price, qty in reply.asks],
    }

"""How the gateway reads what other services answer and store: request/reply bodies and KV values.

These arrive as JSON without a shared type (risk's and state-builder's replies, the KV records of
trading state, degradation, hot state and links), so every read of them is kept here, tolerant of
a missing or malformed field. Once `proto/` owns these shapes this module becomes typed decoding.
"""

from __future__ import annotations

from typing import Any

from proto import subjects
from services.gateway.errors import ApiError, unavailable


def text_field(value: Any, key: str) -> str | None:
    """`value[key]` as a string when `value` is a JSON object holding one, else None."""
    found = value.get(key) if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def raise_for_risk_error(reply: Any) -> None:
    """Turn an `{"error": ...}` reply of risk into the matching API error.

    Raises:
        ApiError: 400 (`bad_request`), 404 (`not_found`) or 409 (any other refusal).
    """
    if not isinstance(reply, dict) or "error" not in reply:
        return
    error = reply["error"] if isinstance(reply["error"], dict) else {}
    code = str(error.get("code", "risk_refused"))
    status = {"bad_request": 400, "not_found": 404}.get(code, 409)
    raise ApiError(status, code, str(error.get("message", "risk refused")), {"risk": error})


def trading_state_of(reply: Any) -> str | None:
    """The trading state in risk's `state` reply (`trading_state`, or `state` from older risk)."""
    if isinstance(reply, dict):
        value = reply.get("trading_state") or reply.get("state")
        if isinstance(value, str):
            return value
    return None


def symbol_status(value: Any) -> dict[str, Any]:
    """A symbol's entry of `/v1/status` from state-builder's reply or the hot-state KV record."""
    value = value if isinstance(value, dict) else {}
    hot_state = value.get("hot_state") or value.get("status") or value.get("current") or "UNKNOWN"
    return {
        "hot_state": str(hot_state),
        "age_ms": value.get("age_ms"),
        "last_update_id": value.get("last_update_id"),
    }


def symbols_of(reply: Any) -> dict[str, Any] | None:
    """Every symbol's status in state-builder's `symbols` reply, or None when it holds none."""
    if isinstance(reply, dict) and isinstance(reply.get("symbols"), dict):
        return {symbol: symbol_status(value) for symbol, value in reply["symbols"].items()}
    return None


def book_of(reply: Any, symbol: str) -> dict[str, Any]:
    """`/v1/book/<symbol>` from state-builder's `book` reply (prices and sizes as strings).

    Raises:
        ApiError: 404 when state-builder has no book for the symbol, 503 for any other error it answers.
    """
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

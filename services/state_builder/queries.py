"""state-builder's answers to queries: `svc.state-builder.book` (a book's top levels),
`svc.state-builder.symbols` (every symbol's hot state as served to operators) and the heartbeat
details. Reads the symbols' state, never changes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import msgspec

from proto.codec import encode
from proto.messages import SymbolHotState, SymbolsReply
from services.state_builder.market import SymbolState

DEFAULT_DEPTH = 20
MAX_DEPTH = 1000


def _error(code: str, message: str) -> bytes:
    return msgspec.json.encode({"error": {"code": code, "message": message}})


def _levels(levels: list[tuple[Decimal, Decimal]]) -> list[list[str]]:
    return [[str(price), str(qty)] for price, qty in levels]


def book_reply(symbols: Mapping[str, SymbolState], payload: bytes) -> bytes:
    """`svc.state-builder.book` {"symbol", "depth"} → the book's top levels."""
    try:
        request = msgspec.json.decode(payload)
        symbol = str(request["symbol"]).upper()
        depth = int(request.get("depth", DEFAULT_DEPTH))
    except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return _error("bad_request", f"expected {{'symbol', 'depth'?}}: {exc}")
    if not 1 <= depth <= MAX_DEPTH:
        return _error("bad_request", f"depth must be 1..{MAX_DEPTH}")
    state = symbols.get(symbol)
    if state is None:
        return _error("not_found", f"unknown symbol {symbol}")
    bids, asks = state.book.top(depth)
    return msgspec.json.encode(
        {
            "symbol": symbol,
            "status": state.hot.status.value,
            "last_update_id": state.book.last_update_id,
            "bids": _levels(bids),
            "asks": _levels(asks),
        }
    )


def symbol_view(symbol: str, state: SymbolState) -> SymbolHotState:
    """One symbol's hot state as served to operators."""
    return SymbolHotState(
        symbol=symbol,
        hot_state=state.hot.status,
        age_ms=state.hot.age_ms(),
        last_update_id=state.book.last_update_id,
        mark_price=state.mark_price,
        funding_rate=state.funding_rate,
        open_interest=state.open_interest,
        best_bid=state.book.best_bid(),
        best_ask=state.book.best_ask(),
        stale_since_ns=state.hot.stale_since_ns,
        stale_ms=state.hot.stale_ms(),
    )


def symbols_reply(symbols: Mapping[str, SymbolState]) -> bytes:
    """`svc.state-builder.symbols` → {"symbols": {SYM: {...}}}."""
    return encode(SymbolsReply(symbols={symbol: symbol_view(symbol, state) for symbol, state in symbols.items()}))


def details(symbols: Mapping[str, SymbolState]) -> dict[str, Any]:
    """Heartbeat details: per symbol status and last update id."""
    return {
        symbol: {"hot_state": state.hot.status.value, "last_update_id": state.book.last_update_id}
        for symbol, state in symbols.items()
    }

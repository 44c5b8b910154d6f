"""state-builder's answers to queries: `svc.state-builder.book` (a book's top levels),
`svc.state-builder.symbols` (every symbol's hot state as served to operators) and the heartbeat
details. Reads the symbols' state, never changes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from proto.codec import encode
from proto.messages import SymbolHotState, SymbolsReply
from proto.replies import BookReply, BookRequest, error_reply
from services.state_builder.market import SymbolState

DEFAULT_DEPTH = 20
MAX_DEPTH = 1000

_book_request_decoder = msgspec.json.Decoder(BookRequest, strict=False)


def book_reply(symbols: Mapping[str, SymbolState], payload: bytes) -> bytes:
    """`svc.state-builder.book`: a `BookRequest` answered by a `BookReply`, or an `ErrorReply`
    (`bad_request`, `not_found`)."""
    try:
        request = _book_request_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return error_reply("bad_request", f"expected {{'symbol', 'depth'?}}: {exc}")
    symbol = request.symbol.upper()
    depth = DEFAULT_DEPTH if request.depth is None else request.depth
    if not 1 <= depth <= MAX_DEPTH:
        return error_reply("bad_request", f"depth must be 1..{MAX_DEPTH}")
    state = symbols.get(symbol)
    if state is None:
        return error_reply("not_found", f"unknown symbol {symbol}")
    bids, asks = state.book.top(depth)
    return encode(
        BookReply(
            symbol=symbol, status=state.hot.status, last_update_id=state.book.last_update_id, bids=bids, asks=asks
        )
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
    """`svc.state-builder.symbols` → `SymbolsReply` (every symbol's `SymbolHotState`)."""
    return encode(SymbolsReply(symbols={symbol: symbol_view(symbol, state) for symbol, state in symbols.items()}))


def details(symbols: Mapping[str, SymbolState]) -> dict[str, Any]:
    """Heartbeat details: per symbol status and last update id."""
    return {
        symbol: {"hot_state": state.hot.status.value, "last_update_id": state.book.last_update_id}
        for symbol, state in symbols.items()
    }

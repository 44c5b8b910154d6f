"""state-builder's replayable state and its one fold: `apply(symbols, message)` is the only way a
market-data message changes a symbol's book and market state (mark price, funding, open interest,
last event time), for the live consumer and for the replay of recovery alike. Also the checkpoint
of exactly that state (`capture`, `restore`). Pure: no I/O, no clock, no logging.

The hot state (`HotState`) is not part of the fold: it depends on when data arrives, so only the
live path moves it, from what `apply` reports; replayed data is history and turns nothing VALID.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from proto.envelope import Message
from proto.messages import BookResyncStarted, BookSnapshot, DepthDiff, MarkPrice, OpenInterest
from services.state_builder.domain import (
    DiffResult,
    HotState,
    HotStateTransition,
    OrderBook,
    StateBuilderCheckpoint,
    SymbolCheckpoint,
)


@dataclass
class SymbolState:
    """Everything state-builder knows about one symbol.

    `apply` changes `book`, `last_event_ns`, `mark_price`, `funding_rate` and `open_interest` only;
    the rest belongs to the live path (hot state, its unpublished transitions, resync pacing).
    """

    book: OrderBook
    hot: HotState
    mark_price: Decimal | None = None
    funding_rate: Decimal | None = None
    open_interest: Decimal | None = None
    last_resync_request_ns: int = 0
    last_event_ns: int | None = None
    """Venue time of the last applied diff (timestamp sanity, SPEC §7)."""
    unpublished: list[HotStateTransition] = field(default_factory=list)


class Change(StrEnum):
    """What one applied message did to its symbol (the live path decides the hot state from it)."""

    DIFF_APPLIED = "DIFF_APPLIED"
    """A diff chained onto the book."""
    DIFF_IGNORED = "DIFF_IGNORED"
    """A diff already reflected, or no book to apply it to."""
    GAP = "GAP"
    """A diff did not chain: the book is unusable until the next snapshot."""
    REBUILT = "REBUILT"
    """A snapshot replaced the book."""
    RESYNC = "RESYNC"
    """market-data announced a resync: the book's chain is forgotten."""
    MARKET = "MARKET"
    """Mark price, funding or open interest changed."""


_DIFF_CHANGES = {
    DiffResult.APPLIED: Change.DIFF_APPLIED,
    DiffResult.IGNORED: Change.DIFF_IGNORED,
    DiffResult.GAP: Change.GAP,
}


@dataclass(frozen=True, slots=True)
class Applied:
    """The symbol a message was applied to and what it changed."""

    state: SymbolState
    change: Change


def apply(symbols: Mapping[str, SymbolState], message: Message) -> Applied | None:
    """Apply one market-data message to the books and market state of `symbols`.

    Args:
        symbols: upper-case symbol -> its state (changed in place).
        message: any message of the MARKET_DATA stream.

    Returns:
        What changed, or None for a message that is not part of the state (trades, liquidations,
        symbols not traded here).
    """
    match message:
        case DepthDiff(symbol=symbol) if symbol in symbols:
            state = symbols[symbol]
            result = state.book.apply_diff(
                message.first_update_id,
                message.final_update_id,
                message.prev_final_update_id,
                message.bids,
                message.asks,
            )
            if result == DiffResult.APPLIED:
                state.last_event_ns = message.ts_event_ns
            return Applied(state, _DIFF_CHANGES[result])
        case BookSnapshot(symbol=symbol) if symbol in symbols:
            state = symbols[symbol]
            state.book.apply_snapshot(message.last_update_id, message.bids, message.asks)
            return Applied(state, Change.REBUILT)
        case BookResyncStarted(symbol=symbol) if symbol in symbols:
            state = symbols[symbol]
            state.book.invalidate()
            return Applied(state, Change.RESYNC)
        case MarkPrice(symbol=symbol) if symbol in symbols:
            state = symbols[symbol]
            state.mark_price = message.mark_price
            if message.funding_rate is not None:
                state.funding_rate = message.funding_rate
            return Applied(state, Change.MARKET)
        case OpenInterest(symbol=symbol) if symbol in symbols:
            state = symbols[symbol]
            state.open_interest = message.open_interest
            return Applied(state, Change.MARKET)
        case _:
            return None


def capture(symbols: Mapping[str, SymbolState], stream_seq: int, taken_ns: int) -> StateBuilderCheckpoint:
    """Every symbol's book and market state as of MARKET_DATA sequence `stream_seq`."""
    return StateBuilderCheckpoint(
        stream_seq=stream_seq,
        taken_ns=taken_ns,
        symbols=[
            SymbolCheckpoint(
                symbol=symbol,
                book_state=state.book.state,
                last_update_id=state.book.last_update_id,
                bids=list(state.book.bids.items()),
                asks=list(state.book.asks.items()),
                last_event_ns=state.last_event_ns,
                mark_price=state.mark_price,
                funding_rate=state.funding_rate,
                open_interest=state.open_interest,
            )
            for symbol, state in symbols.items()
        ],
    )


def restore(symbols: Mapping[str, SymbolState], checkpoint: StateBuilderCheckpoint) -> None:
    """Load books and market state from a checkpoint; hot state stays as it is (INVALID at start)."""
    for entry in checkpoint.symbols:
        state = symbols.get(entry.symbol)
        if state is None:
            continue  # a symbol no longer traded
        state.book.restore(entry.book_state, entry.last_update_id, entry.bids, entry.asks)
        state.last_event_ns = entry.last_event_ns
        state.mark_price = entry.mark_price
        state.funding_rate = entry.funding_rate
        state.open_interest = entry.open_interest

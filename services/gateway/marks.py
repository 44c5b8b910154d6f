"""What an open position is worth now: its mark price and unrealized PnL for `/v1/positions`.

The mark comes from the state-builder's hot state of the symbol (`svc.state-builder.symbols`): the
venue's mark price when it streams one, else the mid of the best bid and ask. Unrealized PnL is
`(mark - average entry) x signed quantity` (a short gains when the mark falls). Pure functions:
the route asks the state-builder and passes its reply in.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from proto.messages import SymbolHotState, SymbolsReply
from services.gateway.domain import decimal_str

MARK_FROM_VENUE = "mark_price"
"""`mark_source` when the venue's own mark price (USD-M `markPrice` stream) is known."""
MARK_FROM_BOOK = "book_mid"
"""`mark_source` when only the book is: the mid of the best bid and ask."""


def mark_of(view: SymbolHotState | None) -> tuple[Decimal | None, str | None]:
    """(mark price, where it comes from) of one symbol; (None, None) when nothing prices it."""
    if view is None:
        return None, None
    if view.mark_price is not None and view.mark_price > 0:
        return view.mark_price, MARK_FROM_VENUE
    if view.best_bid is not None and view.best_ask is not None and view.best_bid > 0 and view.best_ask > 0:
        return (view.best_bid + view.best_ask) / 2, MARK_FROM_BOOK
    return None, None


def unrealized_pnl(quantity: Decimal, entry: Decimal | None, mark: Decimal | None) -> Decimal | None:
    """`(mark - entry) x quantity` (quantity signed: negative is short); 0 for a flat position,
    None when an open position has no mark or no entry price."""
    if quantity == 0:
        return Decimal(0)
    if mark is None or entry is None:
        return None
    return (mark - entry) * quantity


def position_marks(position: dict[str, Any], reply: SymbolsReply | None) -> dict[str, Any]:
    """The fields `/v1/positions` adds to a `positions` row: `mark_price`, `mark_source` and
    `unrealized_pnl` (decimal strings; null when the state-builder does not price the symbol)."""
    view = reply.symbols.get(str(position["symbol"])) if reply is not None else None
    mark, source = mark_of(view)
    quantity = Decimal(str(position["quantity"]))
    entry = position.get("average_entry_price")
    pnl = unrealized_pnl(quantity, Decimal(str(entry)) if entry is not None else None, mark)
    return {
        "mark_price": decimal_str(mark),
        "mark_source": source,
        "unrealized_pnl": decimal_str(pnl),
    }

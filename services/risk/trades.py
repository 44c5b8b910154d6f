"""Trades (CB-1, CB-3 input), pure: the position service's `PositionChanged` stream (cumulative
realized PnL) turned into open and closed round trips, with the snapshot form.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

import msgspec


@dataclass(frozen=True)
class ClosedTrade:
    """A round trip: the position went from flat (or a flip) back to flat (or flipped)."""

    symbol: str
    strategy: str | None
    pnl: Decimal
    opened_ns: int
    closed_ns: int


@dataclass(frozen=True)
class TradeUpdate:
    """What one position change means for the loss breakers."""

    symbol: str
    realized_delta: Decimal
    trade_pnl: Decimal  # realized so far by the trade this change belongs to (closed or still open)
    closed: ClosedTrade | None = None


@dataclass
class _OpenTrade:
    strategy: str | None
    opened_ns: int
    pnl: Decimal = Decimal(0)


@dataclass
class _SymbolBook:
    quantity: Decimal
    realized: Decimal
    trade: _OpenTrade | None = None


class OpenTradeState(msgspec.Struct, frozen=True, kw_only=True):
    """A trade still open, as a snapshot holds it: its strategy and the PnL it realized so far."""

    strategy: str | None
    opened_ns: int
    pnl: Decimal


class TradeBookState(msgspec.Struct, frozen=True, kw_only=True):
    """One symbol of `TradeTracker.to_state`."""

    symbol: str
    quantity: Decimal
    realized: Decimal
    trade: OpenTradeState | None = None


class TradeTracker:
    """Turns the position service's `PositionChanged` stream (cumulative realized PnL) into trades."""

    def __init__(self) -> None:
        self._books: dict[str, _SymbolBook] = {}

    def seed(self, symbol: str, quantity: Decimal, realized_pnl: Decimal, ts_ns: int) -> None:
        """Start from a known position (at start-up) without counting it as a result."""
        trade = _OpenTrade(None, ts_ns) if quantity != 0 else None
        self._books[symbol] = _SymbolBook(quantity, realized_pnl, trade)

    def on_position(
        self, symbol: str, quantity: Decimal, realized_pnl: Decimal, ts_ns: int, strategy: str | None
    ) -> TradeUpdate | None:
        """Apply one position change; `strategy` is the strategy of the order that caused it.

        Returns None for the first change of a symbol never seen before (it only sets the baseline).
        """
        book = self._books.get(symbol)
        if book is None:
            trade = _OpenTrade(strategy, ts_ns) if quantity != 0 else None
            self._books[symbol] = _SymbolBook(quantity, realized_pnl, trade)
            return None
        delta = realized_pnl - book.realized
        previous = book.quantity
        book.quantity, book.realized = quantity, realized_pnl
        if book.trade is None:
            book.trade = _OpenTrade(strategy, ts_ns) if quantity != 0 else None
            if book.trade is not None:
                book.trade.pnl += delta
            return TradeUpdate(symbol, delta, book.trade.pnl if book.trade else delta)
        book.trade.pnl += delta
        if book.trade.strategy is None:
            book.trade.strategy = strategy
        flipped = quantity != 0 and previous != 0 and (quantity > 0) != (previous > 0)
        if quantity != 0 and not flipped:
            return TradeUpdate(symbol, delta, book.trade.pnl)
        trade = book.trade
        closed = ClosedTrade(symbol, trade.strategy, trade.pnl, trade.opened_ns, ts_ns)
        book.trade = _OpenTrade(strategy, ts_ns) if flipped else None
        return TradeUpdate(symbol, delta, trade.pnl, closed)

    def owner(self, symbol: str) -> str | None:
        """The strategy of the symbol's open trade; None when flat, unknown or not a strategy's."""
        book = self._books.get(symbol)
        return book.trade.strategy if book is not None and book.trade is not None else None

    def to_state(self) -> list[TradeBookState]:
        """Every symbol's position, realized PnL and open trade, for a snapshot (SPEC §8)."""
        return [
            TradeBookState(
                symbol=symbol,
                quantity=book.quantity,
                realized=book.realized,
                trade=None
                if book.trade is None
                else OpenTradeState(strategy=book.trade.strategy, opened_ns=book.trade.opened_ns, pnl=book.trade.pnl),
            )
            for symbol, book in self._books.items()
        ]

    @classmethod
    def from_state(cls, items: Iterable[TradeBookState]) -> TradeTracker:
        """The tracker a snapshot holds; like `seed`, a flat symbol has no open trade."""
        tracker = cls()
        for item in items:
            trade = item.trade
            open_trade = (
                _OpenTrade(trade.strategy, trade.opened_ns, trade.pnl)
                if trade is not None and item.quantity != 0
                else None
            )
            tracker._books[item.symbol] = _SymbolBook(item.quantity, item.realized, open_trade)
        return tracker

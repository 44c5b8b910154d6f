"""The simulator's true order book and a bounded history of its states by update id."""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

Level = tuple[Decimal, Decimal]

HISTORY_DEPTH = 50
HISTORY_STATES = 3000


class BookHistoryError(KeyError):
    """The requested update id is not (or no longer) in the history."""


@dataclass(frozen=True, slots=True)
class BookState:
    """Top levels of the book right after update `last_update_id`."""

    last_update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


class OrderBook:
    """Price levels per side with sorted price indexes; `apply` sets or removes levels."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.last_update_id = 0
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self._bid_prices: list[Decimal] = []  # ascending; best bid is last
        self._ask_prices: list[Decimal] = []  # ascending; best ask is first
        self._history: deque[BookState] = deque(maxlen=HISTORY_STATES)
        self._history_index: dict[int, BookState] = {}

    def reset(self, bids: Iterable[Level], asks: Iterable[Level], last_update_id: int) -> None:
        """Replace the whole book (a snapshot)."""
        self.bids = {p: q for p, q in bids if q != 0}
        self.asks = {p: q for p, q in asks if q != 0}
        self._bid_prices = sorted(self.bids)
        self._ask_prices = sorted(self.asks)
        self.last_update_id = last_update_id
        self._remember()

    def apply(self, bids: Iterable[Level], asks: Iterable[Level], final_update_id: int) -> None:
        """Apply one diff (quantity 0 removes a level) and record the resulting state."""
        self._apply_side(self.bids, self._bid_prices, bids)
        self._apply_side(self.asks, self._ask_prices, asks)
        self.last_update_id = final_update_id
        self._remember()

    @staticmethod
    def _apply_side(levels: dict[Decimal, Decimal], prices: list[Decimal], changes: Iterable[Level]) -> None:
        for price, qty in changes:
            if qty == 0:
                if levels.pop(price, None) is not None:
                    index = bisect.bisect_left(prices, price)
                    del prices[index]
            else:
                if price not in levels:
                    bisect.insort(prices, price)
                levels[price] = qty

    def top_bids(self, depth: int) -> list[Level]:
        """Best `depth` bids, best first."""
        prices = self._bid_prices[-depth:] if depth > 0 else []
        return [(p, self.bids[p]) for p in reversed(prices)]

    def top_asks(self, depth: int) -> list[Level]:
        """Best `depth` asks, best first."""
        return [(p, self.asks[p]) for p in self._ask_prices[:depth]]

    def best_bid(self) -> Level | None:
        """Best bid or None when the side is empty."""
        return (self._bid_prices[-1], self.bids[self._bid_prices[-1]]) if self._bid_prices else None

    def best_ask(self) -> Level | None:
        """Best ask or None when the side is empty."""
        return (self._ask_prices[0], self.asks[self._ask_prices[0]]) if self._ask_prices else None

    def mid(self) -> Decimal | None:
        """Mid price, or the one side present, or None."""
        bid, ask = self.best_bid(), self.best_ask()
        if bid and ask:
            return (bid[0] + ask[0]) / 2
        if bid:
            return bid[0]
        return ask[0] if ask else None

    def levels(self, side_is_bid: bool) -> list[Level]:
        """All levels of one side, best first."""
        return self.top_bids(len(self._bid_prices)) if side_is_bid else self.top_asks(len(self._ask_prices))

    def _remember(self) -> None:
        if len(self._history) == self._history.maxlen:
            evicted = self._history[0]
            self._history_index.pop(evicted.last_update_id, None)
        state = BookState(
            self.last_update_id,
            tuple(self.top_bids(HISTORY_DEPTH)),
            tuple(self.top_asks(HISTORY_DEPTH)),
        )
        self._history.append(state)
        self._history_index[state.last_update_id] = state

    def state_at(self, update_id: int) -> BookState:
        """The top of the book right after update `update_id`.

        Raises:
            BookHistoryError: the id is not in the kept history.
        """
        state = self._history_index.get(update_id)
        if state is None:
            oldest = self._history[0].last_update_id if self._history else None
            raise BookHistoryError(
                f"update id {update_id} is not in the history of {self.symbol} "
                f"(kept: {oldest}..{self.last_update_id}, {len(self._history)} states)"
            )
        return state

    def diff_to(self, bids: Iterable[Level], asks: Iterable[Level]) -> tuple[list[Level], list[Level]]:
        """The level changes that turn this book into the given one (for seamless looping)."""
        target_bids = {p: q for p, q in bids if q != 0}
        target_asks = {p: q for p, q in asks if q != 0}
        out: list[list[Level]] = []
        for current, target, descending in ((self.bids, target_bids, True), (self.asks, target_asks, False)):
            changes = [(p, Decimal(0)) for p in current if p not in target]
            changes += [(p, q) for p, q in target.items() if str(current.get(p)) != str(q)]
            changes.sort(key=lambda level: level[0], reverse=descending)
            out.append(changes)
        return out[0], out[1]

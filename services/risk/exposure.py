"""Pending exposure (approved orders not yet filled, rejected or canceled) and the strategies'
orders-per-minute window, with their snapshot forms. Pure.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from proto.enums import Side
from proto.messages import SubmitOrder

from .checks import UNATTRIBUTED, order_holder


@dataclass
class _Pending:
    symbol: str
    side: Side
    quantity: Decimal
    filled: Decimal = Decimal(0)
    reduce_only: bool = False
    holder: str | None = None
    venue: str = ""


class PendingOrderState(msgspec.Struct, frozen=True, kw_only=True):
    """One pending order as a snapshot holds it (`PendingExposure.to_state`)."""

    client_order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    filled: Decimal = Decimal(0)
    reduce_only: bool = False
    holder: str | None = None  # `order_holder`; None in snapshots written before it was kept
    venue: str = ""  # the venue it was approved for; "" in snapshots written before it was kept (main)


class PendingExposure:
    """Approved orders not yet filled, rejected or canceled, by client order id."""

    def __init__(self) -> None:
        self._orders: dict[str, _Pending] = {}

    def add(self, order: SubmitOrder) -> None:
        self._orders.setdefault(
            order.client_order_id,
            _Pending(
                order.symbol,
                order.side,
                order.quantity,
                reduce_only=order.reduce_only,
                holder=order_holder(order),
                venue=order.venue,
            ),
        )

    def on_fill(self, client_order_id: str, cumulative_quantity: Decimal) -> None:
        """A fill: what is still open shrinks; a complete order is released."""
        pending = self._orders.get(client_order_id)
        if pending is None:
            return
        pending.filled = max(pending.filled, cumulative_quantity)
        if pending.filled >= pending.quantity:
            del self._orders[client_order_id]

    def release(self, client_order_id: str) -> None:
        """Rejected, canceled, expired: the order will never add exposure."""
        self._orders.pop(client_order_id, None)

    def totals(self, symbol: str, paper_venue: str = "", paper: bool = False) -> tuple[Decimal, Decimal]:
        """(pending BUY, pending SELL) quantity of a symbol: of the paper venue's orders with `paper`,
        else of the live venues' (paper exposure never counts toward live limits, nor the reverse)."""
        buy = sell = Decimal(0)
        for pending in self._orders.values():
            if pending.symbol != symbol or _on_paper(pending, paper_venue) != paper:
                continue
            open_quantity = pending.quantity - pending.filled
            if pending.side == Side.BUY:
                buy += open_quantity
            else:
                sell += open_quantity
        return buy, sell

    def entries(self) -> list[str]:
        """Client order ids of pending orders that could add exposure (not reduce-only)."""
        return [coid for coid, pending in self._orders.items() if not pending.reduce_only]

    def entry_holders(self, symbol: str, paper_venue: str = "", paper: bool = False) -> set[str]:
        """Who has an entry (an order that could add exposure) in flight in `symbol`, on the paper
        venue with `paper`, else on the live venues."""
        return {
            pending.holder or UNATTRIBUTED
            for pending in self._orders.values()
            if pending.symbol == symbol and not pending.reduce_only and _on_paper(pending, paper_venue) == paper
        }

    def venues(self, symbol: str, main_venue: str) -> set[str]:
        """The venues with an order in flight in `symbol` ("" in an old snapshot: the main venue)."""
        return {pending.venue or main_venue for pending in self._orders.values() if pending.symbol == symbol}

    def count(self, symbol: str, venue: str, main_venue: str) -> int:
        """Orders in flight in `symbol` at `venue` (what the venue's MAX_NUM_ORDERS counts)."""
        return sum(1 for p in self._orders.values() if p.symbol == symbol and (p.venue or main_venue) == venue)

    def __len__(self) -> int:
        return len(self._orders)

    def to_state(self) -> list[PendingOrderState]:
        """Every pending order, for a snapshot (SPEC §8)."""
        return [
            PendingOrderState(
                client_order_id=coid,
                symbol=item.symbol,
                side=item.side,
                quantity=item.quantity,
                filled=item.filled,
                reduce_only=item.reduce_only,
                holder=item.holder,
                venue=item.venue,
            )
            for coid, item in self._orders.items()
        ]

    @classmethod
    def from_state(cls, items: Iterable[PendingOrderState]) -> PendingExposure:
        """The exposure a snapshot holds; by the same rules as `add` then `on_fill` (the first
        entry of a client order id wins, a completely filled order is not pending)."""
        pending = cls()
        for item in items:
            if item.client_order_id in pending._orders or (item.filled and item.filled >= item.quantity):
                continue
            pending._orders[item.client_order_id] = _Pending(
                item.symbol,
                item.side,
                item.quantity,
                filled=item.filled,
                reduce_only=item.reduce_only,
                holder=item.holder,
                venue=item.venue,
            )
        return pending


class OrderRateWindow:
    """Exposure-adding orders approved per strategy in the last `window_ns`."""

    def __init__(self, window_ns: int = 60_000_000_000) -> None:
        self._window_ns = window_ns
        self._times: dict[str, deque[int]] = {}

    def count(self, strategy: str, now_ns: int) -> int:
        times = self._times.get(strategy)
        if times is None:
            return 0
        while times and now_ns - times[0] >= self._window_ns:
            times.popleft()
        return len(times)

    def record(self, strategy: str, now_ns: int) -> None:
        self.count(strategy, now_ns)  # times out of the window leave first: the deque stays a minute long
        self._times.setdefault(strategy, deque()).append(now_ns)

    def to_state(self, now_ns: int) -> dict[str, list[int]]:
        """Approval times still inside the window at `now_ns`, by strategy (none: left out)."""
        return {strategy: list(times) for strategy, times in self._times.items() if self.count(strategy, now_ns)}

    @classmethod
    def from_state(cls, state: Mapping[str, Iterable[int]], window_ns: int = 60_000_000_000) -> OrderRateWindow:
        """The window a snapshot holds (`to_state`)."""
        rates = cls(window_ns)
        for strategy, times in state.items():
            for ts in times:
                rates.record(strategy, ts)
        return rates


def _on_paper(pending: _Pending, paper_venue: str) -> bool:
    """Is this order in flight on the paper venue ("" none: nothing is)?"""
    return bool(paper_venue) and pending.venue == paper_venue

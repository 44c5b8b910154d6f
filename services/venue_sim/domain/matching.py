"""The fill model against the true book (pure): which levels a taker order walks, when a resting
LIMIT order is crossed, how much an order may fill now.

The simulator's own orders never consume the true book: a taker fill takes the quantity shown at
each level it walks, and a resting order fills in full at its limit price once the opposite best
crosses it.
"""

from __future__ import annotations

from decimal import Decimal

from services.venue_sim.domain.orders import Order

ZERO = Decimal(0)
Level = tuple[Decimal, Decimal]


def within(order: Order, price: Decimal, limit: Decimal | None) -> bool:
    """Whether a level's price is acceptable to the order (always, without a limit)."""
    if limit is None:
        return True
    return price <= limit if order.side == "BUY" else price >= limit


def fillable(order: Order, position_quantity: Decimal) -> Decimal:
    """How much of the order may fill now: its remainder, under the partial-fill cap and, for a
    reduce-only order, no more than the position it reduces."""
    remaining = order.remaining
    if order.fill_cap is not None:
        remaining = min(remaining, max(ZERO, order.fill_cap - order.executed_qty))
    if order.reduce_only:
        reducible = abs(position_quantity) if position_quantity * order.sign < 0 else ZERO
        remaining = min(remaining, reducible)
    return remaining


def covers(order: Order, levels: list[Level], limit: Decimal | None) -> bool:
    """Whether the levels within the limit hold the order's whole quantity (fill-or-kill)."""
    return sum((q for p, q in levels if within(order, p, limit)), ZERO) >= order.quantity


def taker_fills(order: Order, levels: list[Level], limit: Decimal | None, quantity: Decimal) -> list[Level]:
    """The (price, quantity) fills of a taker walking the opposite side, one per level, best first."""
    fills: list[Level] = []
    remaining = quantity
    if remaining <= 0:
        return fills
    for price, qty in levels:
        if not within(order, price, limit):
            break
        take = min(remaining, qty)
        fills.append((price, take))
        remaining -= take
        if remaining <= 0:
            break
    return fills


def crosses(side: str, price: Decimal, best_bid: Level | None, best_ask: Level | None) -> bool:
    """Whether a LIMIT price at `side` reaches the opposite best (would take, or is now crossed)."""
    if side == "BUY":
        return best_ask is not None and price >= best_ask[0]
    return best_bid is not None and price <= best_bid[0]

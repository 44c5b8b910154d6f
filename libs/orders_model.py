"""The order and position model shared by the position service and the projection rebuild.

Pure (no I/O, no clock): the order state machine, one order's record, a signed position and the
fill arithmetic. `services.position` runs it live; `libs.projections` folds the ORDERS stream
through the same code to rebuild or verify the Postgres projections, so both agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from libs.fsm import IllegalTransition, next_state
from proto.enums import TERMINAL_ORDER_STATUSES, OrderSource, OrderStatus, OrderType, Side
from proto.envelope import Message
from proto.messages import (
    OrderAccepted,
    OrderCanceled,
    OrderCancelRequested,
    OrderDenied,
    OrderFilled,
    OrderQueued,
    OrderRejected,
    OrderStatusUnknown,
    OrderSubmitted,
    SubmitOrder,
)

S = OrderStatus

ORDER_EVENTS: tuple[type[Message], ...] = (
    OrderSubmitted,
    OrderAccepted,
    OrderRejected,
    OrderCanceled,
    OrderCancelRequested,
    OrderQueued,
    OrderStatusUnknown,
    OrderFilled,
)
"""The events about one order after its approval (`event_trigger` maps each to its trigger)."""


class OrderTrigger(StrEnum):
    """What happens to an order (local decision or venue answer)."""

    DENY = "DENY"  # risk refused it
    SUBMIT = "SUBMIT"  # about to be sent
    NOT_SENT = "NOT_SENT"  # the venue was unreachable: surely not sent, back to the queue
    ACCEPT = "ACCEPT"  # venue says NEW
    PARTIAL_FILL = "PARTIAL_FILL"
    FILL = "FILL"
    REQUEST_CANCEL = "REQUEST_CANCEL"
    CANCEL = "CANCEL"
    REJECT = "REJECT"
    EXPIRE = "EXPIRE"
    AMBIGUOUS = "AMBIGUOUS"  # timeout / 5xx: outcome unknown until queried


_LIVE_AT_VENUE: dict[OrderTrigger, OrderStatus] = {
    OrderTrigger.ACCEPT: S.NEW,
    OrderTrigger.PARTIAL_FILL: S.PARTIALLY_FILLED,
    OrderTrigger.FILL: S.FILLED,
    OrderTrigger.CANCEL: S.CANCELED,
    OrderTrigger.EXPIRE: S.EXPIRED,
}

ORDER_TRANSITIONS: dict[tuple[OrderStatus, OrderTrigger], OrderStatus] = {
    (S.PENDING_SUBMISSION, OrderTrigger.DENY): S.DENIED,
    (S.PENDING_SUBMISSION, OrderTrigger.SUBMIT): S.SUBMITTED,
    (S.PENDING_SUBMISSION, OrderTrigger.CANCEL): S.CANCELED,  # cancelled before it was ever sent
    (S.PENDING_SUBMISSION, OrderTrigger.REJECT): S.REJECTED,
    # Found at the venue, never sent from here (an adopted EXTERNAL order): its answer settles it.
    (S.PENDING_SUBMISSION, OrderTrigger.AMBIGUOUS): S.UNKNOWN,
    (S.SUBMITTED, OrderTrigger.NOT_SENT): S.PENDING_SUBMISSION,
    (S.SUBMITTED, OrderTrigger.REJECT): S.REJECTED,
    (S.SUBMITTED, OrderTrigger.AMBIGUOUS): S.UNKNOWN,
    (S.SUBMITTED, OrderTrigger.REQUEST_CANCEL): S.PENDING_CANCEL,
    **{(S.SUBMITTED, trigger): status for trigger, status in _LIVE_AT_VENUE.items()},
    # UNKNOWN is resolved by a query: any venue status, or "does not exist" (resend, same id).
    (S.UNKNOWN, OrderTrigger.AMBIGUOUS): S.UNKNOWN,
    (S.UNKNOWN, OrderTrigger.SUBMIT): S.SUBMITTED,
    (S.UNKNOWN, OrderTrigger.REJECT): S.REJECTED,
    (S.UNKNOWN, OrderTrigger.NOT_SENT): S.PENDING_SUBMISSION,  # queried: not at the venue, back to the queue
    **{(S.UNKNOWN, trigger): status for trigger, status in _LIVE_AT_VENUE.items()},
    (S.NEW, OrderTrigger.ACCEPT): S.NEW,
    (S.NEW, OrderTrigger.PARTIAL_FILL): S.PARTIALLY_FILLED,
    (S.NEW, OrderTrigger.FILL): S.FILLED,
    (S.NEW, OrderTrigger.REQUEST_CANCEL): S.PENDING_CANCEL,
    (S.NEW, OrderTrigger.CANCEL): S.CANCELED,
    (S.NEW, OrderTrigger.EXPIRE): S.EXPIRED,
    (S.PARTIALLY_FILLED, OrderTrigger.PARTIAL_FILL): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, OrderTrigger.FILL): S.FILLED,
    (S.PARTIALLY_FILLED, OrderTrigger.REQUEST_CANCEL): S.PENDING_CANCEL,
    (S.PARTIALLY_FILLED, OrderTrigger.CANCEL): S.CANCELED,
    (S.PARTIALLY_FILLED, OrderTrigger.EXPIRE): S.EXPIRED,
    # A cancel races with fills; the venue's answer wins. ACCEPT/PARTIAL_FILL: cancel failed, still open.
    (S.PENDING_CANCEL, OrderTrigger.CANCEL): S.CANCELED,
    (S.PENDING_CANCEL, OrderTrigger.FILL): S.FILLED,
    (S.PENDING_CANCEL, OrderTrigger.EXPIRE): S.EXPIRED,
    (S.PENDING_CANCEL, OrderTrigger.ACCEPT): S.NEW,
    (S.PENDING_CANCEL, OrderTrigger.PARTIAL_FILL): S.PARTIALLY_FILLED,
    (S.PENDING_CANCEL, OrderTrigger.REQUEST_CANCEL): S.PENDING_CANCEL,
    # Re-applied terminal answers are no-ops, never errors (idempotent replays).
    (S.FILLED, OrderTrigger.FILL): S.FILLED,
    (S.CANCELED, OrderTrigger.CANCEL): S.CANCELED,
    (S.EXPIRED, OrderTrigger.EXPIRE): S.EXPIRED,
    (S.REJECTED, OrderTrigger.REJECT): S.REJECTED,
    (S.DENIED, OrderTrigger.DENY): S.DENIED,
}


class IllegalOrderTransition(IllegalTransition):
    """The trigger cannot happen in the order's current state."""


def next_order_status(status: OrderStatus, trigger: OrderTrigger) -> OrderStatus:
    """The status that follows `status` under `trigger`.

    Raises:
        IllegalOrderTransition: the pair is not in `ORDER_TRANSITIONS`.
    """
    return next_state(ORDER_TRANSITIONS, status, trigger, IllegalOrderTransition)


VENUE_STATUS_TRIGGERS: dict[str, OrderTrigger] = {
    "NEW": OrderTrigger.ACCEPT,
    "PARTIALLY_FILLED": OrderTrigger.PARTIAL_FILL,
    "FILLED": OrderTrigger.FILL,
    "CANCELED": OrderTrigger.CANCEL,
    "EXPIRED": OrderTrigger.EXPIRE,
    "EXPIRED_IN_MATCH": OrderTrigger.EXPIRE,
    "REJECTED": OrderTrigger.REJECT,
}


def venue_trigger(venue_status: str) -> OrderTrigger:
    """Trigger for a Binance order status (unknown statuses are ambiguous, never guessed)."""
    return VENUE_STATUS_TRIGGERS.get(venue_status, OrderTrigger.AMBIGUOUS)


def venue_answer_trigger(order: OrderRecord, venue_status: str, executed: Decimal) -> OrderTrigger:
    """The trigger of a venue's answer about an order (its status and executed quantity), with the
    order's fills booked so far: FILLED counts only once every trade of it is booked (until then the
    order is partially filled), and an open order with fills is partially filled."""
    trigger = venue_trigger(venue_status)
    if trigger == OrderTrigger.FILL and order.filled_quantity < executed:
        return OrderTrigger.PARTIAL_FILL  # the trades are not all visible yet; the poll finishes it
    if trigger == OrderTrigger.ACCEPT and order.filled_quantity > 0:
        return OrderTrigger.PARTIAL_FILL
    return trigger


EXPIRY_REASONS = frozenset({"expired", "expired_in_match"})
"""The position service reports a venue expiry as an `OrderCanceled` whose reason is one of these."""


def event_trigger(order: OrderRecord, event: Message) -> OrderTrigger | None:
    """The trigger an ORDERS event records for its order, given the order as folded so far (an
    `OrderFilled` already booked): the position service publishes one event for every status change
    it makes, so folding the events through `ORDER_TRANSITIONS` gives the status it holds live.

    Returns:
        None for an event that changes no status (an approval, a position).
    """
    match event:
        case OrderDenied():
            return OrderTrigger.DENY
        case OrderSubmitted():
            return OrderTrigger.SUBMIT
        case OrderQueued():
            return OrderTrigger.NOT_SENT
        case OrderStatusUnknown():
            return OrderTrigger.AMBIGUOUS
        case OrderAccepted():
            # The venue holds the order: open, partially filled by the fills booked so far. Its
            # status field may say FILLED before the trades are visible; the fills step it there.
            return OrderTrigger.PARTIAL_FILL if order.filled_quantity > 0 else OrderTrigger.ACCEPT
        case OrderRejected():
            return OrderTrigger.REJECT
        case OrderCancelRequested():
            return OrderTrigger.REQUEST_CANCEL
        case OrderCanceled(reason=reason):
            return OrderTrigger.EXPIRE if reason.lower() in EXPIRY_REASONS else OrderTrigger.CANCEL
        case OrderFilled():
            return OrderTrigger.FILL if order.filled_quantity >= order.quantity else OrderTrigger.PARTIAL_FILL
    return None


def is_terminal(status: OrderStatus) -> bool:
    """True for FILLED, CANCELED, REJECTED, EXPIRED and DENIED."""
    return status in TERMINAL_ORDER_STATUSES


@dataclass
class OrderRecord:
    """The position service's view of one order."""

    client_order_id: str
    idempotency_key: str
    source: OrderSource
    venue: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    status: OrderStatus
    created_ns: int
    updated_ns: int
    price: Decimal | None = None
    stop_price: Decimal | None = None
    reduce_only: bool = False
    time_in_force: str | None = None
    strategy: str | None = None
    filled_quantity: Decimal = Decimal(0)
    average_price: Decimal | None = None
    venue_order_id: int | None = None
    reason: str | None = None
    trade_ids: set[int] = field(default_factory=set)
    fill_quantities: dict[int, Decimal] = field(default_factory=dict)
    resend_used: bool = False

    def apply(self, trigger: OrderTrigger, ts_ns: int) -> OrderStatus:
        """Move the order through the state machine; returns the new status."""
        self.status = next_order_status(self.status, trigger)
        self.updated_ns = ts_ns
        return self.status

    def apply_event(self, event: Message, ts_ns: int) -> bool:
        """Apply what an ORDERS event records (`event_trigger`) through the state machine, as the
        live service did when it published it. A trigger the current status does not allow (a stale
        or repeated event) leaves the status as it is, as live.

        Returns:
            False when the event's trigger was not allowed.
        """
        self.updated_ns = max(self.updated_ns, ts_ns)
        trigger = event_trigger(self, event)
        if trigger is None:
            return True
        try:
            self.status = next_order_status(self.status, trigger)
        except IllegalOrderTransition:
            return False
        return True

    def add_fill(self, trade_id: int, quantity: Decimal, price: Decimal) -> bool:
        """Record one execution (idempotent per trade id); returns False for a repeat."""
        if trade_id in self.trade_ids:
            return False
        total = self.filled_quantity + quantity
        previous_cost = (self.average_price or Decimal(0)) * self.filled_quantity
        self.average_price = (previous_cost + price * quantity) / total if total else None
        self.filled_quantity = total
        self.trade_ids.add(trade_id)
        self.fill_quantities[trade_id] = quantity
        return True

    @property
    def remaining(self) -> Decimal:
        """Quantity not filled yet (the invariant filled + remaining = quantity holds by construction)."""
        return self.quantity - self.filled_quantity

    @property
    def signed_filled(self) -> Decimal:
        """Filled quantity with the position's sign (BUY adds, SELL subtracts)."""
        return self.filled_quantity if self.side == Side.BUY else -self.filled_quantity


@dataclass(frozen=True)
class Position:
    """A signed position: positive long, negative short; PnL in quote currency."""

    quantity: Decimal = Decimal(0)
    average_entry_price: Decimal = Decimal(0)
    realized_pnl: Decimal = Decimal(0)


def apply_fill(position: Position, side: Side, quantity: Decimal, price: Decimal) -> Position:
    """The position after one fill: adds, partial closes, full closes and flips.

    Adding keeps a quantity-weighted average entry; closing realizes
    `(price - entry) * closed * sign`; a flip opens the rest at the fill price.
    """
    if quantity <= 0:
        raise ValueError(f"fill quantity must be positive, got {quantity}")
    delta = quantity if side == Side.BUY else -quantity
    current = position.quantity
    if current == 0 or (current > 0) == (delta > 0):
        new_qty = current + delta
        cost = abs(current) * position.average_entry_price + quantity * price
        return Position(new_qty, cost / abs(new_qty), position.realized_pnl)
    closed = min(abs(current), quantity)
    direction = Decimal(1) if current > 0 else Decimal(-1)
    realized = position.realized_pnl + (price - position.average_entry_price) * closed * direction
    new_qty = current + delta
    if new_qty == 0:
        return Position(Decimal(0), Decimal(0), realized)
    if (new_qty > 0) == (current > 0):
        return Position(new_qty, position.average_entry_price, realized)
    return Position(new_qty, price, realized)


def record_from_command(order: SubmitOrder, ts_ns: int) -> OrderRecord:
    """A fresh local order (PENDING_SUBMISSION) for an approved or denied command."""
    return OrderRecord(
        client_order_id=order.client_order_id,
        idempotency_key=order.idempotency_key,
        source=order.source,
        venue=order.venue,
        symbol=order.symbol,
        side=order.side,
        order_type=order.order_type,
        quantity=order.quantity,
        status=OrderStatus.PENDING_SUBMISSION,
        created_ns=ts_ns,
        updated_ns=ts_ns,
        price=order.price,
        stop_price=order.stop_price,
        reduce_only=order.reduce_only,
        time_in_force=order.time_in_force.value if order.time_in_force else None,
        strategy=order.strategy,
    )

"""Pure position-service logic: the order state machine, position arithmetic and reconciliation.

No I/O and no clock here; handlers feed venue answers in and act on what comes out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from libs.fsm import IllegalTransition, next_state
from proto.enums import TERMINAL_ORDER_STATUSES, OrderSource, OrderStatus, OrderType, Side

S = OrderStatus


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


@dataclass(frozen=True)
class ReconciliationPlan:
    """What start-up reconciliation must do about differences with the venue."""

    adopt: list[dict]  # venue open orders unknown locally
    resolve: list[str]  # local live orders the venue does not list as open: query them
    position_mismatches: dict[str, tuple[Decimal, Decimal]]  # symbol -> (local, venue)


def plan_reconciliation(
    local_live: dict[str, OrderRecord],
    venue_open: list[dict],
    local_positions: dict[str, Decimal],
    venue_positions: dict[str, Decimal],
    known_client_order_ids: set[str],
) -> ReconciliationPlan:
    """Compare local state with the venue's open orders and positions."""
    venue_ids = {str(order.get("clientOrderId")) for order in venue_open}
    adopt = [order for order in venue_open if str(order.get("clientOrderId")) not in known_client_order_ids]
    resolve = sorted(coid for coid in local_live if coid not in venue_ids)
    mismatches: dict[str, tuple[Decimal, Decimal]] = {}
    for symbol in sorted(set(local_positions) | set(venue_positions)):
        local = local_positions.get(symbol, Decimal(0))
        remote = venue_positions.get(symbol, Decimal(0))
        if local != remote:
            mismatches[symbol] = (local, remote)
    return ReconciliationPlan(adopt=adopt, resolve=resolve, position_mismatches=mismatches)


# ---------------------------------------------------------------------- invariants (SPEC §6)


def order_invariant_violations(order: OrderRecord) -> list[str]:
    """What is wrong with one order: filled + remaining = quantity, fills add up, nothing negative."""
    problems: list[str] = []
    coid = order.client_order_id
    if order.filled_quantity < 0 or order.filled_quantity > order.quantity:
        problems.append(f"{coid}: filled {order.filled_quantity} outside [0, {order.quantity}]")
    if order.filled_quantity + order.remaining != order.quantity:
        problems.append(f"{coid}: filled + remaining != quantity")
    fills_total = sum(order.fill_quantities.values(), Decimal(0))
    if order.fill_quantities and fills_total != order.filled_quantity:
        problems.append(f"{coid}: fills sum to {fills_total}, order says {order.filled_quantity}")
    if order.status == OrderStatus.FILLED and order.filled_quantity != order.quantity and order.fill_quantities:
        problems.append(f"{coid}: FILLED with {order.filled_quantity} of {order.quantity}")
    return problems


def fills_by_symbol(orders: dict[str, OrderRecord]) -> dict[str, Decimal]:
    """Signed sum of the filled quantity of every order, per symbol."""
    sums: dict[str, Decimal] = {}
    for order in orders.values():
        if order.filled_quantity:
            sums[order.symbol] = sums.get(order.symbol, Decimal(0)) + order.signed_filled
    return sums


def position_baselines(orders: dict[str, OrderRecord], positions: dict[str, Position]) -> dict[str, Decimal]:
    """Per symbol, the part of the position not explained by the fills of known orders.

    Taken after loading and after every audited reconciliation correction (a venue position the
    local fills do not explain, or fills adopted with an external order); from then on every change
    of a position must come from a fill of an order: position = baseline + sum of fills.
    """
    sums = fills_by_symbol(orders)
    return {
        symbol: positions.get(symbol, Position()).quantity - sums.get(symbol, Decimal(0))
        for symbol in set(sums) | set(positions)
    }


def position_invariant_violations(
    orders: dict[str, OrderRecord], positions: dict[str, Position], baselines: dict[str, Decimal]
) -> list[str]:
    """Symbols whose position is not its baseline plus the sum of its orders' fills."""
    sums = fills_by_symbol(orders)
    problems: list[str] = []
    for symbol in sorted(set(sums) | set(positions) | set(baselines)):
        expected = baselines.get(symbol, Decimal(0)) + sums.get(symbol, Decimal(0))
        actual = positions.get(symbol, Position()).quantity
        if expected != actual:
            problems.append(f"{symbol}: position {actual} != sum of fills {expected}")
    return problems


# ---------------------------------------------------------------------- dead-man's switch (FM-N8)


@dataclass
class CountdownPlanner:
    """Which symbols' venue auto-cancel countdown to arm, refresh or disarm (times in ns).

    A symbol with live orders at the venue is armed and re-armed every `refresh_ns`; a symbol that
    was armed and has no live order any more is disarmed once (countdownTime=0).
    """

    countdown_ms: int
    refresh_ns: int
    armed_at: dict[str, int] = field(default_factory=dict)

    def due(self, live_symbols: set[str], now_ns: int) -> dict[str, int]:
        """symbol -> countdown to send now (0 disarms); empty when nothing is due."""
        if self.countdown_ms <= 0:
            return {}
        actions: dict[str, int] = {}
        for symbol in sorted(live_symbols):
            armed = self.armed_at.get(symbol)
            if armed is None or now_ns - armed >= self.refresh_ns:
                actions[symbol] = self.countdown_ms
        for symbol in sorted(set(self.armed_at) - live_symbols):
            actions[symbol] = 0
        return actions

    def sent(self, symbol: str, countdown_ms: int, now_ns: int) -> None:
        """Record a successful arm (or disarm) call."""
        if countdown_ms > 0:
            self.armed_at[symbol] = now_ns
        else:
            self.armed_at.pop(symbol, None)

    def forget(self) -> None:
        """The venue link was lost: re-arm (or disarm) every known symbol at the next chance."""
        for symbol in self.armed_at:
            self.armed_at[symbol] = -(2**62)


# ---------------------------------------------------------------------- protective stops (FM-C2)

PROTECT_PREFIX = "protect:"
"""Idempotency keys of the position service's own protective orders start with this."""


def is_protective(order: OrderRecord) -> bool:
    """True for a stop-loss or take-profit order the position service placed itself."""
    return order.idempotency_key.startswith(PROTECT_PREFIX)


@dataclass(frozen=True)
class Protection:
    """The protective levels of a symbol's position, from the entry order that carried them."""

    entry: str  # client order id of the entry
    symbol: str
    stop_loss: Decimal | None
    take_profit: Decimal | None


@dataclass(frozen=True)
class ProtectiveOrder:
    """One reduce-only order that should rest at the venue for a position."""

    idempotency_key: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    price: Decimal | None = None
    stop_price: Decimal | None = None


def protective_orders(protection: Protection | None, position: Decimal) -> list[ProtectiveOrder]:
    """The reduce-only stop (STOP_MARKET) and take-profit (LIMIT) a position needs.

    The idempotency key (hence the client order id) is derived from the entry and the size, so the
    same position always asks for the same orders: a restart finds them instead of duplicating them,
    and a change of size asks for new ones (the old ones are then cancelled).
    """
    if protection is None or position == 0:
        return []
    side = Side.SELL if position > 0 else Side.BUY
    size = abs(position).normalize()
    wanted: list[ProtectiveOrder] = []
    if protection.stop_loss is not None:
        key = f"{PROTECT_PREFIX}stop:{protection.entry}:{size}"
        wanted.append(
            ProtectiveOrder(key, protection.symbol, side, OrderType.STOP_MARKET, size, stop_price=protection.stop_loss)
        )
    if protection.take_profit is not None:
        key = f"{PROTECT_PREFIX}tp:{protection.entry}:{size}"
        wanted.append(
            ProtectiveOrder(key, protection.symbol, side, OrderType.LIMIT, size, price=protection.take_profit)
        )
    return wanted


@dataclass(frozen=True)
class ProtectionPlan:
    """What to do at the venue so the symbol's protective orders match its position."""

    place: list[ProtectiveOrder]
    cancel: list[str]  # client order ids of live protective orders no longer wanted
    unavailable: list[str]  # wanted ids already used by a finished order (cannot be reused)


def plan_protection(
    wanted: list[ProtectiveOrder], orders: dict[str, OrderRecord], symbol: str, coid_of: dict[str, str]
) -> ProtectionPlan:
    """Compare wanted protective orders with the known ones of `symbol`.

    Args:
        wanted: `protective_orders(...)` for the symbol's position.
        orders: every known order.
        symbol: the symbol.
        coid_of: idempotency key -> client order id of every wanted order.
    """
    wanted_ids = {coid_of[w.idempotency_key] for w in wanted}
    place: list[ProtectiveOrder] = []
    unavailable: list[str] = []
    for item in wanted:
        coid = coid_of[item.idempotency_key]
        known = orders.get(coid)
        if known is None:
            place.append(item)
        elif is_terminal(known.status) and known.status != OrderStatus.FILLED:
            unavailable.append(coid)
    cancel = sorted(
        coid
        for coid, order in orders.items()
        if order.symbol == symbol and is_protective(order) and not is_terminal(order.status) and coid not in wanted_ids
    )
    return ProtectionPlan(place=place, cancel=cancel, unavailable=unavailable)

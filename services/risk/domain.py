"""Pure risk logic: the trading state machine (ACTIVE/REDUCING/HALTED) and pre-trade checks.

Nothing here touches the network or the clock; callers pass in what they know (trading state,
hot state, positions, a reference price) and get a decision back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

import msgspec

from libs.fsm import IllegalTransition, next_state
from libs.ids import client_order_id_for
from proto.enums import ConnectionState, DegradationLevel, HotStateStatus, OrderSource, OrderType, Side, TradingState
from proto.messages import SubmitOrder


class TradingTrigger(StrEnum):
    """What moves the trading state."""

    HALT = "HALT"
    REDUCE = "REDUCE"
    RESUME = "RESUME"


TRADING_TRANSITIONS: dict[tuple[TradingState, TradingTrigger], TradingState] = {
    (TradingState.ACTIVE, TradingTrigger.HALT): TradingState.HALTED,
    (TradingState.ACTIVE, TradingTrigger.REDUCE): TradingState.REDUCING,
    (TradingState.ACTIVE, TradingTrigger.RESUME): TradingState.ACTIVE,
    (TradingState.REDUCING, TradingTrigger.HALT): TradingState.HALTED,
    (TradingState.REDUCING, TradingTrigger.REDUCE): TradingState.REDUCING,
    (TradingState.REDUCING, TradingTrigger.RESUME): TradingState.ACTIVE,
    (TradingState.HALTED, TradingTrigger.HALT): TradingState.HALTED,
    (TradingState.HALTED, TradingTrigger.RESUME): TradingState.ACTIVE,
    # HALTED -> REDUCING is deliberately absent: leaving a halt takes an explicit resume.
}


class InvalidTransition(IllegalTransition):
    """The trigger is not allowed from the current state."""


def next_trading_state(state: TradingState, trigger: TradingTrigger) -> TradingState:
    """Look up the trading state that follows `state` under `trigger`.

    Raises:
        InvalidTransition: the pair is not in `TRADING_TRANSITIONS`.
    """
    return next_state(TRADING_TRANSITIONS, state, trigger, InvalidTransition)


class TradingStateRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The persisted trading state (KV `trading_state`)."""

    state: TradingState
    reason: str = ""
    operator: str | None = None
    ts_ns: int = 0


_record_decoder = msgspec.json.Decoder(TradingStateRecord)


def load_trading_state(raw: bytes | None) -> TradingStateRecord:
    """Parse the persisted value; never set means ACTIVE.

    A value that cannot be parsed means HALTED: fail closed rather than trade on a guess.
    """
    if raw is None:
        return TradingStateRecord(state=TradingState.ACTIVE, reason="never set")
    try:
        return _record_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return TradingStateRecord(state=TradingState.HALTED, reason=f"unreadable persisted state: {exc}")


def dump_trading_state(record: TradingStateRecord) -> bytes:
    """JSON bytes of the persisted trading state."""
    return msgspec.json.encode(record)


@dataclass(frozen=True)
class RiskLimits:
    """Static limits from settings."""

    symbols: frozenset[str]
    max_position_qty: Decimal
    max_order_notional: Decimal
    liquid_symbols: frozenset[str] | None = None  # REDUCED_FUNCTIONALITY: only these (None: all symbols)
    reduced_size_factor: Decimal = Decimal("0.5")
    reduced_min_confidence: Decimal = Decimal("0.8")
    max_orders_per_minute: int = 30


@dataclass(frozen=True)
class Decision:
    """Outcome of the pre-trade checks; `reason` explains a denial."""

    approved: bool
    reason: str = ""


APPROVED = Decision(approved=True, reason="all checks passed")


def signed_quantity(side: Side, quantity: Decimal) -> Decimal:
    """Quantity with the sign of its side (BUY positive)."""
    return quantity if side == Side.BUY else -quantity


def reduces_exposure(order: SubmitOrder, position: Decimal) -> bool:
    """True when the order can only shrink the absolute position (never flip or grow it)."""
    if position == 0 or order.quantity <= 0:
        return False
    opposite = (position > 0 and order.side == Side.SELL) or (position < 0 and order.side == Side.BUY)
    return opposite and order.quantity <= abs(position)


def reduces_exposure_with_pending(
    order: SubmitOrder, position: Decimal, pending_buy: Decimal, pending_sell: Decimal
) -> bool:
    """Does the order reduce exposure even once every pending order on its side has filled?

    A reduce-only order is judged against the position alone: the venue refuses to let it flip
    the position. Any other order must still reduce after the pending ones (e.g. a flatten in
    flight), or together they could open a position the other way.
    """
    if order.reduce_only:
        return reduces_exposure(order, position)
    projected = position + pending_buy if order.side == Side.BUY else position - pending_sell
    return reduces_exposure(order, projected)


def is_protective_stop(order: SubmitOrder, position: Decimal) -> bool:
    """A reduce-only stop that can only shrink the position: allowed even while HALTED (SPEC §0)."""
    return order.order_type == OrderType.STOP_MARKET and order.reduce_only and reduces_exposure(order, position)


def degradation_gate(
    order: SubmitOrder, level: DegradationLevel | None, reducing: bool, confidence: Decimal | None, limits: RiskLimits
) -> Decision | None:
    """SPEC §5 effects of the degradation level on one order (None: the level allows it).

    Exposure-reducing orders always pass: every level wants less exposure, never more.
    """
    if reducing or level == DegradationLevel.NORMAL:
        return None
    match level:
        case None:
            return Decision(False, "degradation level unknown: no new entries (fail closed)")
        case DegradationLevel.HARD_SHUTDOWN:
            return Decision(False, "HARD_SHUTDOWN: no orders except flattening")
        case DegradationLevel.EMERGENCY_MODE:
            return Decision(False, "EMERGENCY_MODE: no new entries")
        case DegradationLevel.REDUCED_FUNCTIONALITY:
            if limits.liquid_symbols is not None and order.symbol not in limits.liquid_symbols:
                return Decision(False, f"REDUCED_FUNCTIONALITY: {order.symbol} is not among the most liquid symbols")
            if order.source == OrderSource.STRATEGY and (
                confidence is None or confidence < limits.reduced_min_confidence
            ):
                shown = "unknown" if confidence is None else str(confidence)
                return Decision(
                    False,
                    f"REDUCED_FUNCTIONALITY: signal confidence {shown} below {limits.reduced_min_confidence}",
                )
    return None


def position_limit(limits: RiskLimits, level: DegradationLevel | None) -> Decimal:
    """Max absolute position: halved in REDUCED_FUNCTIONALITY (SPEC §5 "position size x 0.5")."""
    if level == DegradationLevel.REDUCED_FUNCTIONALITY:
        return limits.max_position_qty * limits.reduced_size_factor
    return limits.max_position_qty


def check_order(
    order: SubmitOrder,
    *,
    trading_state: TradingState,
    hot_state: HotStateStatus | None,
    position: Decimal,
    reference_price: Decimal | None,
    limits: RiskLimits,
    degradation: DegradationLevel | None = DegradationLevel.NORMAL,
    pending_buy: Decimal = Decimal(0),
    pending_sell: Decimal = Decimal(0),
    entries_paused: str | None = None,
    strategy_disabled: str | None = None,
    confidence: Decimal | None = None,
    recent_strategy_orders: int = 0,
    entries_halted: str | None = None,
    holders: frozenset[str] = frozenset(),
) -> Decision:
    """Run every pre-trade check in order; the first failure is the denial reason.

    Args:
        order: the order to check.
        trading_state: current trading state.
        hot_state: the symbol's hot-state status (None: unknown, treated as not VALID).
        position: current signed position of the symbol (base units).
        reference_price: order price, else last mark or best bid/ask; None when unknown.
        limits: static limits.
        degradation: the watchdog's degradation level (None: unknown, fail closed).
        pending_buy: quantity of approved, not yet filled BUY orders of the symbol.
        pending_sell: quantity of approved, not yet filled SELL orders of the symbol.
        entries_paused: why new entries are paused (CB-2), None when they are not.
        strategy_disabled: why the order's strategy is disabled (CB-3), None when it is not.
        confidence: the signal's confidence, for strategy orders.
        recent_strategy_orders: exposure-adding orders of the order's strategy approved in the last minute.
        entries_halted: why trading is HALTED for new entries by a lost dependency (state-builder
            dead, bus lost: FM-C1, FM-C6), None when it is not; exits and stops still pass.
        holders: who holds the symbol: the owner of its open position and of every entry in
            flight (`order_holder` names). A strategy enters only a symbol nobody else holds: the
            venue keeps one position per symbol, so a second owner's entry would merge into the
            first's position and either's exit would close both.
    """
    if order.symbol not in limits.symbols:
        return Decision(False, f"unknown symbol {order.symbol}")
    if order.quantity <= 0:
        return Decision(False, f"quantity must be positive, got {order.quantity}")
    reducing = reduces_exposure_with_pending(order, position, pending_buy, pending_sell)
    if trading_state == TradingState.HALTED and not is_protective_stop(order, position):
        return Decision(False, "trading HALTED: no new orders")
    if trading_state == TradingState.REDUCING and not reducing:
        return Decision(False, "trading REDUCING: only orders that reduce exposure are allowed")
    if order.reduce_only and not reducing:
        return Decision(False, f"reduce_only order would not reduce the position {position}")
    if entries_halted is not None and not reducing:
        return Decision(False, f"trading HALTED for new entries: {entries_halted}")
    gate = degradation_gate(order, degradation, reducing, confidence, limits)
    if gate is not None:
        return gate
    if not reducing:
        if entries_paused is not None:
            return Decision(False, f"new entries paused (CB-2): {entries_paused}")
        if strategy_disabled is not None:
            return Decision(False, f"strategy {order.strategy} disabled (CB-3): {strategy_disabled}")
        if order.source == OrderSource.STRATEGY and recent_strategy_orders >= limits.max_orders_per_minute:
            return Decision(False, f"strategy {order.strategy} above {limits.max_orders_per_minute} orders per minute")
        others = holders - {order_holder(order)}
        if order.source == OrderSource.STRATEGY and others:
            return Decision(
                False,
                f"{order.symbol} is held by {', '.join(sorted(others))}: "
                "a strategy enters only a symbol no one else holds (one position per symbol)",
            )
    if hot_state != HotStateStatus.VALID and not reducing:
        status = hot_state.value if hot_state is not None else "UNKNOWN"
        return Decision(False, f"hot state of {order.symbol} is {status}, not VALID")
    # Approved orders that have not filled yet count as if they had: a burst cannot overshoot.
    base = position + pending_buy if order.side == Side.BUY else position - pending_sell
    after = base + signed_quantity(order.side, order.quantity)
    limit = position_limit(limits, degradation)
    if abs(after) > limit and abs(after) > abs(base):
        pending = " (with pending orders)" if base != position else ""
        return Decision(False, f"position would be {after}{pending}, above the limit {limit}")
    if not reducing:
        if reference_price is None or reference_price <= 0:
            return Decision(False, f"no reference price for {order.symbol}: cannot check notional")
        notional = order.quantity * reference_price
        if notional > limits.max_order_notional:
            return Decision(False, f"notional {notional} above the limit {limits.max_order_notional}")
    return APPROVED


def reference_price(
    order: SubmitOrder, mark_price: Decimal | None, best_bid: Decimal | None, best_ask: Decimal | None
) -> Decimal | None:
    """The price notional is computed at: the order's own price, else the mark, else the far touch."""
    if order.price is not None:
        return order.price
    if order.stop_price is not None:
        return order.stop_price
    if mark_price is not None:
        return mark_price
    touch = best_ask if order.side == Side.BUY else best_bid
    return touch if touch is not None else (best_bid or best_ask)


# --------------------------------------------------------------------------- degradation level


def parse_degradation_level(raw: bytes | None) -> DegradationLevel | None:
    """The level in KV `degradation_level` (`{"level": ...}`); never set means NORMAL.

    Unreadable or unknown values give None, which the checks treat as fail closed.
    """
    if raw is None:
        return DegradationLevel.NORMAL
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    level = value.get("level") if isinstance(value, dict) else None
    return DegradationLevel(level) if isinstance(level, str) and level in DegradationLevel.__members__ else None


# --------------------------------------------------------------------------- pending exposure


def order_holder(order: SubmitOrder) -> str:
    """Who an order trades for: its strategy's name, else its source (`operator`, `risk`, `external`)."""
    if order.source == OrderSource.STRATEGY and order.strategy:
        return order.strategy
    return order.source.value.lower()


UNATTRIBUTED = "a position not opened by a strategy"
"""The holder of an open position without a known strategy (opened by an operator, or before what
risk remembers)."""


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

    def totals(self, symbol: str) -> tuple[Decimal, Decimal]:
        """(pending BUY, pending SELL) quantity of a symbol."""
        buy = sell = Decimal(0)
        for pending in self._orders.values():
            if pending.symbol != symbol:
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

    def entry_holders(self, symbol: str) -> set[str]:
        """Who has an entry (an order that could add exposure) in flight in `symbol`."""
        return {
            pending.holder or UNATTRIBUTED
            for pending in self._orders.values()
            if pending.symbol == symbol and not pending.reduce_only
        }

    def venues(self, symbol: str, main_venue: str) -> set[str]:
        """The venues with an order in flight in `symbol` ("" in an old snapshot: the main venue)."""
        return {pending.venue or main_venue for pending in self._orders.values() if pending.symbol == symbol}

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


# --------------------------------------------------------------------------- flattening


# --------------------------------------------------------------------------- venues (FM-N6)


def book_key(venue: str, symbol: str, main_venue: str) -> str:
    """Key of one venue's position in a symbol: the symbol itself on the main venue (the form
    snapshots always had), `<venue>:<symbol>` on a backup venue."""
    return symbol if venue in ("", main_venue) else f"{venue}:{symbol}"


def split_book(book: str, main_venue: str) -> tuple[str, str]:
    """(venue, symbol) of a `book_key`."""
    venue, _, symbol = book.rpartition(":")
    return (venue or main_venue), symbol


class OrderLinks(msgspec.Struct, frozen=True, kw_only=True):
    """The venues orders may go to and the state of each one's order link (position's
    `LinkStateChanged`, link `orders`; None: never heard of, e.g. its process not started yet)."""

    main: str
    backup: str = ""
    states: dict[str, ConnectionState | None] = {}

    def usable(self, venue: str) -> bool:
        """Would an order sent to `venue` now go out (not queued behind a venue outage)?"""
        return self.states.get(venue) != ConnectionState.DISCONNECTED

    def known(self, venue: str) -> bool:
        return venue == self.main or (self.backup != "" and venue == self.backup)


class Route(msgspec.Struct, frozen=True):
    venue: str
    reason: str


def route_order(
    order: SubmitOrder, links: OrderLinks, positions: dict[str, Decimal], in_flight: set[str]
) -> Route | None:
    """The venue an order goes to (FM-N6), None for a venue that is not configured.

    A symbol's position lives on one venue: an order in a symbol that has a position or orders in
    flight on a venue goes there (an exit can only close the position where it is; an entry next to
    a queued one would otherwise split the symbol over two venues). An order in a flat symbol with
    nothing in flight goes to the main venue, or to the backup while the main venue's order link is
    DISCONNECTED and the backup's is not. An order naming the backup venue itself is sent there.
    `positions` is keyed by venue (this symbol only); `in_flight` are the venues with pending orders.
    """
    requested = order.venue or links.main
    if not links.known(requested):
        return None
    if not links.backup:
        return Route(requested, "")
    held = {venue for venue, quantity in positions.items() if quantity != 0} | in_flight
    if len(held) == 1:
        (venue,) = held
        return Route(venue, "" if venue == requested else f"{order.symbol} is on {venue}")
    if len(held) > 1:
        # Positions on both venues (only an adopted outside position can do that): an order that
        # reduces one of them goes there; anything else stays where it was asked for.
        for venue in sorted(held):
            if reduces_exposure(order, positions.get(venue, Decimal(0))):
                return Route(venue, f"reduces the {order.symbol} position on {venue}")
        return Route(requested, "")
    if (
        requested == links.main
        and not links.usable(links.main)
        and links.states.get(links.backup) == ConnectionState.CONNECTED
    ):
        return Route(links.backup, f"failover: the {links.main} order link is DISCONNECTED (FM-N6)")
    return Route(requested, "")


def flatten_orders(positions: dict[str, Decimal], key: str, main_venue: str) -> list[SubmitOrder]:
    """Reduce-only MARKET orders that close every open position, each on the venue that holds it.

    `positions` is keyed by `book_key`. `key` names the cause (e.g. the breaker trip); the
    idempotency key `flatten:<key>:<book>` makes a re-run of the same flatten produce the same
    client order ids, so it is sent once.
    """
    orders = []
    for book, quantity in sorted(positions.items()):
        if quantity == 0:
            continue
        venue, symbol = split_book(book, main_venue)
        idempotency_key = f"flatten:{key}:{book}"
        orders.append(
            SubmitOrder(
                client_order_id=client_order_id_for(idempotency_key),
                idempotency_key=idempotency_key,
                source=OrderSource.RISK,
                symbol=symbol,
                side=Side.SELL if quantity > 0 else Side.BUY,
                order_type=OrderType.MARKET,
                quantity=abs(quantity),
                venue=venue,
                reduce_only=True,
                correlation_id=idempotency_key,
            )
        )
    return orders


# --------------------------------------------------------------------------- lost dependencies (FM-C1, FM-C6)

STATE_BUILDER_TIMEOUT_NS = 3_000_000_000
"""No heartbeat and no answer from the state-builder for this long: it is dead (SPEC FM-C1)."""
HOT_STATE_MAX_AGE_MS = 5_000
"""A symbol whose last book update is older than this (as the state-builder reports it) is not VALID."""


@dataclass
class StateBuilderWatch:
    """Is the state-builder alive? Fed with the (monotonic) times it was last heard from.

    It is heard from through its heartbeat `hb.state-builder` and its answers to `svc.state-builder.*`.
    Never heard from counts as dead (fail closed).
    """

    timeout_ns: int = STATE_BUILDER_TIMEOUT_NS
    last_seen_ns: int | None = None

    def heard(self, now_ns: int) -> bool:
        """Record a sign of life; True when it was dead until now (a revival)."""
        revived = not self.alive(now_ns)
        self.last_seen_ns = now_ns
        return revived

    def alive(self, now_ns: int) -> bool:
        return self.last_seen_ns is not None and now_ns - self.last_seen_ns <= self.timeout_ns

    def down_reason(self, now_ns: int) -> str | None:
        """Why the state-builder counts as dead, None while it is alive."""
        if self.alive(now_ns):
            return None
        if self.last_seen_ns is None:
            return "state-builder not heard from (no heartbeat, no answer): hot state treated as INVALID"
        silent_s = (now_ns - self.last_seen_ns) / 1e9
        return f"state-builder silent for {silent_s:.1f}s (no heartbeat, no answer): hot state treated as INVALID"


def reply_hot_state(status: HotStateStatus, age_ms: int | None) -> HotStateStatus:
    """A symbol's hot state as the state-builder reported it, INVALID when its data is too old."""
    if status == HotStateStatus.VALID and age_ms is not None and age_ms > HOT_STATE_MAX_AGE_MS:
        return HotStateStatus.INVALID
    return status

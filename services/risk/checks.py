"""Pre-trade checks, pure: the limits, `check_order` (every check, first failure wins), the
degradation-level gate (SPEC §5), the reference price and who an order trades for.

Nothing here touches the network or the clock; callers pass in what they know (trading state,
hot state, positions, a reference price) and get a decision back.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from proto.enums import DegradationLevel, HotStateStatus, OrderSource, OrderType, Side, TradingState
from proto.kv import DegradationLevelValue, decode_value
from proto.messages import SubmitOrder


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


def parse_degradation(raw: bytes | None) -> tuple[DegradationLevel | None, int]:
    """(level, ts_ns) of KV `degradation_level` (`proto.kv.DegradationLevelValue`); never set means
    NORMAL at 0.

    Unreadable or unknown values give (None, 0): the checks treat None as fail closed.
    """
    if raw is None:
        return DegradationLevel.NORMAL, 0
    value = decode_value(DegradationLevelValue, raw)
    return (value.level, value.ts_ns) if value is not None else (None, 0)


def order_holder(order: SubmitOrder) -> str:
    """Who an order trades for: its strategy's name, else its source (`operator`, `risk`, `external`)."""
    if order.source == OrderSource.STRATEGY and order.strategy:
        return order.strategy
    return order.source.value.lower()


UNATTRIBUTED = "a position not opened by a strategy"
"""The holder of an open position without a known strategy (opened by an operator, or before what
risk remembers)."""

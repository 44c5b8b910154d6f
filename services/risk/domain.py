"""Pure risk logic: the trading state machine (ACTIVE/REDUCING/HALTED) and pre-trade checks.

Nothing here touches the network or the clock; callers pass in what they know (trading state,
hot state, positions, a reference price) and get a decision back.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

import msgspec

from libs.fsm import IllegalTransition, next_state
from proto.enums import HotStateStatus, Side, TradingState
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


def check_order(
    order: SubmitOrder,
    *,
    trading_state: TradingState,
    hot_state: HotStateStatus | None,
    position: Decimal,
    reference_price: Decimal | None,
    limits: RiskLimits,
) -> Decision:
    """Run every pre-trade check in order; the first failure is the denial reason.

    Args:
        order: the order to check.
        trading_state: current trading state.
        hot_state: the symbol's hot-state status (None: unknown, treated as not VALID).
        position: current signed position of the symbol (base units).
        reference_price: order price, else last mark or best bid/ask; None when unknown.
        limits: static limits.
    """
    if order.symbol not in limits.symbols:
        return Decision(False, f"unknown symbol {order.symbol}")
    if order.quantity <= 0:
        return Decision(False, f"quantity must be positive, got {order.quantity}")
    reducing = reduces_exposure(order, position)
    if trading_state == TradingState.HALTED:
        return Decision(False, "trading HALTED: no new orders")
    if trading_state == TradingState.REDUCING and not reducing:
        return Decision(False, "trading REDUCING: only orders that reduce exposure are allowed")
    if order.reduce_only and not reducing:
        return Decision(False, f"reduce_only order would not reduce the position {position}")
    if hot_state != HotStateStatus.VALID and not reducing:
        status = hot_state.value if hot_state is not None else "UNKNOWN"
        return Decision(False, f"hot state of {order.symbol} is {status}, not VALID")
    after = position + signed_quantity(order.side, order.quantity)
    if abs(after) > limits.max_position_qty and abs(after) > abs(position):
        return Decision(False, f"position would be {after}, above the limit {limits.max_position_qty}")
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

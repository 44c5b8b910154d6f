"""The trading state ACTIVE/REDUCING/HALTED (SPEC §0), pure: its transition table and how its
persisted value (`proto.kv.TradingStateValue`, KV `trading_state`) is read, failing closed.
Changing it in the service is `trading_control`.
"""

from __future__ import annotations

from enum import StrEnum

from libs.fsm import IllegalTransition, next_state
from proto.enums import TradingState
from proto.kv import TradingStateValue, decode_value


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


def load_trading_state(raw: bytes | None) -> TradingStateValue:
    """Parse the persisted value (KV `trading_state`); never set means ACTIVE.

    A value that cannot be parsed means HALTED: fail closed rather than trade on a guess.
    """
    if raw is None:
        return TradingStateValue(state=TradingState.ACTIVE, reason="never set")
    value = decode_value(TradingStateValue, raw)
    if value is None:
        return TradingStateValue(state=TradingState.HALTED, reason=f"unreadable persisted state: {bytes(raw[:120])!r}")
    return value

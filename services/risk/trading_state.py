"""The trading state ACTIVE/REDUCING/HALTED (SPEC §0), pure: its transition table and its
persisted record (KV `trading_state`). Changing it in the service is `trading_control`.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from libs.fsm import IllegalTransition, next_state
from proto.enums import TradingState


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

"""Trading state control in the running service: changing it (published durably, then persisted),
the halt/resume/reduce endpoints, and what refuses a resume (a tripped CB-1, HARD_SHUTDOWN).
"""

from __future__ import annotations

import msgspec

from libs.bus import RequestHandler
from proto import subjects
from proto.enums import DegradationLevel, TradingState
from proto.kv import TradingStateValue
from proto.messages import TradingStateChanged
from proto.replies import TradingControlReply, TradingControlRequest, error_reply

from . import adapters
from .core import RiskCore
from .trading_state import InvalidTransition, TradingTrigger, next_trading_state

RISK_OPERATOR = "risk"
"""The operator name on what risk does by itself (halts, flattens, strategy commands)."""

_control_request = msgspec.json.Decoder(TradingControlRequest)


async def change_state(
    risk: RiskCore, trigger: TradingTrigger, operator: str, reason: str
) -> tuple[TradingState, TradingState]:
    """Apply a trigger: publish `TradingStateChanged` durably, persist, then return (new, previous).

    Raises:
        InvalidTransition: the trigger is not allowed now.
    """
    async with risk.trading_lock:
        previous = risk.trading.state
        current = next_trading_state(previous, trigger)
        event = TradingStateChanged(previous=previous, current=current, reason=reason, operator=operator)
        await risk.bus.publish(subjects.EVT_TRADING_STATE, event)
        record = TradingStateValue(state=current, reason=reason, operator=operator, ts_ns=risk.clock())
        await adapters.write_trading_state(risk.bus, record)
        risk.trading = record
        risk.log.info(
            "trading_state_changed",
            previous=previous.value,
            current=current.value,
            operator=operator,
            reason=reason,
        )
        return current, previous


def _resume_blocker(risk: RiskCore) -> tuple[str, str] | None:
    """Why a resume must be refused now: a tripped CB-1 or HARD_SHUTDOWN."""
    if risk.breakers is not None and risk.breakers.rapid_loss.is_open:
        return (
            "breaker_open",
            f"CB-1 rapid loss is tripped ({risk.breakers.rapid_loss.record.reason}); reset it first",
        )
    if risk.degradation == DegradationLevel.HARD_SHUTDOWN:
        return "hard_shutdown", "degradation level is HARD_SHUTDOWN: only a manual restart leaves it"
    return None


def request_handler(risk: RiskCore, trigger: TradingTrigger) -> RequestHandler:
    """The `svc.risk.halt` / `resume` / `reduce` endpoint of `trigger`: `TradingControlRequest` →
    `TradingControlReply`, or an error reply (reason missing, resume blocked, invalid transition)."""

    async def handle(payload: bytes) -> bytes:
        try:
            request = _control_request.decode(payload or b"{}")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return error_reply("bad_request", str(exc))
        if not request.reason.strip():
            return error_reply("bad_request", "a reason is required")
        if trigger == TradingTrigger.RESUME:
            blocker = _resume_blocker(risk)
            if blocker is not None:
                return error_reply(*blocker)
        try:
            current, previous = await change_state(risk, trigger, request.operator, request.reason)
        except InvalidTransition as exc:
            return error_reply("invalid_transition", str(exc))
        return msgspec.json.encode(TradingControlReply(trading_state=current, previous=previous))

    return handle

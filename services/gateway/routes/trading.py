"""Trading controls: halt and resume (risk owns the state), the operator emergency stop
(HARD_SHUTDOWN), and the circuit breakers (list, manual reset through risk)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Path

from proto import subjects
from proto.enums import AlertSeverity, DegradationLevel
from proto.kv import DegradationLevelValue, decode_breaker, encode_value
from proto.messages import AlertRaised, DegradationLevelChanged
from proto.replies import BreakerResetReply, BreakerResetRequest, TradingControlReply, TradingControlRequest
from services.gateway.api_models import (
    ERROR_RESPONSES,
    BreakerList,
    ControlRequest,
    EmergencyStopResponse,
    TradingStateResponse,
)
from services.gateway.auth import Principal
from services.gateway.context import BUS_ERRORS, Gateway
from services.gateway.dependencies import CONTROL_BODY, CONTROL_OPENAPI, OPERATOR, VIEWER, GatewayDep
from services.gateway.errors import ApiError, unavailable
from services.gateway.replies import raise_for_risk_error
from services.gateway.routes.strategies import after_cb3_reset

router = APIRouter(tags=["trading"])

TRADING_QUERIES = {"halt": subjects.SVC_RISK_HALT, "resume": subjects.SVC_RISK_RESUME}
"""The risk query behind each trading action of an operator."""


async def _trading(gateway: Gateway, action: str, who: Principal, reason: str) -> dict[str, Any]:
    """Ask risk to `halt` or `resume`; the state risk answers with and the one before."""
    request = TradingControlRequest(operator=who.name, reason=reason or f"operator {action}")
    reply = raise_for_risk_error(
        await gateway.request(
            TRADING_QUERIES[action],
            request,
            TradingControlReply,
            gateway.config.request_timeout_s,
            subjects.RISK,
        )
    )
    result = {
        "trading_state": reply.trading_state.value,
        "previous": reply.previous.value if reply.previous is not None else None,
    }
    log = gateway.ctx.log
    log.info("trading_state_requested", action=action, operator=who.name, role=who.role.label, result=result)
    return result


@router.post(
    "/v1/trading/halt",
    response_model=TradingStateResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=CONTROL_OPENAPI,
)
async def halt(gateway: GatewayDep, who: Principal = OPERATOR, body: ControlRequest = CONTROL_BODY) -> dict[str, Any]:
    """Halt trading (risk owns the state). Body optional: `{"reason"}` as JSON or form, any content type."""
    return await _trading(gateway, "halt", who, body.reason)


@router.post(
    "/v1/trading/resume",
    response_model=TradingStateResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=CONTROL_OPENAPI,
)
async def resume(gateway: GatewayDep, who: Principal = OPERATOR, body: ControlRequest = CONTROL_BODY) -> dict[str, Any]:
    """Resume trading (risk validates and owns the state)."""
    return await _trading(gateway, "resume", who, body.reason)


@router.post(
    "/v1/emergency-stop",
    response_model=EmergencyStopResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=CONTROL_OPENAPI,
)
async def emergency_stop(
    gateway: GatewayDep, who: Principal = OPERATOR, body: ControlRequest = CONTROL_BODY
) -> dict[str, Any]:
    """Operator emergency stop: degradation level HARD_SHUTDOWN (left only by a manual restart) and a halt."""
    ctx = gateway.ctx
    reason = body.reason or "operator emergency stop"
    stored = await gateway.kv_value(DegradationLevelValue, subjects.KEY_DEGRADATION_LEVEL)
    previous = stored.level if stored is not None else None
    event = DegradationLevelChanged(
        previous=previous, current=DegradationLevel.HARD_SHUTDOWN, reason=f"{reason} (by {who.name})"
    )
    await gateway.publish(subjects.EVT_DEGRADATION, event)
    record = DegradationLevelValue(
        level=DegradationLevel.HARD_SHUTDOWN,
        reason=event.reason,
        previous=previous,
        ts_ns=event.ts_event_ns,
    )
    try:
        await ctx.bus.kv_put(subjects.KEY_DEGRADATION_LEVEL, encode_value(record))
    except BUS_ERRORS as exc:
        raise unavailable("nats", f"could not persist HARD_SHUTDOWN: {type(exc).__name__}: {exc}"[:300]) from exc
    ctx.log.error("emergency_stop", operator=who.name, reason=reason, action_taken="HARD_SHUTDOWN, halt")
    await gateway.record_action(who, "emergency_stop", "system", reason)
    alert = AlertRaised(
        key=f"degradation:{DegradationLevel.HARD_SHUTDOWN.value}",  # the watchdog's key for a level's alert
        severity=AlertSeverity.P0,
        component=subjects.GATEWAY,
        title=f"emergency stop by {who.name}: HARD_SHUTDOWN",
        details={"reason": reason, "operator": who.name},
    )
    try:
        await ctx.bus.publish(subjects.EVT_ALERT_RAISED, alert)
    except BUS_ERRORS as exc:
        ctx.log.error("emergency_stop_alert_failed", error=str(exc)[:300])
    trading_state: str | None = None
    try:
        trading_state = (await _trading(gateway, "halt", who, reason))["trading_state"]
    except ApiError as exc:  # the level is persisted; risk halts on its own when it sees it
        ctx.log.warning("emergency_stop_halt_failed", error=exc.message)
    return {
        "degradation_level": DegradationLevel.HARD_SHUTDOWN.value,
        "previous": previous.value if previous is not None else None,
        "trading_state": trading_state,
    }


@router.get("/v1/breakers", response_model=BreakerList, responses=ERROR_RESPONSES)
async def breakers(gateway: GatewayDep, _: Principal = VIEWER) -> dict[str, Any]:
    """Circuit breakers as persisted in the KV bucket (`breaker.<id>`): risk's and the dependency
    and venue breakers, each as its owner wrote it."""
    breakers = await gateway.kv_listing(subjects.KEY_BREAKER_PREFIX, decode_breaker)
    return {"breakers": {key: breaker.shown for key, breaker in breakers.items()}}


@router.post("/v1/breakers/{breaker_id}/reset", responses=ERROR_RESPONSES, openapi_extra=CONTROL_OPENAPI)
async def reset_breaker(
    gateway: GatewayDep,
    breaker_id: Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")],
    who: Principal = OPERATOR,
    body: ControlRequest = CONTROL_BODY,
) -> Any:
    """Manual breaker reset, answered by risk (`svc.risk.breaker_reset`); risk records the operator."""
    # A manual reset needs a reason (SPEC §4); risk refuses an empty one with a 400.
    request = BreakerResetRequest(breaker=breaker_id, operator=who.name, reason=(body.reason or "").strip())
    reply = raise_for_risk_error(
        await gateway.request(
            subjects.SVC_RISK_BREAKER_RESET,
            request,
            BreakerResetReply,
            gateway.config.request_timeout_s,
            subjects.RISK,
        )
    )
    await after_cb3_reset(gateway, breaker_id, who, request.reason)
    gateway.ctx.log.info("breaker_reset_requested", breaker=breaker_id, operator=who.name)
    return msgspec.to_builtins(reply)

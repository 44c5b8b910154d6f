"""Strategies: the configured strategies with their persisted state, and enable/disable commands."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from proto import subjects
from proto.enums import DegradationLevel, StrategyMode
from proto.kv import (
    BreakerValue,
    DegradationLevelValue,
    StrategyCrashesValue,
    StrategyModeValue,
    StrategyStateValue,
    encode_value,
)
from proto.messages import DisableStrategy, EnableStrategy
from services.gateway import strategy_health
from services.gateway.api_models import ERROR_RESPONSES, StrategyCommandResponse, StrategyList, body_schema, parse_body
from services.gateway.auth import Principal
from services.gateway.context import BUS_ERRORS, Gateway
from services.gateway.dependencies import OPERATOR, VIEWER, GatewayDep
from services.gateway.errors import ApiError, unavailable
from services.gateway.replies import reader
from services.gateway.strategy_modes import EnableRequest, Standing, judge_enable, restriction

router = APIRouter(tags=["strategies"])

StrategyName = Annotated[str, Path(max_length=64)]
CB3_PREFIX = "CB-3-"
"""A strategy's CB-3 breaker is `CB-3-<name>` (risk's `strategy_breaker_id`)."""


@router.get("/v1/strategies", response_model=StrategyList, responses=ERROR_RESPONSES)
async def strategies(gateway: GatewayDep, _: Principal = VIEWER) -> dict[str, Any]:
    """Every configured strategy with its persisted state, its crashes in the FM-C2 window and its
    process restarts (`strategy_health`)."""
    items = []
    views = gateway.tracker.view(gateway.clock())
    for name in gateway.ctx.settings.strategies:
        record = await gateway.kv_stored(subjects.key_strategy(name), reader(StrategyStateValue))
        component = subjects.strategy_component(name)
        crashes = await gateway.kv_value(StrategyCrashesValue, subjects.key_strategy_crashes(name))
        view = views.get(component)
        items.append(
            {
                "name": name,
                "component": component,
                "state": record.value.state.value if record is not None else "UNKNOWN",
                "component_state": gateway.component_state(component).value,
                "details": record.shown if record is not None else None,
                "mode": (await _mode(gateway, name)).mode.value,
                **strategy_health.crash_fields(view, crashes, gateway.clock()),
                "restarts": gateway.restarts.restarts(component),
                "pid": view.pid if view is not None else None,
            }
        )
    return {"strategies": items}


async def read_enable(request: Request) -> EnableRequest:
    """The optional enable body (`{"mode", "override", "reason"}`), strict: an unknown field is a 422."""
    return parse_body(await request.body(), request.headers.get("content-type"), EnableRequest)


ENABLE_BODY = Depends(read_enable)
ENABLE_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": False, "content": {"application/json": {"schema": body_schema(EnableRequest)}}}
}


@router.post(
    "/v1/strategies/{name}/enable",
    status_code=202,
    response_model=StrategyCommandResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=ENABLE_OPENAPI,
)
async def enable_strategy(
    gateway: GatewayDep,
    name: StrategyName,
    who: Principal = OPERATOR,
    body: EnableRequest = ENABLE_BODY,
) -> dict[str, Any]:
    """Enable a strategy (`EnableStrategy` on `cmd.strategy.<name>.enable`), live (default) or on
    paper (`{"mode": "paper"}`). A strategy that CB-3 or FAILED stopped comes back only through
    paper: live is 409 unless it runs on paper now or `{"override": true, "reason": ...}`."""
    return await _strategy_command(gateway, name, "enable", who, body)


@router.post(
    "/v1/strategies/{name}/disable", status_code=202, response_model=StrategyCommandResponse, responses=ERROR_RESPONSES
)
async def disable_strategy(gateway: GatewayDep, name: StrategyName, who: Principal = OPERATOR) -> dict[str, Any]:
    """Disable a strategy (`DisableStrategy` on `cmd.strategy.<name>.disable`)."""
    return await _strategy_command(gateway, name, "disable", who)


async def _mode(gateway: Gateway, name: str) -> StrategyModeValue:
    """The strategy's order mode as persisted (never set: live)."""
    return await gateway.kv_value(StrategyModeValue, subjects.key_strategy_mode(name)) or StrategyModeValue()


async def _standing(gateway: Gateway, name: str) -> Standing:
    state = await gateway.kv_value(StrategyStateValue, subjects.key_strategy(name))
    breaker = await gateway.kv_value(BreakerValue, subjects.key_breaker(f"{CB3_PREFIX}{name}"))
    return Standing(
        state=state.state if state is not None else None,
        cb3=breaker.state if breaker is not None else None,
        mode=(await _mode(gateway, name)).mode,
        # The whole system on paper, or a paper venue beside the live ones (`--paper-link`).
        paper_link=gateway.ctx.settings.paper or bool(gateway.ctx.settings.paper_venue),
    )


async def set_mode(gateway: Gateway, name: str, body: EnableRequest, who: Principal, restricted_by: str) -> None:
    """Persist the order mode before the enable goes out, so risk routes the first order right.

    Raises:
        ApiError: 503 when the bus is down or the write fails.
    """
    value = StrategyModeValue(
        mode=body.mode,
        operator=who.name,
        reason=body.reason,
        override=body.override,
        restricted_by=restricted_by,
        ts_ns=gateway.clock(),
    )
    gateway.require_bus()
    try:
        await gateway.ctx.bus.kv_put(subjects.key_strategy_mode(name), encode_value(value))
    except BUS_ERRORS as exc:
        raise unavailable("nats", f"could not persist the strategy's mode: {type(exc).__name__}: {exc}"[:300]) from exc


async def after_cb3_reset(gateway: Gateway, breaker_id: str, who: Principal, reason: str) -> None:
    """A manual reset of `CB-3-<name>` re-enables the strategy live (risk): the operator's explicit,
    audited override, so a strategy on paper is recorded live again (or risk, restarted, would
    still take it for a paper strategy)."""
    name = breaker_id.removeprefix(CB3_PREFIX)
    if not breaker_id.startswith(CB3_PREFIX) or name not in gateway.ctx.settings.strategies:
        return
    if (await _mode(gateway, name)).mode == StrategyMode.LIVE:
        return
    try:
        await set_mode(gateway, name, EnableRequest(override=True, reason=reason or "CB-3 reset"), who, "CB-3")
    except ApiError as exc:
        # The reset happened; risk already routes the strategy live. Said loudly, not answered as a failure.
        gateway.ctx.log.error("strategy_mode_not_persisted", strategy=name, error=exc.message[:300])


async def _strategy_command(
    gateway: Gateway, name: str, action: str, who: Principal, body: EnableRequest | None = None
) -> dict[str, Any]:
    """Publish `EnableStrategy`/`DisableStrategy` for a configured strategy.

    Raises:
        ApiError: 404 for an unknown strategy; 409 when enabling during HARD_SHUTDOWN.
    """
    settings = gateway.ctx.settings
    if name not in settings.strategies:
        raise ApiError(404, "not_found", f"unknown strategy {name}", {"strategies": list(settings.strategies)})
    if action == "enable":
        stored = await gateway.kv_value(DegradationLevelValue, subjects.KEY_DEGRADATION_LEVEL)
        level = stored.level if stored is not None else None
        if level == DegradationLevel.HARD_SHUTDOWN:
            # SPEC §5: the trading services are stopped; only a manual restart leaves HARD_SHUTDOWN.
            raise ApiError(
                409,
                "hard_shutdown",
                "HARD_SHUTDOWN: the trading services are stopped; a strategy cannot be enabled "
                "until the system is restarted by hand",
                {"degradation_level": level.value},
            )
    if action == "disable":
        command = DisableStrategy(strategy=name, operator=who.name, reason="operator disable")
        await gateway.publish(subjects.cmd_strategy(name, action), command)
        gateway.ctx.log.info("strategy_command", strategy=name, action=action, operator=who.name)
        return {"strategy": name, "action": action, "status": "accepted"}
    body = body or EnableRequest()
    standing = await _standing(gateway, name)
    refusal = judge_enable(name, body, standing)
    if refusal is not None:
        raise ApiError(refusal.status, refusal.code, refusal.message, refusal.details)
    restricted_by = restriction(standing)
    await set_mode(gateway, name, body, who, restricted_by)
    reason = body.reason.strip() or f"operator enable ({body.mode.value})"
    enable = EnableStrategy(strategy=name, operator=who.name, reason=reason, mode=body.mode, override=body.override)
    await gateway.publish(subjects.cmd_strategy(name, action), enable)
    if body.override and restricted_by:
        await gateway.record_action(
            who, "strategy_live_override", name, reason, {"restricted_by": restricted_by, "mode": body.mode.value}
        )
    gateway.ctx.log.info(
        "strategy_command",
        strategy=name,
        action=action,
        operator=who.name,
        mode=body.mode.value,
        override=body.override,
    )
    return {"strategy": name, "action": action, "status": "accepted", "mode": body.mode.value}

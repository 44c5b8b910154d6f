"""Strategies: the configured strategies with their persisted state, and enable/disable commands."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from proto import subjects
from proto.enums import DegradationLevel
from proto.kv import DegradationLevelValue, StrategyStateValue
from proto.messages import DisableStrategy, EnableStrategy
from services.gateway.api_models import ERROR_RESPONSES, StrategyCommandResponse, StrategyList
from services.gateway.auth import Principal
from services.gateway.context import Gateway
from services.gateway.dependencies import OPERATOR, VIEWER, GatewayDep
from services.gateway.errors import ApiError
from services.gateway.replies import reader

router = APIRouter(tags=["strategies"])

StrategyName = Annotated[str, Path(max_length=64)]


@router.get("/v1/strategies", response_model=StrategyList, responses=ERROR_RESPONSES)
async def strategies(gateway: GatewayDep, _: Principal = VIEWER) -> dict[str, Any]:
    """Every configured strategy with its persisted state."""
    items = []
    for name in gateway.ctx.settings.strategies:
        record = await gateway.kv_stored(subjects.key_strategy(name), reader(StrategyStateValue))
        component = subjects.strategy_component(name)
        items.append(
            {
                "name": name,
                "component": component,
                "state": record.value.state.value if record is not None else "UNKNOWN",
                "component_state": gateway.component_state(component).value,
                "details": record.shown if record is not None else None,
            }
        )
    return {"strategies": items}


@router.post(
    "/v1/strategies/{name}/enable", status_code=202, response_model=StrategyCommandResponse, responses=ERROR_RESPONSES
)
async def enable_strategy(gateway: GatewayDep, name: StrategyName, who: Principal = OPERATOR) -> dict[str, Any]:
    """Enable a strategy (`EnableStrategy` on `cmd.strategy.<name>.enable`)."""
    return await _strategy_command(gateway, name, "enable", who)


@router.post(
    "/v1/strategies/{name}/disable", status_code=202, response_model=StrategyCommandResponse, responses=ERROR_RESPONSES
)
async def disable_strategy(gateway: GatewayDep, name: StrategyName, who: Principal = OPERATOR) -> dict[str, Any]:
    """Disable a strategy (`DisableStrategy` on `cmd.strategy.<name>.disable`)."""
    return await _strategy_command(gateway, name, "disable", who)


async def _strategy_command(gateway: Gateway, name: str, action: str, who: Principal) -> dict[str, Any]:
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
    command_type = EnableStrategy if action == "enable" else DisableStrategy
    command = command_type(strategy=name, operator=who.name, reason=f"operator {action}")
    await gateway.publish(subjects.cmd_strategy(name, action), command)
    gateway.ctx.log.info("strategy_command", strategy=name, action=action, operator=who.name)
    return {"strategy": name, "action": action, "status": "accepted"}

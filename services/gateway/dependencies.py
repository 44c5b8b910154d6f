"""FastAPI dependencies of the routes: the shared `Gateway`, the caller's role, and control bodies.

The `Gateway` lives on `app.state.gateway` (set by `create_app`); `VIEWER` and `OPERATOR` check the
bearer token (rules in `auth`) and hand the route the calling `Principal`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request

from services.gateway.api_models import ControlRequest, body_schema, parse_control_body
from services.gateway.auth import Principal, Role, authorize
from services.gateway.context import Gateway


async def get_gateway(request: Request) -> Gateway:
    """The gateway the app was built for (async: a sync dependency would run in a thread)."""
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def require(role: Role) -> Any:
    """A dependency answering the calling `Principal`, or 401/403 when its token does not grant `role`."""

    async def dependency(gateway: GatewayDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
        return authorize(authorization, role, gateway.tokens)

    return Depends(dependency)


VIEWER = require(Role.VIEWER)
OPERATOR = require(Role.OPERATOR)


async def read_control(request: Request) -> ControlRequest:
    """The optional body of a control action, whatever its content type (see `parse_control_body`)."""
    return parse_control_body(await request.body(), request.headers.get("content-type"))


CONTROL_BODY = Depends(read_control)
CONTROL_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": body_schema(ControlRequest)}},
    }
}
"""The control body in the OpenAPI document (it is read by hand, so FastAPI cannot see it)."""

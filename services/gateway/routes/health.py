"""Health and metrics: `/health/live`, `/health/ready` (bus and Postgres) and `/metrics` (Prometheus)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proto.enums import ComponentState
from services.gateway import queries
from services.gateway.api_models import ErrorEnvelope
from services.gateway.dependencies import GatewayDep
from services.gateway.errors import error_body

router = APIRouter(tags=["health"])


@router.get("/health/live")
async def live(gateway: GatewayDep) -> dict[str, Any]:
    """The process is up."""
    return {"status": "live", "component": gateway.ctx.component}


@router.get("/health/ready", responses={503: {"model": ErrorEnvelope}})
async def ready(gateway: GatewayDep) -> JSONResponse:
    """Ready when the bus is connected and Postgres answers."""
    ctx = gateway.ctx
    reasons: list[str] = []
    if not ctx.bus.connected:
        reasons.append("nats disconnected")
    if ctx.pool is None:
        reasons.append("postgres not connected")
    else:
        try:
            await asyncio.wait_for(queries.ping(ctx.pool), gateway.config.ready_timeout_s)
        except queries.PG_ERRORS as exc:
            reasons.append(f"postgres unreachable: {type(exc).__name__}")
    if reasons:
        body = error_body("not_ready", "; ".join(reasons), {"reasons": reasons})
        body.update(status="not_ready", reasons=reasons)
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "reasons": []})


@router.get("/metrics", response_class=Response)
async def metrics(gateway: GatewayDep) -> Response:
    """Prometheus exposition."""
    for name, view in gateway.tracker.view(gateway.clock()).items():
        gateway.metrics.component_up.labels(name).set(0 if view.state == ComponentState.DOWN else 1)
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

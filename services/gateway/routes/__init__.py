"""The gateway's routes, one module per API area; `ROUTERS` in the order the app includes them.

That order is the order of the OpenAPI document. Inside a module a literal path (`/v1/dlq/stats`)
comes before the parameterised one it would otherwise match (`/v1/dlq/{letter_id}`).
"""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.routes import dashboard, dlq, events, health, orders, status, strategies, trading

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    dashboard.router,
    status.router,
    orders.router,
    trading.router,
    strategies.router,
    events.router,
    dlq.router,
)

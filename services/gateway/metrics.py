"""Prometheus metrics of the gateway, on a registry of its own (one per app instance)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class GatewayMetrics:
    """Request counts and latency per route, orders submitted, and component up gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bulwark_gateway_http_requests",
            "HTTP requests by route template, method and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bulwark_gateway_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.orders_submitted = Counter(
            "bulwark_gateway_orders_submitted",
            "Operator orders published on the bus, by first answered status",
            ["status"],
            registry=self.registry,
        )
        self.requests_refused = Counter(
            "bulwark_gateway_requests_refused",
            "Requests refused before any work: rate limits, saturated budgets, too many event streams",
            ["reason"],
            registry=self.registry,
        )
        self.component_up = Gauge(
            "bulwark_component_up", "1 when the component heartbeats, else 0", ["component"], registry=self.registry
        )


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Pure ASGI middleware (streaming responses pass through untouched) recording each request."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # Label values stay bounded whatever a client sends: route templates, known methods.
            route = getattr(scope.get("route"), "path", None) or "other"
            method = scope.get("method", "")
            method = method if method in KNOWN_METHODS else "other"
            self.metrics.requests.labels(method, route, str(status["code"])).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)

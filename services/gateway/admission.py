"""Admission under abuse (SPEC §10): who may start a request now, before any work is done for it.

A pure ASGI middleware in front of the input guard:

- **Rate limits**: a token bucket per client IP and one per known bearer token (an unknown token
  counts only against its IP; the route answers it 401). An empty bucket answers 429 with
  `Retry-After`. Reads may not take the last `read_reserve` of a bucket, so a client polling hard
  still has room for its orders and controls.
- **Priority**: reads and the order path (orders, cancels, trading controls) have separate
  concurrency budgets. A read beyond its budget is shed at once (429, `Retry-After`); orders never
  queue behind reads.
- **Event streams**: at most `sse_per_client` concurrent `/v1/events/stream` per token (or IP) and
  `sse_total` in all; one more is a 429.

The buckets are pure (`TokenBuckets`, an injected monotonic clock) and bounded in the number of
clients they remember. Health and metrics are not limited, so probes always answer.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from libs.clock import NS_PER_S
from services.gateway.auth import TokenTable
from services.gateway.guard import send_error

EVENT_STREAM_PATH = "/v1/events/stream"
UNLIMITED_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})
ORDER_PATH_PREFIXES = ("/v1/orders", "/v1/trading/", "/v1/emergency-stop", "/v1/breakers/", "/v1/strategies/")
"""Writes on these paths are the order path: they keep priority over reads."""


@dataclass(frozen=True)
class AdmissionLimits:
    """Rates in requests per second, bursts in requests, budgets in concurrent requests."""

    per_token_rate: float = 50.0
    per_token_burst: float = 200.0
    per_ip_rate: float = 100.0
    per_ip_burst: float = 400.0
    read_reserve: float = 0.2
    """Share of a bucket only the order path may use."""
    max_clients: int = 10_000
    """Buckets remembered per kind; the least recently seen is forgotten first."""
    read_concurrency: int = 64
    write_concurrency: int = 64
    sse_per_client: int = 4
    sse_total: int = 64


class TokenBuckets:
    """One token bucket per key, refilled at `rate` per second up to `burst` (pure: injected clock)."""

    def __init__(self, rate: float, burst: float, max_keys: int, clock: Callable[[], int]) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def take(self, key: str, reserve: float = 0.0) -> float:
        """Take one request for `key`, keeping `reserve` (a share of the burst) untouched.

        Returns:
            0.0 when admitted, else the seconds until it would be.
        """
        now = self.clock()
        tokens, seen = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - seen) / NS_PER_S * self.rate)
        floor = self.burst * reserve
        if tokens - 1.0 < floor:
            self._remember(key, tokens, now)
            return (floor + 1.0 - tokens) / self.rate if self.rate > 0 else float("inf")
        self._remember(key, tokens - 1.0, now)
        return 0.0

    def __len__(self) -> int:
        return len(self._buckets)

    def _remember(self, key: str, tokens: float, now: int) -> None:
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)


def is_order_path(method: str, path: str) -> bool:
    """True for the writes that keep priority: orders, cancels, trading controls, breakers, strategies."""
    return method in ("POST", "DELETE") and path.startswith(ORDER_PATH_PREFIXES)


def bearer(scope: Scope) -> str | None:
    """The bearer token of a request, if it sends one."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class Admission:
    """Pure ASGI middleware applying `AdmissionLimits` (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, limits: AdmissionLimits, tokens: TokenTable, clock: Callable[[], int], metrics: Any
    ) -> None:
        self.app = app
        self.limits = limits
        self.tokens = tokens
        self.metrics = metrics
        self.per_ip = TokenBuckets(limits.per_ip_rate, limits.per_ip_burst, limits.max_clients, clock)
        self.per_token = TokenBuckets(limits.per_token_rate, limits.per_token_burst, limits.max_clients, clock)
        self.reads = asyncio.Semaphore(limits.read_concurrency)
        self.writes = asyncio.Semaphore(limits.write_concurrency)
        self.streams: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "")
        priority = is_order_path(method, path)
        reserve = 0.0 if priority else self.limits.read_reserve
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        token = bearer(scope)
        principal = self.tokens.lookup(token) if token else None
        wait_s = self.per_ip.take(ip, reserve)
        if not wait_s and principal is not None:
            wait_s = self.per_token.take(principal.name, reserve)
        if wait_s:
            await self._refuse(send, "rate_limited", "too many requests; slow down", wait_s, "rate")
            return
        if path == EVENT_STREAM_PATH and method == "GET":
            await self._stream(scope, receive, send, principal.name if principal else f"ip:{ip}")
            return
        budget = self.writes if priority else self.reads
        if budget.locked():
            # Shed at once: a queue of waiting reads would only make every answer late.
            reason = "write_budget" if priority else "read_budget"
            await self._refuse(send, "overloaded", "the gateway is saturated; retry shortly", 1.0, reason)
            return
        async with budget:
            await self.app(scope, receive, send)

    async def _stream(self, scope: Scope, receive: Receive, send: Send, client: str) -> None:
        open_here = self.streams.get(client, 0)
        if open_here >= self.limits.sse_per_client or sum(self.streams.values()) >= self.limits.sse_total:
            await self._refuse(send, "too_many_streams", "too many open event streams", 5.0, "streams")
            return
        self.streams[client] = open_here + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.streams[client] -= 1
            if not self.streams[client]:
                del self.streams[client]

    async def _refuse(self, send: Send, code: str, message: str, wait_s: float, reason: str) -> None:
        retry_after = max(1, int(wait_s + 0.999))
        self.metrics.requests_refused.labels(reason).inc()
        await send_error(send, 429, code, message, {"retry_after_s": retry_after}, {"Retry-After": str(retry_after)})

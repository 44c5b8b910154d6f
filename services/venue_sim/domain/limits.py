"""Binance-style usage counters: request weight per minute, order counts per 10 s and per minute."""

from __future__ import annotations

from libs.clock import Clock

WEIGHT_LIMIT_1M = 2400
ORDER_LIMIT_10S = 300
ORDER_LIMIT_1M = 1200


class UsageCounter:
    """Counts in fixed windows, as Binance does (the window resets on its boundary)."""

    def __init__(self, clock: Clock, window_ns: int) -> None:
        self.clock = clock
        self.window_ns = window_ns
        self._window = -1
        self.used = 0

    def add(self, amount: int) -> int:
        """Add usage; returns the total in the current window."""
        window = self.clock() // self.window_ns
        if window != self._window:
            self._window, self.used = window, 0
        self.used += amount
        return self.used

    def current(self) -> int:
        """Usage in the current window."""
        return self.add(0)

    def seconds_left(self) -> int:
        """Whole seconds until the window resets (a `Retry-After`)."""
        return -(-(self.window_ns - self.clock() % self.window_ns) // 1_000_000_000)


class UsageLimits:
    """The three counters the venue reports in its headers, their limits (exchangeInfo
    `rateLimits`, Binance's by default), and the 429 answers of the current minute."""

    def __init__(
        self,
        clock: Clock,
        weight_1m: int = WEIGHT_LIMIT_1M,
        orders_10s: int = ORDER_LIMIT_10S,
        orders_1m: int = ORDER_LIMIT_1M,
    ) -> None:
        self.weight = UsageCounter(clock, 60_000_000_000)
        self.orders_10s = UsageCounter(clock, 10_000_000_000)
        self.orders_1m = UsageCounter(clock, 60_000_000_000)
        self.refusals_1m = UsageCounter(clock, 60_000_000_000)
        self.weight_limit = weight_1m
        self.orders_10s_limit = orders_10s
        self.orders_1m_limit = orders_1m


def spot_depth_weight(limit: int) -> int:
    """Request weight of GET /api/v3/depth by limit (Binance spot table)."""
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


def depth_weight(limit: int) -> int:
    """Request weight of GET /fapi/v1/depth by limit (Binance USD-M table)."""
    if limit <= 50:
        return 2
    if limit <= 100:
        return 5
    if limit <= 500:
        return 10
    return 20

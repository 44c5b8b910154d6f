"""What every route of the simulator shares: the simulator's parts, the clocks, the endpoint
record of the REST table and the small helpers of Binance's answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from libs.clock import Clock
from services.venue_sim.domain import BinanceError, Exchange, FaultScheduler, MarketClock
from services.venue_sim.domain.limits import UsageLimits
from services.venue_sim.domain.venue_rules import ConnectionRules, IpBan
from services.venue_sim.engine import MarketEngine

Handler = Callable[[web.Request, dict[str, str]], Awaitable[Any]]
INTERNAL_ERROR_MSG = "Internal error; unable to process your request. Please try again."


@dataclass(frozen=True)
class Endpoint:
    """One REST endpoint: its handler, weight, security and whether it places orders."""

    handler: Handler
    weight: Callable[[dict[str, str]], int]
    security: str = "NONE"  # NONE, USER_STREAM (API key only), SIGNED
    places_order: bool = False
    order_count: Callable[[dict[str, str]], int] | None = None
    """How many orders the request places (batches); 1 for an order endpoint when None."""


Routes = dict[tuple[str, str], Endpoint]
"""REST endpoints by (method, path)."""


class OrderTimeout(Exception):
    """The order-timeout faults: the answer must never come in time."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(delay_s)
        self.delay_s = delay_s


@dataclass
class SimContext:
    """The simulator's parts as the routes see them."""

    engine: MarketEngine
    exchange: Exchange
    faults: FaultScheduler
    market_clock: MarketClock
    clock: Clock
    log: Any
    limits: UsageLimits
    source_description: str = ""
    rules: ConnectionRules = field(default_factory=ConnectionRules)
    ban: IpBan = field(default_factory=IpBan)
    conditional_orders: str = "legacy"
    """legacy: STOP_MARKET / TAKE_PROFIT_MARKET accepted on /fapi/v1/order too; algo: only through
    /fapi/v1/algoOrder, as on Binance since 2025-12-09."""
    stream_routing: str = "binance"
    """binance: WebSocket streams served by path as Binance USD-M (`routes.market_streams`); any:
    every stream on every path."""

    def now_ms(self) -> int:
        """Wall clock in ms."""
        return self.clock() // 1_000_000

    def venue_now_ms(self) -> int:
        """The venue's own clock in ms: the wall clock, shifted while a `clock_skew` fault is active."""
        skew = self.faults.active("clock_skew") if self.faults.faults else None
        return self.now_ms() + (skew.params["offset_ms"] if skew is not None else 0)

    def symbol(self, params: Mapping[str, str]) -> str:
        """The request's known symbol.

        Raises:
            BinanceError: -1102 when missing, -1121 when unknown.
        """
        return self.exchange.spec(params.get("symbol")).symbol


class RouteGroup:
    """Base of one area's routes: the simulator's parts under short names."""

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx
        self.exchange = ctx.exchange
        self.engine = ctx.engine
        self.feed = ctx.engine.feed
        self.hub = ctx.engine.hub


def dumps(value: Any) -> str:
    """JSON text of an answer or frame."""
    return msgspec.json.encode(value).decode()


def one(_: dict[str, str]) -> int:
    """Weight 1 whatever the parameters."""
    return 1


def by_symbol(with_symbol: int, without: int) -> Callable[[dict[str, str]], int]:
    """A weight that depends on whether the request names a symbol."""
    return lambda params: with_symbol if params.get("symbol") else without


def fixed(weight: int) -> Callable[[dict[str, str]], int]:
    """A constant weight."""
    return lambda _: weight


def bounded_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], or Binance's -1100 answer."""
    raw = params.get(name) or str(default)
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BinanceError(
            400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '{low}, {high}'."
        )
    return int(raw)

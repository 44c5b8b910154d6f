"""Binance USD-M's WebSocket routes: which path (`/public`, `/market`, `/private`) carries a stream.

fstream.binance.com routes streams by path: `/public` carries the high-frequency public data
(depth, book ticker), `/market` the regular market data (trades, mark price, liquidations,
klines, tickers), `/private` the user data (`/private/ws/<listenKey>`). A connection without a
route (`/ws`, `/stream`) receives only `/public` data: a `@markPrice` subscribed there delivers
nothing, silently. Binance spot does not route. Everyone who builds a stream URL classifies its
streams here, so the client and the simulator agree on one table.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

__all__ = [
    "ROUTE_OF_CHANNEL",
    "Route",
    "channel_of",
    "group_by_route",
    "routed_base",
    "stream_route",
    "user_stream_url",
]


class Route(StrEnum):
    """A WebSocket route of Binance USD-M (the path segment after the host)."""

    PUBLIC = "public"
    MARKET = "market"
    PRIVATE = "private"


ROUTE_OF_CHANNEL: dict[str, Route] = {
    "depth": Route.PUBLIC,
    "bookTicker": Route.PUBLIC,
    "aggTrade": Route.MARKET,
    "trade": Route.MARKET,
    "markPrice": Route.MARKET,
    "forceOrder": Route.MARKET,
    "ticker": Route.MARKET,
    "miniTicker": Route.MARKET,
    "kline": Route.MARKET,
    "continuousKline": Route.MARKET,
    "compositeIndex": Route.MARKET,
    "contractInfo": Route.MARKET,
    "assetIndex": Route.MARKET,
}
"""Channel (`btcusdt@<channel>...`, `kline_1m` counts as `kline`) → its route."""


def channel_of(stream: str) -> str:
    """`btcusdt@depth@100ms` → `depth`; `btcusdt@kline_1m` → `kline`; `!markPrice@arr` → `markPrice`."""
    channel = stream.partition("@")[2].split("@", 1)[0]
    if not channel and stream.startswith("!"):
        channel = stream[1:].split("@", 1)[0]
    return channel.split("_", 1)[0]


def stream_route(stream: str) -> Route:
    """The route that carries a market stream; a channel not in the table is regular market data.

    Raises:
        ValueError: not a stream name (no `@`).
    """
    if "@" not in stream:
        raise ValueError(f"not a stream name: {stream!r}")
    return ROUTE_OF_CHANNEL.get(channel_of(stream), Route.MARKET)


def group_by_route(streams: Iterable[str]) -> dict[Route, list[str]]:
    """The streams per route, each route's in the given order, routes in table order (public first)."""
    groups: dict[Route, list[str]] = {}
    for stream in streams:
        groups.setdefault(stream_route(stream), []).append(stream)
    return {route: groups[route] for route in Route if route in groups}


def routed_base(ws_base: str, route: Route | None) -> str:
    """The WebSocket base of a route (`wss://fstream.binance.com/market`); `ws_base` itself when None."""
    base = ws_base.rstrip("/")
    return base if route is None else f"{base}/{route.value}"


def user_stream_url(ws_base: str, listen_key: str, *, routed: bool = True) -> str:
    """The user-data stream of `listen_key`: `/private/ws/<key>` when routed, else `/ws/<key>`."""
    return f"{routed_base(ws_base, Route.PRIVATE if routed else None)}/ws/{listen_key}"

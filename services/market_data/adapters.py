"""Venue I/O of market-data: the REST client and the combined stream, built from settings."""

from __future__ import annotations

from collections.abc import Iterable

from libs.binance.client import BinanceRestClient, CachingResolver, venue_name_for
from libs.binance.routes import Route, group_by_route, routed_base
from libs.binance.stream import MAX_STREAMS_PER_CONNECTION, CombinedStream
from libs.ratelimit import RateBudget
from libs.settings import Settings
from services.market_data.frames import MarketKind

MARKET_WS_LINK = "market-ws"
MARKET_REST_LINK = "market-rest"
SILENCE_TIMEOUT_S = 5.0
PING_INTERVAL_S = 5.0
PONG_TIMEOUT_S = 1.0
MAX_MISSED_PONGS = 3

RESOLVER = CachingResolver()
"""One DNS cache for the process: the last good address of every venue host survives a DNS outage (FM-N3)."""


def market_kind(settings: Settings) -> MarketKind:
    """The configured market (`BULWARK_VENUE_MARKET`).

    Raises:
        ValueError: neither `usdm` nor `spot`.
    """
    try:
        return MarketKind(settings.venue_market.strip().lower())
    except ValueError as exc:
        raise ValueError(f"BULWARK_VENUE_MARKET={settings.venue_market!r}: use usdm or spot") from exc


def venue_name(settings: Settings) -> str:
    """The venue name on every message and subject: `binance-spot` for spot unless one is configured."""
    return venue_name_for(settings.venue, market_kind(settings).value)


def stream_names(symbol: str, market: MarketKind = MarketKind.USDM) -> list[str]:
    """The combined-stream channels market-data subscribes to for one symbol.

    Spot has no mark price or liquidation stream, and its trades are the plain `@trade` stream
    (consecutive trade ids `t`).
    """
    lower = symbol.lower()
    if market == MarketKind.SPOT:
        return [f"{lower}@depth@100ms", f"{lower}@trade"]
    return [f"{lower}@depth@100ms", f"{lower}@aggTrade", f"{lower}@markPrice@1s", f"{lower}@forceOrder"]


def rest_client(settings: Settings, budget: RateBudget | None = None) -> BinanceRestClient:
    """Public-endpoint REST client (market data needs no key; SPEC FM-N5 10 s timeout), with the
    venue's request budget and the configured alternate endpoints."""
    return BinanceRestClient(
        settings.venue_rest_url,
        settings.venue_api_key,
        timeout_s=10.0,
        budget=budget,
        alternate_urls=settings.venue_rest_alternates,
        resolver=RESOLVER,
        market=market_kind(settings).value,
    )


def ws_urls(settings: Settings) -> list[str]:
    """The WebSocket base URLs, main first, then the alternates (FM-N3/N4)."""
    return [settings.venue_ws_url, *(url for url in settings.venue_ws_alternates if url != settings.venue_ws_url)]


def stream_groups(
    symbols: Iterable[str], market: MarketKind = MarketKind.USDM, *, routed: bool = True
) -> dict[Route | None, list[str]]:
    """Every channel of every symbol, per connection: by route (public first: the depth) when the
    venue routes streams by path (Binance USD-M, `libs.binance.routes`), else all on one un-routed
    connection (key None). Spot never routes."""
    names = [name for symbol in symbols for name in stream_names(symbol, market)]
    if market == MarketKind.SPOT or not routed:
        return {None: names}
    return {route: streams for route, streams in group_by_route(names).items()}


def stream_connections(
    symbols: Iterable[str],
    market: MarketKind = MarketKind.USDM,
    *,
    routed: bool = True,
    max_streams: int = MAX_STREAMS_PER_CONNECTION,
) -> list[tuple[str, Route | None, list[str]]]:
    """Every connection market-data opens: (name, route, streams), the depth's first.

    `stream_groups` per route, each route's streams spread over as many connections as
    `max_streams` (the venue's limit per connection) needs, a symbol's streams of one route kept on
    one connection where they fit. Names: `""` for the first, then the route (`market`), and a number
    for a route's further connections (`public-2`; un-routed: `ws-2`).

    Raises:
        ValueError: `max_streams` outside 1..1024 (Binance's limit).
    """
    if not 1 <= max_streams <= MAX_STREAMS_PER_CONNECTION:
        raise ValueError(
            f"BULWARK_MD_WS_MAX_STREAMS={max_streams}: use 1..{MAX_STREAMS_PER_CONNECTION} (the venue's limit)"
        )
    connections: list[tuple[str, Route | None, list[str]]] = []
    for route, names in stream_groups(symbols, market, routed=routed).items():
        for number, chunk in enumerate(_pack_by_symbol(names, max_streams), start=1):
            base = route.value if route is not None else "ws"
            name = "" if not connections else base if number == 1 else f"{base}-{number}"
            connections.append((name, route, chunk))
    return connections


def _pack_by_symbol(names: list[str], limit: int) -> list[list[str]]:
    """`names` in connections of at most `limit`, each symbol's kept together when they fit in one."""
    by_symbol: dict[str, list[str]] = {}
    for name in names:
        by_symbol.setdefault(name.partition("@")[0], []).append(name)
    chunks: list[list[str]] = [[]]
    for group in by_symbol.values():
        if len(chunks[-1]) + len(group) > limit and chunks[-1]:
            chunks.append([])
        for name in group:
            if len(chunks[-1]) >= limit:
                chunks.append([])
            chunks[-1].append(name)
    return [chunk for chunk in chunks if chunk]


def market_stream(
    ws_base: str,
    symbols: Iterable[str],
    market: MarketKind = MarketKind.USDM,
    *,
    route: Route | None = None,
    names: Iterable[str] | None = None,
) -> CombinedStream:
    """One combined stream on `ws_base` (under `route` when given) carrying `names`, by default
    every channel of every symbol."""
    if names is None:
        names = [name for symbol in symbols for name in stream_names(symbol, market)]
    return CombinedStream(
        routed_base(ws_base, route),
        names,
        silence_timeout_s=SILENCE_TIMEOUT_S,
        ping_interval_s=PING_INTERVAL_S,
        pong_timeout_s=PONG_TIMEOUT_S,
        max_missed_pongs=MAX_MISSED_PONGS,
        resolver=RESOLVER,
    )

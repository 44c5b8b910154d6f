"""market-data entry point: `python -m services.market_data.main`."""

from __future__ import annotations

import os
from collections.abc import Callable

from libs.binance.routes import Route
from libs.binance.stream import CombinedStream
from libs.breaker import CircuitBreaker
from libs.bus import PublishManyError
from libs.clock import monotonic_clock, wall_clock
from libs.ratelimit import RateBudget, SharedBans
from libs.runtime.service import ServiceContext, main, run_service
from libs.settings import Settings
from proto import subjects
from proto.envelope import Message
from services.market_data import adapters
from services.market_data.frames import MarketKind
from services.market_data.handlers import MarketDataService

COMPONENT = subjects.MARKET_DATA


async def setup(ctx: ServiceContext) -> None:
    """Wire the venue link, the polls, the timers and the resync request into the running service."""
    settings = ctx.settings
    market = adapters.market_kind(settings)
    venue = adapters.venue_name(settings)
    budget = RateBudget(venue, wall_clock)
    # A 418 (or a 429's Retry-After) any process receives holds every process back (FM-N2).
    shared_bans = SharedBans(ctx.bus, budget, origin=f"{COMPONENT}:{os.getpid()}", clock_ns=wall_clock, log=ctx.log)
    await shared_bans.start()
    ctx.cleanups.append(shared_bans.close)
    breaker = CircuitBreaker(f"venue.{venue}", monotonic_clock, open_s=settings.md_breaker_open_s)
    rest = adapters.rest_client(settings, budget)
    await rest.start()
    ctx.cleanups.append(rest.close)

    async def publish(subject: str, message: Message, msg_id: str | None) -> int:
        return await ctx.bus.publish(subject, message, msg_id=msg_id)

    async def publish_many(items: list[tuple[str, Message, str | None]]) -> list[int | BaseException]:
        try:
            return list(await ctx.bus.publish_many(items))
        except PublishManyError as exc:
            return exc.results

    async def request(subject: str, payload: bytes) -> bytes:
        return await ctx.bus.request(subject, payload)

    # One connection per route (Binance USD-M routes streams by path), the depth's first, and more
    # per route past the venue's streams-per-connection limit.
    connections = adapters.stream_connections(
        settings.symbols, market, routed=settings.venue_ws_routed, max_streams=settings.md_ws_max_streams
    )
    openers = [(name, _opener(market, route, names)) for name, route, names in connections]
    service = MarketDataService(
        venue=venue,
        symbols=settings.symbols,
        publish=publish,
        kv_put=ctx.bus.kv_put,
        rest=rest,
        open_stream=openers[0][1],
        route_streams=dict(openers[1:]),
        connection_streams={name: names for name, _, names in connections},
        ws_urls=adapters.ws_urls(settings),
        log=ctx.log,
        request=request,
        publish_many=publish_many,
        budget=budget,
        breaker=breaker,
        clock=wall_clock,
        market=market,
        max_connection_age_s=settings.md_ws_max_age_s,
    )
    service.runtime.metrics = ctx.metrics
    ctx.cleanups.append(service.close)
    ctx.details = service.details
    await ctx.bus.serve(subjects.SVC_MARKET_DATA_RESYNC, service.handle_resync_request)
    ctx.spawn(service.run_stream_forever(), "market-ws")
    if market == MarketKind.USDM:  # spot has no open interest
        ctx.spawn(service.poll_open_interest_forever(), "open-interest-poll")
    ctx.spawn(service.check_clock_forever(settings.md_clock_check_interval_s), "clock-check")
    ctx.spawn(service.monitor_forever(), "market-data-monitor")


def _opener(market: MarketKind, route: Route | None, names: list[str]) -> Callable[[str], CombinedStream]:
    """Builds a fresh connection of one route's streams on a WebSocket base URL."""
    return lambda url: adapters.market_stream(url, (), market, route=route, names=names)


async def run(settings: Settings | None = None) -> None:
    """Run market-data until stopped (in-process use, e.g. tests)."""
    await run_service(COMPONENT, setup, settings=settings)


if __name__ == "__main__":
    main(COMPONENT, setup)

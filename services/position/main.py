"""position process: `python -m services.position.main` (the only writer to the venue)."""

from __future__ import annotations

import asyncio
import time

from libs.binance.client import BinanceRestClient
from libs.breaker import CircuitBreaker
from libs.errors import TransientError
from libs.runtime.service import ServiceContext, main
from proto import subjects

from .adapters import VENUE_FAILURES, Projections, VenueLink, user_stream_events
from .handlers import PositionService

RECONCILE_RETRY_MAX_S = 10.0
VENUE_TIMEOUT_S = 10.0  # SPEC FM-N5: venue REST 10 s


def venue_breaker_name(venue: str) -> str:
    """Breaker id of a venue (`venue-binance-usdm`): `evt.breaker.<id>`, KV `breaker.<id>`."""
    return f"venue-{venue}"


async def setup(ctx: ServiceContext) -> None:
    """Load projections, reconcile with the venue (retrying), then start consumers, the user-data
    stream and the supervision loop (poll, venue link, dead-man's switch).

    The component stays STARTING until reconciliation succeeded; approved orders wait in the
    durable consumer meanwhile (SPEC §6, FM-C9: no new orders until reconciliation succeeds).
    """
    assert ctx.pool is not None, "position needs Postgres"
    settings = ctx.settings
    client = BinanceRestClient(
        settings.venue_rest_url, settings.venue_api_key, settings.venue_api_secret, timeout_s=VENUE_TIMEOUT_S
    )
    await client.start()
    ctx.cleanups.append(client.close)
    breaker = CircuitBreaker(
        venue_breaker_name(settings.venue), time.monotonic_ns, open_s=settings.venue_breaker_open_s
    )
    link = VenueLink(client, breaker, ctx.log, time.time_ns)
    service = PositionService(
        ctx.bus,
        ctx.log,
        Projections(ctx.pool),
        link,
        settings.venue,
        time.time_ns,
        symbols=settings.symbols,
        countdown_ms=int(settings.countdown_cancel_s * 1000),
        countdown_refresh_s=settings.countdown_refresh_s,
        safety_poll_s=settings.order_safety_poll_s,
    )
    link.on_breaker = service.on_breaker
    ctx.details = service.details
    await service.load()
    delay = 0.5
    while not ctx.stopping.is_set():
        try:
            await service.reconcile(settings.symbols)
            break
        except (*VENUE_FAILURES, TransientError) as exc:
            ctx.log.warning(
                "reconciliation_failed", error=f"{type(exc).__name__}: {exc}", action_taken=f"retry in {delay:.1f}s"
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONCILE_RETRY_MAX_S)
    if not service.reconciled:
        return
    orders = subjects.STREAM_ORDERS.name
    await ctx.bus.consume(
        stream=orders, durable="position-orders", filter_subjects=["evt.order.approved.>"], handler=service.on_approved
    )
    await ctx.bus.consume(
        stream=orders, durable="position-denials", filter_subjects=["evt.order.denied.>"], handler=service.on_denied
    )
    await ctx.bus.consume(
        stream=orders,
        durable="position-cancels",
        filter_subjects=[subjects.CMD_ORDER_CANCEL],
        handler=service.on_cancel,
    )
    ctx.spawn(service.poll_forever(settings.order_poll_interval_s), "order-poll")
    ctx.spawn(service.user_stream_forever(settings.venue_ws_url, user_stream_events), "user-stream")


if __name__ == "__main__":
    main(subjects.POSITION, setup, needs_db=True)

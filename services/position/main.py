"""position process: `python -m services.position.main` (the only writer to the venue)."""

from __future__ import annotations

import asyncio
import os
import socket
import time

from nats.errors import Error as NatsError

from libs.binance.client import BinanceRestClient
from libs.breaker import CircuitBreaker
from libs.errors import TransientError
from libs.lease import LEASE_BUCKET, Lease
from libs.projections import Projections
from libs.ratelimit import RateBudget, SharedBans
from libs.runtime.service import ServiceContext, main, ms_since
from libs.snapshot import SnapshotPolicy, SnapshotStore
from proto import subjects
from proto.enums import ComponentState

from .adapters import VENUE_FAILURES, VenueLink, user_stream_events
from .domain import Retention
from .handlers import DENIALS_DURABLE, ORDERS_DURABLE, PositionService

RECONCILE_RETRY_MAX_S = 10.0
VENUE_TIMEOUT_S = 10.0  # SPEC FM-N5: venue REST 10 s
LEASE_NAME = "position"
"""The position service's single-writer lease (`lease.position` in KV bucket `bulwark-leases`)."""


def venue_breaker_name(venue: str) -> str:
    """Breaker id of a venue (`venue-binance-usdm`): `evt.breaker.<id>`, KV `breaker.<id>`."""
    return f"venue-{venue}"


async def setup(ctx: ServiceContext) -> None:
    """Wait for the single-writer lease (standby meanwhile), recover the state (latest valid snapshot
    plus the ORDERS tail after it), reconcile with the venue (retrying), then start consumers, the
    user-data stream and the supervision loop (poll, snapshots, venue link, dead-man's switch) and
    keep renewing the lease.

    A standby instance is READY with `lease: standby` in its heartbeat: it consumes nothing and
    sends nothing to the venue (SPEC §8). Once it holds the lease it stays STARTING until
    reconciliation succeeded; approved orders wait in the durable consumer meanwhile (SPEC §6,
    FM-C9). Losing the lease stops the instance (it never writes again; a supervisor restarts it
    as a standby).
    """
    assert ctx.pool is not None, "position needs Postgres"
    settings = ctx.settings
    holder = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
    lease = Lease(await ctx.bus.kv(LEASE_BUCKET), LEASE_NAME, holder, ttl_s=settings.position_lease_ttl_s, log=ctx.log)
    role = {"lease": "standby", "holder": holder}
    ctx.details = lambda: dict(role)
    phases = ctx.startup_phases
    mark = time.perf_counter()
    if not await _wait_for_lease(ctx, lease):
        return
    phases["lease_ms"] = ms_since(mark)
    ctx.cleanups.append(lease.release)
    role["lease"] = "held"
    role["token"] = str(lease.token)
    ctx.set_state(ComponentState.STARTING)
    # Request weight and order counts as the venue counts them; a 418 or a 429's Retry-After that
    # any process receives (market-data's snapshots share the IP) holds this one back too (FM-N2).
    budget = RateBudget(settings.venue, time.time_ns)
    shared_bans = SharedBans(
        ctx.bus, budget, origin=f"{subjects.POSITION}:{os.getpid()}", clock_ns=time.time_ns, log=ctx.log
    )
    await shared_bans.start()
    ctx.cleanups.append(shared_bans.close)
    client = BinanceRestClient(
        settings.venue_rest_url,
        settings.venue_api_key,
        settings.venue_api_secret,
        timeout_s=VENUE_TIMEOUT_S,
        budget=budget,
        alternate_urls=settings.venue_rest_alternates,
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
        lease=lease,
        on_lease_lost=ctx.stopping.set,
        snapshots=SnapshotStore(ctx.pool, log=ctx.log),
        snapshot_policy=SnapshotPolicy(
            time.time_ns,
            interval_ns=int(settings.snapshot_interval_s * 1e9),
            every_events=settings.snapshot_every_events,
        ),
        retention=Retention(
            keep_ns=int(settings.position_retain_terminal_s * 1e9),
            max_terminal=settings.position_retain_terminal_max,
        ),
    )
    link.on_breaker = service.on_breaker

    def lost() -> None:
        service.lease_lost = True  # no venue write from here on, whatever is in flight
        role["lease"] = "lost"
        ctx.log.error("lease_lost", lease=LEASE_NAME, holder=holder, action_taken="stop writing, stop the service")
        ctx.stopping.set()

    ctx.spawn(lease.keep(on_lost=lost), "lease")
    ctx.details = lambda: {**service.details(), **role}
    # Latest valid snapshot + the ORDERS tail after it (bounded replay), then reconciliation (SPEC §6, §8).
    mark = time.perf_counter()
    await service.recover()
    phases["recover_ms"] = ms_since(mark)
    await service.refresh_degradation()  # a system restarted in HARD_SHUTDOWN sends no entry from the backlog
    mark = time.perf_counter()
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
    phases["reconcile_ms"] = ms_since(mark)
    mark = time.perf_counter()
    orders = subjects.STREAM_ORDERS.name
    await ctx.bus.consume(
        stream=orders, durable=ORDERS_DURABLE, filter_subjects=["evt.order.approved.>"], handler=service.on_approved
    )
    await ctx.bus.consume(
        stream=orders, durable=DENIALS_DURABLE, filter_subjects=["evt.order.denied.>"], handler=service.on_denied
    )
    await ctx.bus.consume(
        stream=orders,
        durable="position-cancels",
        filter_subjects=[subjects.CMD_ORDER_CANCEL],
        handler=service.on_cancel,
    )
    phases["consumers_ms"] = ms_since(mark)
    await ctx.bus.serve(subjects.service_query(subjects.POSITION, "state"), service.state_query)
    ctx.spawn(service.poll_forever(settings.order_poll_interval_s), "order-poll")
    ws_bases = [settings.venue_ws_url, *settings.venue_ws_alternates]
    ctx.spawn(service.user_stream_forever(ws_bases, user_stream_events), "user-stream")


async def _wait_for_lease(ctx: ServiceContext, lease: Lease) -> bool:
    """Standby until the lease is ours (False: stopping first). READY meanwhile: ready to take over."""
    announced = False
    while not ctx.stopping.is_set():
        try:
            if await lease.try_acquire() is not None:
                return True
        except (NatsError, TimeoutError, OSError) as exc:
            ctx.log.warning("lease_acquire_failed", lease=LEASE_NAME, error=f"{type(exc).__name__}: {exc}")
        if not announced:
            view = await lease.read()
            holder = view.record.holder if view.record else None
            ctx.log.info("position_standby", lease=LEASE_NAME, holder=lease.holder, current_holder=holder)
            ctx.set_state(ComponentState.READY)
            announced = True
        await asyncio.sleep(lease.ttl_ns / 3e9)
    return False


if __name__ == "__main__":
    main(subjects.POSITION, setup, needs_db=True)

"""position process: `python -m services.position.main` (the only writer to its venue).

One process per venue (FM-N6): `BULWARK_POSITION_VENUE` (empty: `BULWARK_VENUE`) says which venue
it trades; its component name (`proto.subjects.position_component`) names its heartbeat, lease,
durable consumers, snapshots and query subject, `position` for the main venue as always and
`position-<venue>` for the backup.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import sys
import time
from collections.abc import Sequence

from nats.errors import Error as NatsError

from libs import logging as bulwark_logging
from libs.binance.classify import classify, passes_with_time, retry_while_wanted
from libs.binance.client import BinanceRestClient
from libs.breaker import CircuitBreaker
from libs.errors import TransientError
from libs.lease import LEASE_BUCKET, Lease
from libs.logging import get_logger
from libs.projections import Projections
from libs.ratelimit import RateBudget, SharedBans
from libs.runtime.service import ServiceContext, main, ms_since
from libs.settings import Settings, SettingsError, VenueAccount
from libs.snapshot import SnapshotPolicy, SnapshotStore
from proto import subjects
from proto.enums import ComponentState

from .adapters import VENUE_FAILURES, VenueLink, user_stream_events
from .cancels import CANCEL_DELIVERIES
from .domain import Retention
from .handlers import PositionService
from .preflight import start_preflight
from .venue_rules import VenueRulesKeeper

RECONCILE_RETRY_MAX_S = 10.0
VENUE_TIMEOUT_S = 10.0  # SPEC FM-N5: venue REST 10 s
EXIT_BAD_SETTINGS = 2
"""Exit status of a position process whose settings are invalid (e.g. an unknown BULWARK_POSITION_VENUE)."""


def position_identity(settings: Settings) -> tuple[VenueAccount, str]:
    """The venue account a position process trades and its component name.

    Raises:
        SettingsError: BULWARK_POSITION_VENUE names neither the main nor the backup venue.
    """
    venue = settings.position_venue or settings.venue
    try:
        account = settings.venue_account(venue)
    except SettingsError as exc:
        raise SettingsError(f"BULWARK_POSITION_VENUE={settings.position_venue!r}: {exc}") from exc
    return account, subjects.position_component(account.name, settings.venue)


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
    account, component = position_identity(settings)
    if ctx.component != component:
        raise SettingsError(
            f"the position process of venue {account.name!r} runs as {component!r}, not {ctx.component!r}"
        )
    venue = account.name
    # The single-writer lease is the component's (`lease.position`, `lease.position-<backup>` in KV
    # bucket `bulwark-leases`): one writer per venue, the venues' processes independent.
    holder = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
    lease = Lease(await ctx.bus.kv(LEASE_BUCKET), component, holder, ttl_s=settings.position_lease_ttl_s, log=ctx.log)
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
    # any process receives (market-data's snapshots share the IP) holds this one back too (FM-N2);
    # bans are kept per venue, so another venue's ban never holds this one back.
    budget = RateBudget(venue, time.time_ns)
    shared_bans = SharedBans(ctx.bus, budget, origin=f"{component}:{os.getpid()}", clock_ns=time.time_ns, log=ctx.log)
    await shared_bans.start()
    ctx.cleanups.append(shared_bans.close)
    client = BinanceRestClient(
        account.rest_url,
        account.api_key,
        account.api_secret,
        timeout_s=VENUE_TIMEOUT_S,
        budget=budget,
        alternate_urls=account.rest_alternates,
    )
    await client.start()
    ctx.cleanups.append(client.close)
    rules = VenueRulesKeeper(ctx.bus, client.exchange_info, venue, settings.symbols, ctx.log, time.time_ns)
    ctx.spawn(rules.run(), "venue-rules")  # KV rules.<venue>.<symbol>: what risk checks every order against
    breaker = CircuitBreaker(
        subjects.position_venue_breaker(venue), time.monotonic_ns, open_s=settings.venue_breaker_open_s
    )
    link = VenueLink(client, breaker, ctx.log, time.time_ns)
    service = PositionService(
        ctx.bus,
        ctx.log,
        Projections(ctx.pool),
        link,
        venue,
        time.time_ns,
        component=component,
        symbols=settings.symbols,
        countdown_ms=int(settings.countdown_cancel_s * 1000),
        countdown_refresh_s=settings.countdown_refresh_s,
        safety_poll_s=settings.order_safety_poll_s,
        stop_trigger_timeout_s=settings.stop_trigger_timeout_s,
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
        service.core.lease_lost = True  # no venue write from here on, whatever is in flight
        role["lease"] = "lost"
        ctx.log.error("lease_lost", lease=component, holder=holder, action_taken="stop writing, stop the service")
        ctx.stopping.set()

    ctx.spawn(lease.keep(on_lost=lost), "lease")
    ctx.details = lambda: {**service.details(), **role}
    # Latest valid snapshot + the ORDERS tail after it (bounded replay), then reconciliation (SPEC §6, §8).
    mark = time.perf_counter()
    await service.recover()
    phases["recover_ms"] = ms_since(mark)
    await service.core.refresh_degradation()  # a system restarted in HARD_SHUTDOWN sends no entry from the backlog
    # Before any order; again at every reconnect, and entries wait for each connection's verdict.
    service.core.preflight_gate.arm()
    await start_preflight(ctx, client, budget, venue, component, on_result=service.core.preflight_settled)
    mark = time.perf_counter()
    await reconcile_at_start(ctx, service, settings.symbols)
    if not service.core.reconciled:
        return
    phases["reconcile_ms"] = ms_since(mark)
    mark = time.perf_counter()
    # Only this venue's approvals and denials (risk routes each order to one venue); every process
    # sees every cancel (it names no venue) and acts on those of its own orders. A durable an
    # earlier release created with the filter of all venues is narrowed in place (`Bus.consume`).
    orders = subjects.STREAM_ORDERS.name
    await ctx.bus.consume(
        stream=orders,
        durable=subjects.position_orders_consumer(component),
        filter_subjects=[subjects.evt_order_all_for_venue("approved", venue)],
        handler=service.on_approved,
    )
    await ctx.bus.consume(
        stream=orders,
        durable=subjects.position_denials_consumer(component),
        filter_subjects=[subjects.evt_order_all_for_venue("denied", venue)],
        handler=service.on_denied,
    )
    await ctx.bus.consume(
        stream=orders,
        durable=subjects.position_cancels_consumer(component),
        filter_subjects=[subjects.CMD_ORDER_CANCEL],
        handler=service.on_cancel,
        max_deliver=CANCEL_DELIVERIES,
    )
    phases["consumers_ms"] = ms_since(mark)
    await ctx.bus.serve(subjects.svc_position_state(component), service.state_query)
    ctx.spawn(service.poll_forever(settings.order_poll_interval_s), "order-poll")
    ws_bases = [account.ws_url, *account.ws_alternates]
    # Binance USD-M serves user data on its `/private` route; an un-routed venue on `/ws/<key>`.
    events = functools.partial(user_stream_events, routed=settings.venue_ws_routed)
    ctx.spawn(service.user_stream_forever(ws_bases, events), "user-stream")


def reconcile_passes_with_time(error: BaseException) -> bool:
    """Start-up reconciliation is tried again after what time cures (`passes_with_time`) and after a
    `TransientError` (Postgres or the venue could not be asked)."""
    return isinstance(error, TransientError) or passes_with_time(error)


async def reconcile_at_start(ctx: ServiceContext, service: PositionService, symbols: Sequence[str]) -> None:
    """Reconcile with the venue before any order (SPEC §6), for as long as the service runs: what time
    cures is retried (`retry_while_wanted`: 0.5 s doubling to `RECONCILE_RETRY_MAX_S`, the venue's
    Retry-After and the breaker's cool-down honoured); anything else (PERMANENT, e.g. a refused API
    key) is logged and raised, so the supervisor restarts the service rather than it waiting blind.
    """

    def on_retry(exc: BaseException, delay_s: float) -> None:
        ctx.log.warning(
            "reconciliation_failed", error=f"{type(exc).__name__}: {exc}", action_taken=f"retry in {delay_s:.1f}s"
        )

    retrying = retry_while_wanted(
        lambda: not ctx.stopping.is_set(),
        first_wait_s=0.5,
        max_wait_s=RECONCILE_RETRY_MAX_S,
        retryable=reconcile_passes_with_time,
        on_retry=on_retry,
    )
    try:
        await retrying(service.reconcile, symbols)
    except (*VENUE_FAILURES, TransientError) as exc:
        if ctx.stopping.is_set():
            return
        ctx.log.error(
            "reconciliation_failed",
            error=f"{type(exc).__name__}: {exc}"[:300],
            error_class=classify(exc).error_class.value,
            action_taken="stop: waiting does not cure it",
        )
        raise


async def _wait_for_lease(ctx: ServiceContext, lease: Lease) -> bool:
    """Standby until the lease is ours (False: stopping first). READY meanwhile: ready to take over."""
    announced = False
    while not ctx.stopping.is_set():
        try:
            if await lease.try_acquire() is not None:
                return True
        except (NatsError, TimeoutError, OSError) as exc:
            ctx.log.warning("lease_acquire_failed", lease=lease.name, error=f"{type(exc).__name__}: {exc}")
        if not announced:
            view = await lease.read()
            holder = view.record.holder if view.record else None
            ctx.log.info("position_standby", lease=lease.name, holder=lease.holder, current_holder=holder)
            ctx.set_state(ComponentState.READY)
            announced = True
        await asyncio.sleep(lease.ttl_ns / 3e9)
    return False


def run() -> None:
    """Run the position process the environment describes; bad settings end it with one clear
    error line and exit status 2 (a supervisor's retries then fail fast, without a traceback)."""
    try:
        settings = Settings.from_env()
        _, component = position_identity(settings)
    except SettingsError as exc:
        bulwark_logging.configure("INFO")
        get_logger(subjects.POSITION).error("settings_invalid", error=str(exc), action_taken="exit, not started")
        sys.exit(EXIT_BAD_SETTINGS)
    main(component, setup, needs_db=True, settings=settings)


if __name__ == "__main__":
    run()

"""risk process: `python -m services.risk.main`."""

from __future__ import annotations

from decimal import Decimal
from functools import partial

from libs.clock import wall_clock
from libs.runtime.service import ServiceContext, main
from libs.settings import Settings
from libs.snapshot import SnapshotPolicy
from proto import subjects

from . import adapters, breaker_effects, dependencies, monitor, recovery
from . import snapshot as snap
from .breaker_rules import (
    AbnormalMarketBreaker,
    AbnormalMarketConfig,
    BreakerBoard,
    RapidLossBreaker,
    RapidLossConfig,
    ResourceBreaker,
    ResourceConfig,
    StrategyMalfunctionConfig,
)
from .checks import RiskLimits
from .handlers import RiskService
from .paper import PaperModes

FOLLOWED_SUBJECTS = (
    subjects.EVT_HOT_STATE_ALL,
    subjects.MD_MARK_ALL,
    subjects.EVT_DEGRADATION,
    subjects.CMD_STRATEGY_ENABLE_ALL,
    subjects.heartbeat(subjects.STATE_BUILDER),
    subjects.EVT_LINK_ALL,
)


def limits_from(settings: Settings) -> RiskLimits:
    """Pre-trade limits from settings."""
    return RiskLimits(
        symbols=frozenset(settings.symbols),
        max_position_qty=Decimal(settings.max_position_qty),
        max_order_notional=Decimal(settings.max_order_notional),
        liquid_symbols=frozenset(settings.risk_liquid_symbols),
        reduced_min_confidence=Decimal(settings.risk_reduced_min_confidence),
        max_orders_per_minute=settings.risk_max_orders_per_minute,
    )


def breakers_from(settings: Settings) -> BreakerBoard:
    """CB-1..CB-4 with SPEC §4 thresholds and the desk's capital and baselines from settings."""
    return BreakerBoard(
        rapid_loss=RapidLossBreaker(
            RapidLossConfig(
                capital=Decimal(settings.risk_capital),
                max_consecutive_losses=settings.risk_cb1_consecutive_losses,
                session_offset_ns=settings.risk_session_tz_offset_s * 1_000_000_000,
            )
        ),
        abnormal_market=AbnormalMarketBreaker(
            AbnormalMarketConfig(funding_normal=Decimal(settings.risk_funding_normal), pause_s=settings.risk_pause_s)
        ),
        resource=ResourceBreaker(ResourceConfig(latency_baseline_ms=settings.risk_latency_baseline_ms)),
        strategy_config=StrategyMalfunctionConfig(
            baseline_win_rate=Decimal(settings.risk_baseline_win_rate), window=settings.risk_cb3_trades
        ),
    )


async def setup(ctx: ServiceContext) -> None:
    """Load the persisted trading state, rebuild memory from the latest snapshot and the ORDERS tail
    (SPEC §8), load breakers, follow events, serve requests, then consume orders."""
    settings = ctx.settings
    limits = limits_from(settings)
    state = await adapters.read_trading_state(ctx.bus)
    snapshots = snap.snapshot_keeper(settings.pg_dsn, ctx.log)
    ctx.cleanups.append(snapshots.close)
    service = RiskService(
        ctx.bus,
        ctx.log,
        limits,
        settings.venue,
        wall_clock,
        state,
        breakers=breakers_from(settings),
        resources=adapters.ProcResources(),
        snapshots=snapshots,
        policy=SnapshotPolicy(
            clock=wall_clock,
            interval_ns=int(settings.snapshot_interval_s * 1e9),
            every_events=settings.snapshot_every_events,
        ),
        backup_venue=settings.backup_venue,
        paper=PaperModes(paper_link=settings.paper, venue=settings.paper_venue),
    )
    service.rules_required = settings.venue_rules_required
    report = await recovery.recover(service, snap.orders_log(ctx.bus, snapshots))
    await breaker_effects.load_breakers(service, settings.strategies)
    # Before any order consumer: the first signal is decided on its strategy's persisted mode.
    modes = await service.paper.follow(ctx.bus, ctx.log)
    ctx.cleanups.append(modes.stop)
    # Subscribe before the initial reads so nothing published in between is missed.
    for subject in FOLLOWED_SUBJECTS:
        await ctx.bus.subscribe_core(subject, service.on_core_event)
    await dependencies.load_initial_state(service)
    ctx.bus.add_connection_listener(partial(dependencies.on_bus_connection, service))
    await service.serve()
    ctx.details = lambda: {
        "trading_state": service.trading.state.value,
        "degradation_level": service.degradation.value if service.degradation else None,
        "decided": len(service.state.decided),
        "pending_orders": len(service.pending),
        "breakers_open": [b.id for b in service.breakers.all() if b.is_open] if service.breakers else [],
        "entries_halted": dependencies.entries_halted(service),
        "recovery": report.as_dict(),
        "orders_seq": service.orders_seq,
        "snapshots": snapshots.stats(),
    }
    ctx.spawn(monitor.monitor(service, settings.risk_monitor_interval_s), "risk-monitor")
    # Positions, fills and order events: durable, so a restart knows what was processed (its ack
    # floor) and gets what happened while risk was down. Created at the end of the replay the first
    # time; afterwards it resumes where its acknowledgements ended. Batch 1: a fill must release
    # pending exposure before the next decision, not after a batch filled up.
    created = await snap.consumer_missing(ctx.bus)
    await ctx.bus.consume(
        stream=subjects.STREAM_ORDERS.name,
        durable=subjects.RISK_ORDER_EVENTS_CONSUMER,
        filter_subjects=list(snap.ORDERS_EVENT_SUBJECTS),
        handler=service.on_orders_event,
        batch=1,
        start_sequence=report.live_from if created else None,
    )
    await ctx.bus.consume(
        stream=subjects.STREAM_ORDERS.name,
        durable=subjects.RISK_ORDERS_CONSUMER,
        filter_subjects=[subjects.CMD_ORDER_SUBMIT],
        handler=service.on_order_message,
    )
    await ctx.bus.consume(
        stream=subjects.STREAM_SIGNALS.name,
        durable=subjects.RISK_SIGNALS_CONSUMER,
        filter_subjects=[subjects.EVT_SIGNAL_ALL],
        handler=service.on_order_message,
    )
    ctx.log.info("risk_started", trading_state=state.state.value, limits=str(limits))


if __name__ == "__main__":
    main(subjects.RISK, setup)

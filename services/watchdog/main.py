"""watchdog process: `python -m services.watchdog.main` — wiring only.

Tracks heartbeats on `hb.>`, observes hot state, links, resources and latency, evaluates health and
the degradation level every second (`evaluation`, `evaluator`, `rules`), delivers alerts to the
sinks (`handlers.AlertDispatcher`, `notifications`) and resolves the ones whose condition cleared
or that expired (`alert_lifecycle`), recovers and snapshots its memory (`recovery`),
verifies the projections (`verification`), and runs the audit writer (streams ORDERS, SIGNALS,
CONTROL -> `audit_events`) and the DLQ writer (-> `dead_letters`).
"""

from __future__ import annotations

from libs.clock import wall_clock
from libs.heartbeat import HeartbeatTracker, expected_components
from libs.runtime.service import ServiceContext, main
from proto import subjects
from services.watchdog import adapters, evaluation, handlers, snapshot
from services.watchdog.alert_lifecycle import AlertCloser
from services.watchdog.observer import Observer
from services.watchdog.recovery import WatchdogMemory
from services.watchdog.verification import ProjectionsVerifier

# A Postgres outage never pushes audit rows into the DLQ: the consumer waits for it, the same row
# first (`libs.store_errors`); a row Postgres refuses is dead-lettered at once. Only an unclassified
# failure counts against this bound.
AUDIT_MAX_DELIVER = 20


async def setup(ctx: ServiceContext) -> None:
    """Start heartbeat tracking, the evaluation loop, the alert sinks, the audit and DLQ writers."""
    settings = ctx.settings
    tracker = HeartbeatTracker(
        timeout_ns=int(settings.heartbeat_timeout_s * 1e9), expected=expected_components(settings)
    )
    await adapters.subscribe_heartbeats(ctx.bus, ctx.log, tracker, wall_clock)
    observer = Observer(ctx, wall_clock)
    await observer.start()
    evaluator = await evaluation.evaluator_from_kv(ctx, wall_clock)
    adapters.measure_resources(settings.watchdog_disk_path)  # primes the CPU average
    ctx.spawn(handlers.dead_letter_retention_loop(ctx), "dlq-retention")
    ctx.spawn(handlers.dlq_depth_loop(ctx), "dlq-depth")

    dispatcher = handlers.AlertDispatcher(
        ctx, adapters.webhook_sinks(settings), timeout_s=settings.alert_webhook_timeout_s
    )
    ctx.cleanups.append(dispatcher.close)
    verifier = ProjectionsVerifier(ctx, dispatcher.router)

    keeper = snapshot.snapshot_keeper(settings.pg_dsn, ctx.log)
    ctx.cleanups.append(keeper.close)
    memory = WatchdogMemory(ctx, evaluator, dispatcher, observer, verifier, keeper, wall_clock)
    control = snapshot.control_log(ctx.bus, keeper, subjects.WATCHDOG_ALERTS_CONSUMER)
    report = await memory.recover(control)
    dispatcher.on_applied = memory.alert_applied
    ctx.details = lambda: {"recovery": report.as_dict(), "snapshots": keeper.stats(), **memory.details()}
    # Alerts already delivered before a restart are open in the rebuilt router: not paged again.
    await ctx.bus.consume(
        stream=subjects.STREAM_CONTROL.name,
        durable=subjects.WATCHDOG_ALERTS_CONSUMER,
        filter_subjects=[subjects.EVT_ALERT_ALL],
        handler=dispatcher.handle,
        max_deliver=AUDIT_MAX_DELIVER,
        # First start: from the end of what was replayed (a new deployment does not page for history).
        start_sequence=report.live_from if memory.consumer_created else None,
    )
    # Evaluations start only now: on the restored rule timers and open alerts (SPEC §8).
    ctx.spawn(evaluation.evaluation_loop(ctx, tracker, observer, evaluator, memory.evaluated, wall_clock), "evaluation")
    ctx.spawn(verifier.loop(settings.watchdog_verify_interval_s), "projections-verification")
    # Every open alert ends: a condition once it clears, a notification when it expires (`alert_lifecycle`).
    closer = AlertCloser(settings.venue)
    ctx.spawn(handlers.alert_lifecycle_loop(ctx, closer, dispatcher.router, evaluator, wall_clock), "alert-lifecycle")

    for spec, durable in subjects.WATCHDOG_AUDIT_CONSUMERS:
        await ctx.bus.consume(
            stream=spec.name,
            durable=durable,
            filter_subjects=list(spec.subjects),
            handler=handlers.audit_handler(ctx, spec.name),
            max_deliver=AUDIT_MAX_DELIVER,
        )
    await ctx.bus.consume(
        stream=subjects.STREAM_DLQ.name,
        durable=subjects.WATCHDOG_DLQ_CONSUMER,
        filter_subjects=list(subjects.STREAM_DLQ.subjects),
        handler=handlers.dead_letter_handler(ctx),
        max_deliver=AUDIT_MAX_DELIVER,
    )


if __name__ == "__main__":
    main(subjects.WATCHDOG, setup, needs_db=True)

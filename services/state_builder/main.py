"""state-builder entry point: `python -m services.state_builder.main`."""

from __future__ import annotations

import time

from libs.clock import wall_clock
from libs.runtime.service import ServiceContext, main, ms_since, run_service
from libs.settings import Settings
from libs.snapshot import SnapshotPolicy
from proto import subjects
from proto.envelope import Message
from services.state_builder import adapters
from services.state_builder.domain import CHECK_INTERVAL_S
from services.state_builder.handlers import StateBuilder

COMPONENT = subjects.STATE_BUILDER


async def setup(ctx: ServiceContext) -> None:
    """Recover (snapshot + bounded tail, FM-C1), then consume live from where recovery ended.

    Every symbol is announced INVALID first (fail closed) and turns VALID only after recovery,
    fresh live updates and the §7 book validation.
    """
    bus = ctx.bus

    async def publish(subject: str, message: Message) -> int:
        return await bus.publish(subject, message)

    async def request(subject: str, payload: bytes) -> bytes:
        return await bus.request(subject, payload, timeout_s=3.0)

    snapshots = adapters.snapshot_keeper(ctx.settings.pg_dsn, ctx.log)
    ctx.cleanups.append(snapshots.close)
    builder = StateBuilder(
        symbols=ctx.settings.symbols,
        publish=publish,
        kv_put=bus.kv_put,
        request=request,
        clock=wall_clock,
        log=ctx.log,
        policy=SnapshotPolicy(
            clock=wall_clock,
            interval_ns=int(ctx.settings.snapshot_interval_s * 1e9),
            every_events=ctx.settings.snapshot_every_events,
        ),
        on_checkpoint=lambda checkpoint: snapshots.submit(checkpoint.stream_seq, checkpoint),
    )

    builder.metrics = ctx.metrics
    ctx.metrics.watch_book_ages(lambda: {name: _seconds(state.hot.age_ms()) for name, state in builder.symbols.items()})

    def details() -> dict[str, object]:
        return {
            **builder.details(),
            "snapshots": snapshots.stats(),
            "bus": bus.status(),
        }

    ctx.details = details
    phases = ctx.startup_phases
    mark = time.perf_counter()
    await builder.publish_initial()
    await bus.serve(subjects.SVC_STATE_BUILDER_BOOK, builder.handle_book_request)
    await bus.serve(subjects.SVC_STATE_BUILDER_SYMBOLS, builder.handle_symbols_request)
    await adapters.subscribe_link_events(bus, builder.on_link_event)
    phases["announce_ms"] = ms_since(mark)
    mark = time.perf_counter()
    report = await builder.recover(adapters.recovery_log(bus, snapshots), max_replay=ctx.settings.recovery_max_replay)
    phases["recover_ms"] = ms_since(mark)
    mark = time.perf_counter()
    await adapters.consume_market_data(bus, builder.handle_message, start_sequence=report.live_from)
    phases["live_consumer_ms"] = ms_since(mark)
    ctx.spawn(builder.run_ticks(CHECK_INTERVAL_S), "hot-state-timer")


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


async def run(settings: Settings | None = None) -> None:
    """Run state-builder until stopped (in-process use, e.g. tests)."""
    await run_service(COMPONENT, setup, settings=settings)


if __name__ == "__main__":
    main(COMPONENT, setup)

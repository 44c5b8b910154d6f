"""state-builder entry point: `python -m services.state_builder.main`."""

from __future__ import annotations

import time

from libs.runtime.service import ServiceContext, main, run_service
from libs.settings import Settings
from proto import subjects
from proto.envelope import Message
from services.state_builder import adapters
from services.state_builder.domain import CHECK_INTERVAL_S
from services.state_builder.handlers import StateBuilder

COMPONENT = subjects.STATE_BUILDER


async def setup(ctx: ServiceContext) -> None:
    """Consumer, timers, queries, then a resync request per symbol so fresh snapshots arrive."""
    bus = ctx.bus

    async def publish(subject: str, message: Message) -> int:
        return await bus.publish(subject, message)

    async def request(subject: str, payload: bytes) -> bytes:
        return await bus.request(subject, payload, timeout_s=3.0)

    builder = StateBuilder(
        symbols=ctx.settings.symbols,
        publish=publish,
        kv_put=bus.kv_put,
        request=request,
        clock=time.time_ns,
        log=ctx.log,
    )
    ctx.details = builder.details
    await builder.publish_initial()
    await bus.serve(subjects.service_query(COMPONENT, "book"), builder.handle_book_request)
    await bus.serve(subjects.service_query(COMPONENT, "symbols"), builder.handle_symbols_request)
    await adapters.subscribe_link_events(bus, builder.on_link_event)
    await adapters.consume_market_data(bus, builder.handle_message)
    ctx.spawn(builder.run_ticks(CHECK_INTERVAL_S), "hot-state-timer")
    for symbol in builder.symbols:
        ctx.spawn(builder.request_resync(symbol), f"initial-resync-{symbol}")


async def run(settings: Settings | None = None) -> None:
    """Run state-builder until stopped (in-process use, e.g. tests)."""
    await run_service(COMPONENT, setup, settings=settings)


if __name__ == "__main__":
    main(COMPONENT, setup)

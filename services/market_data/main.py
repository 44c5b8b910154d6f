"""market-data entry point: `python -m services.market_data.main`."""

from __future__ import annotations

from libs.runtime.service import ServiceContext, main, run_service
from libs.settings import Settings
from proto import subjects
from proto.envelope import Message
from services.market_data import adapters
from services.market_data.handlers import MarketDataService

COMPONENT = subjects.MARKET_DATA


async def setup(ctx: ServiceContext) -> None:
    """Wire the venue link, the open-interest poll and the resync request into the running service."""
    settings = ctx.settings
    rest = adapters.rest_client(settings)
    await rest.start()
    ctx.cleanups.append(rest.close)

    async def publish(subject: str, message: Message, msg_id: str | None) -> int:
        return await ctx.bus.publish(subject, message, msg_id=msg_id)

    service = MarketDataService(
        venue=settings.venue,
        symbols=settings.symbols,
        publish=publish,
        kv_put=ctx.bus.kv_put,
        rest=rest,
        open_stream=lambda: adapters.market_stream(settings, settings.symbols),
        log=ctx.log,
    )
    ctx.cleanups.append(service.close)
    ctx.details = service.details
    await ctx.bus.serve(subjects.service_query(COMPONENT, "resync"), service.handle_resync_request)
    ctx.spawn(service.run_stream_forever(), "market-ws")
    ctx.spawn(service.poll_open_interest_forever(), "open-interest-poll")


async def run(settings: Settings | None = None) -> None:
    """Run market-data until stopped (in-process use, e.g. tests)."""
    await run_service(COMPONENT, setup, settings=settings)


if __name__ == "__main__":
    main(COMPONENT, setup)

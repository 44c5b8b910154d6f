"""risk process: `python -m services.risk.main`."""

from __future__ import annotations

import time
from decimal import Decimal

from libs.runtime.service import ServiceContext, main
from proto import subjects

from . import adapters
from .domain import RiskLimits
from .handlers import RiskService


async def setup(ctx: ServiceContext) -> None:
    """Load the persisted trading state, follow hot state/positions/marks, then consume orders."""
    settings = ctx.settings
    limits = RiskLimits(
        symbols=frozenset(settings.symbols),
        max_position_qty=Decimal(settings.max_position_qty),
        max_order_notional=Decimal(settings.max_order_notional),
    )
    state = await adapters.read_trading_state(ctx.bus)
    service = RiskService(ctx.bus, ctx.log, limits, settings.venue, time.time_ns, state)
    # Subscribe before the initial reads so nothing published in between is missed.
    for subject in ("evt.hotstate.>", "evt.position.>", "md.mark.>"):
        await ctx.bus.subscribe_core(subject, service.on_core_event)
    await service.load_initial_state()
    await service.serve()
    ctx.details = lambda: {
        "trading_state": service.trading.state.value,
        "decided": len(service.decided),
    }
    await ctx.bus.consume(
        stream=subjects.STREAM_ORDERS.name,
        durable="risk-orders",
        filter_subjects=[subjects.CMD_ORDER_SUBMIT],
        handler=service.on_order_message,
    )
    await ctx.bus.consume(
        stream=subjects.STREAM_SIGNALS.name,
        durable="risk-signals",
        filter_subjects=["evt.signal.>"],
        handler=service.on_order_message,
    )
    ctx.log.info("risk_started", trading_state=state.state.value, limits=str(limits))


if __name__ == "__main__":
    main(subjects.RISK, setup)

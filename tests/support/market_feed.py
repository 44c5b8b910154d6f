"""Market data published as market-data publishes it (core NATS), for tests that run strategies
without a market-data service."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from libs.bus import Bus
from proto import subjects
from proto.codec import encode
from proto.messages import Trade


async def feed_taker_buying(
    bus: Bus, venue: str, symbol: str, price: Decimal, quantity: Decimal = Decimal("0.5"), interval_s: float = 0.1
) -> None:
    """Publish a taker buy (`buyer_is_maker=False`) at `price` every `interval_s` until cancelled."""
    trade_id = 0
    while True:
        trade_id += 1
        trade = Trade(
            venue=venue, symbol=symbol, trade_id=trade_id, price=price, quantity=quantity, buyer_is_maker=False
        )
        await bus.nc.publish(subjects.md_trade(venue, symbol), encode(trade))
        await asyncio.sleep(interval_s)

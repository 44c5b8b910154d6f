"""state-builder I/O: the durable market-data consumer and the link-event subscription."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from libs.bus import Bus, Handler
from proto import subjects
from proto.codec import decode_as
from proto.messages import LinkStateChanged

MARKET_DATA_CONSUMER = "state-builder-md"


async def consume_market_data(bus: Bus, handler: Handler) -> None:
    """Durable consumer `state-builder-md` on MARKET_DATA (`md.>`).

    New messages only on first creation: the book is rebuilt from a fresh snapshot requested at
    start, so history before that is of no use. Batch 1, because a larger pull batch lingers up
    to its timeout waiting to fill, which would age the hot state by up to a second.
    """
    await bus.consume(
        stream=subjects.STREAM_MARKET_DATA.name,
        durable=MARKET_DATA_CONSUMER,
        filter_subjects=[subjects.MD_ALL],
        handler=handler,
        deliver_policy=DeliverPolicy.NEW,
        batch=1,
    )


async def subscribe_link_events(bus: Bus, on_event: Callable[[LinkStateChanged], Awaitable[None]]) -> None:
    """Live (core NATS) link-state events of every venue's market WebSocket."""

    async def callback(msg: Msg) -> None:
        try:
            event = decode_as(msg.data, LinkStateChanged)
        except ValueError as exc:  # msgspec errors derive from ValueError
            bus.log.warning("bad_link_event", subject=msg.subject, error=str(exc)[:300])
            return
        await on_event(event)

    await bus.subscribe_core("evt.link.*.market-ws", callback)

"""state-builder I/O: the market-data consumer, the replay of the stream's tail, the link-event
subscription, and the snapshot store in Postgres (connected lazily: Postgres being down must
never stop market state from being built, SPEC FM-C3 — recovery then falls back to a resync).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from libs.bus import Bus, Handler
from libs.logging import Logger
from libs.service_snapshots import SnapshotKeeper, StreamLog
from proto import subjects
from proto.codec import decode_as
from proto.messages import LinkStateChanged
from services.state_builder.domain import StateBuilderCheckpoint, decode_checkpoint, encode_checkpoint

SNAPSHOT_COMPONENT = subjects.STATE_BUILDER
SNAPSHOTS_KEPT = 3


async def consume_market_data(bus: Bus, handler: Handler, *, start_sequence: int) -> None:
    """Durable consumer `state-builder-md` on MARKET_DATA (`md.>`), from `start_sequence` on.

    Recreated at every start at the sequence recovery covered: everything before it is in the
    restored snapshot or was replayed, so the old position (and its backlog) is of no use — this
    is what keeps recovery time independent of how long the system ran. Batch 1, because a
    larger pull batch lingers up to its timeout waiting to fill, which would age the hot state.
    """
    await bus.consume(
        stream=subjects.STREAM_MARKET_DATA.name,
        durable=subjects.STATE_BUILDER_MARKET_DATA_CONSUMER,
        filter_subjects=[subjects.MD_ALL],
        handler=handler,
        batch=1,
        start_sequence=start_sequence,
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

    await bus.subscribe_core(subjects.evt_link_all_venues(subjects.MARKET_WS_LINK), callback)


def snapshot_keeper(dsn: str, log: Logger) -> SnapshotKeeper[StateBuilderCheckpoint]:
    """The state-builder's checkpoints (books, hot state, stream sequence) in Postgres: lazily
    connected, verified on load, saved in the background (`libs.service_snapshots.SnapshotKeeper`)."""
    return SnapshotKeeper(
        dsn, SNAPSHOT_COMPONENT, encode=encode_checkpoint, decode=decode_checkpoint, log=log, keep=SNAPSHOTS_KEPT
    )


def recovery_log(bus: Bus, snapshots: SnapshotKeeper[StateBuilderCheckpoint]) -> StreamLog[StateBuilderCheckpoint]:
    """What `StateBuilder.recover` reads: the checkpoints and the MARKET_DATA stream."""
    return StreamLog(bus, snapshots, subjects.STREAM_MARKET_DATA.name)

"""state-builder I/O: the market-data consumer, the replay of the stream's tail, the link-event
subscription, and the snapshot store in Postgres (connected lazily: Postgres being down must
never stop market state from being built, SPEC FM-C3 — recovery then falls back to a resync).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
from nats.aio.msg import Msg

from libs import db
from libs.bus import Bus, Delivery, Handler
from libs.logging import Logger
from libs.snapshot import SnapshotStore
from proto import subjects
from proto.codec import decode_as
from proto.envelope import Message
from proto.messages import LinkStateChanged
from services.state_builder.domain import StateBuilderCheckpoint, decode_checkpoint, encode_checkpoint

MARKET_DATA_CONSUMER = "state-builder-md"
SNAPSHOT_COMPONENT = subjects.STATE_BUILDER
SNAPSHOTS_KEPT = 3
PRUNE_EVERY_SAVES = 5
DB_CONNECT_TIMEOUT_S = 2.0
DB_RETRY_S = 10.0


async def consume_market_data(bus: Bus, handler: Handler, *, start_sequence: int) -> None:
    """Durable consumer `state-builder-md` on MARKET_DATA (`md.>`), from `start_sequence` on.

    Recreated at every start at the sequence recovery covered: everything before it is in the
    restored snapshot or was replayed, so the old position (and its backlog) is of no use — this
    is what keeps recovery time independent of how long the system ran. Batch 1, because a
    larger pull batch lingers up to its timeout waiting to fill, which would age the hot state.
    """
    await bus.consume(
        stream=subjects.STREAM_MARKET_DATA.name,
        durable=MARKET_DATA_CONSUMER,
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

    await bus.subscribe_core("evt.link.*.market-ws", callback)


def _check_checkpoint(data: bytes) -> str | None:
    try:
        decode_checkpoint(data)
    except ValueError as exc:
        return f"undecodable checkpoint: {str(exc)[:200]}"
    return None


class Snapshots:
    """The snapshot store behind a lazily (re)connected pool, and a one-at-a-time background writer.

    Args:
        dsn: Postgres DSN.
        log: component logger.
    """

    def __init__(self, dsn: str, log: Logger) -> None:
        self._dsn = dsn
        self.log = log
        self._pool: asyncpg.Pool | None = None
        self._store: SnapshotStore | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self._pending: StateBuilderCheckpoint | None = None
        self._writer: asyncio.Task[None] | None = None
        self._last_connect_failure = float("-inf")
        self.saved = 0
        self.failed = 0
        self.last_saved_seq: int | None = None

    async def store(self) -> SnapshotStore | None:
        """The store, connecting (at most every 10 s, for at most 2 s) when not connected yet."""
        if self._store is not None:
            return self._store
        async with self._connecting:
            loop = asyncio.get_running_loop()
            if self._store is not None or loop.time() - self._last_connect_failure < DB_RETRY_S:
                return self._store
            try:
                pool = await asyncio.wait_for(db.create_pool(self._dsn, min_size=1, max_size=2), DB_CONNECT_TIMEOUT_S)
                await asyncio.wait_for(db.migrate(pool), DB_CONNECT_TIMEOUT_S * 2)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                self._last_connect_failure = loop.time()
                self.log.warning(
                    "snapshot_store_unavailable",
                    error=f"{type(exc).__name__}: {str(exc)[:200]}",
                    action_taken=f"no snapshots until Postgres answers; retry in {DB_RETRY_S:.0f}s",
                )
                return None
            self._pool = pool
            self._store = SnapshotStore(pool, log=self.log)
            return self._store

    async def load(self) -> tuple[StateBuilderCheckpoint | None, list[str]]:
        """The newest valid checkpoint, and a description of every corrupt one skipped."""
        store = await self.store()
        if store is None:
            return None, []
        try:
            result = await store.load_latest_valid(SNAPSHOT_COMPONENT, accept=_check_checkpoint)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            self.log.warning("snapshot_load_failed", error=str(exc)[:300], action_taken="recover by resync")
            return None, []
        corrupt = [f"id={item.id} seq={item.stream_seq}: {item.reason}" for item in result.corrupt]
        if result.snapshot is None:
            return None, corrupt
        return decode_checkpoint(result.snapshot.state), corrupt

    def submit(self, checkpoint: StateBuilderCheckpoint) -> None:
        """Save `checkpoint` in the background; a newer one replaces one still waiting."""
        self._pending = checkpoint
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="snapshot-writer")

    async def _write(self) -> None:
        while self._pending is not None:
            checkpoint, self._pending = self._pending, None
            store = await self.store()
            if store is None:
                self.failed += 1
                continue
            try:
                await store.save(SNAPSHOT_COMPONENT, checkpoint.stream_seq, encode_checkpoint(checkpoint))
                self.saved += 1
                self.last_saved_seq = checkpoint.stream_seq
                if self.saved % PRUNE_EVERY_SAVES == 0:
                    await store.prune(SNAPSHOT_COMPONENT, keep=SNAPSHOTS_KEPT)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                self.failed += 1
                self.log.warning("snapshot_save_failed", stream_seq=checkpoint.stream_seq, error=str(exc)[:300])
                continue
            self.log.debug("snapshot_saved", stream_seq=checkpoint.stream_seq)

    async def close(self) -> None:
        if self._writer is not None and not self._writer.done():
            try:
                await asyncio.wait_for(self._writer, 3.0)
            except (TimeoutError, asyncio.CancelledError):
                self._writer.cancel()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 3.0)
            except TimeoutError:
                self._pool.terminate()


class BusRecoveryPort:
    """`RecoveryPort` over the bus (MARKET_DATA stream) and the snapshot store."""

    def __init__(self, bus: Bus, snapshots: Snapshots) -> None:
        self._bus = bus
        self._snapshots = snapshots

    async def load_checkpoint(self) -> tuple[StateBuilderCheckpoint | None, list[str]]:
        return await self._snapshots.load()

    async def stream_bounds(self) -> tuple[int, int]:
        return await self._bus.stream_bounds(subjects.STREAM_MARKET_DATA.name)

    async def replay(self, start_seq: int, end_seq: int, apply: Callable[[Message], None]) -> int:
        def handler(message: Message, delivery: Delivery) -> None:
            apply(message)

        return await self._bus.replay(subjects.STREAM_MARKET_DATA.name, start_seq, end_seq, handler)

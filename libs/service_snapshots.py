"""Snapshots of one service's state behind a lazily connected Postgres pool (SPEC §8, FM-C1, FM-C3).

`SnapshotKeeper` is what state-builder, risk, strategy and watchdog share: load the newest snapshot
whose CRC32C verifies and that decodes (older ones when the newest is corrupt), save captured
snapshots in the background (one writer, newest wins, old ones pruned). `StructCodec` encodes a
service's snapshot struct; `StreamLog` is what a service's recovery reads (snapshots, the bounds
and the tail of its stream, the ack floor of its durable consumer). Postgres being down never
blocks a service: `load` reports it unavailable (the caller falls back to a full replay of the log
or to KV, and logs it) and saves are counted as failed and tried again with the next capture.

`RecoveryReport` is how every service reports its start-up recovery (heartbeat details, logs):
`replayed` is the number of stream messages read after the snapshot, so tests and operators can
see that the replay is bounded by the snapshot interval rather than by the history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

import asyncpg
import msgspec
from nats.js.errors import NotFoundError

from libs import db
from libs.bus import Bus, Delivery
from libs.logging import Logger
from libs.snapshot import DEFAULT_KEEP, SnapshotStore
from proto.envelope import Message

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)

DB_CONNECT_TIMEOUT_S = 2.0
DB_RETRY_S = 10.0
PRUNE_EVERY_SAVES = 5
PG_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # a connection broken mid-operation when Postgres dies
    TimeoutError,
)
"""What a Postgres outage raises (a service falls back or defers; it never stops trading on it)."""


@dataclass(frozen=True)
class Loaded(Generic[T]):
    """What `SnapshotKeeper.load` found.

    Attributes:
        state: the decoded state of the newest valid snapshot, None when there is none.
        stream_seq: the stream sequence that snapshot covers.
        corrupt: one description per corrupt snapshot skipped (newest first); non-empty means an alert.
        available: False when Postgres could not be asked (the caller logs a full-replay fallback).
    """

    state: T | None = None
    stream_seq: int | None = None
    corrupt: tuple[str, ...] = ()
    available: bool = True


@dataclass(frozen=True)
class RecoveryReport:
    """How a service rebuilt its state at start.

    Attributes:
        mode: `snapshot` (snapshot + tail), `full-replay` (no usable snapshot: the whole retained log),
            or `fresh` (nothing to replay from: live data only).
        snapshot_seq: the sequence the loaded snapshot covered (None without one).
        replayed: stream messages read and applied after the snapshot.
        live_from: first stream sequence the live consumer handles.
        corrupt_snapshots: corrupt snapshots skipped on the way.
        snapshot_store: `available` or `unavailable` (Postgres down at start).
        covered_seq: the stream sequence the recovered state covers (None: not reported).
        positions: positions as recovered, before reconciliation with the venue corrected
            anything (symbol → quantity; None: a service without positions).
        orders_loaded: orders kept in memory after recovery (None: a service without orders).
        orders_evicted: finished orders the recovery left out of memory (beyond the retention).

    The position service also reports mode `projections`: its stream no longer starts at 1 and no
    snapshot is usable, so its state is loaded from the Postgres projections.
    """

    mode: str
    snapshot_seq: int | None
    replayed: int
    live_from: int
    corrupt_snapshots: int = 0
    snapshot_store: str = "available"
    covered_seq: int | None = None
    positions: dict[str, str] | None = None
    orders_loaded: int | None = None
    orders_evicted: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The report as heartbeat details and log fields; optional fields a service does not report
        (None) are left out."""
        return {name: value for name, value in asdict(self).items() if value is not None or name in _ALWAYS}


_ALWAYS = frozenset({"mode", "snapshot_seq", "replayed", "live_from", "corrupt_snapshots", "snapshot_store"})
"""`RecoveryReport` fields every service reports, even when None (`snapshot_seq` without a snapshot)."""


def snapshot_fits_stream(log: Logger, snapshot_seq: int, first: int, last: int, fallback: str) -> bool:
    """Can the stream `[first, last]` continue a snapshot covering up to `snapshot_seq`?

    Not when the snapshot is ahead of the stream (the stream was reset) or older than its first
    retained message (the gap is lost); each case is logged with `fallback`, what recovery does instead.
    """
    if snapshot_seq > last:
        log.warning(
            "recovery_snapshot_ahead_of_stream",
            snapshot_seq=snapshot_seq,
            stream_last_seq=last,
            action_taken=f"stream was reset: snapshot ignored, {fallback}",
        )
        return False
    if snapshot_seq + 1 < first:
        log.warning(
            "recovery_snapshot_too_old", snapshot_seq=snapshot_seq, stream_first_seq=first, action_taken=fallback
        )
        return False
    return True


class SnapshotKeeper(Generic[T]):
    """One component's snapshots: lazy store, verified load, background saves.

    Args:
        dsn: Postgres DSN.
        component: the name snapshots are stored under (table `snapshots`, column `component`).
        encode: state → bytes.
        decode: bytes → state; raises ValueError (msgspec errors are ValueErrors) when it cannot.
        log: component logger.
        keep: snapshots kept per component.
    """

    def __init__(
        self,
        dsn: str,
        component: str,
        *,
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        log: Logger,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        self._dsn = dsn
        self.component = component
        self._encode = encode
        self._decode = decode
        self.log = log
        self._keep = keep
        self._pool: asyncpg.Pool | None = None
        self._store: SnapshotStore | None = None
        self._connecting = asyncio.Lock()
        self._last_connect_failure = float("-inf")
        self._pending: tuple[int, T] | None = None
        self._writer: asyncio.Task[None] | None = None
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
            pool: asyncpg.Pool | None = None
            try:
                pool = await asyncio.wait_for(db.create_pool(self._dsn, min_size=1, max_size=2), DB_CONNECT_TIMEOUT_S)
                await asyncio.wait_for(db.migrate(pool), DB_CONNECT_TIMEOUT_S * 2)
            except PG_ERRORS as exc:
                if pool is not None:
                    pool.terminate()
                self._last_connect_failure = loop.time()
                self.log.warning(
                    "snapshot_store_unavailable",
                    component=self.component,
                    error=f"{type(exc).__name__}: {str(exc)[:200]}",
                    action_taken=f"no snapshots until Postgres answers; retry in {DB_RETRY_S:.0f}s",
                )
                return None
            self._pool = pool
            self._store = SnapshotStore(pool, log=self.log)
            return self._store

    def _accept(self, data: bytes) -> str | None:
        try:
            self._decode(data)
        except ValueError as exc:
            return f"undecodable snapshot: {str(exc)[:200]}"
        return None

    async def load(self) -> Loaded[T]:
        """The newest valid snapshot, decoded; corrupt ones are skipped (and described)."""
        store = await self.store()
        if store is None:
            return Loaded(available=False)
        try:
            result = await store.load_latest_valid(self.component, accept=self._accept)
        except PG_ERRORS as exc:
            self.log.warning(
                "snapshot_load_failed", component=self.component, error=str(exc)[:300], action_taken="full replay"
            )
            return Loaded(available=False)
        corrupt = tuple(f"id={item.id} seq={item.stream_seq}: {item.reason}" for item in result.corrupt)
        if result.snapshot is None:
            return Loaded(corrupt=corrupt)
        return Loaded(self._decode(result.snapshot.state), result.snapshot.stream_seq, corrupt)

    def submit(self, stream_seq: int, state: T) -> None:
        """Save `state` (covering `stream_seq`) in the background; a newer one replaces one still waiting."""
        self._pending = (stream_seq, state)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name=f"snapshot-writer-{self.component}")

    async def _write(self) -> None:
        while self._pending is not None:
            (stream_seq, state), self._pending = self._pending, None
            store = await self.store()
            if store is None:
                self.failed += 1
                continue
            try:
                await store.save(self.component, stream_seq, self._encode(state))
                self.saved += 1
                self.last_saved_seq = stream_seq
                if self.saved % PRUNE_EVERY_SAVES == 0:
                    await store.prune(self.component, keep=self._keep)
            except PG_ERRORS as exc:
                self.failed += 1
                self.log.warning(
                    "snapshot_save_failed", component=self.component, stream_seq=stream_seq, error=str(exc)[:300]
                )
                continue
            self.log.debug("snapshot_saved", component=self.component, stream_seq=stream_seq)

    def stats(self) -> dict[str, Any]:
        """For heartbeat details."""
        return {"saved": self.saved, "failed": self.failed, "last_seq": self.last_saved_seq}

    async def close(self) -> None:
        """Let a save in flight finish (bounded), then close the pool."""
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


async def consumer_processed_through(bus: Bus, stream: str, durable: str) -> int | None:
    """The highest stream sequence durable consumer `durable` has fully handled (acknowledged).

    Everything up to it had its effects applied before the consumer acknowledged it, so a restart
    rebuilds memory up to it without effects and lets the consumer deliver the rest with effects.

    Returns:
        None when the consumer does not exist (first start with it).
    """
    try:
        info = await bus.js.consumer_info(stream, durable)
    except NotFoundError:
        return None
    floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor is not None else 0
    start = int(info.config.opt_start_seq or 0) if info.config is not None else 0
    return max(floor, start - 1)


class StructCodec(Generic[S]):
    """JSON encoding of one service's snapshot struct, and its `SnapshotKeeper`."""

    def __init__(self, kind: type[S]) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(kind)

    def encode(self, snapshot: S) -> bytes:
        return self._encoder.encode(snapshot)

    def decode(self, data: bytes) -> S:
        """Raises msgspec errors (ValueError) when the bytes are not such a snapshot."""
        return self._decoder.decode(data)

    def keeper(self, dsn: str, component: str, log: Logger) -> SnapshotKeeper[S]:
        """The snapshots of `component` in Postgres."""
        return SnapshotKeeper(dsn, component, encode=self.encode, decode=self.decode, log=log)


class StreamLog(Generic[T]):
    """What a service's `recover` reads: its snapshots, one stream, and the progress of the durable
    consumer that applies that stream's effects.

    Args:
        bus: the connected bus.
        snapshots: the service's snapshots; None when it runs without Postgres (no snapshot then).
        stream: the stream replayed after the snapshot.
        durable: the durable consumer whose acknowledgements `processed_through` reports.
        filter_subject: replay only these subjects (all when None).
        fetch_timeout_s: how long a replay fetch waits; a filtered range with nothing in it ends
            on the first empty fetch, so a short timeout keeps such a replay short.
    """

    def __init__(
        self,
        bus: Bus,
        snapshots: SnapshotKeeper[T] | None,
        stream: str,
        *,
        durable: str | None = None,
        filter_subject: str | None = None,
        fetch_timeout_s: float = 2.0,
    ) -> None:
        self._bus = bus
        self._snapshots = snapshots
        self.stream = stream
        self.durable = durable
        self._filter_subject = filter_subject
        self._fetch_timeout_s = fetch_timeout_s

    async def load_snapshot(self) -> Loaded[T]:
        if self._snapshots is None:
            return Loaded(available=False)
        return await self._snapshots.load()

    async def bounds(self) -> tuple[int, int]:
        return await self._bus.stream_bounds(self.stream)

    async def processed_through(self) -> int | None:
        """See `consumer_processed_through`; None also when this log has no durable consumer."""
        if self.durable is None:
            return None
        return await consumer_processed_through(self._bus, self.stream, self.durable)

    async def replay(self, start_seq: int, end_seq: int, apply: Callable[[Message, int], None]) -> int:
        """Messages `start_seq`..`end_seq` into `apply(message, stream_seq)`; how many were applied."""

        def handler(message: Message, delivery: Delivery) -> None:
            apply(message, delivery.stream_sequence)

        return await self._bus.replay(
            self.stream,
            start_seq,
            end_seq,
            handler,
            filter_subject=self._filter_subject,
            fetch_timeout_s=self._fetch_timeout_s,
        )

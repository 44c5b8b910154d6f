"""Checksummed state snapshots in Postgres, so a restart replays only a bounded tail (SPEC §8, FM-C1).

A snapshot is opaque bytes that a component's state serialises to, tagged with the stream
sequence it covers (every message up to and including that sequence is reflected in it) and a
CRC32C of the bytes. `load_latest_valid` verifies the checksum and falls back to older snapshots
when the newest is corrupt: corruption is a detected, logged and reported condition (FM-C3),
never a wrong state silently loaded.

`SnapshotPolicy` is the pure "when to take the next one" rule: every 60 s and every N events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import google_crc32c

from libs.clock import Clock, wall_clock
from libs.logging import Logger, get_logger

DEFAULT_INTERVAL_NS = 60_000_000_000
"""SPEC §8: checkpoints every 60 s."""
DEFAULT_EVERY_EVENTS = 2000
"""And after this many events, so that the tail to replay stays bounded under load."""
DEFAULT_KEEP = 3
DEFAULT_CANDIDATES = 5


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli) of `data` as an unsigned 32-bit integer."""
    return int(google_crc32c.value(data))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One stored snapshot whose checksum verified."""

    id: int
    component: str
    stream_seq: int
    state: bytes
    created_ns: int


@dataclass(frozen=True, slots=True)
class CorruptSnapshot:
    """A stored snapshot that was skipped, and why."""

    id: int
    stream_seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What `load_latest_valid` found.

    Attributes:
        snapshot: the newest snapshot that verified (and that `accept` accepted), or None.
        corrupt: newer snapshots skipped on the way, newest first. Non-empty means corruption was
            detected: the caller should raise an alert (FM-C3) even though recovery goes on.
    """

    snapshot: Snapshot | None
    corrupt: tuple[CorruptSnapshot, ...] = ()

    @property
    def corruption_detected(self) -> bool:
        return bool(self.corrupt)


class SnapshotStore:
    """Snapshots of every stateful component in the Postgres table `snapshots`.

    Args:
        pool: a migrated asyncpg pool (table `snapshots` from migration 0001).
        clock: integer ns wall clock, stamped on saved snapshots.
        log: logger for corruption reports.
    """

    def __init__(self, pool: asyncpg.Pool, *, clock: Clock = wall_clock, log: Logger | None = None) -> None:
        self.pool = pool
        self._clock = clock
        self.log = log or get_logger("snapshot")

    async def save(self, component: str, stream_seq: int, state: bytes) -> int:
        """Store a snapshot covering every message up to `stream_seq`; returns its id."""
        row_id = await self.pool.fetchval(
            "INSERT INTO snapshots (component, stream_seq, state, crc32c, created_ns) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id",
            component,
            stream_seq,
            state,
            crc32c(state),
            self._clock(),
        )
        return int(row_id)

    async def load_latest_valid(
        self,
        component: str,
        *,
        accept: Callable[[bytes], str | None] | None = None,
        candidates: int = DEFAULT_CANDIDATES,
    ) -> LoadResult:
        """The newest snapshot of `component` whose CRC32C matches, falling back to older ones.

        Args:
            component: whose snapshots.
            accept: optional content check after the checksum passed (e.g. "does it decode?"):
                returns None to accept, or the reason to reject — a rejected snapshot counts as corrupt.
            candidates: how many of the newest snapshots to try before giving up.

        Returns:
            The snapshot found (or None) and the corrupt ones skipped on the way.
        """
        rows = await self.pool.fetch(
            "SELECT id, stream_seq, state, crc32c, created_ns FROM snapshots "
            "WHERE component = $1 ORDER BY id DESC LIMIT $2",
            component,
            candidates,
        )
        corrupt: list[CorruptSnapshot] = []
        for row in rows:
            state = bytes(row["state"])
            actual = crc32c(state)
            reason: str | None = None
            if actual != int(row["crc32c"]):
                reason = f"crc32c mismatch: stored {int(row['crc32c']):#010x}, computed {actual:#010x}"
            elif accept is not None:
                reason = accept(state)
            if reason is not None:
                corrupt.append(CorruptSnapshot(int(row["id"]), int(row["stream_seq"]), reason))
                self.log.error(
                    "snapshot_corrupt",
                    component=component,
                    snapshot_id=int(row["id"]),
                    stream_seq=int(row["stream_seq"]),
                    reason=reason,
                    action_taken="skipped; trying an older snapshot",
                )
                continue
            snapshot = Snapshot(int(row["id"]), component, int(row["stream_seq"]), state, int(row["created_ns"]))
            return LoadResult(snapshot, tuple(corrupt))
        return LoadResult(None, tuple(corrupt))

    async def prune(self, component: str, keep: int = DEFAULT_KEEP) -> int:
        """Delete all but the newest `keep` snapshots of `component`; returns how many were deleted."""
        if keep < 1:
            raise ValueError("keep at least one snapshot")
        status = await self.pool.execute(
            "DELETE FROM snapshots WHERE component = $1 AND id NOT IN "
            "(SELECT id FROM snapshots WHERE component = $1 ORDER BY id DESC LIMIT $2)",
            component,
            keep,
        )
        return int(status.rsplit(" ", 1)[-1])


@dataclass
class SnapshotPolicy:
    """When to take the next snapshot: `interval_ns` after the last one, or after `every_events`.

    Pure: feed it events with `record`, ask `due`, and call `taken` once a snapshot was captured.
    """

    clock: Clock
    interval_ns: int = DEFAULT_INTERVAL_NS
    every_events: int = DEFAULT_EVERY_EVENTS
    events: int = 0
    last_ns: int = field(default=0)

    def __post_init__(self) -> None:
        if self.last_ns == 0:
            self.last_ns = self.clock()

    def record(self, count: int = 1) -> bool:
        """Count `count` applied events; returns whether a snapshot is due."""
        self.events += count
        return self.due()

    def due(self) -> bool:
        """True when at least one event happened and the time or event budget is used up."""
        if self.events == 0:
            return False
        return self.events >= self.every_events or self.clock() - self.last_ns >= self.interval_ns

    def taken(self) -> None:
        """A snapshot was captured now: both budgets start over."""
        self.events = 0
        self.last_ns = self.clock()

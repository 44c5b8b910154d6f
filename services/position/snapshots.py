"""Snapshots of the ledger (SPEC §8, FM-C9): when one is due, the consistent cut taken under the
order lock, the ORDERS sequence it covers, and its save (a failure never stops trading, FM-C3).
"""

from __future__ import annotations

import asyncpg
import msgspec

from libs.snapshot import SnapshotPolicy, SnapshotStore
from proto import subjects

from .adapters import covered_sequence
from .core import Core
from .domain import SNAPSHOT_VERSION, PositionCheckpoint


class Snapshots:
    """Takes and saves the ledger's checkpoints.

    Args:
        core: the shared state and effects.
        store: where snapshots go (None: never snapshot).
        policy: when to snapshot (None: never).
        durables: the consumers that create orders (approvals, denials): a snapshot covers what they handled.
    """

    def __init__(
        self,
        core: Core,
        store: SnapshotStore | None,
        policy: SnapshotPolicy | None,
        durables: tuple[str, ...],
    ) -> None:
        self.core = core
        self.store = store
        self.policy = policy
        self.durables = durables
        self.saved = 0
        self.failed = 0
        self.last_seq: int | None = None
        self.stream_mark = 0
        """ORDERS sequence at the last snapshot (or the one recovered from)."""
        self.lowered = False

    def stats(self) -> dict[str, int | None]:
        """Heartbeat counters."""
        return {"saved": self.saved, "failed": self.failed, "last_seq": self.last_seq}

    async def _covered_sequence(self, last: int) -> int:
        """The ORDERS sequence a snapshot taken now covers (`adapters.covered_sequence` over the
        consumers that create orders: approvals, denials). Folding is idempotent, so covering less
        than everything is always safe."""
        return await covered_sequence(self.core.bus.js, subjects.STREAM_ORDERS.name, self.durables, last)

    async def snapshot(self, *, force: bool = False) -> int | None:
        """Snapshot the state when the policy says so (or `force`); returns the covered sequence.

        Captured under the order lock (a consistent cut), saved outside it. A failed save is logged
        and retried at the next due time: trading never depends on Postgres (FM-C3).
        """
        core = self.core
        if self.store is None or self.policy is None:
            return None
        if not force and not self.policy.due():
            # Others write to ORDERS too (risk's approvals, the gateway's commands, ...): the tail a
            # restart folds is bounded by the stream's growth, not only by what this service published.
            _, last = await core.bus.stream_bounds(subjects.STREAM_ORDERS.name)
            if last - self.stream_mark < self.policy.every_events and not self.lowered:
                return None
        async with core.lock:
            ledger = core.ledger
            _, last = await core.bus.stream_bounds(subjects.STREAM_ORDERS.name)
            self.stream_mark = last
            covered = await self._covered_sequence(last)
            # Lowered to an approval not acknowledged yet: the next round tries again (it is acked by then).
            self.lowered = covered < last
            checkpoint = PositionCheckpoint(
                version=SNAPSHOT_VERSION,
                stream_seq=covered,
                orders=list(ledger.orders.values()),
                order_seq=dict(ledger.order_seq),
                positions=dict(ledger.positions),
                position_seq=dict(ledger.position_seqs),
                protections=list(ledger.protections.values()),
                evicted_until_ns=ledger.evicted_until_ns,
            )
            state = msgspec.json.encode(checkpoint)
            self.policy.taken()
        try:
            await self.store.save(core.component, covered, state)
            await self.store.prune(core.component)
        except (asyncpg.PostgresError, OSError) as exc:
            self.failed += 1
            core.log.warning("snapshot_save_failed", error=f"{type(exc).__name__}: {exc}"[:300], action_taken="retry")
            return None
        self.saved += 1
        self.last_seq = covered
        core.log.info("snapshot_saved", stream_seq=covered, orders=len(checkpoint.orders), bytes=len(state))
        return covered

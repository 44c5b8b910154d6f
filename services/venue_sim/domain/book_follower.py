"""Keeping a book in step with another venue's depth stream (pure): Binance USD-M's procedure.

Diffs are buffered until a REST snapshot (`lastUpdateId` L) arrives; diffs with `u < L` are
dropped, the first one applied must bridge it (`U <= L <= u`), every later one must chain
(`pu` == the previous `u`). A diff that does not chain (a lost frame, a reconnect) starts over:
buffer again and ask for a new snapshot. Used by the paper venue's mirror of a live market.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.venue_sim.domain.market_events import DepthEvent

MAX_BUFFERED = 5000
"""Diffs kept while a snapshot is on its way (the oldest are dropped: a new snapshot covers them)."""


@dataclass
class BookFollower:
    """The sync state of one symbol's book.

    Attributes:
        symbol: the symbol.
        snapshot_id: L of the snapshot being bridged, None when none is (waiting or synced).
        last_update_id: `u` of the last diff applied, None until the book is in step.
        buffered: diffs received while waiting for a snapshot.
    """

    symbol: str
    snapshot_id: int | None = None
    last_update_id: int | None = None
    buffered: list[DepthEvent] = field(default_factory=list)

    @property
    def synced(self) -> bool:
        """Does the book follow the stream diff by diff?"""
        return self.last_update_id is not None

    def restart(self) -> None:
        """Out of step (a new connection): buffer diffs until the next snapshot."""
        self.snapshot_id = None
        self.last_update_id = None
        self.buffered = []

    def on_depth(self, event: DepthEvent) -> list[DepthEvent] | None:
        """The diffs to apply now (maybe none); None when the book fell out of step and needs a
        new snapshot (the diff is kept for it)."""
        if self.last_update_id is not None:
            if event.previous_final_update_id == self.last_update_id:
                self.last_update_id = event.final_update_id
                return [event]
            self.restart()
            self.buffered.append(event)
            return None
        if self.snapshot_id is None:
            self.buffered.append(event)
            del self.buffered[:-MAX_BUFFERED]
            return []
        if event.final_update_id < self.snapshot_id:
            return []  # older than the snapshot
        if event.first_update_id <= self.snapshot_id:
            self.snapshot_id = None
            self.last_update_id = event.final_update_id
            return [event]
        # A gap between the snapshot and the first diff after it: the snapshot is too old.
        self.restart()
        self.buffered.append(event)
        return None

    def on_snapshot(self, last_update_id: int) -> list[DepthEvent] | None:
        """A snapshot with `lastUpdateId` arrived (the book is reset to it): the buffered diffs to
        apply on top; None when they do not bridge it (ask for another one)."""
        pending, self.buffered = self.buffered, []
        self.snapshot_id, self.last_update_id = last_update_id, None
        applied: list[DepthEvent] = []
        for index, event in enumerate(pending):
            step = self.on_depth(event)
            if step is None:
                self.buffered += pending[index + 1 :]
                return None
            applied += step
        return applied

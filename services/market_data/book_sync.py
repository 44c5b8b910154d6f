"""The Binance book synchronisation (SPEC FM-D2), USD-M and spot, as a pure state machine: the
service feeds stream events and REST snapshots in and publishes what comes out.

Book procedure (SPEC FM-D2, Binance "How to manage a local order book correctly"): buffer the
stream's events and fetch a REST snapshot `L`; then, per market kind (`BookRules`):

* USD-M: drop buffered events with `u < L`; the first applied event must have `U <= L <= u`
  (`u == L` counts) — or `pu == L`, see below; then every event's `pu` must equal the previous
  event's `u`.
* spot: drop events with `u <= L`; the first applied event must have `U <= L + 1 <= u`; then
  every event's `U` must equal the previous event's `u + 1` (spot ids are consecutive, there is
  no `pu`).

Any break is a gap: resync from a new snapshot.

USD-M `pu == L` as the bridge: a USD-M snapshot's `L` is often the final id `u` of an event
(3 of 4 symbols of the cryptofeed capture). When that event was sent before our subscription
started and the symbol is quiet until the snapshot, the first event we can receive is the next
one: `U > L` (USD-M ids are sparse) but `pu == L`, i.e. it starts exactly where the snapshot
ends. `U <= L <= u` alone would call that a gap, fetch a second snapshot and resync for nothing
(the CTKUSDT start-up resync of the cryptofeed replay); the `pu` chain rule applied to the
snapshot as the "previous event" accepts it, and is just as exact.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from libs.clock import Clock
from libs.stamping import IdSource, Stamper
from proto.envelope import Message, new_message_id
from proto.messages import BookResyncStarted, BookSnapshot, DepthDiff
from services.market_data.frames import DepthEvent, DepthSnapshotData, MarketKind

_MS = 1_000_000


class SyncState(StrEnum):
    AWAITING_SNAPSHOT = "AWAITING_SNAPSHOT"
    """Buffering events until a REST snapshot arrives."""
    AWAITING_BRIDGE = "AWAITING_BRIDGE"
    """Snapshot `L` applied; waiting for the first event that bridges it (`BookRules.bridges`)."""
    SYNCED = "SYNCED"
    """Every event chains (`BookRules.chains`)."""


@dataclass(frozen=True, slots=True)
class BookRules:
    """How one market's depth events chain onto a snapshot `L` and onto each other (SPEC FM-D2)."""

    market: MarketKind

    def precedes_snapshot(self, event: DepthEvent, snapshot_id: int) -> bool:
        """Entirely contained in the snapshot: USD-M `u < L`, spot `u <= L`."""
        if self.market == MarketKind.SPOT:
            return event.final_update_id <= snapshot_id
        return event.final_update_id < snapshot_id

    def bridges(self, event: DepthEvent, snapshot_id: int) -> bool:
        """May be the first event applied on the snapshot: USD-M `U <= L <= u` or `pu == L`,
        spot `U <= L + 1 <= u` (module docstring: why USD-M also takes `pu == L`)."""
        if self.market == MarketKind.SPOT:
            return event.first_update_id <= snapshot_id + 1 <= event.final_update_id
        return (
            event.first_update_id <= snapshot_id <= event.final_update_id or event.prev_final_update_id == snapshot_id
        )

    def chains(self, event: DepthEvent, last_update_id: int) -> bool:
        """Follows the previous event: USD-M `pu == previous u`, spot `U == previous u + 1`."""
        if self.market == MarketKind.SPOT:
            return event.first_update_id == last_update_id + 1
        return event.prev_final_update_id == last_update_id

    @property
    def chain_break(self) -> str:
        """The gap reason when `chains` fails."""
        if self.market == MarketKind.SPOT:
            return "U is not the previous u + 1"
        return "pu does not match the previous u"


BOOK_RULES = {kind: BookRules(kind) for kind in MarketKind}


class BookSync:
    """The Binance book procedure for one symbol, as a pure state machine (USD-M or spot rules).

    Feed it stream events (`on_event`) and REST snapshots (`on_snapshot`); both return the
    messages to publish, in order: `BookSnapshot` on every (re)sync, each applied `DepthDiff`,
    and `BookResyncStarted` on a gap. `wants_snapshot` tells the caller to fetch a snapshot.

    Args:
        venue: venue name used in the messages.
        symbol: upper-case symbol.
        clock: wall clock (ns): every message's `ts_init_ns`, a snapshot's time when it has no event time.
        nonce: random part of every sync session's correlation id (e.g. 8 hex chars of a UUID4), so
            that sessions of different process runs never share a de-duplication id.
        market: which market's chaining rules apply (`BookRules`).
        max_buffer: events kept while waiting for a snapshot; the oldest go first, since a
            snapshot fetched later is newer than them anyway.
        message_ids: the id source of the messages' `message_id` (tests pass `sequential_ids`).
    """

    def __init__(
        self,
        venue: str,
        symbol: str,
        *,
        clock: Clock,
        nonce: str,
        market: MarketKind = MarketKind.USDM,
        max_buffer: int = 5000,
        message_ids: IdSource = new_message_id,
    ) -> None:
        self.venue = venue
        self.symbol = symbol
        self.rules = BOOK_RULES[market]
        self.state = SyncState.AWAITING_SNAPSHOT
        self.last_update_id: int | None = None
        """Last applied `u`, or the snapshot's `L` while awaiting the bridge; None before a snapshot."""
        self.gaps = 0
        self.snapshots = 0
        self.duplicates = 0
        self._clock = clock
        self._stamp = Stamper(clock, message_ids)
        self._nonce = nonce
        self._sync_id = ""
        self._buffer: deque[DepthEvent] = deque(maxlen=max_buffer)

    @property
    def synced(self) -> bool:
        """True when the book chains from a snapshot through every event so far."""
        return self.state == SyncState.SYNCED

    @property
    def wants_snapshot(self) -> bool:
        """True while a snapshot is needed to (re)build the book."""
        return self.state == SyncState.AWAITING_SNAPSHOT

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def on_event(self, event: DepthEvent) -> list[Message]:
        """Feed one stream event; returns the messages to publish (maybe none)."""
        if self.state == SyncState.AWAITING_SNAPSHOT:
            self._buffer.append(event)
            return []
        return self._apply(event)

    def on_snapshot(self, snapshot: DepthSnapshotData) -> list[Message]:
        """Feed a REST snapshot; ignored unless one is wanted (a late answer to an old fetch)."""
        if self.state != SyncState.AWAITING_SNAPSHOT:
            return []
        self.state = SyncState.AWAITING_BRIDGE
        self.last_update_id = snapshot.last_update_id
        self.snapshots += 1
        # Every (re)sync is its own session: its snapshot and diffs share a correlation id that
        # also goes into their de-duplication ids, so a diff re-published after a resync is not
        # taken for a retry of the one published before it.
        self._sync_id = f"{self._nonce}-{self.snapshots}-{snapshot.last_update_id}"
        out: list[Message] = [
            self._stamp(
                BookSnapshot,
                correlation_id=self._sync_id,
                venue=self.venue,
                symbol=self.symbol,
                last_update_id=snapshot.last_update_id,
                bids=list(snapshot.bids),
                asks=list(snapshot.asks),
                ts_event_ns=snapshot.event_time_ms * _MS if snapshot.event_time_ms else self._clock(),
            )
        ]
        pending = list(self._buffer)
        self._buffer.clear()
        for event in pending:
            if self.state == SyncState.AWAITING_SNAPSHOT:
                # A gap while draining: what is left belongs after the next snapshot.
                self._buffer.append(event)
            else:
                out.extend(self._apply(event))
        return out

    def force_resync(self, reason: str) -> list[Message]:
        """Drop the book and start over from a new snapshot (reconnect, operator/peer request)."""
        self.state = SyncState.AWAITING_SNAPSHOT
        self._buffer.clear()
        return [self._stamp(BookResyncStarted, venue=self.venue, symbol=self.symbol, reason=reason)]

    def _apply(self, event: DepthEvent) -> list[Message]:
        last = self.last_update_id
        assert last is not None
        if self.state == SyncState.AWAITING_BRIDGE:
            if self.rules.precedes_snapshot(event, last):
                return []  # entirely before the snapshot
            if not self.rules.bridges(event, last):
                # The snapshot is older than the oldest event we hold: a new one is needed.
                return self._gap(event, "first event does not bridge the snapshot", last, event.first_update_id)
        elif event.final_update_id <= last:
            # A repeat (or a late copy) of an event already applied: it carries nothing new, and
            # it necessarily breaks the chain, so it is dropped instead of forcing a resync.
            self.duplicates += 1
            return []
        elif not self.rules.chains(event, last):
            return self._gap(event, self.rules.chain_break, last, event.prev_final_update_id)
        self.state = SyncState.SYNCED
        self.last_update_id = event.final_update_id
        return [
            self._stamp(
                DepthDiff,
                correlation_id=self._sync_id,
                venue=self.venue,
                symbol=self.symbol,
                first_update_id=event.first_update_id,
                final_update_id=event.final_update_id,
                prev_final_update_id=event.prev_final_update_id,
                bids=event.bids,
                asks=event.asks,
                ts_event_ns=event.event_time_ms * _MS,
            )
        ]

    def _gap(self, event: DepthEvent, reason: str, expected: int, received: int) -> list[Message]:
        self.gaps += 1
        self.state = SyncState.AWAITING_SNAPSHOT
        self._buffer.clear()
        # The offending event may well follow the next snapshot, so it is kept.
        self._buffer.append(event)
        return [
            self._stamp(
                BookResyncStarted,
                venue=self.venue,
                symbol=self.symbol,
                reason=reason,
                expected_prev_update_id=expected,
                received_prev_update_id=received,
            )
        ]


def replay(sync: BookSync, items: Iterable[DepthEvent | DepthSnapshotData]) -> list[Message]:
    """Feed events and snapshots in order (tests and tools); returns everything published."""
    out: list[Message] = []
    for item in items:
        out.extend(sync.on_snapshot(item) if isinstance(item, DepthSnapshotData) else sync.on_event(item))
    return out

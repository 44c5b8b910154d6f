"""Pure state-builder logic: the L2 order book with its own chain check, the hot-state
status machine of SPEC FM-D1 with an injected clock, the recovery validation of SPEC §7 and the
checkpoint format state-builder snapshots to (FM-C1). No I/O.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

import msgspec

from libs.clock import Clock
from proto.enums import HotStateStatus
from proto.messages import Level


class BookState(StrEnum):
    EMPTY = "EMPTY"
    """No snapshot yet, or broken by a gap: waiting for a snapshot."""
    AWAITING_BRIDGE = "AWAITING_BRIDGE"
    """Snapshot applied; the next diff must satisfy `U <= L <= u` or `pu == L`."""
    SYNCED = "SYNCED"


class DiffResult(StrEnum):
    APPLIED = "APPLIED"
    IGNORED = "IGNORED"
    """Older than the book (redelivery, or before the snapshot), or no snapshot to apply to."""
    GAP = "GAP"
    """Does not chain: the book is unusable until the next snapshot."""


class OrderBook:
    """An L2 book of one symbol: price → quantity per side, Decimal throughout.

    Writes are O(levels in the update); reads of the top `depth` are O(n log depth), which is
    cheap at the rates of a 100 ms diff stream.
    """

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.state = BookState.EMPTY
        self.last_update_id: int | None = None
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}

    @property
    def usable(self) -> bool:
        """True when the book holds a snapshot and every diff since chains onto it."""
        return self.state != BookState.EMPTY

    def apply_snapshot(self, last_update_id: int, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Replace the whole book with a snapshot taken at `last_update_id`."""
        self.bids = {price: qty for price, qty in bids if qty != 0}
        self.asks = {price: qty for price, qty in asks if qty != 0}
        self.last_update_id = last_update_id
        self.state = BookState.AWAITING_BRIDGE

    def apply_diff(
        self,
        first_update_id: int,
        final_update_id: int,
        prev_final_update_id: int | None,
        bids: Iterable[Level],
        asks: Iterable[Level],
    ) -> DiffResult:
        """Apply a diff if it chains; report a gap otherwise.

        The first diff on a snapshot `L` bridges it with `U <= L <= u` or `pu == L`; every later
        one has `pu == previous u`. market-data has already applied its market's exact procedure
        (SPEC FM-D2); spot diffs carry the implied `pu = U - 1`, so spot's `U == previous u + 1`
        and `U <= L + 1 <= u` are the same two rules here.
        """
        last = self.last_update_id
        if self.state == BookState.EMPTY or last is None:
            return DiffResult.IGNORED
        if final_update_id <= last and not (self.state == BookState.AWAITING_BRIDGE and final_update_id == last):
            # Already reflected in the book: a redelivery or an event older than the snapshot.
            return DiffResult.IGNORED
        if self.state == BookState.AWAITING_BRIDGE:
            if not (first_update_id <= last <= final_update_id or prev_final_update_id == last):
                return self._broken()
        elif prev_final_update_id != last:
            return self._broken()
        self._set(self.bids, bids)
        self._set(self.asks, asks)
        self.last_update_id = final_update_id
        self.state = BookState.SYNCED
        return DiffResult.APPLIED

    def invalidate(self) -> None:
        """Forget the chain (resync announced); levels stay readable but the book is unusable."""
        self.state = BookState.EMPTY

    def _broken(self) -> DiffResult:
        self.state = BookState.EMPTY
        return DiffResult.GAP

    @staticmethod
    def _set(side: dict[Decimal, Decimal], levels: Iterable[Level]) -> None:
        for price, qty in levels:
            if qty == 0:
                side.pop(price, None)
            else:
                side[price] = qty

    def top(self, depth: int) -> tuple[list[Level], list[Level]]:
        """Best `depth` bids (descending price) and asks (ascending price)."""
        bid_prices = heapq.nlargest(depth, self.bids)
        ask_prices = heapq.nsmallest(depth, self.asks)
        return [(p, self.bids[p]) for p in bid_prices], [(p, self.asks[p]) for p in ask_prices]

    def best_bid(self) -> Decimal | None:
        return max(self.bids) if self.bids else None

    def best_ask(self) -> Decimal | None:
        return min(self.asks) if self.asks else None

    def restore(
        self, state: BookState, last_update_id: int | None, bids: Iterable[Level], asks: Iterable[Level]
    ) -> None:
        """Put the book back exactly as a checkpoint captured it (state, chain position and levels)."""
        self.bids = {price: qty for price, qty in bids if qty != 0}
        self.asks = {price: qty for price, qty in asks if qty != 0}
        self.last_update_id = last_update_id
        self.state = state if last_update_id is not None else BookState.EMPTY


# --------------------------------------------------------------------------- hot state

STALE_AFTER_NS = 1_000_000_000
"""FM-D1: no update for more than 1000 ms → STALE."""
FRESH_UPDATES_TO_VALID = 3
"""FM-D1: back to VALID after 3 consecutive fresh updates."""
CHECK_INTERVAL_S = 0.1


@dataclass(frozen=True, slots=True)
class HotStateTransition:
    symbol: str
    previous: HotStateStatus | None
    current: HotStateStatus
    reason: str
    last_update_id: int | None
    ts_ns: int
    stale_since_ns: int | None = None


EVENT_TIME_MARGIN_NS = 500_000_000
"""How much older than our clock a venue event time may be and still count as just received: the
way from the venue (network, market-data, the bus) plus a clock offset below FM-D3's alert."""


def update_data_ns(stored_ns: int | None, event_ns: int) -> int | None:
    """When a depth update's data was current, the time FM-D1's age counts from.

    The older of two times: when market-data stored the diff on `MARKET_DATA` (catches a
    state-builder that fell behind the stream) and the venue's event time of the diff plus
    `EVENT_TIME_MARGIN_NS` (catches a market-data, or a venue connection, that fell behind the
    venue). Without the event time, a venue that goes silent while market-data still works
    through a backlog of older frames looks like a stream of fresh updates, and the silence is
    never seen. An event time of 0 is unknown and ignored.

    Args:
        stored_ns: the stream's timestamp of the diff; None when not known.
        event_ns: the diff's `ts_event_ns` (the venue's clock).
    """
    if event_ns <= 0:
        return stored_ns
    venue_ns = event_ns + EVENT_TIME_MARGIN_NS
    return venue_ns if stored_ns is None else min(stored_ns, venue_ns)


class HotState:
    """Hot-state status of one symbol (SPEC FM-D1).

    - INVALID at start and on a gap or resync; it stays INVALID until the book has been
      rebuilt from a snapshot *and* 3 consecutive fresh updates followed.
    - VALID → STALE when the last update is more than 1000 ms old (`check`: every 100 ms, and at
      the moment a VALID symbol's last update turns 1000 ms old) or
      the venue link went down.
    - STALE → VALID after 3 consecutive fresh updates: each within 1000 ms of the previous one
      (the first update after a silence starts a new run).

    `stale_since_ns` says since when the symbol has had no trustworthy data: set when it leaves
    VALID (to its last update while VALID), cleared when it is VALID again. Unlike `age_ms` it
    is not reset by a resync's REST snapshot, so "stale > 10 s" (FM-D1 → EMERGENCY_MODE) holds
    through reconnects that never bring the stream back. None before the symbol was ever VALID.

    Every method returns the transition it caused, or None.
    """

    def __init__(self, symbol: str, clock: Clock) -> None:
        self.symbol = symbol
        self._clock = clock
        self.status = HotStateStatus.INVALID
        self.reason = "starting"
        self.last_update_id: int | None = None
        self.last_update_ns: int | None = None
        self._rebuilt = False
        self._fresh = 0
        self.blocked_by: tuple[str, ...] = ()
        """Validation checks that held the last update back from VALID (empty: none)."""
        self.stale_since_ns: int | None = None
        """Last update while VALID, once the symbol left VALID; None while VALID (see the class doc)."""

    def age_ms(self) -> int | None:
        """Milliseconds since the last book update, None before the first."""
        if self.last_update_ns is None:
            return None
        return max(0, self._clock() - self.last_update_ns) // 1_000_000

    def stale_ms(self) -> int | None:
        """Milliseconds without trustworthy data (see `stale_since_ns`), None while VALID or never VALID."""
        if self.stale_since_ns is None:
            return None
        return max(0, self._clock() - self.stale_since_ns) // 1_000_000

    def _to(self, status: HotStateStatus, reason: str) -> HotStateTransition | None:
        if status == self.status:
            return None
        now = self._clock()
        previous, self.status, self.reason = self.status, status, reason
        if status == HotStateStatus.VALID:
            self.stale_since_ns = None
        elif previous == HotStateStatus.VALID:
            # The data stopped being trustworthy at the last update it had while VALID.
            last = self.last_update_ns
            self.stale_since_ns = min(last, now) if last is not None else now
        return HotStateTransition(self.symbol, previous, status, reason, self.last_update_id, now, self.stale_since_ns)

    def on_invalid(self, reason: str) -> HotStateTransition | None:
        """A gap or resync: the book cannot be trusted until rebuilt."""
        self._rebuilt = False
        self._fresh = 0
        return self._to(HotStateStatus.INVALID, reason)

    def on_rebuilt(self, last_update_id: int) -> HotStateTransition | None:
        """A snapshot was applied; fresh updates must follow before VALID."""
        self._rebuilt = True
        self._fresh = 0
        self.last_update_id = last_update_id
        self.last_update_ns = self._clock()
        return None

    def on_update(
        self, last_update_id: int, problems: Sequence[str] = (), data_ns: int | None = None
    ) -> HotStateTransition | None:
        """A diff was applied to a rebuilt book.

        Args:
            last_update_id: the book's update id after the diff.
            problems: failed validation checks (`validate_book`, SPEC §7); while any remain the
                symbol does not become VALID, however many fresh updates arrive.
            data_ns: when the update entered the system (stored on the stream); None: now. The
                symbol's age counts from it, so a backlog of old updates handled late is stale
                data, not fresh updates.
        """
        now = self._clock()
        if not self._rebuilt:
            return None
        seen = now if data_ns is None else min(now, data_ns)
        fresh = (
            self.last_update_ns is not None
            and now - seen <= STALE_AFTER_NS
            and seen - self.last_update_ns <= STALE_AFTER_NS
        )
        self._fresh = self._fresh + 1 if fresh else (1 if now - seen <= STALE_AFTER_NS else 0)
        self.last_update_id = last_update_id
        self.last_update_ns = max(seen, self.last_update_ns or seen)
        self.blocked_by = tuple(problems)
        if self.status != HotStateStatus.VALID and self._fresh >= FRESH_UPDATES_TO_VALID and not problems:
            reason = "rebuilt from snapshot" if self.status == HotStateStatus.INVALID else "fresh updates"
            return self._to(HotStateStatus.VALID, reason)
        return None

    def on_link_down(self, reason: str) -> HotStateTransition | None:
        """The venue link is down (FM-N1): STALE at once instead of after a second."""
        self._fresh = 0
        if self.status == HotStateStatus.VALID:
            return self._to(HotStateStatus.STALE, reason)
        return None

    def stale_due_ns(self) -> int | None:
        """When `check` turns this VALID symbol STALE if no update comes first (None: not VALID)."""
        if self.status != HotStateStatus.VALID or self.last_update_ns is None:
            return None
        return self.last_update_ns + STALE_AFTER_NS + 1

    def check(self) -> HotStateTransition | None:
        """Timer tick: VALID → STALE when the last update is older than 1000 ms."""
        if self.status != HotStateStatus.VALID or self.last_update_ns is None:
            return None
        age_ns = self._clock() - self.last_update_ns
        if age_ns > STALE_AFTER_NS:
            self._fresh = 0
            return self._to(HotStateStatus.STALE, f"no update for {age_ns // 1_000_000} ms")
        return None


# --------------------------------------------------------------------------- recovery validation

MIN_BOOK_LEVELS = 5
"""SPEC §7 "book depth above minimum": levels each side must hold before the book is trusted."""
MAX_FUTURE_NS = 5_000_000_000
"""SPEC FM-D3: an event time more than 5 s ahead of our clock is not sane."""


def validate_book(
    book: OrderBook, *, now_ns: int, last_event_ns: int | None, min_levels: int = MIN_BOOK_LEVELS
) -> list[str]:
    """The SPEC §7 checks a book must pass before its symbol may turn VALID.

    Hot-state age (< 1 s) is `HotState`'s own rule (fresh updates); this covers the rest that a
    book can tell: chain intact (no sequence gap), depth above the minimum, not crossed, and the
    last event time sane.

    Returns:
        The failed checks as short reasons; empty when the book passes.
    """
    problems: list[str] = []
    if book.state != BookState.SYNCED:
        problems.append(f"book not chained ({book.state.value})")
    if len(book.bids) < min_levels or len(book.asks) < min_levels:
        problems.append(f"depth below minimum ({len(book.bids)} bids, {len(book.asks)} asks < {min_levels})")
    best_bid, best_ask = book.best_bid(), book.best_ask()
    if best_bid is not None and best_ask is not None and best_bid >= best_ask:
        problems.append(f"crossed book (bid {best_bid} >= ask {best_ask})")
    if last_event_ns is not None and last_event_ns > now_ns + MAX_FUTURE_NS:
        problems.append(f"event time {(last_event_ns - now_ns) // 1_000_000} ms in the future")
    return problems


# --------------------------------------------------------------------------- checkpoints

CHECKPOINT_VERSION = 1


class SymbolCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """One symbol's book and market state as of a checkpoint."""

    symbol: str
    book_state: BookState
    last_update_id: int | None
    bids: list[Level]
    asks: list[Level]
    last_event_ns: int | None = None
    mark_price: Decimal | None = None
    funding_rate: Decimal | None = None
    open_interest: Decimal | None = None


class StateBuilderCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """state-builder's snapshot (SPEC §8): every symbol as of MARKET_DATA sequence `stream_seq`.

    state-builder's private persisted format (not a bus message): `version` changes when it does,
    and a snapshot of another version is skipped like a corrupt one (recovery then resyncs).
    """

    version: int = CHECKPOINT_VERSION
    stream_seq: int
    taken_ns: int
    symbols: list[SymbolCheckpoint]


_checkpoint_encoder = msgspec.json.Encoder(decimal_format="string")
_checkpoint_decoder = msgspec.json.Decoder(StateBuilderCheckpoint)


def encode_checkpoint(checkpoint: StateBuilderCheckpoint) -> bytes:
    return _checkpoint_encoder.encode(checkpoint)


def decode_checkpoint(data: bytes) -> StateBuilderCheckpoint:
    """Decode a checkpoint.

    Raises:
        ValueError: not a checkpoint of the current version (msgspec errors derive from it).
    """
    checkpoint = _checkpoint_decoder.decode(data)
    if checkpoint.version != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint version {checkpoint.version}, expected {CHECKPOINT_VERSION}")
    return checkpoint

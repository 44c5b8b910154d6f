"""Pure market-data logic: the Binance USD-M book synchronisation, frame normalisation and the
reconnect schedule. No I/O here: the handlers feed events and snapshots in and publish what
comes out.

Book procedure (SPEC FM-D2, Binance USD-M "How to manage a local order book correctly"):
buffer the stream's events, fetch a REST snapshot `L`, drop buffered events with `u < L`, the
first applied event must have `U <= L <= u` (`u == L` counts), then every event's `pu` must equal
the previous event's `u`. Any break is a gap: resync from a new snapshot.
"""

from __future__ import annotations

import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from proto.enums import Side
from proto.envelope import Message, now_ns
from proto.messages import (
    BookResyncStarted,
    BookSnapshot,
    DepthDiff,
    Level,
    Liquidation,
    MarkPrice,
    OpenInterest,
    Trade,
)

_MS = 1_000_000


class BadFrame(ValueError):
    """A stream frame or REST answer that does not have the expected shape."""


def parse_levels(raw: Any) -> list[Level]:
    """`[["price", "qty"], ...]` → Decimal pairs.

    Raises:
        BadFrame: not a list of [price, qty] pairs of decimal strings, or a negative value.
    """
    if not isinstance(raw, list):
        raise BadFrame("levels are not a list")
    levels: list[Level] = []
    for entry in raw:
        if not isinstance(entry, list | tuple) or len(entry) < 2:
            raise BadFrame(f"bad level {entry!r:.80}")
        try:
            price, qty = Decimal(str(entry[0])), Decimal(str(entry[1]))
        except InvalidOperation as exc:
            raise BadFrame(f"bad level {entry!r:.80}") from exc
        if not price.is_finite() or not qty.is_finite() or price <= 0 or qty < 0:
            raise BadFrame(f"bad level {entry!r:.80}")
        levels.append((price, qty))
    return levels


@dataclass(frozen=True, slots=True)
class DepthEvent:
    """One `depthUpdate` event: `U` first, `u` final, `pu` previous final update id."""

    symbol: str
    first_update_id: int
    final_update_id: int
    prev_final_update_id: int
    event_time_ms: int
    bids: list[Level]
    asks: list[Level]


@dataclass(frozen=True, slots=True)
class DepthSnapshotData:
    """A REST `/fapi/v1/depth` answer."""

    last_update_id: int
    bids: list[Level]
    asks: list[Level]
    event_time_ms: int = 0


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadFrame(f"field {key!r} is not an integer")
    return value


def _decimal(data: dict[str, Any], key: str) -> Decimal:
    try:
        value = Decimal(str(data[key]))
    except (KeyError, InvalidOperation) as exc:
        raise BadFrame(f"field {key!r} is missing or not a decimal") from exc
    if not value.is_finite():
        raise BadFrame(f"field {key!r} is not finite")
    return value


def _dict(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadFrame("payload is not an object")
    return data


def parse_depth_event(data: Any) -> DepthEvent:
    """A `depthUpdate` payload as a `DepthEvent`.

    Raises:
        BadFrame: the payload is malformed.
    """
    data = _dict(data)
    event = DepthEvent(
        symbol=str(data.get("s", "")).upper(),
        first_update_id=_int(data, "U"),
        final_update_id=_int(data, "u"),
        prev_final_update_id=_int(data, "pu"),
        event_time_ms=_int(data, "E"),
        bids=parse_levels(data.get("b")),
        asks=parse_levels(data.get("a")),
    )
    if event.final_update_id < event.first_update_id:
        raise BadFrame("u < U")
    return event


def parse_snapshot(data: Any) -> DepthSnapshotData:
    """A REST depth answer as `DepthSnapshotData`.

    Raises:
        BadFrame: the answer is malformed.
    """
    data = _dict(data)
    return DepthSnapshotData(
        last_update_id=_int(data, "lastUpdateId"),
        bids=parse_levels(data.get("bids")),
        asks=parse_levels(data.get("asks")),
        event_time_ms=int(data.get("E", 0) or 0),
    )


def trade_from_agg_trade(venue: str, data: Any) -> Trade:
    """`aggTrade` payload → `Trade` (the aggregate id `a` is the trade id).

    Raises:
        BadFrame: the payload is malformed.
    """
    data = _dict(data)
    return Trade(
        venue=venue,
        symbol=str(data.get("s", "")).upper(),
        trade_id=_int(data, "a"),
        price=_decimal(data, "p"),
        quantity=_decimal(data, "q"),
        buyer_is_maker=bool(data.get("m", False)),
        ts_event_ns=_int(data, "T") * _MS,
    )


def mark_from_update(venue: str, data: Any) -> MarkPrice:
    """`markPriceUpdate` payload → `MarkPrice`.

    Raises:
        BadFrame: the payload is malformed.
    """
    data = _dict(data)
    next_funding = data.get("T")
    return MarkPrice(
        venue=venue,
        symbol=str(data.get("s", "")).upper(),
        mark_price=_decimal(data, "p"),
        index_price=_decimal(data, "i") if "i" in data else None,
        funding_rate=_decimal(data, "r") if data.get("r") not in (None, "") else None,
        next_funding_time_ns=next_funding * _MS if isinstance(next_funding, int) and next_funding > 0 else None,
        ts_event_ns=_int(data, "E") * _MS,
    )


def liquidation_from_force_order(venue: str, data: Any) -> Liquidation:
    """`forceOrder` payload → `Liquidation` (average price when filled, else order price).

    Raises:
        BadFrame: the payload is malformed.
    """
    order = _dict(_dict(data).get("o"))
    try:
        side = Side(str(order.get("S")))
    except ValueError as exc:
        raise BadFrame(f"bad side {order.get('S')!r}") from exc
    average = _decimal(order, "ap") if "ap" in order else Decimal(0)
    return Liquidation(
        venue=venue,
        symbol=str(order.get("s", "")).upper(),
        side=side,
        price=average if average > 0 else _decimal(order, "p"),
        quantity=_decimal(order, "q"),
        ts_event_ns=_int(order, "T") * _MS if "T" in order else _int(_dict(data), "E") * _MS,
    )


def open_interest_from_rest(venue: str, symbol: str, data: Any) -> OpenInterest:
    """REST `/fapi/v1/openInterest` answer → `OpenInterest`.

    Raises:
        BadFrame: the answer is malformed or negative (SPEC FM-D5: OI < 0 is rejected).
    """
    data = _dict(data)
    value = _decimal(data, "openInterest")
    if value < 0:
        raise BadFrame("negative open interest")
    time_ms = data.get("time")
    return OpenInterest(
        venue=venue,
        symbol=symbol,
        open_interest=value,
        ts_event_ns=time_ms * _MS if isinstance(time_ms, int) and time_ms > 0 else now_ns(),
    )


# --------------------------------------------------------------------------- book sync


class SyncState(StrEnum):
    AWAITING_SNAPSHOT = "AWAITING_SNAPSHOT"
    """Buffering events until a REST snapshot arrives."""
    AWAITING_BRIDGE = "AWAITING_BRIDGE"
    """Snapshot `L` applied; waiting for the first event with `U <= L <= u`."""
    SYNCED = "SYNCED"
    """Every event chains (`pu == previous u`)."""


class BookSync:
    """The USD-M book procedure for one symbol, as a pure state machine.

    Feed it stream events (`on_event`) and REST snapshots (`on_snapshot`); both return the
    messages to publish, in order: `BookSnapshot` on every (re)sync, each applied `DepthDiff`,
    and `BookResyncStarted` on a gap. `wants_snapshot` tells the caller to fetch a snapshot.

    Args:
        venue: venue name used in the messages.
        symbol: upper-case symbol.
        max_buffer: events kept while waiting for a snapshot; the oldest go first, since a
            snapshot fetched later is newer than them anyway.
    """

    def __init__(self, venue: str, symbol: str, *, max_buffer: int = 5000) -> None:
        self.venue = venue
        self.symbol = symbol
        self.state = SyncState.AWAITING_SNAPSHOT
        self.last_update_id: int | None = None
        """Last applied `u`, or the snapshot's `L` while awaiting the bridge; None before a snapshot."""
        self.gaps = 0
        self.snapshots = 0
        self._nonce = uuid.uuid4().hex[:8]
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
            BookSnapshot(
                correlation_id=self._sync_id,
                venue=self.venue,
                symbol=self.symbol,
                last_update_id=snapshot.last_update_id,
                bids=list(snapshot.bids),
                asks=list(snapshot.asks),
                ts_event_ns=snapshot.event_time_ms * _MS if snapshot.event_time_ms else now_ns(),
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
        return [BookResyncStarted(venue=self.venue, symbol=self.symbol, reason=reason)]

    def _apply(self, event: DepthEvent) -> list[Message]:
        last = self.last_update_id
        assert last is not None
        if self.state == SyncState.AWAITING_BRIDGE:
            if event.final_update_id < last:
                return []  # entirely before the snapshot
            if not event.first_update_id <= last <= event.final_update_id:
                # The snapshot is older than the oldest event we hold: a new one is needed.
                return self._gap(event, "first event does not bridge the snapshot", last, event.first_update_id)
        elif event.prev_final_update_id != last:
            return self._gap(event, "pu does not match the previous u", last, event.prev_final_update_id)
        self.state = SyncState.SYNCED
        self.last_update_id = event.final_update_id
        return [
            DepthDiff(
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
            BookResyncStarted(
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


# --------------------------------------------------------------------------- reconnect


FIXED_DELAYS_S: Sequence[float] = (0.0, 1.0, 2.0, 4.0, 8.0)
MAX_DELAY_S = 60.0
DEGRADED_AFTER_ATTEMPTS = 5


def reconnect_delay_s(attempt: int, uniform: Callable[[float, float], float] = random.uniform) -> float:
    """Delay before reconnect attempt `attempt` (0-based), SPEC FM-N1.

    0, 1, 2, 4, 8 s, then `min(2^n, 60)` s plus jitter `U(0, delay/2)`.
    """
    if attempt < len(FIXED_DELAYS_S):
        return FIXED_DELAYS_S[attempt]
    base = min(2.0**attempt, MAX_DELAY_S)
    return base + uniform(0.0, base / 2)

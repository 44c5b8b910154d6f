"""Pure market-data logic: the Binance book synchronisation (USD-M and spot), frame
normalisation and the reconnect schedule. No I/O here: the handlers feed events and snapshots in
and publish what comes out.

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

import math
import statistics
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from libs.clock import Clock
from libs.reconnect import DEGRADED_AFTER_ATTEMPTS
from proto.enums import ConnectionState, LinkDegradeCause, Side
from proto.envelope import Message
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


class MarketKind(StrEnum):
    """Which Binance market a venue link speaks: its REST paths, streams and book procedure differ."""

    USDM = "usdm"
    SPOT = "spot"


@dataclass(frozen=True, slots=True)
class DepthEvent:
    """One `depthUpdate` event: `U` first, `u` final, `pu` previous final update id.

    Spot events carry no `pu`; their ids are consecutive, so `pu` is set to the implied `U - 1`
    (the final id the previous event must have had). Diffs published downstream carry it too, so
    consumers check one chain rule (`pu == previous u`) for both markets.
    """

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


def parse_depth_event(data: Any, market: MarketKind = MarketKind.USDM) -> DepthEvent:
    """A `depthUpdate` payload as a `DepthEvent` (spot: no `pu`, implied as `U - 1`).

    Raises:
        BadFrame: the payload is malformed (a USD-M event without `pu` included).
    """
    data = _dict(data)
    first = _int(data, "U")
    event = DepthEvent(
        symbol=str(data.get("s", "")).upper(),
        first_update_id=first,
        final_update_id=_int(data, "u"),
        prev_final_update_id=first - 1 if market == MarketKind.SPOT else _int(data, "pu"),
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


def trade_from_agg_trade(venue: str, data: Any, symbol: str | None = None) -> Trade:
    """`aggTrade` payload (stream, or a REST `/fapi/v1/aggTrades` row with `symbol`) → `Trade`.

    The aggregate id `a` is the trade id.

    Raises:
        BadFrame: the payload is malformed.
    """
    data = _dict(data)
    return Trade(
        venue=venue,
        symbol=symbol or str(data.get("s", "")).upper(),
        trade_id=_int(data, "a"),
        price=_decimal(data, "p"),
        quantity=_decimal(data, "q"),
        buyer_is_maker=bool(data.get("m", False)),
        ts_event_ns=_int(data, "T") * _MS,
    )


def trade_from_trade(venue: str, data: Any, symbol: str | None = None) -> Trade:
    """Spot `trade` payload (stream, or a REST `/api/v3/historicalTrades` row) → `Trade`.

    The trade id `t` (stream) or `id` (REST) is the trade id; the stream's `T` or the REST
    row's `time` is the trade time.

    Raises:
        BadFrame: the payload is malformed.
    """
    data = _dict(data)
    trade_id_key = "t" if "t" in data else "id"
    time_key = "T" if "T" in data else "time"
    buyer_is_maker = data.get("m", data.get("isBuyerMaker", False))
    return Trade(
        venue=venue,
        symbol=symbol or str(data.get("s", "")).upper(),
        trade_id=_int(data, trade_id_key),
        price=_decimal(data, "p" if "p" in data else "price"),
        quantity=_decimal(data, "q" if "q" in data else "qty"),
        buyer_is_maker=bool(buyer_is_maker),
        ts_event_ns=_int(data, time_key) * _MS,
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


def mark_from_premium_index(venue: str, symbol: str, data: Any, received_ns: int) -> MarkPrice:
    """REST `/fapi/v1/premiumIndex` answer → `MarkPrice` (re-sync after a reconnect, FM-N1).

    `received_ns` is the event time when the answer carries none.

    Raises:
        BadFrame: the answer is malformed.
    """
    data = _dict(data)
    mark = _decimal(data, "markPrice")
    if mark <= 0:
        raise BadFrame("mark price is not positive")
    next_funding = data.get("nextFundingTime")
    time_ms = data.get("time")
    return MarkPrice(
        venue=venue,
        symbol=symbol,
        mark_price=mark,
        index_price=_decimal(data, "indexPrice") if "indexPrice" in data else None,
        funding_rate=_decimal(data, "lastFundingRate") if data.get("lastFundingRate") not in (None, "") else None,
        next_funding_time_ns=next_funding * _MS if isinstance(next_funding, int) and next_funding > 0 else None,
        ts_event_ns=time_ms * _MS if isinstance(time_ms, int) and time_ms > 0 else received_ns,
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


def price_from_ticker(data: Any) -> Decimal:
    """REST `ticker/price` answer `{"symbol", "price"}` → the positive last price.

    Raises:
        BadFrame: the answer is malformed or the price not positive.
    """
    price = _decimal(_dict(data), "price")
    if price <= 0:
        raise BadFrame("ticker price is not positive")
    return price


def open_interest_from_rest(venue: str, symbol: str, data: Any, received_ns: int) -> OpenInterest:
    """REST `/fapi/v1/openInterest` answer → `OpenInterest` (`received_ns`: event time when it carries none).

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
        ts_event_ns=time_ms * _MS if isinstance(time_ms, int) and time_ms > 0 else received_ns,
    )


# --------------------------------------------------------------------------- book sync


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
        clock: wall clock (ns) for a snapshot without an event time.
        nonce: random part of every sync session's correlation id (e.g. 8 hex chars of a UUID4), so
            that sessions of different process runs never share a de-duplication id.
        market: which market's chaining rules apply (`BookRules`).
        max_buffer: events kept while waiting for a snapshot; the oldest go first, since a
            snapshot fetched later is newer than them anyway.
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
            BookSnapshot(
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
        return [BookResyncStarted(venue=self.venue, symbol=self.symbol, reason=reason)]

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


RETURN_PROBE_INTERVAL_S = 0.3
"""While waiting for the next reconnect attempt, the venue's REST ping is tried this often."""
RETURN_PROBE_TIMEOUT_S = 1.0
"""A probe unanswered after this long counts as "not back" (the wait goes on)."""
MAX_EARLY_RECONNECTS = 2
"""Early reconnects (the wait cut short by an answered probe) allowed per disconnected period."""


class ReturnProbe:
    """FM-N1 "back within clean window + 2 s of the venue becoming reachable": when to probe the
    venue's REST while a WebSocket reconnect waits on the 0, 1, 2, 4, 8 s schedule, and whether an
    answer may cut the wait short.

    A venue that answers REST but refuses the WebSocket must not be hammered: at most
    `max_early` early reconnects per disconnected period, after which the SPEC schedule alone
    applies until a connection succeeds again (`on_connected`).

    Args:
        interval_s: time between probes.
        max_early: early reconnects allowed per disconnected period.
    """

    def __init__(self, *, interval_s: float = RETURN_PROBE_INTERVAL_S, max_early: int = MAX_EARLY_RECONNECTS) -> None:
        self.interval_s = interval_s
        self.max_early = max_early
        self.early_reconnects = 0
        """Early reconnects used since the last successful connection."""

    def next_probe_in(self, remaining_s: float) -> float | None:
        """Seconds to wait before the next probe, or None: sleep the rest of the wait without probing
        (early reconnects used up, or the scheduled attempt comes before the next probe would)."""
        if self.early_reconnects >= self.max_early or remaining_s <= self.interval_s:
            return None
        return self.interval_s

    def on_answer(self) -> None:
        """A probe answered: the wait is cut short, using one early reconnect."""
        self.early_reconnects += 1

    def on_connected(self) -> None:
        """The stream connected: the next disconnected period gets its early reconnects back."""
        self.early_reconnects = 0


# --------------------------------------------------------------------------- link state

DEGRADE_REASON_RECONNECTS = "reconnect attempts failing"
DEGRADE_REASON_CORRUPTION = LinkDegradeCause.CORRUPTION.value
DEGRADE_REASON_CLOCK = LinkDegradeCause.CLOCK.value


def market_link_state(
    *, connected: bool, failed_attempts: int, clean: bool, degraded_reasons: Collection[str]
) -> ConnectionState:
    """The market link's state, derived from independent conditions (SPEC FM-N1, FM-D3, FM-D4).

    Several causes can degrade a link at once (corruption, clock offset, failing reconnects), and
    each clears on its own; a derived value keeps their overlap right where a sequential table
    could not. Order of precedence: down (DEGRADED after `DEGRADED_AFTER_ATTEMPTS` failed
    attempts, else DISCONNECTED), any degrade reason, then SUSPECT until the post-connect clean
    window has passed, then CONNECTED.
    """
    if not connected:
        return ConnectionState.DEGRADED if failed_attempts >= DEGRADED_AFTER_ATTEMPTS else ConnectionState.DISCONNECTED
    if degraded_reasons:
        return ConnectionState.DEGRADED
    return ConnectionState.CONNECTED if clean else ConnectionState.SUSPECT


class CleanWindow:
    """FM-N1: after a (re)connect the link counts as healthy only after `duration_s` and, for every
    symbol, `min_updates` consecutive fresh book updates (each within `fresh_s` of the previous)."""

    def __init__(self, symbols: Iterable[str], *, duration_s: float = 3.0, min_updates: int = 3, fresh_s: float = 1.0):
        self.symbols = tuple(symbols)
        self._duration_ns = int(duration_s * 1e9)
        self._fresh_ns = int(fresh_s * 1e9)
        self.min_updates = min_updates
        self.started_ns: int | None = None
        self.passed = False
        """Latched once clean: a later book resync does not make the connection suspect again."""
        self._runs: dict[str, int] = {}
        self._last: dict[str, int] = {}

    def start(self, now_ns: int) -> None:
        """A connection was (re)established: the window starts over."""
        self.started_ns = now_ns
        self.passed = False
        self._runs = dict.fromkeys(self.symbols, 0)
        self._last = {}

    def on_update(self, symbol: str, now_ns: int) -> None:
        """One book update of `symbol` was applied."""
        if self.started_ns is None or symbol not in self._runs:
            return
        last = self._last.get(symbol)
        self._runs[symbol] = self._runs[symbol] + 1 if last is not None and now_ns - last <= self._fresh_ns else 1
        self._last[symbol] = now_ns

    def on_break(self, symbol: str) -> None:
        """The symbol's book broke (gap, resync): its run starts over."""
        if symbol in self._runs:
            self._runs[symbol] = 0
            self._last.pop(symbol, None)

    def is_clean(self, now_ns: int) -> bool:
        """True once the window has passed with enough fresh updates of every symbol."""
        if self.passed:
            return True
        if self.started_ns is None or now_ns - self.started_ns < self._duration_ns:
            return False
        self.passed = all(run >= self.min_updates for run in self._runs.values())
        return self.passed


class AlertBook:
    """Which alerts are raised now, so each is raised once while its condition holds (SPEC §9)."""

    def __init__(self) -> None:
        self.active: dict[str, str] = {}

    def raise_alert(self, key: str, title: str) -> bool:
        """Mark `key` raised; True when it was not already (publish it then)."""
        if key in self.active:
            return False
        self.active[key] = title
        return True

    def resolve(self, key: str) -> bool:
        """Mark `key` resolved; True when it was raised (publish the resolution then)."""
        return self.active.pop(key, None) is not None


# --------------------------------------------------------------------------- FM-D4 corruption


class CorruptionMonitor:
    """Rolling share of bad frames; above `threshold` (5 %) the link is degraded (SPEC FM-D4).

    Counts go into one-second buckets over `window_s`; no verdict before `min_frames` frames, and
    the degraded flag clears only below `recover_below`, so a rate near 5 % does not flap.
    """

    def __init__(
        self,
        *,
        window_s: float = 30.0,
        threshold: float = 0.05,
        recover_below: float = 0.025,
        min_frames: int = 40,
    ) -> None:
        self._window_s = int(window_s)
        self.threshold = threshold
        self.recover_below = recover_below
        self.min_frames = min_frames
        self._buckets: deque[list[int]] = deque()  # [second, total, bad]
        self._total = 0
        self._bad = 0
        self.degraded = False

    @property
    def rate(self) -> float:
        return self._bad / self._total if self._total else 0.0

    def record(self, now_ns: int, *, bad: bool) -> bool | None:
        """Count one frame. Returns True when the link just became degraded, False when it just
        recovered, None when nothing changed."""
        second = now_ns // 1_000_000_000
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        self._total += 1
        if bad:
            bucket[2] += 1
            self._bad += 1
        while self._buckets and self._buckets[0][0] <= second - self._window_s:
            _, total, bad_count = self._buckets.popleft()
            self._total -= total
            self._bad -= bad_count
        if self._total < self.min_frames:
            return None
        if not self.degraded and self.rate > self.threshold:
            self.degraded = True
            return True
        if self.degraded and self.rate < self.recover_below:
            self.degraded = False
            return False
        return None


# --------------------------------------------------------------------------- FM-D3 timestamps


class TimestampVerdict(StrEnum):
    OK = "ok"
    FUTURE = "future"
    """Event time more than the tolerance ahead of now: reject."""
    BACKWARD = "backward"
    """Event time before the previous one of the same stream: use the receive time, flag suspect."""


@dataclass(frozen=True, slots=True)
class TimestampCheck:
    verdict: TimestampVerdict
    ts_ns: int
    """The time to put on the message (event time, or receive time when suspect)."""
    repeated: bool = False
    """For FUTURE: rejections are repeating (alert)."""


class TimestampGuard:
    """SPEC FM-D3 on stream event times, per stream (e.g. `BTCUSDT@depth`)."""

    def __init__(self, *, future_tolerance_ms: int = 5000, repeat_count: int = 3, repeat_window_s: float = 60.0):
        self._future_ns = future_tolerance_ms * _MS
        self._repeat_count = repeat_count
        self._repeat_window_ns = int(repeat_window_s * 1e9)
        self._last_ms: dict[str, int] = {}
        self._future: deque[int] = deque()
        self.rejected = 0
        self.suspect = 0

    def check(self, stream: str, event_ms: int, now_ns: int) -> TimestampCheck:
        """Judge one event time against the local clock and the stream's previous event time."""
        event_ns = event_ms * _MS
        if event_ns > now_ns + self._future_ns:
            self.rejected += 1
            self._future.append(now_ns)
            while self._future and now_ns - self._future[0] > self._repeat_window_ns:
                self._future.popleft()
            return TimestampCheck(TimestampVerdict.FUTURE, now_ns, repeated=len(self._future) >= self._repeat_count)
        previous = self._last_ms.get(stream)
        if previous is not None and event_ms < previous:
            self.suspect += 1
            return TimestampCheck(TimestampVerdict.BACKWARD, now_ns)
        self._last_ms[stream] = event_ms
        return TimestampCheck(TimestampVerdict.OK, event_ns)


class ClockLevel(StrEnum):
    OK = "ok"
    ALERT = "alert"
    """|offset| > 1 s."""
    HALT = "halt"
    """|offset| > 5 s: trading must stop."""


class ClockOffsetMonitor:
    """Local clock against the venue's (`GET /fapi/v1/time`), SPEC FM-D3: > 1 s alert, > 5 s halt."""

    def __init__(self, *, alert_ms: int = 1000, halt_ms: int = 5000) -> None:
        self.alert_ms = alert_ms
        self.halt_ms = halt_ms
        self.level = ClockLevel.OK
        self.offset_ms: int | None = None

    def on_sample(self, sent_ns: int, received_ns: int, server_ms: int) -> ClockLevel | None:
        """One server-time answer; the local time is taken as the request's midpoint.

        Returns:
            The new level when it changed, else None.
        """
        midpoint_ns = (sent_ns + received_ns) // 2
        self.offset_ms = (server_ms * _MS - midpoint_ns) // _MS
        magnitude = abs(self.offset_ms)
        level = (
            ClockLevel.HALT
            if magnitude > self.halt_ms
            else ClockLevel.ALERT
            if magnitude > self.alert_ms
            else ClockLevel.OK
        )
        if level == self.level:
            return None
        self.level = level
        return level


# --------------------------------------------------------------------------- FM-D5 sanity


class Verdict(StrEnum):
    WARNING = "warning"
    REJECTED = "rejected"
    FLAG = "flag"


@dataclass(frozen=True, slots=True)
class Finding:
    """One failed sanity rule."""

    check: str
    verdict: Verdict
    detail: str


class PriceSanity:
    """Price rules of SPEC FM-D5 for one series (a symbol's trades, or its mark prices).

    - |Δ| > 20 % against the recent reference (median of the last accepted prices) → WARNING,
      for the caller to confirm with a second source;
    - price < 0.5 x the lowest accepted price → REJECTED;
    - rolling z-score of the log return > 5 → FLAG.
    `check` judges, `accept` records; a rejected or unconfirmed value is never recorded.
    """

    def __init__(
        self,
        *,
        jump: Decimal = Decimal("0.20"),
        floor_ratio: Decimal = Decimal("0.5"),
        z_limit: float = 5.0,
        window: int = 50,
        min_samples: int = 30,
    ) -> None:
        self.jump = jump
        self.floor_ratio = floor_ratio
        self.z_limit = z_limit
        self.min_samples = min_samples
        self._recent: deque[Decimal] = deque(maxlen=window)
        self._returns: deque[float] = deque(maxlen=window * 4)
        self.minimum: Decimal | None = None
        self.last: Decimal | None = None

    def reference(self) -> Decimal | None:
        """Median of the recent accepted prices."""
        if not self._recent:
            return None
        ordered = sorted(self._recent)
        return ordered[len(ordered) // 2]

    def check(self, price: Decimal) -> list[Finding]:
        """The rules `price` breaks (empty: fine)."""
        findings: list[Finding] = []
        if price <= 0:
            return [Finding("price_not_positive", Verdict.REJECTED, f"price {price}")]
        if self.minimum is not None and price < self.minimum * self.floor_ratio:
            findings.append(
                Finding("price_below_min", Verdict.REJECTED, f"{price} < {self.floor_ratio} x min {self.minimum}")
            )
            return findings
        reference = self.reference()
        if reference is not None and abs(price - reference) / reference > self.jump:
            change = (price - reference) / reference * 100
            findings.append(Finding("price_jump", Verdict.WARNING, f"{change:+.1f}% vs recent {reference}"))
            return findings
        z = self._zscore(price)
        if z is not None and abs(z) > self.z_limit:
            findings.append(Finding("zscore", Verdict.FLAG, f"z = {z:.1f}"))
        return findings

    def accept(self, price: Decimal) -> None:
        """Record an accepted price."""
        if self.last is not None and self.last > 0:
            self._returns.append(math.log(float(price / self.last)))
        self.last = price
        self._recent.append(price)
        self.minimum = price if self.minimum is None else min(self.minimum, price)

    def rebase(self, price: Decimal) -> None:
        """A second source confirmed a jump: the recent reference moves to the new level."""
        self._recent.clear()
        self._returns.clear()
        self.last = None
        self.accept(price)

    def _zscore(self, price: Decimal) -> float | None:
        if self.last is None or len(self._returns) < self.min_samples:
            return None
        std = statistics.pstdev(self._returns)
        if std <= 0:
            return None
        mean = statistics.fmean(self._returns)
        return (math.log(float(price / self.last)) - mean) / std


class VolumeSanity:
    """Trade size > 10 x the largest seen so far → WARNING (SPEC FM-D5), once history exists."""

    def __init__(self, *, factor: Decimal = Decimal(10), min_samples: int = 50) -> None:
        self.factor = factor
        self.min_samples = min_samples
        self.maximum = Decimal(0)
        self.samples = 0

    def check(self, quantity: Decimal) -> list[Finding]:
        findings = []
        if self.samples >= self.min_samples and self.maximum > 0 and quantity > self.maximum * self.factor:
            findings.append(Finding("volume", Verdict.WARNING, f"{quantity} > {self.factor} x max {self.maximum}"))
        self.samples += 1
        self.maximum = max(self.maximum, quantity)
        return findings


class OpenInterestSanity:
    """OI < 0 → REJECTED; change > 50 % against the last value → WARNING (SPEC FM-D5)."""

    def __init__(self, *, change: Decimal = Decimal("0.5")) -> None:
        self.change = change
        self.last: Decimal | None = None

    def check(self, value: Decimal) -> list[Finding]:
        if value < 0:
            return [Finding("oi_negative", Verdict.REJECTED, f"open interest {value}")]
        findings = []
        if self.last is not None and self.last > 0 and abs(value - self.last) / self.last > self.change:
            findings.append(Finding("oi_change", Verdict.WARNING, f"{self.last} -> {value}"))
        self.last = value
        return findings


def confirms(reference: Decimal, candidate: Decimal, second_source: Decimal) -> bool:
    """Does the second source agree with the jumped `candidate` rather than with the old `reference`?"""
    return abs(second_source - candidate) < abs(second_source - reference)


# --------------------------------------------------------------------------- FM-D2 trades


class TradeAction(StrEnum):
    APPLY = "apply"
    DUPLICATE = "duplicate"
    BACKFILL = "backfill"
    """A gap of fewer than `backfill_below` ids: fetch them over REST."""
    RESYNC = "resync"
    """A larger gap: treated like a book gap."""


@dataclass(frozen=True, slots=True)
class TradeCheck:
    action: TradeAction
    missing_from: int = 0
    missing_to: int = 0
    """Inclusive range of the missing ids (BACKFILL, RESYNC)."""


class TradeSequence:
    """Aggregate-trade ids are consecutive (SPEC FM-D2): gap < 10 → backfill, ≥ 10 → book gap."""

    def __init__(self, *, backfill_below: int = 10) -> None:
        self.backfill_below = backfill_below
        self.last_id: int | None = None
        self.gaps = 0

    def on_trade(self, trade_id: int) -> TradeCheck:
        """Judge the next trade id."""
        last = self.last_id
        if last is None:
            self.last_id = trade_id
            return TradeCheck(TradeAction.APPLY)
        if trade_id <= last:
            return TradeCheck(TradeAction.DUPLICATE)
        self.last_id = trade_id
        missing = trade_id - last - 1
        if missing == 0:
            return TradeCheck(TradeAction.APPLY)
        self.gaps += 1
        action = TradeAction.BACKFILL if missing < self.backfill_below else TradeAction.RESYNC
        return TradeCheck(action, last + 1, trade_id - 1)


# --------------------------------------------------------------------------- FM-N1 after reconnect


def reconnect_findings(
    last_mark: Decimal | None, new_mark: Decimal | None, last_oi: Decimal | None, new_oi: Decimal | None
) -> list[tuple[str, str]]:
    """Compare the state re-synced after a reconnect with the last known (SPEC FM-N1).

    Returns:
        (check, title) pairs: price moved > 5 % → "possible data gap"; OI changed > 20 % →
        "missed liquidations".
    """
    findings: list[tuple[str, str]] = []
    if last_mark is not None and new_mark is not None and last_mark > 0:
        moved = abs(new_mark - last_mark) / last_mark
        if moved > Decimal("0.05"):
            findings.append(("data_gap", f"possible data gap: mark moved {moved * 100:.1f}% while disconnected"))
    if last_oi is not None and new_oi is not None and last_oi > 0:
        changed = abs(new_oi - last_oi) / last_oi
        if changed > Decimal("0.20"):
            findings.append(("missed_liquidations", f"missed liquidations: OI changed {changed * 100:.1f}%"))
    return findings

"""market-data effects: stream frames → validated messages on JetStream, REST snapshots and
polls, link states, reconnects, resync requests, and the answers to the failure modes of
SPEC §1-2 (rate limits, venue breaker, corrupt/implausible/mistimed data, trade gaps, clock offset).

All decisions are taken by pure classes in `domain` (and `libs.ratelimit`, `libs.breaker`); this
module only moves data between the venue and the bus. One lock serialises everything that touches
a symbol's book sync state and the publishes that follow from it, so the bus sees snapshots and
diffs in exactly the applied order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import msgspec

from libs.binance.client import RequestThrottled
from libs.binance.endpoints import EndpointRotation
from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from libs.binance.stream import StreamClosed, StreamFrame
from libs.breaker import BreakerOpen, BreakerState, BreakerTransition, CircuitBreaker
from libs.clock import Clock, wall_clock
from libs.latency import LatencyWindow
from libs.logging import Logger
from libs.ratelimit import BudgetState, RateBudget
from libs.reconnect import DEGRADED_AFTER_ATTEMPTS, reconnect_delay_s
from proto import subjects
from proto.enums import AlertSeverity, ConnectionState
from proto.envelope import Message
from proto.messages import (
    AlertRaised,
    AlertResolved,
    BookResyncStarted,
    BookSnapshot,
    BreakerStateChanged,
    DepthDiff,
    LinkStateChanged,
    Liquidation,
    MarketDataFlagged,
    MarkPrice,
    OpenInterest,
    Trade,
)
from services.market_data import domain
from services.market_data.adapters import MARKET_REST_LINK, MARKET_WS_LINK

T = TypeVar("T")
Publish = Callable[[str, Message, str | None], Awaitable[int]]
PublishItem = tuple[str, Message, str | None]
PublishMany = Callable[[list[PublishItem]], Awaitable[list[int | BaseException]]]
"""Publish several in order with one wait; per item the stream sequence or the exception of a failed one."""
KvPut = Callable[[str, bytes], Awaitable[int]]
Request = Callable[[str, bytes], Awaitable[bytes]]

OI_POLL_INTERVAL_S = 10.0
SNAPSHOT_LIMIT = 1000
MONITOR_INTERVAL_S = 0.25
STREAM_LATENCY_SAMPLES = 1_000
"""Stream frames in the latency window: tens of seconds of a few symbols' depth, trades and marks."""
FLAG_REPEAT_S = 5.0
"""The same (symbol, check, verdict) flag is published at most once per this many seconds."""
TRANSIENT_ALERT_QUIET_S = 60.0
"""An alert about a one-off event resolves after this long without a recurrence."""
PUBLISH_WINDOW = 2_000
"""Most messages queued or awaiting their acknowledgement before `_emit` waits (back-pressure)."""
PUBLISH_BATCH = 500
"""Most messages sent in one `publish_many` batch."""
_RAW_LOG_CHARS = 300
_NS = 1_000_000_000
VENUE_CALL_ERRORS = (VenueError, VenueUnreachable, VenueTimeout, BreakerOpen, domain.BadFrame)


class RestPort(Protocol):
    async def depth(self, symbol: str, limit: int = 1000) -> dict: ...

    async def open_interest(self, symbol: str) -> dict: ...

    async def premium_index(self, symbol: str) -> dict: ...

    async def server_time_ms(self) -> int: ...

    async def aggregate_trades(self, symbol: str, *, from_id: int, limit: int = 500) -> list[dict]: ...

    async def historical_trades(self, symbol: str, *, from_id: int, limit: int = 500) -> list[dict]: ...

    async def ticker_price(self, symbol: str) -> dict: ...

    async def ping(self) -> dict: ...


class StreamPort(Protocol):
    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    def __aiter__(self) -> Any: ...


def route(message: Message) -> tuple[str, str | None]:
    """Subject and de-duplication id of a market-data message (None: the message id)."""
    match message:
        case DepthDiff(venue=venue, symbol=symbol, final_update_id=u, correlation_id=sync_id):
            return subjects.md_depth(venue, symbol), f"{venue}:{symbol}:depth:{sync_id}:{u}"
        case BookSnapshot(venue=venue, symbol=symbol, last_update_id=last, correlation_id=sync_id):
            return subjects.md_snapshot(venue, symbol), f"{venue}:{symbol}:snapshot:{sync_id}:{last}"
        case Trade(venue=venue, symbol=symbol, trade_id=trade_id):
            return subjects.md_trade(venue, symbol), f"{venue}:{symbol}:trade:{trade_id}"
        case MarkPrice(venue=venue, symbol=symbol, ts_event_ns=ts):
            return subjects.md_mark(venue, symbol), f"{venue}:{symbol}:mark:{ts}"
        case OpenInterest(venue=venue, symbol=symbol, ts_event_ns=ts):
            return subjects.md_open_interest(venue, symbol), f"{venue}:{symbol}:oi:{ts}"
        case Liquidation(venue=venue, symbol=symbol):
            return subjects.md_liquidation(venue, symbol), None
        case BookResyncStarted(venue=venue, symbol=symbol):
            return subjects.md_resync(venue, symbol), None
        case MarketDataFlagged(venue=venue, symbol=symbol):
            return subjects.md_flag(venue, symbol), None
        case LinkStateChanged(venue=venue, link=link):
            return subjects.evt_link(venue, link), None
        case BreakerStateChanged(breaker=breaker):
            return subjects.evt_breaker(breaker), None
        case AlertRaised():
            return subjects.EVT_ALERT_RAISED, None
        case AlertResolved():
            return subjects.EVT_ALERT_RESOLVED, None
    raise TypeError(f"no route for {type(message).__name__}")


class MarketDataService:
    """Everything market-data does, with its I/O injected.

    Args:
        venue: venue name used in subjects.
        symbols: upper-case symbols.
        publish: `publish(subject, message, msg_id)` onto JetStream.
        kv_put: `kv_put(key, value)` into the state bucket.
        rest: venue REST client (depth, open interest, premium index, server time, aggTrades;
            spot: depth, server time, ticker price, historicalTrades).
        open_stream: builds a fresh (unconnected) combined stream on a WebSocket base URL, for
            every connection attempt.
        log: component logger.
        ws_urls: the WebSocket base URLs to rotate through (main first, then alternates).
        request: NATS request/reply (for `svc.risk.halt` on a clock offset > 5 s); None: no halt.
        publish_many: pipelined publishing (`libs.bus.Bus.publish_many` semantics, results per
            item instead of raising); when given, `_emit` only queues and one flusher task sends
            everything queued as one batch while the previous batch's acks are awaited, in
            order. None: each message is published and acknowledged one at a time.
        budget: the venue's request budget the REST client uses (its transitions are published here).
        breaker: the per-venue circuit breaker around REST calls (FM-N5); None: no breaker.
        clock: wall clock in integer ns.
        new_id: a fresh random id (hex); each book sync session's nonce is cut from one.
        sleep: `asyncio.sleep` (injected in tests).
        market: the venue's market kind. Spot: the spot book procedure, `@trade` trades
            (backfilled from `historicalTrades`), the REST ticker price as the second source of
            FM-D5, and no mark price, funding or open interest (nothing polled, nothing alerted).
    """

    def __init__(
        self,
        *,
        venue: str,
        symbols: tuple[str, ...],
        publish: Publish,
        kv_put: KvPut,
        rest: RestPort,
        open_stream: Callable[[str], StreamPort],
        log: Logger,
        ws_urls: Sequence[str] = ("",),
        request: Request | None = None,
        publish_many: PublishMany | None = None,
        budget: RateBudget | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Clock = wall_clock,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        uniform: Callable[[float, float], float] | None = None,
        market: domain.MarketKind = domain.MarketKind.USDM,
    ) -> None:
        self.venue = venue
        self.market = market
        self.symbols = tuple(symbol.upper() for symbol in symbols)
        self._publish = publish
        self._publish_many = publish_many
        self._outbox: collections.deque[PublishItem] = collections.deque()
        self._outbox_wake = asyncio.Event()
        self._outbox_room = asyncio.Event()
        self._outbox_idle = asyncio.Event()
        self._outbox_idle.set()
        self._in_flight = 0
        self._flusher: asyncio.Task[None] | None = None
        self.publish_batches = 0
        self.publish_failures = 0
        self._kv_put = kv_put
        self._rest = rest
        self._open_stream = open_stream
        self.log = log
        self._request = request
        self.budget = budget
        self.breaker = breaker
        self._clock_ns = clock
        self._sleep = sleep
        self._uniform = uniform
        self.syncs = {
            symbol: domain.BookSync(venue, symbol, clock=clock, nonce=new_id()[:8], market=market)
            for symbol in self.symbols
        }
        self.link_state: ConnectionState | None = None
        self.rest_link_state: ConnectionState | None = None
        self.bad_frames = 0
        self.frames = 0
        self.ws_endpoints = EndpointRotation(list(ws_urls) or [""])
        self._link_causes: dict[str, tuple[str, ...]] = {}
        """Per link, the degradation causes last published with its state."""
        self.return_probe = domain.ReturnProbe()
        self.early_reconnects = 0
        """Reconnect waits cut short because the venue answered a REST probe (heartbeat details)."""
        self.clean_window = domain.CleanWindow(self.symbols)
        self.corruption = domain.CorruptionMonitor()
        self.timestamps = domain.TimestampGuard()
        self.clock_offset = domain.ClockOffsetMonitor()
        self.latency = LatencyWindow(size=STREAM_LATENCY_SAMPLES)
        """Receive time minus event time of stream frames, on the venue's clock (FM-N5)."""
        self.alerts = domain.AlertBook()
        self.trades = {symbol: domain.TradeSequence() for symbol in self.symbols}
        self.price_checks = {
            (symbol, series): domain.PriceSanity() for symbol in self.symbols for series in ("trade", "mark")
        }
        self.volume_checks = {symbol: domain.VolumeSanity() for symbol in self.symbols}
        self.oi_checks = {symbol: domain.OpenInterestSanity() for symbol in self.symbols}
        self.last_mark: dict[str, Decimal] = {}
        self.last_oi: dict[str, Decimal] = {}
        self.flags: dict[str, int] = {}
        self.failed_attempts = 0
        self._degraded: dict[str, str] = {}
        self._flag_sent: dict[tuple[str, str, str], int] = {}
        self._transient_alerts: dict[str, int] = {}
        self._confirming: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._generation = 0
        self._connected = False
        self._closed = False
        self._on_channel: dict[str, Callable[[str, Any], Awaitable[None]]] = {
            "depth": self._on_depth,
            "aggTrade": self._on_agg_trade,
            "trade": self._on_trade,
            "markPrice": self._on_mark_price,
            "forceOrder": self._on_force_order,
        }

    # ------------------------------------------------------------------ status

    def details(self) -> dict[str, Any]:
        """Heartbeat details: links, budget, breaker, data quality, per-symbol sync."""
        return {
            "market": self.market.value,
            "link": self.link_state.value if self.link_state else None,
            "rest_link": self.rest_link_state.value if self.rest_link_state else None,
            "ws_endpoint": self.ws_endpoints.current,
            "early_reconnects": self.early_reconnects,
            "degraded": dict(self._degraded),
            "bad_frames": self.bad_frames,
            "corruption_rate": round(self.corruption.rate, 4),
            "clock_offset_ms": self.clock_offset.offset_ms,
            # The watchdog's FM-N5 rule: p99 > 2x baseline (and over its floor) -> REDUCED_FUNCTIONALITY.
            **self.latency.heartbeat_details(),
            "budget": self.budget.view() if self.budget is not None else None,
            "breaker": self.breaker.state.value if self.breaker is not None else None,
            "flags": dict(self.flags),
            "symbols": {
                symbol: {"synced": sync.synced, "last_update_id": sync.last_update_id if sync.synced else None}
                for symbol, sync in self.syncs.items()
            },
        }

    # ------------------------------------------------------------------ publishing

    async def _emit(self, messages: list[Message]) -> None:
        """Publish in order; a lost book message forces a resync so the chain is never silently broken."""
        if self._closed or not messages:
            return
        if self._publish_many is not None:
            await self._enqueue(messages)
            return
        for message in messages:
            subject, msg_id = route(message)
            try:
                await self._publish(subject, message, msg_id)
            except Exception as exc:  # noqa: BLE001 - bus trouble must not kill the venue link
                self.log.warning(
                    "publish_failed",
                    subject=subject,
                    error=f"{type(exc).__name__}: {exc}",
                    action_taken="resync symbol" if isinstance(message, DepthDiff | BookSnapshot) else "dropped",
                )
                if isinstance(message, DepthDiff | BookSnapshot):
                    sync = self.syncs[message.symbol]
                    if not sync.wants_snapshot:
                        sync.force_resync("publish failed")
                    self._ensure_snapshot(message.symbol)
                    return

    async def _enqueue(self, messages: list[Message]) -> None:
        """Queue for the flusher; waits while the in-flight window is full (back-pressure on the stream)."""
        while len(self._outbox) + self._in_flight >= PUBLISH_WINDOW and not self._closed:
            self._outbox_room.clear()
            await self._outbox_room.wait()
        for message in messages:
            subject, msg_id = route(message)
            self._outbox.append((subject, message, msg_id))
        self._outbox_idle.clear()
        self._outbox_wake.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_forever(), name="market-data-publish")

    async def _flush_forever(self) -> None:
        """Send everything queued as one batch, await its acks, repeat: order is the queue's order.

        Only one batch is awaited at a time, so a batch holds what arrived while the previous
        one's acks were pending: one round trip per batch instead of per message.
        """
        assert self._publish_many is not None
        while True:
            if not self._outbox:
                self._outbox_idle.set()
                self._outbox_wake.clear()
                await self._outbox_wake.wait()
                continue
            batch = [self._outbox.popleft() for _ in range(min(PUBLISH_BATCH, len(self._outbox)))]
            self._in_flight = len(batch)
            try:
                results = await self._publish_many(batch)
            except Exception as exc:  # noqa: BLE001 - bus trouble must not kill the venue link
                results = [exc] * len(batch)
            self._in_flight = 0
            self.publish_batches += 1
            self._outbox_room.set()
            failed = [
                (item, result) for item, result in zip(batch, results, strict=False) if not isinstance(result, int)
            ]
            if len(results) < len(batch):
                failed.extend((item, RuntimeError("no result")) for item in batch[len(results) :])
            if failed:
                self._on_publish_failed(failed)

    def _on_publish_failed(self, failed: list[tuple[PublishItem, BaseException]]) -> None:
        """A lost book message: drop the symbol's queued book messages and resync it (never re-publish)."""
        self.publish_failures += len(failed)
        broken: set[str] = set()
        for (subject, message, _), error in failed:
            book = isinstance(message, DepthDiff | BookSnapshot)
            self.log.warning(
                "publish_failed",
                subject=subject,
                error=f"{type(error).__name__}: {error}"[:300],
                action_taken="resync symbol" if book else "dropped",
            )
            if isinstance(message, DepthDiff | BookSnapshot):
                broken.add(message.symbol)
        if not broken:
            return
        # Diffs queued behind a lost one cannot chain for any reader: sending them is useless.
        kept = [
            item
            for item in self._outbox
            if not (isinstance(item[1], DepthDiff | BookSnapshot) and item[1].symbol in broken)
        ]
        self._outbox = collections.deque(kept)
        for symbol in sorted(broken):
            self._spawn(self._resync_after_publish_failure(symbol), f"publish-resync-{symbol}")

    async def _resync_after_publish_failure(self, symbol: str) -> None:
        async with self._lock:
            sync = self.syncs[symbol]
            if not sync.wants_snapshot:
                self.clean_window.on_break(symbol)
                await self._emit(sync.force_resync("publish failed"))
            self._ensure_snapshot(symbol)

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued was acknowledged (or failed); False on timeout."""
        if self._publish_many is None:
            return True
        try:
            await asyncio.wait_for(self._outbox_idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _kv(self, key: str, value: dict[str, Any]) -> None:
        try:
            await self._kv_put(key, msgspec.json.encode(value))
        except Exception as exc:  # noqa: BLE001 - the event published next still tells the others
            self.log.warning("kv_put_failed", key=key, error=str(exc)[:200])

    async def _alert(
        self, key: str, severity: AlertSeverity, title: str, *, transient: bool = False, **details: Any
    ) -> None:
        """Raise an alert once while its condition holds; `transient` ones resolve after a quiet minute."""
        if transient:
            self._transient_alerts[key] = self._clock_ns()
        if not self.alerts.raise_alert(key, title):
            return
        self.log.warning("alert_raised", key=key, severity=severity.value, title=title, **details)
        await self._emit(
            [AlertRaised(key=key, severity=severity, component=subjects.MARKET_DATA, title=title, details=details)]
        )

    async def _resolve(self, key: str, reason: str) -> None:
        self._transient_alerts.pop(key, None)
        if self.alerts.resolve(key):
            self.log.info("alert_resolved", key=key, reason=reason)
            await self._emit([AlertResolved(key=key, component=subjects.MARKET_DATA, reason=reason)])

    async def _flag(self, symbol: str, check: str, verdict: str, detail: str, value: str | None = None) -> None:
        """Count a data-quality verdict; publish it (at most once per `FLAG_REPEAT_S` per kind)."""
        name = f"{check}:{verdict}"
        self.flags[name] = self.flags.get(name, 0) + 1
        now = self._clock_ns()
        key = (symbol, check, verdict)
        if now - self._flag_sent.get(key, -(10**19)) < FLAG_REPEAT_S * _NS:
            return
        self._flag_sent[key] = now
        self.log.warning("market_data_flagged", symbol=symbol, check=check, verdict=verdict, detail=detail[:200])
        await self._emit(
            [
                MarketDataFlagged(
                    venue=self.venue, symbol=symbol, check=check, verdict=verdict, detail=detail[:300], value=value
                )
            ]
        )

    # ------------------------------------------------------------------ links

    async def _set_link(self, link: str, state: ConnectionState, reason: str, *, causes: tuple[str, ...] = ()) -> None:
        """Publish a link's state when it, or the causes of its degradation, changed (the watchdog
        weighs the causes: the clock alone halts trading; corruption on top of it is EMERGENCY_MODE)."""
        current = self.link_state if link == MARKET_WS_LINK else self.rest_link_state
        if (state == current and causes == self._link_causes.get(link, ())) or self._closed:
            return
        if link == MARKET_WS_LINK:
            self.link_state = state
        else:
            self.rest_link_state = state
        self._link_causes[link] = causes
        self.log.info("link_state_changed", link=link, previous=current, current=state, reason=reason)
        event = LinkStateChanged(
            venue=self.venue,
            link=link,
            previous=current,
            current=state,
            reason=reason,
            symbols=list(self.symbols),
            causes=list(causes),
        )
        await self._kv(
            subjects.key_link(self.venue, link),
            {"state": state.value, "reason": reason, "causes": list(causes), "ts_ns": event.ts_event_ns},
        )
        await self._emit([event])

    async def _refresh_link(self, reason: str) -> None:
        """Publish the market link's state when its conditions changed it."""
        state = domain.market_link_state(
            connected=self._connected,
            failed_attempts=self.failed_attempts,
            clean=self.clean_window.is_clean(self._clock_ns()),
            degraded_reasons=self._degraded,
        )
        causes: tuple[str, ...] = ()
        if state == ConnectionState.DEGRADED and self._degraded and self._connected:
            reason = "; ".join(f"{name}: {detail}" for name, detail in self._degraded.items())
            causes = tuple(sorted(self._degraded))
        elif state == ConnectionState.CONNECTED and self.link_state == ConnectionState.SUSPECT:
            reason = "clean window passed"
        await self._set_link(MARKET_WS_LINK, state, reason, causes=causes)

    async def _degrade(self, name: str, detail: str) -> None:
        self._degraded[name] = detail
        await self._refresh_link(detail)

    async def _undegrade(self, name: str, reason: str) -> None:
        if self._degraded.pop(name, None) is not None:
            await self._refresh_link(reason)

    # ------------------------------------------------------------------ venue REST calls

    async def _venue(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """One REST call through the venue breaker (FM-N5); budget and breaker changes are published."""
        if self.breaker is not None:
            allowed, transition = self.breaker.allow()
            await self._on_breaker(transition)
            if not allowed:
                raise BreakerOpen(self.breaker.name, self.breaker.retry_after_s())
        try:
            result = await call()
        except RequestThrottled:
            raise  # refused by our own budget: nothing reached the venue
        except VenueError as exc:
            # A definite answer: the venue is up unless it is a 5xx (429/418 belong to the budget).
            if exc.status >= 500:
                await self._breaker_failure(f"{operation}: HTTP {exc.status}")
            elif exc.status not in (418, 429):
                await self._breaker_success()
            raise
        except (VenueUnreachable, VenueTimeout) as exc:
            await self._breaker_failure(f"{operation}: {type(exc).__name__}")
            if isinstance(exc, VenueUnreachable):
                await self._alert(
                    f"md.venue_unreachable.{self.venue}",
                    AlertSeverity.P1,
                    "venue REST unreachable on every endpoint",
                    transient=True,
                    error=str(exc)[:300],
                )
            raise
        else:
            await self._breaker_success()
            return result
        finally:
            await self._after_rest()

    async def _breaker_failure(self, reason: str) -> None:
        if self.breaker is not None:
            await self._on_breaker(self.breaker.record_failure(reason))

    async def _breaker_success(self) -> None:
        if self.breaker is not None:
            await self._on_breaker(self.breaker.record_success())

    async def _on_breaker(self, transition: BreakerTransition | None) -> None:
        if transition is None:
            return
        self.log.warning("breaker_state_changed", **transition.fields())
        event = transition.event()
        await self._kv(subjects.key_breaker(transition.name), transition.record(event.ts_event_ns))
        await self._emit([event])
        key = f"md.breaker.{transition.name}"
        if transition.current == BreakerState.OPEN:
            await self._alert(key, AlertSeverity.P1, f"venue breaker {transition.name} open", reason=transition.reason)
        elif transition.current == BreakerState.CLOSED:
            await self._resolve(key, "breaker closed")
        await self._after_rest()

    async def _after_rest(self) -> None:
        """Publish budget transitions (FM-N2) and the REST link state they and the breaker imply."""
        budget_state = BudgetState.NORMAL
        if self.budget is not None:
            for transition in self.budget.drain_transitions():
                self.log.warning(
                    "rate_budget_changed",
                    previous=transition.previous.value,
                    current=transition.current.value,
                    reason=transition.reason,
                )
                ban_key, limit_key = f"md.ip_banned.{self.venue}", f"md.rate_limited.{self.venue}"
                if transition.current == BudgetState.BANNED:
                    await self._alert(ban_key, AlertSeverity.P1, "venue IP ban (418): no requests until it ends")
                elif transition.previous == BudgetState.BANNED:
                    await self._resolve(ban_key, transition.reason)
                if transition.current == BudgetState.DEGRADED and transition.previous != BudgetState.BANNED:
                    await self._alert(limit_key, AlertSeverity.P2, "venue rate limits (429) persist")
                elif transition.current == BudgetState.NORMAL:
                    await self._resolve(limit_key, transition.reason)
            budget_state = self.budget.state
        breaker_open = self.breaker is not None and self.breaker.state == BreakerState.OPEN
        if breaker_open:
            state, reason = ConnectionState.DISCONNECTED, "venue breaker open"
        elif budget_state in (BudgetState.BANNED, BudgetState.DEGRADED):
            state, reason = ConnectionState.DEGRADED, f"rate budget {budget_state.value}"
        elif budget_state == BudgetState.THROTTLED:
            state, reason = ConnectionState.SUSPECT, "rate limited (429): request rate halved"
        else:
            state, reason = ConnectionState.CONNECTED, "requests answered"
        await self._set_link(MARKET_REST_LINK, state, reason)

    @staticmethod
    def _retry_delay(exc: BaseException, failures: int) -> float:
        retry_after = getattr(exc, "retry_after_s", None)
        if isinstance(retry_after, int | float) and retry_after > 0:
            return min(float(retry_after), 30.0)
        return min(0.2 * 2**failures, 5.0)

    # ------------------------------------------------------------------ stream

    async def run_stream_forever(self) -> None:
        """Connect, consume, and on any loss reconnect on SPEC FM-N1's schedule, forever."""
        attempt = 0
        # `close()` stops the loop by flag too: a cancellation can be swallowed by a library's
        # wait_for (Python 3.11) and must not leave a zombie link publishing after shutdown.
        while not self._closed:
            url = self.ws_endpoints.current
            stream = self._open_stream(url)
            try:
                await stream.connect()
            except StreamClosed as exc:
                all_failed = self.ws_endpoints.on_failure()
                await self._on_attempt_failed(attempt, str(exc), url, all_failed)
                attempt += 1
                await self._wait_before_reconnect(self._delay(attempt))
                continue
            self.ws_endpoints.on_success()
            attempt = 0
            reason = "stream ended"
            try:
                await self._on_connected(url)
                async for frame in stream:
                    if self._closed:
                        break
                    await self.handle_frame(frame)
            except StreamClosed as exc:
                reason = str(exc)
            finally:
                await stream.close()
            await self._on_disconnected(reason)
            await self._wait_before_reconnect(self._delay(attempt))

    async def _wait_before_reconnect(self, delay_s: float) -> None:
        """Wait `delay_s` for the next scheduled attempt, or less when the venue is back.

        The SPEC schedule (0, 1, 2, 4, 8 s, ...) alone would notice a venue's return only at the
        next attempt, up to 8 s (later: 60 s) after it; FM-N1's target is clean window + 2 s from
        the venue becoming reachable. So the wait probes the venue's REST ping (weight 1, lowest
        priority, through the budget and the breaker) every `ReturnProbe.interval_s` and ends
        early when it answers, at most `ReturnProbe.max_early` times per disconnected period.
        """
        deadline = self._clock_ns() + int(delay_s * _NS)
        while not self._closed:
            remaining = (deadline - self._clock_ns()) / _NS
            if remaining <= 0:
                return
            step = self.return_probe.next_probe_in(remaining)
            if step is None:
                await self._sleep(remaining)
                return
            await self._sleep(step)
            if self._closed or deadline - self._clock_ns() <= 0:
                return
            if await self._probe_venue(min(domain.RETURN_PROBE_TIMEOUT_S, (deadline - self._clock_ns()) / _NS)):
                self.return_probe.on_answer()
                self.early_reconnects += 1
                self.log.info(
                    "venue_answered_probe",
                    early_reconnect=self.return_probe.early_reconnects,
                    skipped_wait_s=round(max(0.0, (deadline - self._clock_ns()) / _NS), 3),
                    action_taken="reconnect now",
                )
                return

    async def _probe_venue(self, timeout_s: float) -> bool:
        """One REST ping: True when the venue answered it.

        Through the breaker (an open one means no probe) and the budget (the client sends it at
        the lowest priority and never waits for budget). A failed probe is not a breaker failure
        while the breaker is CLOSED: three probes a second during an outage would open it by their
        own rate within two seconds and then hold every snapshot for the whole cool-down after the
        venue came back. In HALF_OPEN the probe is a trial call like any other, so its failure
        re-opens the breaker; an answer always counts as a success.
        """
        if self.breaker is not None:
            allowed, transition = self.breaker.allow()
            await self._on_breaker(transition)
            if not allowed:
                return False
        try:
            await asyncio.wait_for(self._rest.ping(), max(0.05, timeout_s))
        except RequestThrottled:
            return False  # our own budget refused (ban, back-off, weight): nothing was sent
        except (VenueError, VenueUnreachable, VenueTimeout, TimeoutError) as exc:
            if self.breaker is not None and self.breaker.state == BreakerState.HALF_OPEN:
                await self._breaker_failure(f"ping: {type(exc).__name__}")
            return False
        else:
            await self._breaker_success()
            return True
        finally:
            await self._after_rest()

    def _delay(self, attempt: int) -> float:
        if self._uniform is None:
            return reconnect_delay_s(attempt)
        return reconnect_delay_s(attempt, self._uniform)

    async def _on_attempt_failed(self, attempt: int, reason: str, url: str, all_failed: bool) -> None:
        self.failed_attempts = attempt + 1
        self.log.warning("market_ws_connect_failed", attempt=attempt + 1, endpoint=url, reason=reason[:300])
        if self.failed_attempts >= DEGRADED_AFTER_ATTEMPTS:
            await self._alert(
                f"md.reconnect_failing.{self.venue}",
                AlertSeverity.P1,
                f"market stream: {self.failed_attempts} reconnect attempts failed",
                reason=reason[:300],
            )
        if all_failed:
            await self._alert(
                f"md.ws_endpoints_failed.{self.venue}",
                AlertSeverity.P1,
                "market stream: every configured WebSocket endpoint failed",
                endpoints=list(self.ws_endpoints.urls),
                reason=reason[:300],
            )
        await self._refresh_link(f"{self.failed_attempts} failed attempts: {reason}")

    async def _on_connected(self, url: str) -> None:
        self._generation += 1
        self._connected = True
        self.failed_attempts = 0
        self.return_probe.on_connected()
        reconnect = self._generation > 1
        self.clean_window.start(self._clock_ns())
        await self._resolve(f"md.reconnect_failing.{self.venue}", "connected")
        await self._resolve(f"md.ws_endpoints_failed.{self.venue}", "connected")
        await self._refresh_link("reconnected: clean window" if reconnect else "connected: clean window")
        self.log.info("market_ws_connected", endpoint=url, generation=self._generation)
        reason = "reconnected" if reconnect else "connected"
        # Whatever happened while we were away is unknown: every book and trade sequence starts
        # over (FM-N1), and mark/funding/OI are re-synced over REST and compared.
        async with self._lock:
            for symbol, sync in self.syncs.items():
                self.trades[symbol] = domain.TradeSequence()
                if not sync.wants_snapshot:
                    await self._emit(sync.force_resync(reason))
                elif self._generation == 1:
                    await self._emit([BookResyncStarted(venue=self.venue, symbol=symbol, reason=reason)])
                self._ensure_snapshot(symbol)
        if reconnect and self.market == domain.MarketKind.USDM:
            # Spot has no mark price, funding or open interest to re-sync and compare.
            self._spawn(self._resync_market_state(), "post-reconnect-resync")

    async def _on_disconnected(self, reason: str) -> None:
        self._connected = False
        for task in list(self._fetching.values()):
            task.cancel()
        self._fetching.clear()
        await self._refresh_link(reason)

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.exception("background_task_failed", task.exception(), task=task.get_name())  # type: ignore[arg-type]

    async def _resync_market_state(self) -> None:
        """FM-N1 after a reconnect: fresh mark/funding/OI, compared with the last known values."""
        for symbol in self.symbols:
            try:
                premium = await self._venue("premium_index", functools.partial(self._rest.premium_index, symbol))
                mark = domain.mark_from_premium_index(self.venue, symbol, premium, self._clock_ns())
                oi_raw = await self._venue("open_interest", functools.partial(self._rest.open_interest, symbol))
                oi = domain.open_interest_from_rest(self.venue, symbol, oi_raw, self._clock_ns())
            except VENUE_CALL_ERRORS as exc:
                self.log.warning("post_reconnect_resync_failed", symbol=symbol, error=str(exc)[:300])
                continue
            for check, title in domain.reconnect_findings(
                self.last_mark.get(symbol), mark.mark_price, self.last_oi.get(symbol), oi.open_interest
            ):
                await self._alert(f"md.{check}.{symbol}", AlertSeverity.P1, f"{symbol}: {title}", transient=True)
            # REST is the second source itself: the sanity reference moves to what it says.
            self.price_checks[(symbol, "mark")].rebase(mark.mark_price)
            self.last_mark[symbol] = mark.mark_price
            self.last_oi[symbol] = oi.open_interest
            self.oi_checks[symbol].last = oi.open_interest
            await self._emit([mark, oi])

    # ------------------------------------------------------------------ frames

    async def handle_frame(self, frame: StreamFrame) -> None:
        """Process one stream frame; a bad one is counted, logged truncated and skipped (FM-D4)."""
        self.frames += 1
        bad = await self._handle(frame)
        changed = self.corruption.record(self._clock_ns(), bad=bad)
        if changed is True:
            rate = f"{self.corruption.rate * 100:.1f}% of recent frames corrupt"
            await self._alert(f"md.corruption.{self.venue}", AlertSeverity.P1, f"market stream: {rate}")
            await self._degrade(domain.DEGRADE_REASON_CORRUPTION, rate)
        elif changed is False:
            await self._resolve(f"md.corruption.{self.venue}", "corruption rate back to normal")
            await self._undegrade(domain.DEGRADE_REASON_CORRUPTION, "corruption rate back to normal")

    async def _handle(self, frame: StreamFrame) -> bool:
        """Returns True when the frame was bad."""
        if frame.error is not None or frame.stream is None:
            self._bad_frame(frame.raw, frame.error or "no stream")
            return True
        prefix, _, rest = frame.stream.partition("@")
        channel = rest.split("@", 1)[0]
        symbol = prefix.upper()
        handler = self._on_channel.get(channel)
        if handler is None or symbol not in self.syncs:
            self._bad_frame(frame.raw, f"unexpected stream {frame.stream[:60]}")
            return True
        try:
            await handler(symbol, frame.data)
        except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
            # BadFrame and anything else a malformed payload can raise: never fatal (FM-D4).
            self._bad_frame(frame.raw, f"{type(exc).__name__}: {exc}")
            return True
        return False

    def _bad_frame(self, raw: str, reason: str) -> None:
        self.bad_frames += 1
        self.log.warning("bad_frame", reason=reason[:300], raw=raw[:_RAW_LOG_CHARS], count=self.bad_frames)

    async def _check_time(self, symbol: str, channel: str, event_ms: int) -> int | None:
        """FM-D3: the timestamp to use (ns), or None when the event must be rejected."""
        now_ns = self._clock_ns()
        check = self.timestamps.check(f"{symbol}@{channel}", event_ms, now_ns)
        match check.verdict:
            case domain.TimestampVerdict.OK:
                venue_now_ms = now_ns / 1e6 + (self.clock_offset.offset_ms or 0)
                self.latency.add(max(0.0, venue_now_ms - event_ms))
                return check.ts_ns
            case domain.TimestampVerdict.FUTURE:
                await self._flag(symbol, "future_ts", "rejected", f"{channel} event time {event_ms} ms", str(event_ms))
                if check.repeated:
                    await self._alert(
                        f"md.future_ts.{symbol}",
                        AlertSeverity.P2,
                        f"{symbol}: event times > 5 s in the future keep arriving",
                        transient=True,
                    )
                return None
            case _:
                await self._flag(
                    symbol, "backward_ts", "suspect", f"{channel} event time went backwards", str(event_ms)
                )
                await self._alert(
                    f"md.backward_ts.{symbol}",
                    AlertSeverity.P3,
                    f"{symbol}: event time went backwards; receive time used",
                    transient=True,
                )
                return check.ts_ns

    async def _on_depth(self, symbol: str, data: Any) -> None:
        event = domain.parse_depth_event(data, self.market)
        if event.symbol and event.symbol != symbol:
            raise domain.BadFrame(f"symbol {event.symbol} on the {symbol} stream")
        ts_ns = await self._check_time(symbol, "depth", event.event_time_ms)
        if ts_ns is None:
            # Rejected: the next event's `pu` will not chain, and the book resyncs from a snapshot.
            return
        if ts_ns != event.event_time_ms * 1_000_000:
            event = dataclasses.replace(event, event_time_ms=ts_ns // 1_000_000)
        async with self._lock:
            sync = self.syncs[symbol]
            messages = sync.on_event(event)
            now = self._clock_ns()
            for message in messages:
                if isinstance(message, DepthDiff):
                    self.clean_window.on_update(symbol, now)
                elif isinstance(message, BookResyncStarted):
                    self.clean_window.on_break(symbol)
                    self.log.warning(
                        "book_gap",
                        symbol=symbol,
                        reason=message.reason,
                        expected=message.expected_prev_update_id,
                        received=message.received_prev_update_id,
                        action_taken="resync from a new snapshot",
                    )
            await self._emit(messages)
            self._ensure_snapshot(symbol)
        if self.link_state == ConnectionState.SUSPECT:
            await self._refresh_link("clean window passed")

    async def _on_agg_trade(self, symbol: str, data: Any) -> None:
        await self._on_any_trade(symbol, data, "aggTrade", domain.trade_from_agg_trade(self.venue, data))

    async def _on_trade(self, symbol: str, data: Any) -> None:
        """Spot `@trade`: trade ids `t` are consecutive, with the same gap rules as aggregate ids."""
        await self._on_any_trade(symbol, data, "trade", domain.trade_from_trade(self.venue, data))

    async def _on_any_trade(self, symbol: str, data: Any, channel: str, trade: Trade) -> None:
        """FM-D3 time check, FM-D2 id sequence (duplicate, backfill, resync), FM-D5 checks, publish."""
        if trade.symbol and trade.symbol != symbol:
            raise domain.BadFrame(f"symbol {trade.symbol} on the {symbol} stream")
        event_ms = data.get("E", trade.ts_event_ns // 1_000_000)
        if not isinstance(event_ms, int):
            raise domain.BadFrame("field 'E' is not an integer")
        ts_ns = await self._check_time(symbol, channel, event_ms)
        if ts_ns is None:
            return
        if ts_ns != event_ms * 1_000_000:
            trade = msgspec.structs.replace(trade, ts_event_ns=ts_ns)
        sequence = self.trades[symbol].on_trade(trade.trade_id)
        if sequence.action == domain.TradeAction.DUPLICATE:
            self.flags["trade_duplicate"] = self.flags.get("trade_duplicate", 0) + 1
            return
        if sequence.action == domain.TradeAction.BACKFILL:
            self._spawn(
                self._backfill(symbol, sequence.missing_from, sequence.missing_to, channel), f"backfill-{symbol}"
            )
        elif sequence.action == domain.TradeAction.RESYNC:
            await self._trade_gap_resync(symbol, sequence)
        for finding in self.volume_checks[symbol].check(trade.quantity):
            await self._flag(symbol, finding.check, finding.verdict.value, finding.detail, str(trade.quantity))
        await self._publish_price(symbol, "trade", trade.price, trade)

    async def _trade_gap_resync(self, symbol: str, sequence: domain.TradeCheck) -> None:
        missing = sequence.missing_to - sequence.missing_from + 1
        await self._flag(symbol, "trade_gap", "rejected", f"{missing} trade ids missing: book resync")
        async with self._lock:
            sync = self.syncs[symbol]
            if not sync.wants_snapshot:
                self.log.warning("trade_gap", symbol=symbol, missing=missing, action_taken="resync book")
                self.clean_window.on_break(symbol)
                await self._emit(sync.force_resync(f"trade gap of {missing} ids"))
            self._ensure_snapshot(symbol)

    async def _backfill(self, symbol: str, first: int, last: int, channel: str = "aggTrade") -> None:
        """FM-D2: fetch the few missing trades over REST (aggregate or plain, like the stream) and publish them."""
        limit = last - first + 1
        try:
            if channel == "trade":
                rows = await self._venue(
                    "historical_trades", lambda: self._rest.historical_trades(symbol, from_id=first, limit=limit)
                )
                parse = domain.trade_from_trade
            else:
                rows = await self._venue(
                    "aggregate_trades", lambda: self._rest.aggregate_trades(symbol, from_id=first, limit=limit)
                )
                parse = domain.trade_from_agg_trade
            if not isinstance(rows, list):
                raise domain.BadFrame(f"{channel} backfill answer is not a list")
            trades = [parse(self.venue, row, symbol) for row in rows]
        except VENUE_CALL_ERRORS as exc:
            await self._flag(symbol, "trade_gap", "warning", f"backfill of {first}..{last} failed: {exc}"[:300])
            return
        found = [trade for trade in trades if first <= trade.trade_id <= last]
        self.log.info("trades_backfilled", symbol=symbol, first=first, last=last, found=len(found))
        await self._emit(list(found))
        if len(found) < last - first + 1:
            await self._flag(symbol, "trade_gap", "warning", f"backfill found {len(found)} of {last - first + 1}")

    async def _on_mark_price(self, symbol: str, data: Any) -> None:
        mark = domain.mark_from_update(self.venue, data)
        if mark.symbol and mark.symbol != symbol:
            raise domain.BadFrame(f"symbol {mark.symbol} on the {symbol} stream")
        ts_ns = await self._check_time(symbol, "markPrice", mark.ts_event_ns // 1_000_000)
        if ts_ns is None:
            return
        if ts_ns != mark.ts_event_ns:
            mark = msgspec.structs.replace(mark, ts_event_ns=ts_ns)
        await self._publish_price(symbol, "mark", mark.mark_price, mark)

    async def _publish_price(self, symbol: str, series: str, price: Decimal, message: Trade | MarkPrice) -> None:
        """FM-D5 price rules: reject, hold for confirmation, flag, or publish."""
        checks = self.price_checks[(symbol, series)]
        findings = checks.check(price)
        for finding in findings:
            match finding.verdict:
                case domain.Verdict.REJECTED:
                    await self._flag(symbol, finding.check, "rejected", f"{series}: {finding.detail}", str(price))
                    await self._alert(
                        f"md.implausible_price.{symbol}",
                        AlertSeverity.P2,
                        f"{symbol}: implausible {series} price rejected",
                        transient=True,
                        detail=finding.detail,
                    )
                    return
                case domain.Verdict.WARNING:
                    await self._flag(symbol, finding.check, "warning", f"{series}: {finding.detail}", str(price))
                    self._hold_for_confirmation(symbol, series, price, message)
                    return
                case domain.Verdict.FLAG:
                    await self._flag(symbol, finding.check, "flag", f"{series}: {finding.detail}", str(price))
        checks.accept(price)
        if series == "mark":
            self.last_mark[symbol] = price
        await self._emit([message])

    def _hold_for_confirmation(self, symbol: str, series: str, price: Decimal, message: Trade | MarkPrice) -> None:
        if (symbol, series) in self._confirming:
            self.flags["held_during_confirmation"] = self.flags.get("held_during_confirmation", 0) + 1
            return
        self._confirming.add((symbol, series))
        self._spawn(self._confirm(symbol, series, price, message), f"confirm-{symbol}-{series}")

    async def _confirm(self, symbol: str, series: str, price: Decimal, message: Trade | MarkPrice) -> None:
        """A > 20 % jump is published only when the REST mark price (spot: last price) agrees with it (FM-D5)."""
        checks = self.price_checks[(symbol, series)]
        source = "price" if self.market == domain.MarketKind.SPOT else "mark"
        try:
            reference = checks.reference()
            try:
                second = await self._second_source_price(symbol)
            except VENUE_CALL_ERRORS as exc:
                await self._flag(symbol, "price_jump", "rejected", f"{series}: cannot confirm: {exc}"[:300], str(price))
                return
            if reference is not None and domain.confirms(reference, price, second):
                checks.rebase(price)
                if series == "mark":
                    self.last_mark[symbol] = price
                await self._flag(symbol, "price_jump", "confirmed", f"{series}: REST {source} {second}", str(price))
                await self._emit([message])
                return
            await self._flag(
                symbol, "price_jump", "rejected", f"{series}: REST {source} {second} disagrees", str(price)
            )
            await self._alert(
                f"md.unconfirmed_jump.{symbol}",
                AlertSeverity.P2,
                f"{symbol}: {series} price jump not confirmed by REST; rejected",
                transient=True,
                price=str(price),
                rest_mark=str(second),
            )
        finally:
            self._confirming.discard((symbol, series))

    async def _second_source_price(self, symbol: str) -> Decimal:
        """FM-D5's second source: the REST mark price (USD-M) or the REST last price (spot: no mark)."""
        if self.market == domain.MarketKind.SPOT:
            ticker = await self._venue("ticker_price", lambda: self._rest.ticker_price(symbol))
            return domain.price_from_ticker(ticker)
        premium = await self._venue("premium_index", lambda: self._rest.premium_index(symbol))
        return domain.mark_from_premium_index(self.venue, symbol, premium, self._clock_ns()).mark_price

    async def _on_force_order(self, symbol: str, data: Any) -> None:
        await self._emit([domain.liquidation_from_force_order(self.venue, data)])

    # ------------------------------------------------------------------ snapshots

    def _ensure_snapshot(self, symbol: str) -> None:
        """Start a snapshot fetch when the symbol needs one and none is running."""
        if not self._connected or not self.syncs[symbol].wants_snapshot:
            return
        task = self._fetching.get(symbol)
        if task is not None and not task.done():
            return
        self._fetching[symbol] = asyncio.create_task(self._fetch_snapshot(symbol), name=f"snapshot-{symbol}")

    async def _fetch_snapshot(self, symbol: str) -> None:
        generation = self._generation
        failures = 0
        while generation == self._generation and self.syncs[symbol].wants_snapshot and not self._closed:
            try:
                raw = await self._venue("depth", lambda: self._rest.depth(symbol, SNAPSHOT_LIMIT))
                snapshot = domain.parse_snapshot(raw)
            except VENUE_CALL_ERRORS as exc:
                failures += 1
                delay = self._retry_delay(exc, failures)
                self.log.warning(
                    "snapshot_failed", symbol=symbol, error=str(exc)[:300], action_taken=f"retry in {delay:.1f}s"
                )
                await self._sleep(delay)
                continue
            if generation != self._generation:
                return
            async with self._lock:
                messages = self.syncs[symbol].on_snapshot(snapshot)
                now = self._clock_ns()
                for message in messages:
                    if isinstance(message, DepthDiff):
                        self.clean_window.on_update(symbol, now)
                self.log.info(
                    "book_snapshot",
                    symbol=symbol,
                    last_update_id=snapshot.last_update_id,
                    synced=self.syncs[symbol].synced,
                )
                await self._emit(messages)
            if self.syncs[symbol].wants_snapshot:
                # The snapshot was older than the buffered events (U > L): fetch a newer one.
                await self._sleep(0.1)

    # ------------------------------------------------------------------ requests and polls

    async def handle_resync_request(self, payload: bytes) -> bytes:
        """`svc.market-data.resync` {"symbol"}: rebuild that symbol's book from a new snapshot."""
        try:
            request = msgspec.json.decode(payload)
            symbol = str(request["symbol"]).upper()
        except (msgspec.DecodeError, KeyError, TypeError) as exc:
            return msgspec.json.encode({"error": {"code": "bad_request", "message": f"expected {{'symbol'}}: {exc}"}})
        sync = self.syncs.get(symbol)
        if sync is None:
            return msgspec.json.encode({"error": {"code": "not_found", "message": f"unknown symbol {symbol}"}})
        async with self._lock:
            if sync.wants_snapshot:
                status = "already_resyncing"
            else:
                status = "resyncing"
                self.log.info("resync_requested", symbol=symbol)
                self.clean_window.on_break(symbol)
                await self._emit(sync.force_resync("requested"))
            self._ensure_snapshot(symbol)
        return msgspec.json.encode({"symbol": symbol, "status": status})

    async def poll_open_interest_forever(self, interval_s: float = OI_POLL_INTERVAL_S) -> None:
        """Publish every symbol's open interest from REST every `interval_s` (longer while rate limited).

        Spot has no open interest: returns at once.
        """
        if self.market == domain.MarketKind.SPOT:
            return
        while not self._closed:
            started = time.monotonic()
            for symbol in self.symbols:
                await self.poll_open_interest(symbol)
            factor = self.budget.polling_factor() if self.budget is not None else 1.0
            await self._sleep(max(0.0, interval_s * factor - (time.monotonic() - started)))

    async def poll_open_interest(self, symbol: str) -> None:
        """One open-interest poll, through the FM-D5 rules."""
        try:
            raw = await self._venue("open_interest", lambda: self._rest.open_interest(symbol))
            message = domain.open_interest_from_rest(self.venue, symbol, raw, self._clock_ns())
        except domain.BadFrame as exc:
            await self._flag(symbol, "oi", "rejected", str(exc))
            return
        except VENUE_CALL_ERRORS as exc:
            self.log.warning("open_interest_failed", symbol=symbol, error=str(exc)[:300])
            return
        for finding in self.oi_checks[symbol].check(message.open_interest):
            await self._flag(symbol, finding.check, finding.verdict.value, finding.detail, str(message.open_interest))
        self.last_oi[symbol] = message.open_interest
        await self._emit([message])

    async def check_clock_forever(self, interval_s: float) -> None:
        """FM-D3: the local clock against the venue's every `interval_s`."""
        while not self._closed:
            await self.check_clock()
            await self._sleep(interval_s)

    async def check_clock(self) -> None:
        """One clock-offset sample: > 1 s alert, > 5 s trading HALTED (through risk) and the link DEGRADED."""
        sent = self._clock_ns()
        try:
            server_ms = await self._venue("server_time", self._rest.server_time_ms)
        except (*VENUE_CALL_ERRORS, TypeError, KeyError) as exc:
            self.log.info("clock_check_failed", error=str(exc)[:200])
            return
        level = self.clock_offset.on_sample(sent, self._clock_ns(), int(server_ms))
        if level is None:
            return
        offset = self.clock_offset.offset_ms
        key = f"md.clock_offset.{self.venue}"
        self.log.warning("clock_offset_changed", level=level.value, offset_ms=offset)
        if level == domain.ClockLevel.OK:
            await self._resolve(key, f"offset {offset} ms")
            await self._resolve(key + ".halt", f"offset {offset} ms")
            await self._undegrade(domain.DEGRADE_REASON_CLOCK, f"clock offset back to {offset} ms")
            return
        await self._alert(key, AlertSeverity.P2, f"clock offset {offset} ms against the venue (> 1 s)")
        if level == domain.ClockLevel.HALT:
            await self._alert(key + ".halt", AlertSeverity.P0, f"clock offset {offset} ms (> 5 s): trading halted")
            await self._degrade(domain.DEGRADE_REASON_CLOCK, f"{offset} ms")
            await self._halt_trading(f"market-data: clock offset {offset} ms against the venue (FM-D3)")
        else:
            await self._undegrade(domain.DEGRADE_REASON_CLOCK, f"clock offset {offset} ms")

    async def _halt_trading(self, reason: str) -> None:
        """Ask risk to HALT (`svc.risk.halt`, the same path an operator's halt takes; persisted)."""
        if self._request is None:
            return
        payload = msgspec.json.encode({"operator": subjects.MARKET_DATA, "reason": reason})
        try:
            reply = await self._request(subjects.service_query(subjects.RISK, "halt"), payload)
        except Exception as exc:  # noqa: BLE001 - risk may be down; the degraded link still stales the symbols
            self.log.error("halt_request_failed", error=f"{type(exc).__name__}: {exc}", reason=reason)
            return
        self.log.warning("trading_halt_requested", reason=reason, reply=reply[:200].decode(errors="replace"))

    async def monitor_forever(self, interval_s: float = MONITOR_INTERVAL_S) -> None:
        """Timers: the clean window, budget/breaker state changes, and quiet transient alerts."""
        while not self._closed:
            await self._sleep(interval_s)
            await self.monitor_tick()

    async def monitor_tick(self) -> None:
        if self._connected:
            await self._refresh_link("clean window passed")
        await self._after_rest()
        if self.breaker is not None:
            _, transition = self.breaker.allow()
            await self._on_breaker(transition)
        now = self._clock_ns()
        for key, last in list(self._transient_alerts.items()):
            if now - last >= TRANSIENT_ALERT_QUIET_S * _NS:
                await self._resolve(key, f"no recurrence for {TRANSIENT_ALERT_QUIET_S:g}s")

    async def close(self) -> None:
        """Stop the stream loop, the polls, snapshot fetches and background work."""
        await self.flush(2.0)
        self._closed = True
        self._outbox_room.set()
        tasks = [*self._fetching.values(), *self._background, *([self._flusher] if self._flusher else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fetching.clear()
        self._background.clear()

"""The market WebSocket of market-data: connect, hand every frame to the service, and on any loss
reconnect on SPEC FM-N1's schedule (`libs.reconnect`), rotating through the configured endpoints
(FM-N3/N4) and cutting a wait short when the venue's REST answers again (`return_probe`). A
(re)connection restarts every book and trade sequence; a reconnect re-syncs mark and OI (USD-M).

Binance USD-M routes streams by path (`libs.binance.routes`) and allows at most 1024 streams on a
connection, so there is one `MarketStream` per route and, past the limit, several per route: each
names its symbols, restarts the books of the depth it carries (and only those) when it connects,
and reports itself in `Links.down` while it is down. Each has its own silence detection, reconnect
schedule and make-before-break replacement.

A venue that bans the IP (418) refuses WebSocket connects too: no connect is attempted while the
request budget says a ban or a 429's Retry-After is running (FM-N2), and a refusal at the upgrade
with a Retry-After starts one (shared with the other processes like a REST 418).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from libs.binance.endpoints import EndpointRotation
from libs.binance.stream import StreamClosed, StreamFrame
from libs.ratelimit import RateBudget
from libs.reconnect import DEGRADED_AFTER_ATTEMPTS, Uniform, reconnect_delay_s
from proto import subjects
from proto.enums import AlertSeverity
from services.market_data.alerts import Alerts
from services.market_data.books import Books
from services.market_data.frames import MarketKind
from services.market_data.handover import Handover, StreamPort, StreamPositions
from services.market_data.link import Links
from services.market_data.rest import VenueRest
from services.market_data.return_probe import RETURN_PROBE_TIMEOUT_S, ReturnProbe
from services.market_data.runtime import Runtime
from services.market_data.series import Series

_NS = 1_000_000_000
DEFAULT_MAX_CONNECTION_AGE_S = 23 * 3600.0
"""Binance closes a stream connection after 24 h: replace it an hour before."""
HANDOVER_JOIN_TIMEOUT_S = 30.0
"""A new connection that has not joined the old one's streams by then is given up."""
HANDOVER_RETRY_S = 60.0
"""After a failed replacement, the next attempt (the old connection keeps serving meanwhile)."""


class MarketStream:
    """The stream loop and what a connection, a disconnection or a failed attempt changes.

    Args:
        runtime: the service's shared context.
        venue: venue name (alert keys).
        market: spot has no mark price or open interest to re-sync after a reconnect.
        open_stream: builds a fresh (unconnected) combined stream on a WebSocket base URL, for
            every connection attempt.
        ws_urls: the WebSocket base URLs to rotate through (main first, then alternates).
        on_frame: handles one frame (the service's frame table).
        links: connection state.
        alerts: alerts.
        rest: the venue REST API (the return probe).
        books: restarted on every connection.
        series: trade sequences restarted, mark and OI re-synced after a reconnect.
        uniform: the jitter source of the reconnect schedule; None: `random.uniform`.
        max_connection_age_s: a connection this old is replaced make-before-break (the venue
            closes it at 24 h); 0: never.
        route: the connection's name in logs, alerts and the link's reasons: its route
            (`market`), numbered when a route needs several connections (`public-2`); empty for
            the first.
        carries_books: this connection carries the depth of `book_symbols` (None: every symbol):
            it restarts their books when it connects.
        symbols: the symbols its streams name (None: every symbol): their trade sequences start
            over and their mark and open interest are re-synced when it reconnects.
        book_symbols: the symbols whose depth it carries when `carries_books` (None: every symbol).
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        venue: str,
        market: MarketKind,
        open_stream: Callable[[str], StreamPort],
        ws_urls: Sequence[str],
        on_frame: Callable[[StreamFrame], Awaitable[None]],
        links: Links,
        alerts: Alerts,
        rest: VenueRest,
        books: Books,
        series: Series,
        uniform: Uniform | None = None,
        max_connection_age_s: float = DEFAULT_MAX_CONNECTION_AGE_S,
        route: str = "",
        carries_books: bool = True,
        symbols: tuple[str, ...] | None = None,
        book_symbols: tuple[str, ...] | None = None,
    ) -> None:
        self.route = route
        every = tuple(books.syncs)
        self.symbols = every if symbols is None else symbols
        self.book_symbols = (every if book_symbols is None else book_symbols) if carries_books else ()
        self._connections = 0
        self._alert_suffix = f".{route}" if route else ""
        links.register(route, self.symbols, self.book_symbols)  # down until its first connection
        self._runtime = runtime
        self._venue = venue
        self._market = market
        self.open_stream = open_stream
        self._on_frame = on_frame
        self._links = links
        self._alerts = alerts
        self._rest = rest
        self._books = books
        self._series = series
        self.uniform: Uniform = uniform or random.uniform
        self.ws_endpoints = EndpointRotation(list(ws_urls) or [""])
        self.return_probe = ReturnProbe()
        self.early_reconnects = 0
        """Reconnect waits cut short because the venue answered a REST probe (heartbeat details)."""
        self.max_connection_age_ns = int(max_connection_age_s * _NS)
        self.handovers = 0
        """Connections replaced make-before-break so far (heartbeat details)."""

    async def run_forever(self) -> None:
        """Connect, consume, and on any loss reconnect on SPEC FM-N1's schedule, forever."""
        runtime = self._runtime
        attempt = 0
        # `close()` stops the loop by flag too: a cancellation can be swallowed by a library's
        # wait_for (Python 3.11) and must not leave a zombie link publishing after shutdown.
        while not runtime.closed:
            await self._wait_out_ban()
            if runtime.closed:
                return
            url = self.ws_endpoints.current
            stream = self.open_stream(url)
            try:
                await stream.connect()
            except StreamClosed as exc:
                self._on_refused(exc)
                all_failed = self.ws_endpoints.on_failure()
                await self._on_attempt_failed(attempt, str(exc), url, all_failed)
                attempt += 1
                await self._wait_before_reconnect(reconnect_delay_s(attempt, self.uniform))
                continue
            self.ws_endpoints.on_success()
            attempt = 0
            try:
                await self._on_connected(url)
                reason = await self._consume(stream)
            except StreamClosed as exc:
                reason = str(exc)
            await self._on_disconnected(reason)
            await self._wait_before_reconnect(reconnect_delay_s(attempt, self.uniform))

    async def _consume(self, stream: StreamPort) -> str:
        """Hand every frame of a connection on until it ends; returns why it ended.

        A connection older than `max_connection_age_s` (the venue closes it at 24 h) is replaced
        make-before-break (`handover`): the new one is opened beside it and takes over only once it
        joins what this one delivered, so the books go on without a resync, a STALE or a gap.

        Raises:
            StreamClosed: the connection in use died.
        """
        runtime = self._runtime
        current = stream
        frames: AsyncIterator[StreamFrame] = aiter(stream)
        delivered = StreamPositions()
        opened_ns = runtime.clock()
        pending: Handover | None = None
        pending_since_ns = 0
        serving: Handover | None = None
        try:
            while not runtime.closed:
                try:
                    frame = await anext(frames)
                except StopAsyncIteration:
                    return "stream ended"
                delivered.delivered(frame)
                await self._on_frame(frame)
                now = runtime.clock()
                if pending is None:
                    aged = self.max_connection_age_ns and now - opened_ns >= self.max_connection_age_ns
                    # Not while the venue refuses connects (a ban): the old one keeps serving.
                    if aged and (self._budget is None or self._budget.refused_for_s() <= 0):
                        pending, pending_since_ns = Handover(self.open_stream(self.ws_endpoints.current)), now
                        pending.start()
                        runtime.log.info(
                            "market_ws_replacing",
                            age_s=(now - opened_ns) // _NS,
                            action_taken="open a new connection beside it",
                        )
                elif pending.failed is not None or now - pending_since_ns > HANDOVER_JOIN_TIMEOUT_S * _NS:
                    runtime.log.warning(
                        "market_ws_replacement_failed",
                        reason=(pending.failed or f"did not join within {HANDOVER_JOIN_TIMEOUT_S:g}s")[:300],
                        action_taken=f"keep the connection, try again in {HANDOVER_RETRY_S:g}s",
                    )
                    await pending.abort()
                    pending = None
                    opened_ns = now - self.max_connection_age_ns + int(HANDOVER_RETRY_S * _NS)
                elif pending.ready(delivered):
                    old, old_frames = current, frames
                    if serving is not None:
                        await serving.abort()
                    serving, pending = pending, None
                    current, frames = serving.stream, serving.frames(delivered)
                    # Closed beside the new one: a close handshake waits for the venue's answer,
                    # and the new connection's frames must not wait with it.
                    runtime.spawn(_close_quietly(old, old_frames), "market-ws-close-replaced")
                    opened_ns = now
                    self.handovers += 1
                    runtime.log.info(
                        "market_ws_replaced", handovers=self.handovers, action_taken="old connection closed"
                    )
            return "service closing"
        finally:
            if pending is not None:
                await pending.abort()
            if serving is not None:
                await serving.abort()
            await current.close()

    @property
    def _budget(self) -> RateBudget | None:
        return self._rest.budget

    async def _wait_out_ban(self) -> None:
        """No connect while the venue refuses this IP (a 418 ban, or a 429's Retry-After, seen by
        any process): a connect then would be refused and make a ban longer (FM-N2)."""
        runtime = self._runtime
        budget = self._budget
        logged = False
        while budget is not None and not runtime.closed:
            wait_s = budget.refused_for_s()
            if wait_s <= 0:
                return
            if not logged:
                logged = True
                runtime.log.warning(
                    "market_ws_waiting_out_ban",
                    route=self.route,
                    wait_s=round(wait_s, 3),
                    budget=budget.state.value,
                    action_taken="no connect attempt until the venue's Retry-After has passed",
                )
            await runtime.sleep(wait_s)

    def _on_refused(self, exc: StreamClosed) -> None:
        """A connect refused at the upgrade: a 418 bans, a 429 backs off, for its Retry-After (FM-N2)."""
        budget = self._budget
        if budget is None or exc.status not in (418, 429):
            return
        if exc.status == 418:
            budget.on_banned(exc.retry_after_s)
        else:
            budget.on_rate_limited(exc.retry_after_s)
        # The budget's transition (alert, REST link state) is published now, not at the next REST call.
        self._runtime.spawn(self._rest.after_rest(), "market-ws-ban-published")

    async def _wait_before_reconnect(self, delay_s: float) -> None:
        """Wait `delay_s` for the next scheduled attempt, or less when the venue is back.

        The SPEC schedule (0, 1, 2, 4, 8 s, ...) alone would notice a venue's return only at the
        next attempt, up to 8 s (later: 60 s) after it; FM-N1's target is clean window + 2 s from
        the venue becoming reachable. So the wait probes the venue's REST ping (weight 1, lowest
        priority, through the budget and the breaker) every `ReturnProbe.interval_s` and ends
        early when it answers, at most `ReturnProbe.max_early` times per disconnected period.
        """
        runtime = self._runtime
        deadline = runtime.clock() + int(delay_s * _NS)
        while not runtime.closed:
            remaining = (deadline - runtime.clock()) / _NS
            if remaining <= 0:
                return
            step = self.return_probe.next_probe_in(remaining)
            if step is None:
                await runtime.sleep(remaining)
                return
            await runtime.sleep(step)
            if runtime.closed or deadline - runtime.clock() <= 0:
                return
            if await self._rest.probe(min(RETURN_PROBE_TIMEOUT_S, (deadline - runtime.clock()) / _NS)):
                self.return_probe.on_answer()
                self.early_reconnects += 1
                runtime.log.info(
                    "venue_answered_probe",
                    early_reconnect=self.return_probe.early_reconnects,
                    skipped_wait_s=round(max(0.0, (deadline - runtime.clock()) / _NS), 3),
                    action_taken="reconnect now",
                )
                return

    async def _on_attempt_failed(self, attempt: int, reason: str, url: str, all_failed: bool) -> None:
        links = self._links
        failed = attempt + 1
        links.down[self.route] = failed
        self._runtime.log.warning(
            "market_ws_connect_failed", attempt=failed, endpoint=url, route=self.route, reason=reason[:300]
        )
        if failed >= DEGRADED_AFTER_ATTEMPTS:
            await self._alerts.raise_alert(
                f"md.reconnect_failing.{self._venue}{self._alert_suffix}",
                AlertSeverity.P1,
                f"market stream{self._route_text()}: {failed} reconnect attempts failed",
                reason=reason[:300],
            )
        if all_failed:
            await self._alerts.raise_alert(
                f"md.ws_endpoints_failed.{self._venue}{self._alert_suffix}",
                AlertSeverity.P1,
                "market stream: every configured WebSocket endpoint failed",
                endpoints=list(self.ws_endpoints.urls),
                reason=reason[:300],
            )
        await links.refresh(f"{self._route_text(': ').lstrip()}{failed} failed attempts: {reason}")

    def _route_text(self, after: str = "") -> str:
        return f" ({self.route}){after}" if self.route else ""

    async def _on_connected(self, url: str) -> None:
        links = self._links
        self._connections += 1
        if self._connections > 1 and self._runtime.metrics is not None:
            self._runtime.metrics.reconnected(subjects.MARKET_WS_LINK)
        links.connection_up(self.route)
        self.return_probe.on_connected()
        reconnect = self._connections > 1
        links.clean_window.start(self._runtime.clock())
        await self._alerts.resolve(f"md.reconnect_failing.{self._venue}{self._alert_suffix}", "connected")
        await self._alerts.resolve(f"md.ws_endpoints_failed.{self._venue}{self._alert_suffix}", "connected")
        await links.refresh(
            self._route_text(": ").lstrip() + ("reconnected: clean window" if reconnect else "connected: clean window")
        )
        self._runtime.log.info("market_ws_connected", endpoint=url, route=self.route, connections=self._connections)
        # Whatever happened on this connection while we were away is unknown: its books and trade
        # sequences start over (FM-N1), and its mark/funding/OI are re-synced over REST and compared.
        self._series.reset_sequences(self.symbols)
        if self.book_symbols:
            await self._books.restart("reconnected" if reconnect else "connected", self.book_symbols)
        if reconnect and self._market == MarketKind.USDM:
            # Spot has no mark price, funding or open interest to re-sync and compare.
            self._runtime.spawn(self._series.resync_market_state(self.symbols), "post-reconnect-resync")

    async def _on_disconnected(self, reason: str) -> None:
        self._links.down[self.route] = 0
        if self.book_symbols:
            self._books.cancel_fetches(self.book_symbols)
        await self._links.refresh(self._route_text(": ").lstrip() + reason)

    @property
    def carries_books(self) -> bool:
        """This connection carries some symbols' depth."""
        return bool(self.book_symbols)

    def details(self) -> dict[str, Any]:
        """Heartbeat details: the endpoint in use and the early reconnects so far."""
        return {
            "ws_endpoint": self.ws_endpoints.current,
            "early_reconnects": self.early_reconnects,
            "ws_handovers": self.handovers,
        }


def symbols_of(names: Sequence[str], channel: str | None = None) -> tuple[str, ...]:
    """The upper-case symbols `names` name (of `channel` only, when given), in order of first mention."""
    found: dict[str, None] = {}
    for name in names:
        prefix, _, rest = name.partition("@")
        if channel is None or rest.split("@", 1)[0] == channel:
            found.setdefault(prefix.upper(), None)
    return tuple(found)


async def _close_quietly(stream: StreamPort, frames: AsyncIterator[StreamFrame]) -> None:
    """Close a replaced connection; how its frames end no longer matters."""
    with contextlib.suppress(StreamClosed):
        await frames.aclose()  # type: ignore[attr-defined]
    await stream.close()

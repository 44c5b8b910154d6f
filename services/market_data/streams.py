"""The market WebSocket of market-data: connect, hand every frame to the service, and on any loss
reconnect on SPEC FM-N1's schedule (`libs.reconnect`), rotating through the configured endpoints
(FM-N3/N4) and cutting a wait short when the venue's REST answers again (`return_probe`). A
(re)connection restarts every book and trade sequence; a reconnect re-syncs mark and OI (USD-M).

Binance USD-M routes streams by path (`libs.binance.routes`), so there is one `MarketStream` per
route: the one carrying the depth (`carries_books`) owns the books and the link's connection
counters; another (`market`: trades, mark price, liquidations) reports itself in
`Links.routes_down` while it is down. Each has its own silence detection, reconnect schedule and
make-before-break replacement.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from libs.binance.endpoints import EndpointRotation
from libs.binance.stream import StreamClosed, StreamFrame
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
        route: the route this connection serves (`public`, `market`; empty: un-routed), in logs,
            alerts and the link's reasons.
        carries_books: this connection carries the depth: it restarts the books and owns the
            link's connection counters; otherwise it is one of `Links.routes_down` while down.
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
    ) -> None:
        self.route = route
        self.carries_books = carries_books
        self._connections = 0
        self._alert_suffix = "" if carries_books else f".{route}"
        if not carries_books:
            links.routes_down[route] = 0  # down until its first connection
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
            url = self.ws_endpoints.current
            stream = self.open_stream(url)
            try:
                await stream.connect()
            except StreamClosed as exc:
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
                    if self.max_connection_age_ns and now - opened_ns >= self.max_connection_age_ns:
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
        if self.carries_books:
            links.failed_attempts = failed
        else:
            links.routes_down[self.route] = failed
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
        return f" ({self.route}){after}" if self.route else after

    async def _on_connected(self, url: str) -> None:
        links = self._links
        self._connections += 1
        if self._connections > 1 and self._runtime.metrics is not None:
            self._runtime.metrics.reconnected(subjects.MARKET_WS_LINK)
        if self.carries_books:
            links.generation += 1
            links.connected = True
            links.failed_attempts = 0
        else:
            links.routes_down.pop(self.route, None)
        self.return_probe.on_connected()
        reconnect = self._connections > 1
        links.clean_window.start(self._runtime.clock())
        await self._alerts.resolve(f"md.reconnect_failing.{self._venue}{self._alert_suffix}", "connected")
        await self._alerts.resolve(f"md.ws_endpoints_failed.{self._venue}{self._alert_suffix}", "connected")
        await links.refresh(
            self._route_text(": ").lstrip() + ("reconnected: clean window" if reconnect else "connected: clean window")
        )
        self._runtime.log.info("market_ws_connected", endpoint=url, route=self.route, generation=links.generation)
        # Whatever happened while we were away is unknown: every book and trade sequence starts
        # over (FM-N1), and mark/funding/OI are re-synced over REST and compared.
        self._series.reset_sequences()
        if self.carries_books:
            await self._books.restart("reconnected" if reconnect else "connected")
        if reconnect and self._market == MarketKind.USDM:
            # Spot has no mark price, funding or open interest to re-sync and compare.
            self._runtime.spawn(self._series.resync_market_state(), "post-reconnect-resync")

    async def _on_disconnected(self, reason: str) -> None:
        if self.carries_books:
            self._links.connected = False
            self._books.cancel_fetches()
        else:
            self._links.routes_down[self.route] = 0
        await self._links.refresh(self._route_text(": ").lstrip() + reason)

    def details(self) -> dict[str, Any]:
        """Heartbeat details: the endpoint in use and the early reconnects so far."""
        return {
            "ws_endpoint": self.ws_endpoints.current,
            "early_reconnects": self.early_reconnects,
            "ws_handovers": self.handovers,
        }


async def _close_quietly(stream: StreamPort, frames: AsyncIterator[StreamFrame]) -> None:
    """Close a replaced connection; how its frames end no longer matters."""
    with contextlib.suppress(StreamClosed):
        await frames.aclose()  # type: ignore[attr-defined]
    await stream.close()

"""The market WebSocket of market-data: connect, hand every frame to the service, and on any loss
reconnect on SPEC FM-N1's schedule (`libs.reconnect`), rotating through the configured endpoints
(FM-N3/N4) and cutting a wait short when the venue's REST answers again (`return_probe`). A
(re)connection restarts every book and trade sequence; a reconnect re-syncs mark and OI (USD-M).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from libs.binance.endpoints import EndpointRotation
from libs.binance.stream import StreamClosed, StreamFrame
from libs.reconnect import DEGRADED_AFTER_ATTEMPTS, Uniform, reconnect_delay_s
from proto.enums import AlertSeverity
from services.market_data.alerts import Alerts
from services.market_data.books import Books
from services.market_data.frames import MarketKind
from services.market_data.link import Links
from services.market_data.rest import VenueRest
from services.market_data.return_probe import RETURN_PROBE_TIMEOUT_S, ReturnProbe
from services.market_data.runtime import Runtime
from services.market_data.series import Series

_NS = 1_000_000_000


class StreamPort(Protocol):
    """A combined market stream (`libs.binance.stream.CombinedStream`)."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    def __aiter__(self) -> Any: ...


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
    ) -> None:
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
            reason = "stream ended"
            try:
                await self._on_connected(url)
                async for frame in stream:
                    if runtime.closed:
                        break
                    await self._on_frame(frame)
            except StreamClosed as exc:
                reason = str(exc)
            finally:
                await stream.close()
            await self._on_disconnected(reason)
            await self._wait_before_reconnect(reconnect_delay_s(attempt, self.uniform))

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
        links.failed_attempts = attempt + 1
        self._runtime.log.warning("market_ws_connect_failed", attempt=attempt + 1, endpoint=url, reason=reason[:300])
        if links.failed_attempts >= DEGRADED_AFTER_ATTEMPTS:
            await self._alerts.raise_alert(
                f"md.reconnect_failing.{self._venue}",
                AlertSeverity.P1,
                f"market stream: {links.failed_attempts} reconnect attempts failed",
                reason=reason[:300],
            )
        if all_failed:
            await self._alerts.raise_alert(
                f"md.ws_endpoints_failed.{self._venue}",
                AlertSeverity.P1,
                "market stream: every configured WebSocket endpoint failed",
                endpoints=list(self.ws_endpoints.urls),
                reason=reason[:300],
            )
        await links.refresh(f"{links.failed_attempts} failed attempts: {reason}")

    async def _on_connected(self, url: str) -> None:
        links = self._links
        links.generation += 1
        links.connected = True
        links.failed_attempts = 0
        self.return_probe.on_connected()
        reconnect = links.generation > 1
        links.clean_window.start(self._runtime.clock())
        await self._alerts.resolve(f"md.reconnect_failing.{self._venue}", "connected")
        await self._alerts.resolve(f"md.ws_endpoints_failed.{self._venue}", "connected")
        await links.refresh("reconnected: clean window" if reconnect else "connected: clean window")
        self._runtime.log.info("market_ws_connected", endpoint=url, generation=links.generation)
        # Whatever happened while we were away is unknown: every book and trade sequence starts
        # over (FM-N1), and mark/funding/OI are re-synced over REST and compared.
        self._series.reset_sequences()
        await self._books.restart("reconnected" if reconnect else "connected")
        if reconnect and self._market == MarketKind.USDM:
            # Spot has no mark price, funding or open interest to re-sync and compare.
            self._runtime.spawn(self._series.resync_market_state(), "post-reconnect-resync")

    async def _on_disconnected(self, reason: str) -> None:
        self._links.connected = False
        self._books.cancel_fetches()
        await self._links.refresh(reason)

    def details(self) -> dict[str, Any]:
        """Heartbeat details: the endpoint in use and the early reconnects so far."""
        return {"ws_endpoint": self.ws_endpoints.current, "early_reconnects": self.early_reconnects}

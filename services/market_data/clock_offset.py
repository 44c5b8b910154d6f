"""FM-D3 clock offset: the local clock against the venue's (`GET /fapi/v1/time`); > 1 s raises an
alert, > 5 s halts trading (through risk) and degrades the stream link. `ClockOffsetMonitor` is the
pure rule, `ClockOffsetCheck` samples the venue and acts on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum

import msgspec

from proto import subjects
from proto.enums import AlertSeverity
from proto.replies import TradingControlRequest
from services.market_data.alerts import Alerts
from services.market_data.link import DEGRADE_REASON_CLOCK, Links
from services.market_data.rest import VENUE_CALL_ERRORS, VenueRest
from services.market_data.runtime import Runtime

Request = Callable[[str, bytes], Awaitable[bytes]]

_MS = 1_000_000


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


class ClockOffsetCheck:
    """Samples the venue's clock and acts on the offset's level.

    Args:
        runtime: the service's shared context.
        venue: venue name (alert keys).
        rest: the venue REST API (server time).
        alerts: alerts.
        links: the stream link is degraded while the offset is > 5 s.
        request: NATS request/reply (for `svc.risk.halt` on an offset > 5 s); None: no halt.
    """

    def __init__(
        self, runtime: Runtime, *, venue: str, rest: VenueRest, alerts: Alerts, links: Links, request: Request | None
    ) -> None:
        self._runtime = runtime
        self._venue = venue
        self._rest = rest
        self._alerts = alerts
        self._links = links
        self._request = request
        self.monitor = ClockOffsetMonitor()

    async def check_forever(self, interval_s: float) -> None:
        """FM-D3: the local clock against the venue's every `interval_s`."""
        while not self._runtime.closed:
            await self.check()
            await self._runtime.sleep(interval_s)

    async def check(self) -> None:
        """One clock-offset sample: > 1 s alert, > 5 s trading HALTED (through risk) and the link DEGRADED."""
        runtime = self._runtime
        sent = runtime.clock()
        try:
            server_ms = await self._rest.call("server_time", self._rest.api.server_time_ms)
        except (*VENUE_CALL_ERRORS, TypeError, KeyError) as exc:
            runtime.log.info("clock_check_failed", error=str(exc)[:200])
            return
        level = self.monitor.on_sample(sent, runtime.clock(), int(server_ms))
        if level is None:
            return
        offset = self.monitor.offset_ms
        key = f"md.clock_offset.{self._venue}"
        runtime.log.warning("clock_offset_changed", level=level.value, offset_ms=offset)
        if level == ClockLevel.OK:
            await self._alerts.resolve(key, f"offset {offset} ms")
            await self._alerts.resolve(key + ".halt", f"offset {offset} ms")
            await self._links.undegrade(DEGRADE_REASON_CLOCK, f"clock offset back to {offset} ms")
            return
        await self._alerts.raise_alert(key, AlertSeverity.P2, f"clock offset {offset} ms against the venue (> 1 s)")
        if level == ClockLevel.HALT:
            await self._alerts.raise_alert(
                key + ".halt", AlertSeverity.P0, f"clock offset {offset} ms (> 5 s): trading halted"
            )
            await self._links.degrade(DEGRADE_REASON_CLOCK, f"{offset} ms")
            await self._halt_trading(f"market-data: clock offset {offset} ms against the venue (FM-D3)")
        else:
            await self._links.undegrade(DEGRADE_REASON_CLOCK, f"clock offset {offset} ms")

    async def _halt_trading(self, reason: str) -> None:
        """Ask risk to HALT (`svc.risk.halt`, the same path an operator's halt takes; persisted)."""
        if self._request is None:
            return
        payload = msgspec.json.encode(TradingControlRequest(operator=subjects.MARKET_DATA, reason=reason))
        try:
            reply = await self._request(subjects.SVC_RISK_HALT, payload)
        except Exception as exc:  # noqa: BLE001 - risk may be down; the degraded link still stales the symbols
            self._runtime.log.error("halt_request_failed", error=f"{type(exc).__name__}: {exc}", reason=reason)
            return
        self._runtime.log.warning("trading_halt_requested", reason=reason, reply=reply[:200].decode(errors="replace"))

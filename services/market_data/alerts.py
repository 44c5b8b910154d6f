"""Alerts, data-quality flags and KV records of market-data: each alert raised once while its
condition holds (SPEC §9), one-off alerts resolved after a quiet minute, flags counted and published
at most once per `FLAG_REPEAT_S` per kind, KV puts that never stop the service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from proto import subjects
from proto.enums import AlertSeverity
from proto.kv import encode_value
from proto.messages import AlertRaised, AlertResolved, MarketDataFlagged
from services.market_data.publishing import Publisher
from services.market_data.runtime import Runtime

KvPut = Callable[[str, bytes], Awaitable[int]]

FLAG_REPEAT_S = 5.0
"""The same (symbol, check, verdict) flag is published at most once per this many seconds."""
TRANSIENT_ALERT_QUIET_S = 60.0
"""An alert about a one-off event resolves after this long without a recurrence."""
_NS = 1_000_000_000


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


class Alerts:
    """Raises and resolves alerts, publishes flags, and puts KV records.

    Args:
        runtime: the service's shared context.
        venue: venue name on the flags.
        publisher: where the alert and flag events go.
        kv_put: `kv_put(key, value)` into the state bucket.
    """

    def __init__(self, runtime: Runtime, venue: str, publisher: Publisher, kv_put: KvPut) -> None:
        self._runtime = runtime
        self._venue = venue
        self._publisher = publisher
        self._kv_put = kv_put
        self.book = AlertBook()
        self.flags: dict[str, int] = {}
        """Count of every `check:verdict` (and a few named events) since start: heartbeat details."""
        self._flag_sent: dict[tuple[str, str, str], int] = {}
        self._transient: dict[str, int] = {}

    def count(self, name: str) -> None:
        """Count an event in `flags` without publishing anything."""
        self.flags[name] = self.flags.get(name, 0) + 1

    async def kv(self, key: str, value: msgspec.Struct) -> None:
        """Put a `proto.kv` value; a failure is logged only (the event published next still tells the others)."""
        try:
            await self._kv_put(key, encode_value(value))
        except Exception as exc:  # noqa: BLE001 - the event published next still tells the others
            self._runtime.log.warning("kv_put_failed", key=key, error=str(exc)[:200])

    async def raise_alert(
        self, key: str, severity: AlertSeverity, title: str, *, transient: bool = False, **details: Any
    ) -> None:
        """Raise an alert once while its condition holds; `transient` ones resolve after a quiet minute."""
        if transient:
            self._transient[key] = self._runtime.clock()
        if not self.book.raise_alert(key, title):
            return
        self._runtime.log.warning("alert_raised", key=key, severity=severity.value, title=title, **details)
        await self._publisher.emit(
            [AlertRaised(key=key, severity=severity, component=subjects.MARKET_DATA, title=title, details=details)]
        )

    async def resolve(self, key: str, reason: str) -> None:
        """Resolve `key` if it is raised."""
        self._transient.pop(key, None)
        if self.book.resolve(key):
            self._runtime.log.info("alert_resolved", key=key, reason=reason)
            await self._publisher.emit([AlertResolved(key=key, component=subjects.MARKET_DATA, reason=reason)])

    async def resolve_quiet(self) -> None:
        """Resolve the one-off alerts that did not recur for `TRANSIENT_ALERT_QUIET_S`."""
        now = self._runtime.clock()
        for key, last in list(self._transient.items()):
            if now - last >= TRANSIENT_ALERT_QUIET_S * _NS:
                await self.resolve(key, f"no recurrence for {TRANSIENT_ALERT_QUIET_S:g}s")

    async def flag(self, symbol: str, check: str, verdict: str, detail: str, value: str | None = None) -> None:
        """Count a data-quality verdict; publish it (at most once per `FLAG_REPEAT_S` per kind)."""
        name = f"{check}:{verdict}"
        self.flags[name] = self.flags.get(name, 0) + 1
        now = self._runtime.clock()
        key = (symbol, check, verdict)
        if now - self._flag_sent.get(key, -(10**19)) < FLAG_REPEAT_S * _NS:
            return
        self._flag_sent[key] = now
        self._runtime.log.warning(
            "market_data_flagged", symbol=symbol, check=check, verdict=verdict, detail=detail[:200]
        )
        await self._publisher.emit(
            [
                MarketDataFlagged(
                    venue=self._venue, symbol=symbol, check=check, verdict=verdict, detail=detail[:300], value=value
                )
            ]
        )

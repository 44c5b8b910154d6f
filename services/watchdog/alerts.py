"""The alerts open at the sinks (SPEC §9): `AlertNotice` as the sinks receive it, the `AlertRouter`
that de-duplicates them, and `apply`, the one fold of `evt.alert.>` into the open alerts — called by
the live alerts consumer and by the replay of recovery alike. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from libs.runbooks import DEFAULT_RUNBOOK_BASE_URL, runbook_url
from proto.enums import AlertSeverity
from proto.envelope import Message
from proto.messages import AlertRaised, AlertResolved


def severity_rank(severity: AlertSeverity | str) -> int:
    """0 for P0 (most severe) ... 3 for P3; unknown values rank as P3."""
    try:
        return int(str(severity)[1:]) if str(severity)[:1] == "P" else 3
    except ValueError:
        return 3


@dataclass(frozen=True)
class AlertNotice:
    """An alert as the sinks receive it."""

    key: str
    severity: AlertSeverity
    component: str
    title: str
    resolved: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    ts_ns: int = 0
    runbook_url: str = ""
    """The operator's page for this alert (`libs.runbooks`)."""


MAX_OPEN_ALERTS = 1_000
"""Open alerts remembered at most: keys name orders and symbols, and an alert nobody resolves must
not grow the watchdog's memory for ever (issue 15). Beyond it the oldest open alerts are forgotten."""


class AlertRouter:
    """De-duplicates alerts for the sinks: a key is delivered when it opens, again only if its
    severity rises, and its resolution is delivered once. At most `limit` alerts stay open (the
    oldest by event time is forgotten first, the same live and replayed). An alert raised without
    a runbook gets the page its key maps to under `runbook_base_url`."""

    def __init__(self, limit: int = MAX_OPEN_ALERTS, runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL) -> None:
        self.open: dict[str, AlertNotice] = {}
        self.limit = limit
        self.runbook_base_url = runbook_base_url

    def raised(self, notice: AlertNotice) -> bool:
        """True when this raise must reach the sinks."""
        known = self.open.get(notice.key)
        if known is not None and severity_rank(notice.severity) >= severity_rank(known.severity):
            return False
        self.open[notice.key] = notice
        if len(self.open) > self.limit:
            # Down to nine tenths at once (the newest by event time, then key): one sort per many raises.
            newest = sorted(self.open.values(), key=lambda open_alert: (open_alert.ts_ns, open_alert.key))
            for forgotten in newest[: len(newest) - self.limit * 9 // 10]:
                del self.open[forgotten.key]
        return True

    def resolved(self, key: str) -> AlertNotice | None:
        """The open alert a resolution closes (to deliver), or None when it was not open."""
        return self.open.pop(key, None)


def apply(router: AlertRouter, message: Message) -> AlertNotice | None:
    """Fold one alert event into the open alerts of `router`.

    Live, the notice returned goes to the sinks; replayed at start, it is dropped (it was delivered
    before the restart). Deterministic: no clock, no I/O; the notice's time is the event's.

    Args:
        router: the open alerts (changed in place).
        message: an `AlertRaised` or `AlertResolved` (anything else changes nothing).

    Returns:
        The notice the sinks must get, or None when the event is a duplicate, a resolution of an
        alert that was not open, or not an alert event.
    """
    match message:
        case AlertRaised():
            notice = AlertNotice(
                key=message.key,
                severity=message.severity,
                component=message.component,
                title=message.title,
                details=dict(message.details),
                ts_ns=message.ts_event_ns,
                runbook_url=message.runbook_url or runbook_url(message.key, router.runbook_base_url),
            )
            return notice if router.raised(notice) else None
        case AlertResolved():
            opened = router.resolved(message.key)
            if opened is None:
                return None
            details = {**opened.details, "resolution": message.reason} if message.reason else opened.details
            return replace(opened, resolved=True, details=details, ts_ns=message.ts_event_ns)
        case _:
            return None

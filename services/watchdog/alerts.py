"""The alerts open at the sinks (SPEC §9): `AlertNotice` as the sinks receive it and the
`AlertRouter` that de-duplicates them. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proto.enums import AlertSeverity


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


class AlertRouter:
    """De-duplicates alerts for the sinks: a key is delivered when it opens, again only if its
    severity rises, and its resolution is delivered once."""

    def __init__(self) -> None:
        self.open: dict[str, AlertNotice] = {}

    def raised(self, notice: AlertNotice) -> bool:
        """True when this raise must reach the sinks."""
        known = self.open.get(notice.key)
        if known is not None and severity_rank(notice.severity) >= severity_rank(known.severity):
            return False
        self.open[notice.key] = notice
        return True

    def resolved(self, key: str) -> AlertNotice | None:
        """The open alert a resolution closes (to deliver), or None when it was not open."""
        return self.open.pop(key, None)

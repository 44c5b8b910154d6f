"""What the watchdog observes, as the rules read it: per-symbol hot state, venue links, machine
resources and latencies, with the helpers that turn a state-builder reply or heartbeat details into
observations. Plain values, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.heartbeat import ComponentView
from libs.latency import LatencyWindow as _LatencyWindow
from proto.enums import ComponentState
from proto.messages import SymbolsReply
from proto.replies import ErrorReply


@dataclass(frozen=True)
class SymbolObservation:
    """Hot state of one symbol: status, data age (None: unknown, e.g. never had data), and since
    when it has had no trustworthy data (`stale_since_ns`: its last update while VALID, None while
    VALID or never VALID; a resync's REST snapshot resets the age but not this)."""

    symbol: str
    status: str
    age_ms: int | None = None
    stale_since_ns: int | None = None


@dataclass(frozen=True)
class LinkObservation:
    """State of one venue link (`<venue>.<link>`)."""

    name: str
    state: str
    reason: str = ""
    causes: frozenset[str] = frozenset()
    """Why a connected link is DEGRADED (`LinkDegradeCause` values, `LinkStateChanged.causes`)."""


@dataclass(frozen=True)
class ResourceObservation:
    """Machine resource usage in percent (None: not measured)."""

    disk_used_pct: float | None = None
    memory_used_pct: float | None = None
    cpu_pct: float | None = None


@dataclass(frozen=True)
class LatencyObservation:
    """A latency p99 and the baseline it is compared with (milliseconds)."""

    name: str
    p99_ms: float
    baseline_ms: float


def symbols_from_reply(reply: SymbolsReply | ErrorReply) -> list[SymbolObservation]:
    """Symbols from a `svc.state-builder.symbols` reply (none from an `ErrorReply`)."""
    if isinstance(reply, ErrorReply):
        return []
    return [
        SymbolObservation(symbol, view.hot_state.value, view.age_ms, view.stale_since_ns)
        for symbol, view in reply.symbols.items()
    ]


def latencies_from_views(views: dict[str, ComponentView]) -> list[LatencyObservation]:
    """Latencies components report in their heartbeat details (`latency_p99_ms`, `latency_baseline_ms`)."""
    result = []
    for name, view in views.items():
        p99, baseline = view.details.get("latency_p99_ms"), view.details.get("latency_baseline_ms")
        if isinstance(p99, int | float) and isinstance(baseline, int | float) and view.state != ComponentState.DOWN:
            result.append(LatencyObservation(name, float(p99), float(baseline)))
    return result


class LatencyWindow(_LatencyWindow):
    """`libs.latency.LatencyWindow` that reads as a `LatencyObservation`."""

    def observation(self, name: str) -> LatencyObservation | None:
        """The current reading, once a baseline exists."""
        p99 = self.p99()
        if p99 is None or self.baseline_ms is None:
            return None
        return LatencyObservation(name, p99, self.baseline_ms)

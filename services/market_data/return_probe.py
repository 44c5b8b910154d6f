"""FM-N1 return probe: while a WebSocket reconnect waits on its schedule, when to probe the venue's
REST and whether an answer may cut the wait short. Pure; the stream loop (`streams`) sends the pings.
"""

from __future__ import annotations

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

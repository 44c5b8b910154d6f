"""Time as a parameter: the one `Clock` type, the real clocks, and a `ManualClock` for tests and replays.

Domain code never reads the time itself (no `time.time()` in a domain module): it is handed a `Clock`,
a zero-argument callable returning integer nanoseconds. Services pass `wall_clock` (UTC epoch ns, for
anything stored or shown) or `monotonic_clock` (for durations and deadlines); tests and backtests pass a
`ManualClock` they move by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]
"""Returns the current time in integer nanoseconds."""

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000

wall_clock: Clock = time.time_ns
"""UTC epoch nanoseconds: the time stamped on messages and rows."""

monotonic_clock: Clock = time.monotonic_ns
"""Nanoseconds from an arbitrary origin that never goes back: for durations and deadlines."""


class ManualClock:
    """A clock that stands still until moved: deterministic tests, replays and backtests.

    Args:
        now: The starting time in nanoseconds.
    """

    def __init__(self, now: int = 0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move forward by `seconds` (fractions allowed)."""
        self.advance_ns(round(seconds * NS_PER_S))

    def advance_ms(self, milliseconds: int) -> None:
        """Move forward by whole milliseconds."""
        self.advance_ns(milliseconds * NS_PER_MS)

    def advance_ns(self, nanoseconds: int) -> None:
        """Move forward by `nanoseconds`; a clock never goes back.

        Raises:
            ValueError: `nanoseconds` is negative.
        """
        if nanoseconds < 0:
            raise ValueError(f"a clock does not go back (asked to move by {nanoseconds} ns)")
        self.now += nanoseconds

    def set(self, now: int) -> None:
        """Jump to `now` (ns), which may not be earlier than the current time.

        Raises:
            ValueError: `now` is earlier than the current time.
        """
        self.advance_ns(now - self.now)

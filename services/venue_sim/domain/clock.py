"""Clocks: the wall clock is injected; the market clock can be paused and sped up."""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], int]
"""Returns the current time in integer nanoseconds (UTC epoch)."""


class MarketClock:
    """Elapsed market time in ns that stops while paused (orders keep working meanwhile)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._accumulated = 0
        self._running_since: int | None = clock()

    @property
    def paused(self) -> bool:
        """True while the market is frozen."""
        return self._running_since is None

    def elapsed_ns(self) -> int:
        """Market time elapsed since start, excluding pauses."""
        if self._running_since is None:
            return self._accumulated
        return self._accumulated + self._clock() - self._running_since

    def pause(self) -> None:
        """Freeze the market clock (idempotent)."""
        if self._running_since is not None:
            self._accumulated += self._clock() - self._running_since
            self._running_since = None

    def resume(self) -> None:
        """Let the market clock run again (idempotent)."""
        if self._running_since is None:
            self._running_since = self._clock()

"""The market clock: elapsed market time that can be paused, read from an injected `Clock`."""

from __future__ import annotations

from libs.clock import Clock


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

"""Rolling latency p99 against a baseline (SPEC FM-N5: p99 latency > 2x baseline ->
REDUCED_FUNCTIONALITY). A component measures its own latency with a `LatencyWindow` and reports
`heartbeat_details()` in its heartbeat; the watchdog's latency rule compares the two."""

from __future__ import annotations

import math
from collections import deque


class LatencyWindow:
    """Rolling p99 of the last `size` samples (ms); the baseline is the p99 of the first full
    window (the system as it ran when it started), unless one is given."""

    def __init__(self, size: int = 60, baseline_ms: float | None = None, minimum: int = 1) -> None:
        if size < 1 or not 1 <= minimum <= size:
            raise ValueError(f"need 1 <= minimum <= size, not size {size}, minimum {minimum}")
        self._samples: deque[float] = deque(maxlen=size)
        self._size = size
        self._minimum = minimum
        self.baseline_ms = baseline_ms

    def add(self, sample_ms: float) -> None:
        self._samples.append(sample_ms)
        if self.baseline_ms is None and len(self._samples) == self._size:
            self.baseline_ms = self.p99()

    def p99(self) -> float | None:
        """Nearest-rank p99 of the samples held; None with fewer than `minimum`."""
        if len(self._samples) < self._minimum:
            return None
        ordered = sorted(self._samples)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]

    def heartbeat_details(self) -> dict[str, float]:
        """`latency_p99_ms` and `latency_baseline_ms` once a baseline exists (empty before)."""
        p99 = self.p99()
        if p99 is None or self.baseline_ms is None:
            return {}
        return {"latency_p99_ms": round(p99, 3), "latency_baseline_ms": round(self.baseline_ms, 3)}

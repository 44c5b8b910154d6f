"""The FM-N1 reconnect schedule, one for every link that reconnects (market streams, user stream).

Delays before attempt 0, 1, 2, ...: 0, 1, 2, 4, 8 s, then `min(2^n, 60)` s plus jitter `U(0, delay/2)`,
forever; after `DEGRADED_AFTER_ATTEMPTS` failed attempts the link is DEGRADED. The jitter source is a
parameter so that tests and replays are deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

Uniform = Callable[[float, float], float]
"""`uniform(a, b)`: a random float in [a, b] (`random.uniform` in production)."""

FIXED_DELAYS_S: Sequence[float] = (0.0, 1.0, 2.0, 4.0, 8.0)
MAX_DELAY_S = 60.0
DEGRADED_AFTER_ATTEMPTS = 5


def reconnect_delay_s(attempt: int, uniform: Uniform = random.uniform) -> float:
    """Delay in seconds before reconnect attempt `attempt` (0-based), SPEC FM-N1."""
    if attempt < len(FIXED_DELAYS_S):
        return FIXED_DELAYS_S[attempt]
    base = min(2.0**attempt, MAX_DELAY_S)
    return base + uniform(0.0, base / 2)

"""The `price_shift` fault's arithmetic (pure): the whole move in ticks, the share of it due at a
time, and the progress of one shift per symbol."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from services.venue_sim.domain.faults import Fault


def shift_ticks(reference: Decimal, pct: Decimal, up: bool, tick: Decimal) -> int:
    """The whole move of a price_shift in ticks: `pct` % of `reference`, signed by direction."""
    ticks = int((reference * pct / 100 / tick).to_integral_value())
    return ticks if up else -ticks


def shift_progress(fault: Fault, now_ns: int) -> float:
    """Share (0..1) of a price_shift's move that is due at `now_ns` (linear over `over_s`)."""
    if fault.activated_ns is None:
        return 0.0
    over_ns = float(fault.params["over_s"]) * 1e9
    if over_ns <= 0:
        return 1.0
    return max(0.0, min(1.0, (now_ns - fault.activated_ns) / over_ns))


@dataclass
class PriceShift:
    """Progress of one price_shift fault: the whole move per symbol (ticks) and what was applied."""

    total_ticks: dict[str, int]
    applied_ticks: dict[str, int] = field(default_factory=dict)
    done: bool = False

    def due(self, progress: float) -> dict[str, int]:
        """Ticks each symbol must move now so that `progress` of its whole move is applied.

        Truncates toward zero, so the applied move never passes the total; at progress 1 it is
        exactly the total and the shift is done.
        """
        if self.done:
            return {}
        steps: dict[str, int] = {}
        for symbol, total in self.total_ticks.items():
            target = total if progress >= 1 else int(total * progress)
            step = target - self.applied_ticks.get(symbol, 0)
            if step:
                steps[symbol] = step
                self.applied_ticks[symbol] = target
        self.done = progress >= 1
        return steps

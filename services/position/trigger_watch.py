"""Since when each conditional order of the service has been seen triggered at the venue without the
MARKET order its trigger places (pure, no I/O): what `stuck_triggers.StuckTriggers` acts on. Fed by
the `ALGO_UPDATE` events (`VenueSync.on_algo_update`) and by every query answer of an order
(`Submission.query_and_apply`), so a missed event is caught by the poll's query as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TRIGGER_STATES = frozenset({"TRIGGERING", "TRIGGERED"})
"""`algoStatus` values of a conditional order whose trigger fired; fine only once its MARKET order exists."""
MAX_WATCHED = 1_000
"""Orders watched at once (bounded; each protected position has at most two conditional orders)."""


@dataclass
class TriggerWatch:
    """Since when each conditional order has been seen triggered without its MARKET order (pure)."""

    since_ns: dict[str, int] = field(default_factory=dict)

    def observe(self, client_order_id: str, algo_status: str, has_market_order: bool, now_ns: int) -> None:
        """One thing the venue said about an order: triggered without a MARKET order starts (or keeps)
        the clock; anything else (open, its MARKET order placed, finished) stops it."""
        if algo_status in TRIGGER_STATES and not has_market_order:
            self.since_ns.setdefault(client_order_id, now_ns)
            while len(self.since_ns) > MAX_WATCHED:
                del self.since_ns[next(iter(self.since_ns))]
        else:
            self.since_ns.pop(client_order_id, None)

    def observe_update(self, event: dict[str, Any], now_ns: int) -> None:
        """An `ALGO_UPDATE` event (`o.caid` our client order id, `o.X` its status, `o.ai` its MARKET order)."""
        update = event.get("o")
        if isinstance(update, dict):
            has_market = str(update.get("ai") or "").isdigit()
            self.observe(str(update.get("caid", "")), str(update.get("X", "")), has_market, now_ns)

    def observe_answer(self, client_order_id: str, answer: dict[str, Any], now_ns: int) -> None:
        """A query answer: a conditional order still in the Algo Service carries `algoStatus`; one whose
        MARKET order exists answers as that order (no `algoStatus`)."""
        self.observe(client_order_id, str(answer.get("algoStatus", "")), False, now_ns)

    def overdue(self, now_ns: int, bound_ns: int) -> list[tuple[str, int]]:
        """(client order id, ns stuck) of every order stuck at least `bound_ns`, oldest first."""
        return [(coid, now_ns - since) for coid, since in self.since_ns.items() if now_ns - since >= bound_ns]

    def forget(self, client_order_id: str) -> None:
        self.since_ns.pop(client_order_id, None)

"""Integrity: SPEC §6's order and position invariants (a violation starts HARD_SHUTDOWN) and the
bound on memory that keeps them exact (finished orders beyond the retention leave the ledger).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from libs.orders_model import OrderRecord
from proto import subjects
from proto.enums import AlertSeverity, DegradationLevel
from proto.kv import DegradationLevelValue, encode_value
from proto.messages import DegradationLevelChanged
from proto.replies import TradingControlRequest

from .core import Core
from .domain import order_invariant_violations, position_invariant_violations


class Integrity:
    """Invariant checks and the HARD_SHUTDOWN they trigger; eviction of finished orders."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def check_invariants(self, *, full: bool = False) -> list[str]:
        """Check SPEC §6's invariants; a violation starts the HARD_SHUTDOWN path.

        The per-order checks run on the orders changed since the last check (`full`: on every order
        in memory, done once per supervision round); position = baseline + sum of fills is checked
        every time. Memory is bounded (`Retention`), so even the full check does not grow with history.
        """
        ledger = self.core.ledger
        if full:
            changed: Iterable[OrderRecord] = list(ledger.orders.values())
        else:
            changed = [ledger.orders[coid] for coid in ledger.changed if coid in ledger.orders]
        ledger.changed.clear()
        problems = [problem for order in changed for problem in order_invariant_violations(order)]
        problems += position_invariant_violations(ledger.orders, ledger.positions, ledger.baselines)
        if problems and not self.core.hard_shutdown:
            await self._hard_shutdown(problems)
        return problems

    async def _hard_shutdown(self, problems: list[str]) -> None:
        """Integrity is compromised: HARD_SHUTDOWN (as the emergency stop does), P0; from now on only
        reduce-only orders are sent, positions are flattened (SPEC §5)."""
        core = self.core
        core.hard_shutdown = True
        reason = f"position invariant violated: {'; '.join(problems)[:500]}"
        core.log.error("invariant_violated", problems=problems[:20], action_taken="HARD_SHUTDOWN, halt, P0 alert")
        title = "order/position invariant violated"
        await core.alert(core.scoped("invariant-violation"), AlertSeverity.P0, title, problems=problems)
        previous, _ = await core.read_level()
        event = DegradationLevelChanged(previous=previous, current=DegradationLevel.HARD_SHUTDOWN, reason=reason)
        await core.bus.publish(subjects.EVT_DEGRADATION, event)
        record = DegradationLevelValue(
            level=DegradationLevel.HARD_SHUTDOWN, reason=reason, previous=previous, ts_ns=event.ts_event_ns
        )
        await core.bus.kv_put(subjects.KEY_DEGRADATION_LEVEL, encode_value(record))
        await core.refresh_degradation()  # flatten mode now: entries refused, positions closed (SPEC §5)
        request = msgspec.json.encode(TradingControlRequest(operator=core.component, reason=reason))
        try:
            await core.bus.request(subjects.SVC_RISK_HALT, request, timeout_s=3.0)
        except Exception as exc:  # noqa: BLE001 - the level is persisted; risk halts when it reads it
            core.log.warning("hard_shutdown_halt_failed", error=f"{type(exc).__name__}: {exc}")

    def trim(self) -> int:
        """Let finished orders beyond the retention leave memory (and so the next snapshot).

        Their fills move into the position baselines, so §6's position = baseline + sum of fills
        stays exact; live orders and those protection / flatten still number attempts from stay
        (`Ledger.trim`). Returns how many left.
        """
        core = self.core
        flatten_key = core.flatten_key if core.flattening() else None
        evicted = core.ledger.trim(core.clock(), core.retention, flatten_key, core.component)
        if evicted:
            core.log.info("orders_evicted", evicted=len(evicted), kept=len(core.ledger.orders))
        return len(evicted)

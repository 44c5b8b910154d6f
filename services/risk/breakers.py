"""Risk circuit breakers (SPEC §4), the shared part: ids, transition tables, the persisted record
(`proto.kv.BreakerValue`, KV `breaker.<id>`),
`BreakerChange` and the `RiskBreaker` base. The breakers themselves are in `breaker_rules`.

Every breaker reuses `libs.breaker.BreakerState` (CLOSED = normal, OPEN = tripped, HALF_OPEN =
re-validating) with its own explicit `(state, trigger) -> state` table, because the resets differ:

| breaker | table | reset |
|---|---|---|
| CB-1 rapid loss | `MANUAL_RESET_TABLE` | operator with a reason |
| CB-2 abnormal market | `PAUSE_TABLE` | automatic: pause elapsed (HALF_OPEN), then data VALID (CLOSED) |
| CB-3 strategy malfunction (one per strategy) | `MANUAL_RESET_TABLE` | operator re-enables |
| CB-4 resource exhaustion | `AUTO_RESET_TABLE` | automatic when every measure is back under |

Breakers do no I/O: inputs come in as plain values with `now_ns`, and a state change comes back as
a `BreakerChange` for the service to publish (event, KV record, alert) and act on (halt and
flatten, pause entries, disable a strategy, pause background work).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec

from libs.breaker import BreakerState
from libs.clock import NS_PER_S
from libs.fsm import IllegalTransition, next_state
from proto.kv import BreakerValue

DAY_NS = 86_400 * NS_PER_S

RAPID_LOSS = "CB-1"
ABNORMAL_MARKET = "CB-2"
STRATEGY_MALFUNCTION_PREFIX = "CB-3-"
RESOURCE_EXHAUSTION = "CB-4"


def strategy_breaker_id(strategy: str) -> str:
    """CB-3 breaker id of one strategy (`CB-3-<strategy>`, a valid gateway path segment)."""
    return f"{STRATEGY_MALFUNCTION_PREFIX}{strategy}"


class RiskBreakerTrigger(StrEnum):
    TRIP = "TRIP"
    PAUSE_ELAPSED = "PAUSE_ELAPSED"
    DATA_VALIDATED = "DATA_VALIDATED"
    CONDITION_CLEARED = "CONDITION_CLEARED"
    MANUAL_RESET = "MANUAL_RESET"


_S = BreakerState
_T = RiskBreakerTrigger

MANUAL_RESET_TABLE: dict[tuple[BreakerState, RiskBreakerTrigger], BreakerState] = {
    (_S.CLOSED, _T.TRIP): _S.OPEN,
    (_S.OPEN, _T.TRIP): _S.OPEN,
    (_S.OPEN, _T.MANUAL_RESET): _S.CLOSED,
}
PAUSE_TABLE: dict[tuple[BreakerState, RiskBreakerTrigger], BreakerState] = {
    (_S.CLOSED, _T.TRIP): _S.OPEN,
    (_S.OPEN, _T.TRIP): _S.OPEN,  # a new abnormality restarts the pause
    (_S.OPEN, _T.PAUSE_ELAPSED): _S.HALF_OPEN,
    (_S.HALF_OPEN, _T.TRIP): _S.OPEN,
    (_S.HALF_OPEN, _T.DATA_VALIDATED): _S.CLOSED,
    (_S.OPEN, _T.MANUAL_RESET): _S.CLOSED,
    (_S.HALF_OPEN, _T.MANUAL_RESET): _S.CLOSED,
}
AUTO_RESET_TABLE: dict[tuple[BreakerState, RiskBreakerTrigger], BreakerState] = {
    (_S.CLOSED, _T.TRIP): _S.OPEN,
    (_S.OPEN, _T.TRIP): _S.OPEN,
    (_S.OPEN, _T.CONDITION_CLEARED): _S.CLOSED,
    (_S.OPEN, _T.MANUAL_RESET): _S.CLOSED,
}


class BreakerNotTripped(IllegalTransition):
    """A reset was asked for a breaker that is not tripped."""


@dataclass(frozen=True)
class BreakerChange:
    """One state change of a breaker, for the service to publish and act on."""

    breaker: str
    previous: BreakerState
    current: BreakerState
    trigger: RiskBreakerTrigger
    reason: str
    record: BreakerValue
    operator: str | None = None

    @property
    def tripped(self) -> bool:
        return self.previous == BreakerState.CLOSED and self.current == BreakerState.OPEN


class RiskBreaker:
    """Shared mechanics: the table lookup and the persisted record."""

    table: Mapping[tuple[BreakerState, RiskBreakerTrigger], BreakerState] = MANUAL_RESET_TABLE
    reset_mode = "manual"
    title = ""

    def __init__(self, breaker_id: str, record: BreakerValue | None = None) -> None:
        self.id = breaker_id
        self.record = record or BreakerValue(breaker=breaker_id, title=self.title, reset_mode=self.reset_mode)

    @property
    def state(self) -> BreakerState:
        return self.record.state

    @property
    def is_open(self) -> bool:
        """Tripped or re-validating: its response (halt, pause, disable) is in force."""
        return self.record.state != BreakerState.CLOSED

    def details(self) -> dict[str, Any]:
        """Counters persisted with the record so a restart resumes them."""
        return {}

    def snapshot(self, now_ns: int) -> BreakerValue:
        """The record with the current counters (for a KV write without a state change)."""
        return msgspec.structs.replace(self.record, details=self.details(), ts_ns=now_ns)

    def _fire(
        self, trigger: RiskBreakerTrigger, reason: str, now_ns: int, operator: str | None = None
    ) -> BreakerChange | None:
        previous = self.record.state
        current = next_state(self.table, previous, trigger)
        if current == previous:
            return None
        tripped = current == BreakerState.OPEN
        self.record = msgspec.structs.replace(
            self.record,
            state=current,
            reason=reason,
            tripped_at_ns=now_ns if previous == BreakerState.CLOSED else self.record.tripped_at_ns,
            reset_at_ns=now_ns if current == BreakerState.CLOSED else self.record.reset_at_ns,
            operator=operator,
            trips=self.record.trips + (1 if tripped and previous == BreakerState.CLOSED else 0),
            details=self.details(),
            ts_ns=now_ns,
        )
        return BreakerChange(self.id, previous, current, trigger, reason, self.record, operator)

    def _on_manual_reset(self) -> None:
        """Clear what an operator acknowledges with the reset (counters, windows)."""

    def reset(self, operator: str, reason: str, now_ns: int) -> BreakerChange:
        """Manual reset by an operator.

        Raises:
            BreakerNotTripped: the breaker is CLOSED.
        """
        if self.record.state == BreakerState.CLOSED:
            raise BreakerNotTripped(f"breaker {self.id} is not tripped")
        self._on_manual_reset()
        change = self._fire(RiskBreakerTrigger.MANUAL_RESET, f"manual reset by {operator}: {reason}", now_ns, operator)
        assert change is not None  # OPEN/HALF_OPEN -> CLOSED always changes
        return change

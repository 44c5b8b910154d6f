"""Dependency circuit breaker (SPEC §4 "dependency breakers", FM-N5 per-venue breaker).

A pure state machine over an injected clock: CLOSED counts failures in a sliding window and
opens after `failure_threshold` of them within `window_ns`; OPEN fails fast until `open_ns` has
passed, then lets calls through as HALF_OPEN; `success_threshold` successes in a row close it
again, and any failure in HALF_OPEN re-opens it. Transitions are returned to the caller so it can
publish `BreakerStateChanged` and raise alerts; the breaker itself does no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from libs.clock import NS_PER_S
from libs.fsm import next_state
from proto.enums import BreakerState
from proto.kv import DependencyBreakerValue
from proto.messages import BreakerStateChanged


class BreakerTrigger(StrEnum):
    TRIP = "TRIP"
    COOL_DOWN_ELAPSED = "COOL_DOWN_ELAPSED"
    PROBE_FAILED = "PROBE_FAILED"
    PROBES_SUCCEEDED = "PROBES_SUCCEEDED"
    MANUAL_RESET = "MANUAL_RESET"


BREAKER_TRANSITIONS: dict[tuple[BreakerState, BreakerTrigger], BreakerState] = {
    (BreakerState.CLOSED, BreakerTrigger.TRIP): BreakerState.OPEN,
    (BreakerState.OPEN, BreakerTrigger.COOL_DOWN_ELAPSED): BreakerState.HALF_OPEN,
    (BreakerState.HALF_OPEN, BreakerTrigger.PROBE_FAILED): BreakerState.OPEN,
    (BreakerState.HALF_OPEN, BreakerTrigger.PROBES_SUCCEEDED): BreakerState.CLOSED,
    (BreakerState.OPEN, BreakerTrigger.MANUAL_RESET): BreakerState.CLOSED,
    (BreakerState.HALF_OPEN, BreakerTrigger.MANUAL_RESET): BreakerState.CLOSED,
}


@dataclass(frozen=True)
class BreakerTransition:
    """One state change, for the caller to publish."""

    name: str
    previous: BreakerState
    current: BreakerState
    reason: str

    def fields(self) -> dict[str, str]:
        """The transition as `BreakerStateChanged` fields (also the structured-log details)."""
        return {
            "breaker": self.name,
            "previous": self.previous.value,
            "current": self.current.value,
            "reason": self.reason,
        }

    def event(self) -> BreakerStateChanged:
        """The event to publish on `evt.breaker.<name>`."""
        return BreakerStateChanged(
            breaker=self.name, previous=self.previous.value, current=self.current.value, reason=self.reason
        )

    def record(self, ts_ns: int) -> DependencyBreakerValue:
        """The KV value under `breaker.<name>` (what `/v1/breakers` shows)."""
        return DependencyBreakerValue(state=self.current, reason=self.reason, ts_ns=ts_ns)


class BreakerOpen(Exception):
    """Raised (by callers) instead of making a call while the breaker is open: fail fast."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"circuit breaker {name} is open; retry in {retry_after_s:.1f} s")
        self.name = name
        self.retry_after_s = retry_after_s


class CircuitBreaker:
    """SPEC defaults: open after 5 failures in 10 s, half-open after 30 s, closed after 3 successes.

    Args:
        name: breaker id, e.g. ``venue.binance-usdm`` or ``dependency.postgres``.
        clock_ns: monotonic clock in integer nanoseconds.
    """

    def __init__(
        self,
        name: str,
        clock_ns: Callable[[], int],
        *,
        failure_threshold: int = 5,
        window_s: float = 10.0,
        open_s: float = 30.0,
        success_threshold: int = 3,
    ) -> None:
        self.name = name
        self._clock_ns = clock_ns
        self._failure_threshold = failure_threshold
        self._window_ns = int(window_s * NS_PER_S)
        self._open_ns = int(open_s * NS_PER_S)
        self._success_threshold = success_threshold
        self._state = BreakerState.CLOSED
        self._failures: deque[int] = deque()
        self._opened_at_ns = 0
        self._half_open_successes = 0

    @property
    def state(self) -> BreakerState:
        """The current state, after applying an elapsed cool-down (no transition is reported)."""
        self._maybe_half_open()
        return self._state

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a probe through (0 unless OPEN)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        remaining = self._opened_at_ns + self._open_ns - self._clock_ns()
        return max(0.0, remaining / NS_PER_S)

    def allow(self) -> tuple[bool, BreakerTransition | None]:
        """May a call go out now? Also reports the OPEN → HALF_OPEN transition when it happens."""
        transition = self._maybe_half_open()
        return self._state is not BreakerState.OPEN, transition

    def check(self) -> BreakerTransition | None:
        """Like `allow`, but raises `BreakerOpen` instead of returning False."""
        allowed, transition = self.allow()
        if not allowed:
            raise BreakerOpen(self.name, self.retry_after_s())
        return transition

    def record_success(self) -> BreakerTransition | None:
        if self._state is BreakerState.HALF_OPEN:
            self._half_open_successes += 1
            if self._half_open_successes >= self._success_threshold:
                return self._move(BreakerTrigger.PROBES_SUCCEEDED, f"{self._success_threshold} successes")
        return None

    def record_failure(self, reason: str = "failure") -> BreakerTransition | None:
        now = self._clock_ns()
        if self._state is BreakerState.HALF_OPEN:
            self._opened_at_ns = now
            return self._move(BreakerTrigger.PROBE_FAILED, f"probe failed: {reason}")
        if self._state is BreakerState.OPEN:
            return None
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self._window_ns:
            self._failures.popleft()
        if len(self._failures) >= self._failure_threshold:
            self._opened_at_ns = now
            return self._move(
                BreakerTrigger.TRIP,
                f"{len(self._failures)} failures in {self._window_ns / NS_PER_S:g} s: {reason}",
            )
        return None

    def reset(self, reason: str) -> BreakerTransition | None:
        """Manual reset by an operator; no-op when already CLOSED."""
        if self._state is BreakerState.CLOSED:
            return None
        return self._move(BreakerTrigger.MANUAL_RESET, reason)

    def _maybe_half_open(self) -> BreakerTransition | None:
        if self._state is BreakerState.OPEN and self._clock_ns() - self._opened_at_ns >= self._open_ns:
            return self._move(BreakerTrigger.COOL_DOWN_ELAPSED, "cool-down elapsed")
        return None

    def _move(self, trigger: BreakerTrigger, reason: str) -> BreakerTransition:
        previous = self._state
        self._state = next_state(BREAKER_TRANSITIONS, previous, trigger)
        self._failures.clear()
        self._half_open_successes = 0
        return BreakerTransition(self.name, previous, self._state, reason)

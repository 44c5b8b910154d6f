"""The dependency circuit breaker of SPEC §4 / FM-N5, driven by a fake clock."""

from __future__ import annotations

import msgspec
import pytest

from libs.breaker import BreakerOpen, BreakerState, CircuitBreaker
from libs.clock import ManualClock
from proto.kv import encode_value

S = 1_000_000_000


def test_record_failure_when_five_within_ten_seconds_then_open_and_fail_fast() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("venue.x", clock)
    transitions = []
    for _ in range(5):
        clock.now += 1 * S
        transitions.append(breaker.record_failure("timeout"))
    assert [t for t in transitions if t] and transitions[-1] is not None
    assert transitions[-1].current is BreakerState.OPEN
    with pytest.raises(BreakerOpen) as raised:
        breaker.check()
    assert 29.0 <= raised.value.retry_after_s <= 30.0


def test_record_failure_when_spread_over_more_than_window_then_stays_closed() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("venue.x", clock)
    for _ in range(20):
        clock.now += 3 * S
        assert breaker.record_failure() is None
    assert breaker.state is BreakerState.CLOSED


def test_open_when_cool_down_elapses_then_half_open_and_three_successes_close() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("venue.x", clock)
    for _ in range(5):
        breaker.record_failure()
    clock.now += 30 * S
    allowed, transition = breaker.allow()
    assert allowed and transition is not None and transition.current is BreakerState.HALF_OPEN
    assert breaker.record_success() is None
    assert breaker.record_success() is None
    closed = breaker.record_success()
    assert closed is not None and closed.current is BreakerState.CLOSED


def test_half_open_when_probe_fails_then_open_again_for_a_full_cool_down() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("venue.x", clock)
    for _ in range(5):
        breaker.record_failure()
    clock.now += 31 * S
    breaker.allow()
    reopened = breaker.record_failure("still down")
    assert reopened is not None and reopened.current is BreakerState.OPEN
    clock.now += 29 * S
    assert breaker.allow()[0] is False


def test_reset_when_open_then_closed_with_reason() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("venue.x", clock)
    for _ in range(5):
        breaker.record_failure()
    transition = breaker.reset("operator alice: venue back")
    assert transition is not None and transition.current is BreakerState.CLOSED
    assert breaker.reset("again") is None


def test_transition_when_published_then_event_and_kv_record_carry_it() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("venue.x", clock)
    transition = None
    for _ in range(5):
        transition = breaker.record_failure("timeout") or transition
    assert transition is not None
    event = transition.event()
    assert (event.breaker, event.previous, event.current) == ("venue.x", "CLOSED", "OPEN")
    assert event.reason == transition.reason and "timeout" in event.reason
    assert msgspec.json.decode(encode_value(transition.record(42))) == {
        "state": "OPEN",
        "reason": transition.reason,
        "ts_ns": 42,
    }

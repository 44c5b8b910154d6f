"""libs/ratelimit.RateBudget: SPEC FM-N2 budgets, priorities, 429 back-off and ramp, 418 bans."""

from __future__ import annotations

import pytest

from libs.clock import ManualClock
from libs.ratelimit import BudgetState, Priority, RateBudget, decode_ban
from proto.kv import RateLimitBanValue, encode_value

S = 1_000_000_000
MINUTE_BOUNDARY = 1_000 * 60 * S


def budget(clock: ManualClock, **kwargs: object) -> RateBudget:
    return RateBudget("binance-usdm", clock, uniform=lambda a, b: 0.0, **kwargs)  # type: ignore[arg-type]


def test_admit_when_weight_near_limit_then_history_stops_before_orders() -> None:
    clock = ManualClock(MINUTE_BOUNDARY)
    rb = budget(clock, weight_limit_1m=100, margin=0.2)  # usable 80
    assert rb.admit(Priority.HISTORY, 39).allowed
    refused = rb.admit(Priority.HISTORY, 2)  # 41 > 50 % of 80
    assert not refused.allowed and refused.wait_s > 0
    assert rb.admit(Priority.SNAPSHOT, 20).allowed  # 59 <= 68
    assert not rb.admit(Priority.SNAPSHOT, 10).allowed
    assert rb.admit(Priority.ORDER, 20).allowed  # 79 <= 80
    assert not rb.admit(Priority.ORDER, 2).allowed


def test_admit_when_minute_passes_then_weight_is_free_again() -> None:
    clock = ManualClock(MINUTE_BOUNDARY)
    rb = budget(clock, weight_limit_1m=100)
    assert rb.admit(Priority.ORDER, 80).allowed
    assert not rb.admit(Priority.ORDER, 1).allowed
    clock.advance(60)
    assert rb.admit(Priority.ORDER, 80).allowed


def test_on_headers_when_venue_reports_more_weight_then_budget_uses_it() -> None:
    clock = ManualClock(MINUTE_BOUNDARY)
    rb = budget(clock, weight_limit_1m=100)
    rb.admit(Priority.ACCOUNT, 1)
    rb.on_headers({"X-MBX-USED-WEIGHT-1M": "75", "X-MBX-ORDER-COUNT-10S": "3"})
    assert rb.used_weight() == 75
    assert not rb.admit(Priority.SNAPSHOT, 5).allowed
    assert rb.admit(Priority.ORDER, 5).allowed
    assert rb.used_weight() == 80


def test_admit_when_order_count_near_limit_then_orders_wait() -> None:
    clock = ManualClock(MINUTE_BOUNDARY)
    rb = budget(clock, order_limit_10s=10, margin=0.2)
    for _ in range(8):
        assert rb.admit(Priority.ORDER, 0, orders=1).allowed
    assert not rb.admit(Priority.ORDER, 0, orders=1).allowed
    clock.advance(10)
    assert rb.admit(Priority.ORDER, 0, orders=1).allowed


def test_on_rate_limited_when_429_then_backoff_rate_halved_and_throttled() -> None:
    clock = ManualClock(MINUTE_BOUNDARY)
    rb = budget(clock)
    for _ in range(20):
        rb.admit(Priority.ORDER)
        clock.advance(0.5)  # 2 requests/s
    rb.on_rate_limited(2.0)
    assert rb.state == BudgetState.THROTTLED
    assert rb.rate_per_s == 1.0
    refused = rb.admit(Priority.ORDER)
    assert not refused.allowed and refused.reason == "backing off after 429"
    clock.advance(2.01)
    assert rb.admit(Priority.ORDER).allowed
    clock.advance(1.0)  # spacing 1 s at 1/s for orders, 2 s for history
    assert not rb.admit(Priority.HISTORY).allowed
    assert rb.admit(Priority.ORDER).allowed
    assert [t.current for t in rb.drain_transitions()] == [BudgetState.THROTTLED]


def test_on_rate_limited_when_persistent_then_degraded_ramps_and_normal_after_5_min() -> None:
    clock = ManualClock(MINUTE_BOUNDARY)
    rb = budget(clock)
    for _ in range(3):
        rb.on_rate_limited(1.0)
        clock.advance(5)
    assert rb.state == BudgetState.DEGRADED
    assert rb.polling_factor() == 4.0
    slow = rb.rate_per_s
    assert slow is not None
    clock.advance(61)
    assert rb.rate_per_s == slow * 2  # ramps back gradually
    clock.advance(240)
    assert rb.state == BudgetState.NORMAL and rb.rate_per_s is None
    assert [t.current for t in rb.drain_transitions()] == [
        BudgetState.THROTTLED,
        BudgetState.DEGRADED,
        BudgetState.NORMAL,
    ]


def test_on_banned_when_418_then_nothing_admitted_until_retry_after_then_degraded() -> None:
    clock = ManualClock(MINUTE_BOUNDARY)
    rb = budget(clock)
    rb.on_banned(10.0)
    assert rb.state == BudgetState.BANNED
    for priority in Priority:
        refused = rb.admit(priority)
        assert not refused.allowed and refused.reason.startswith("IP banned")
    clock.advance(9.9)
    assert not rb.admit(Priority.ORDER).allowed
    clock.advance(0.2)
    assert rb.admit(Priority.ORDER).allowed
    assert rb.state == BudgetState.DEGRADED
    clock.advance(301)
    assert rb.state == BudgetState.NORMAL


def test_on_banned_when_no_retry_after_then_default_ban_length() -> None:
    clock = ManualClock(MINUTE_BOUNDARY)
    rb = budget(clock, default_ban_s=60.0)
    rb.on_banned(None)
    clock.advance(59)
    assert not rb.admit(Priority.ORDER).allowed
    clock.advance(2)
    assert rb.admit(Priority.ORDER).allowed


def test_on_headers_when_garbage_then_ignored() -> None:
    clock = ManualClock(MINUTE_BOUNDARY)
    rb = budget(clock)
    rb.on_headers({"X-MBX-USED-WEIGHT-1M": "lots", "X-MBX-ORDER-COUNT-1M": "-3", "Other": "1"})
    assert rb.used_weight() == 0


def test_on_ban_hook_when_418_or_429_with_retry_after_then_called_with_until_time() -> None:
    clock = ManualClock(MINUTE_BOUNDARY)
    seen: list[tuple[int, int, str]] = []
    rb = RateBudget("binance-usdm", clock, uniform=lambda a, b: b, on_ban=lambda *args: seen.append(args))
    rb.on_rate_limited(None)  # no Retry-After: nothing for the others to honour
    assert seen == []
    rb.on_rate_limited(2.0)
    rb.on_banned(10.0)
    # The venue's own figures, without this process's jitter.
    assert [(status, until) for status, until, _ in seen] == [(429, clock.now + 2 * S), (418, clock.now + 10 * S)]


def test_apply_shared_ban_when_418_elsewhere_then_nothing_admitted_until_it_ends_then_normal_later() -> None:
    clock = ManualClock(MINUTE_BOUNDARY)
    called: list[object] = []
    rb = budget(clock, on_ban=lambda *args: called.append(args))
    assert rb.apply_shared_ban(418, clock.now + 5 * S, "position:1: 418")
    assert rb.state == BudgetState.BANNED
    for priority in Priority:
        refused = rb.admit(priority)
        assert not refused.allowed and refused.reason.startswith("IP banned")
    assert called == []  # a ban taken from others is not shared again
    assert not rb.apply_shared_ban(418, clock.now + 5 * S)  # the same record again (own echo): no change
    clock.advance(5.01)
    assert rb.admit(Priority.ORDER).allowed
    assert rb.state == BudgetState.DEGRADED
    clock.advance(301)
    assert rb.state == BudgetState.NORMAL
    assert [t.current for t in rb.drain_transitions()] == [
        BudgetState.BANNED,
        BudgetState.DEGRADED,
        BudgetState.NORMAL,
    ]


def test_apply_shared_ban_when_expired_or_429_then_ignored_or_held_back_without_state_change() -> None:
    clock = ManualClock(MINUTE_BOUNDARY)
    rb = budget(clock)
    assert not rb.apply_shared_ban(418, clock.now - S)  # already over
    assert rb.admit(Priority.ORDER).allowed
    assert rb.apply_shared_ban(429, clock.now + 2 * S, "market-data:7: 429")
    refused = rb.admit(Priority.ORDER)
    assert not refused.allowed and refused.reason == "backing off after 429"
    assert rb.state == BudgetState.NORMAL
    clock.advance(2.01)
    assert rb.admit(Priority.ORDER).allowed


def test_ban_record_when_garbage_then_value_error() -> None:
    record = RateLimitBanValue(venue="binance-usdm", status=418, until_ns=5, origin="a", reason="r", ts_ns=1)
    assert decode_ban(encode_value(record)) == record
    for raw in (b"", b"{}", b"[1]", b'{"venue": "x", "status": 200, "until_ns": 1}', b'{"venue":1,"status":"x"}'):
        with pytest.raises(ValueError):
            decode_ban(raw)

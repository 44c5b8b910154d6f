"""Every per-key map that grows with traffic is bounded or expires (issue 15, point 6): risk's decided
orders (24 h after the newest decision and at most `MAX_DECIDED_ORDERS`, the same live and replayed),
risk's orders-per-minute window, the watchdog's open alerts and its heartbeat tracker and evaluator
(unexpected components forgotten after a day of silence), the position service's refused protective
orders. Times are parameters (event times, `now_ns`), never the wall clock.
"""

from __future__ import annotations

import random

from libs.clock import ManualClock
from libs.heartbeat import FORGET_AFTER_NS, HeartbeatTracker
from proto.enums import AlertSeverity, ComponentState
from proto.messages import AlertRaised, Heartbeat
from services.position.protection import newly_given_up
from services.risk.exposure import OrderRateWindow
from services.risk.state import DECIDED_KEEP_NS, DecidedOrders
from services.watchdog import alerts
from services.watchdog.alerts import AlertRouter
from services.watchdog.evaluator import WatchdogEvaluator

S = 1_000_000_000


def test_decided_when_more_than_limit_then_newest_kept_whatever_order_they_came_in() -> None:
    decisions = [(f"bw-{n}", 1_000 * S + n * S) for n in range(200)]
    live = DecidedOrders(limit=50)
    for coid, ts in decisions:
        live.add(coid, ts)
    shuffled = list(decisions)
    random.Random(7).shuffle(shuffled)
    replayed = DecidedOrders(limit=50)
    for coid, ts in shuffled:
        replayed.add(coid, ts)

    assert len(live) == 50
    assert set(live.at) == {coid for coid, _ in decisions[-50:]}
    assert live.at == replayed.at


def test_decided_when_older_than_a_day_after_newest_then_forgotten() -> None:
    decided = DecidedOrders()
    decided.add("bw-old", 0)
    decided.add("bw-new", DECIDED_KEEP_NS + 1)
    assert "bw-old" not in decided and "bw-new" in decided


def test_decided_when_same_order_decided_again_and_again_then_heap_stays_small() -> None:
    decided = DecidedOrders(limit=10)
    for n in range(10_000):
        decided.add(f"bw-{n % 5}", n)
    assert len(decided) == 5
    assert len(decided._by_time) <= 2 * 5 + 64


def test_rate_window_when_one_strategy_trades_for_hours_then_only_the_last_minute_kept() -> None:
    window = OrderRateWindow(window_ns=60 * S)
    for second in range(3 * 3600):
        window.record("trend", second * S)
    assert window.count("trend", 3 * 3600 * S) <= 60
    assert len(window._times["trend"]) <= 61


def raised(key: str, ts_ns: int) -> AlertRaised:
    return AlertRaised(key=key, severity=AlertSeverity.P2, component="position", title="t", ts_event_ns=ts_ns)


def test_open_alerts_when_more_than_limit_then_oldest_forgotten() -> None:
    router = AlertRouter(limit=10)
    for n in range(100):
        alerts.apply(router, raised(f"order-vanished:bw-{n}", n))
    assert len(router.open) <= 10
    assert set(router.open) == {f"order-vanished:bw-{n}" for n in range(100 - len(router.open), 100)}


def test_heartbeat_tracker_when_unexpected_component_silent_a_day_then_forgotten_expected_kept() -> None:
    tracker = HeartbeatTracker(timeout_ns=3 * S, expected=("risk",))
    for name in ("risk", "strategy-gone"):
        tracker.record(Heartbeat(component=name, state=ComponentState.READY, pid=1, started_ns=0), received_ns=0)

    assert set(tracker.view(FORGET_AFTER_NS)) == {"risk", "strategy-gone"}  # a day, not more: still listed
    views = tracker.view(FORGET_AFTER_NS + 1)
    assert set(views) == {"risk"} and views["risk"].state == ComponentState.DOWN


def test_given_up_protections_when_more_than_kept_then_oldest_forgotten_and_alerted_again() -> None:
    given_up: dict[str, None] = {}
    assert all(newly_given_up(given_up, f"protect:bw-{n}:stop", keep=3) for n in range(10))
    assert list(given_up) == ["protect:bw-7:stop", "protect:bw-8:stop", "protect:bw-9:stop"]
    assert not newly_given_up(given_up, "protect:bw-9:stop", keep=3)
    assert newly_given_up(given_up, "protect:bw-0:stop", keep=3)


def test_evaluator_when_tracker_forgot_a_component_then_its_state_is_dropped_too() -> None:
    clock = ManualClock(0)
    tracker = HeartbeatTracker(timeout_ns=3 * S, expected=("risk",))
    evaluator = WatchdogEvaluator(clock, grace_ns=0)
    for name in ("risk", "strategy-gone"):
        tracker.record(Heartbeat(component=name, state=ComponentState.READY, pid=1, started_ns=0), received_ns=0)
    evaluator.evaluate(tracker.view(clock()))
    assert set(evaluator.export_state().states) == {"risk", "strategy-gone"}

    clock.now = FORGET_AFTER_NS + 1
    evaluator.evaluate(tracker.view(clock()))

    assert set(evaluator.export_state().states) == {"risk"}

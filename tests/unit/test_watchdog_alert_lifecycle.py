"""Every open alert ends (`services/watchdog/alert_lifecycle.py`): a condition is resolved once it has
been seen clear, a notification when it expires; raised again, it pages again; an alert of a kind
its raiser resolves is left alone."""

from __future__ import annotations

from decimal import Decimal
from fnmatch import fnmatchcase

import pytest

from libs.runbooks import ALERT_RUNBOOKS
from proto.enums import AlertSeverity, BreakerState, DegradationLevel, StrategyState
from proto.messages import AlertRaised, AlertResolved
from services.watchdog import alerts
from services.watchdog.alert_lifecycle import (
    ALERT_LIFECYCLES,
    CLEAR_HOLD_NS,
    NOTIFICATION_TTL_NS,
    AlertCloser,
    Conditions,
    Lifecycle,
    PositionSeen,
    lifecycle_of,
    wanted,
)
from services.watchdog.alerts import AlertNotice, AlertRouter

S = 1_000_000_000
T0 = 1_700_000_000 * S


def raised(key: str, ts_ns: int = T0, component: str = "position", **details: object) -> AlertNotice:
    return AlertNotice(key, AlertSeverity.P1, component, f"title of {key}", details=dict(details), ts_ns=ts_ns)


def open_of(*notices: AlertNotice) -> dict[str, AlertNotice]:
    return {notice.key: notice for notice in notices}


def resolved_keys(closer: AlertCloser, open_alerts: dict[str, AlertNotice], conditions: Conditions) -> list[str]:
    return [resolution.key for resolution in closer.resolutions(open_alerts, conditions)]


@pytest.mark.parametrize(("pattern", "page"), ALERT_RUNBOOKS)
def test_lifecycle_when_any_alert_kind_of_the_runbooks_then_it_has_its_own_entry(pattern: str, page: str) -> None:
    key = pattern.replace("*", "x")
    assert any(fnmatchcase(key, known) for known, _, _ in ALERT_LIFECYCLES), f"{key} ({page}): say how it ends"


@pytest.mark.parametrize(
    ("key", "lifecycle"),
    [
        ("invariant-violation", Lifecycle.WATCHED),
        ("invariant-violation@backup", Lifecycle.WATCHED),
        ("invariant-overfill:bw-1", Lifecycle.NOTIFICATION),
        ("breaker.CB-3-trend", Lifecycle.WATCHED),
        ("md.clock_offset.binance-usdm", Lifecycle.RAISER),
        ("order-rejected:bw-1", Lifecycle.NOTIFICATION),
        ("protection-unavailable:sl:BTCUSDT", Lifecycle.WATCHED),
        ("protection-triggered:BTCUSDT@backup", Lifecycle.NOTIFICATION),
        ("strategy-crashed:trend", Lifecycle.NOTIFICATION),
        ("strategy-failed:trend", Lifecycle.WATCHED),
    ],
)
def test_lifecycle_when_kinds_share_a_prefix_then_the_specific_one_wins(key: str, lifecycle: Lifecycle) -> None:
    assert lifecycle_of(key)[0] is lifecycle


def test_notification_when_it_expires_then_resolved_once_and_a_new_raise_pages_and_expires_again() -> None:
    closer = AlertCloser()
    rejected = raised("order-rejected:bw-1")
    router = AlertRouter()
    assert alerts.apply(
        router,
        AlertRaised(key=rejected.key, severity=AlertSeverity.P2, component="position", title="x", ts_event_ns=T0),
    )
    again = AlertRaised(
        key=rejected.key, severity=AlertSeverity.P2, component="position", title="x", ts_event_ns=T0 + S
    )
    assert alerts.apply(router, again) is None  # de-duplicated while open

    assert resolved_keys(closer, router.open, Conditions(T0 + NOTIFICATION_TTL_NS - S)) == []
    (resolution,) = closer.resolutions(router.open, Conditions(T0 + NOTIFICATION_TTL_NS))
    assert resolution.key == rejected.key and "expired after 15 min" in resolution.reason
    assert resolved_keys(closer, router.open, Conditions(T0 + NOTIFICATION_TTL_NS + S)) == []  # asked once

    message = AlertResolved(key=resolution.key, component=resolution.component, reason=resolution.reason)
    closed = alerts.apply(router, message)
    assert closed is not None and closed.resolved and closed.details["resolution"] == resolution.reason
    assert router.open == {}

    later = T0 + NOTIFICATION_TTL_NS + 10 * S
    fresh = AlertRaised(key=rejected.key, severity=AlertSeverity.P2, component="position", title="x", ts_event_ns=later)
    assert alerts.apply(router, fresh) is not None  # a new event pages again
    assert resolved_keys(closer, router.open, Conditions(later + NOTIFICATION_TTL_NS)) == [rejected.key]


def test_rule_condition_when_the_watchdog_is_undecided_or_it_holds_then_open_and_resolved_once_clear_for_the_hold() -> (
    None
):
    closer = AlertCloser()
    down = open_of(raised("component_down:risk", component="watchdog"))
    assert resolved_keys(closer, down, Conditions(T0, rule_keys=None)) == []  # just started: not known
    holding = frozenset({"component_down:risk"})
    assert resolved_keys(closer, down, Conditions(T0 + S, rule_keys=holding)) == []
    assert resolved_keys(closer, down, Conditions(T0 + 2 * S, rule_keys=frozenset())) == []  # clear, not held yet
    assert resolved_keys(closer, down, Conditions(T0 + 3 * S, rule_keys=holding)) == []  # back: the clock restarts
    assert resolved_keys(closer, down, Conditions(T0 + 4 * S, rule_keys=frozenset())) == []
    assert resolved_keys(closer, down, Conditions(T0 + 4 * S + CLEAR_HOLD_NS, rule_keys=frozenset())) == [
        "component_down:risk"
    ]


@pytest.mark.parametrize("key", ["degradation:HARD_SHUTDOWN", "invariant-violation", "invariant-violation@backup"])
def test_hard_shutdown_alerts_when_the_level_is_left_by_a_restart_then_resolved(key: str) -> None:
    closer = AlertCloser()
    shutdown = open_of(raised(key, component="gateway"))
    assert resolved_keys(closer, shutdown, Conditions(T0, level=DegradationLevel.HARD_SHUTDOWN)) == []
    assert resolved_keys(closer, shutdown, Conditions(T0 + S, level=None)) == []  # level not known
    assert resolved_keys(closer, shutdown, Conditions(T0 + 2 * S, level=DegradationLevel.NORMAL)) == []
    (resolution,) = closer.resolutions(shutdown, Conditions(T0 + 2 * S + CLEAR_HOLD_NS, level=DegradationLevel.NORMAL))
    assert resolution.key == key and resolution.component == "gateway"


def test_level_alert_when_the_level_is_still_that_one_then_open_and_a_lower_one_resolves_it() -> None:
    closer = AlertCloser(clear_hold_ns=0)
    emergency = open_of(raised("degradation:EMERGENCY_MODE", component="watchdog"))
    assert resolved_keys(closer, emergency, Conditions(T0, level=DegradationLevel.EMERGENCY_MODE)) == []
    assert resolved_keys(closer, emergency, Conditions(T0, level=DegradationLevel.REDUCED_FUNCTIONALITY)) == [
        "degradation:EMERGENCY_MODE"
    ]


def test_watched_conditions_when_breaker_strategy_api_key_and_position_clear_then_each_resolved() -> None:
    closer = AlertCloser("binance-usdm", clear_hold_ns=0)
    opened = open_of(
        raised("breaker.CB-1", component="risk"),
        raised("strategy-failed:trend", component="strategy-trend"),
        raised("venue-auth:binance-usdm"),
        raised("protection-unavailable:sl:ETHUSDT", component="position-backup", symbol="ETHUSDT"),
        raised("md.ip_banned.binance-usdm", component="market-data"),
    )
    assert wanted(opened.values(), "binance-usdm").positions == {("backup", "ETHUSDT")}
    holding = Conditions(
        T0 + S,
        breakers={"CB-1": BreakerState.OPEN},
        strategies={"trend": StrategyState.FAILED},
        api_key_ok_ns={"binance-usdm": T0 - S},  # a pass before the refusal says nothing
        positions={("backup", "ETHUSDT"): PositionSeen(flat=False, ts_ns=T0 + S)},
    )
    assert resolved_keys(closer, opened, holding) == []
    assert resolved_keys(closer, opened, Conditions(T0 + S)) == []  # nothing known: nothing resolved
    cleared = Conditions(
        T0 + 2 * S,
        level=DegradationLevel.NORMAL,
        rule_keys=frozenset(),
        breakers={"CB-1": BreakerState.CLOSED},
        strategies={"trend": StrategyState.SCANNING},
        api_key_ok_ns={"binance-usdm": T0 + S},
        positions={("backup", "ETHUSDT"): PositionSeen(flat=True, ts_ns=T0 + S)},
    )
    assert sorted(resolved_keys(closer, opened, cleared)) == [
        "breaker.CB-1",
        "protection-unavailable:sl:ETHUSDT",
        "strategy-failed:trend",
        "venue-auth:binance-usdm",
    ]  # market-data resolves its own


def test_wanted_when_watched_alerts_open_then_only_their_breakers_strategies_venues_and_positions() -> None:
    opened = [
        raised("breaker.CB-3-trend", component="risk"),
        raised("strategy-failed:fade"),
        raised("venue-auth:backup"),
        raised("protection-unavailable:x", component="position", symbol="BTCUSDT", position=str(Decimal("0.1"))),
        raised("order-rejected:bw-1"),
    ]
    reads = wanted(opened, "binance-usdm")
    assert (reads.breakers, reads.strategies, reads.venues) == ({"CB-3-trend"}, {"fade"}, {"backup"})
    assert reads.positions == {("binance-usdm", "BTCUSDT")}


def test_closer_when_a_publish_failed_then_asked_again_next_round() -> None:
    closer = AlertCloser(clear_hold_ns=0)
    breaker = open_of(raised("breaker.CB-2", component="risk"))
    closed = Conditions(T0, breakers={"CB-2": BreakerState.CLOSED})
    assert resolved_keys(closer, breaker, closed) == ["breaker.CB-2"]
    assert resolved_keys(closer, breaker, closed) == []
    closer.retry("breaker.CB-2")
    assert resolved_keys(closer, breaker, closed) == ["breaker.CB-2"]


def test_closer_when_many_notifications_expired_at_once_then_resolved_over_rounds_each_once() -> None:
    closer = AlertCloser(per_round=20)
    backlog = open_of(*(raised(f"order-rejected:bw-{n}", ts_ns=T0 + n) for n in range(45)))
    later = Conditions(T0 + NOTIFICATION_TTL_NS + S)
    rounds = [resolved_keys(closer, backlog, later) for _ in range(4)]
    assert [len(keys) for keys in rounds] == [20, 20, 5, 0]
    assert sorted(key for keys in rounds for key in keys) == sorted(backlog)

"""Watchdog evaluation rules with an injected clock (no I/O)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from libs.clock import ManualClock
from libs.heartbeat import ComponentView
from proto.enums import AlertSeverity, ComponentState, DegradationLevel, Health, HotStateStatus
from proto.messages import SymbolHotState, SymbolsReply
from proto.replies import decode_reply, error_reply
from services.watchdog.alerts import AlertNotice, AlertRouter, severity_rank
from services.watchdog.evaluator import Evaluation, WatchdogEvaluator
from services.watchdog.notifications import pagerduty_payload, slack_payload
from services.watchdog.observations import (
    LatencyObservation,
    LatencyWindow,
    LinkObservation,
    ResourceObservation,
    SymbolObservation,
    latencies_from_views,
    symbols_from_reply,
)
from services.watchdog.rules import RULES, Thresholds, alert_key, is_critical

S = 1_000_000_000
T0 = 1_000 * S
"""When every test's clock starts."""
COMPONENTS = ("gateway", "market-data", "state-builder", "risk", "position", "strategy-imbalance")


def views(down: tuple[str, ...] = (), never_seen: tuple[str, ...] = ()) -> dict[str, ComponentView]:
    result = {}
    for name in COMPONENTS:
        if name in never_seen:
            result[name] = ComponentView(name, ComponentState.DOWN, None, None)
        elif name in down:
            result[name] = ComponentView(name, ComponentState.DOWN, 10, 5000)
        else:
            result[name] = ComponentView(name, ComponentState.READY, 10, 100)
    return result


def test_evaluate_when_all_up_then_green_normal_and_no_alerts() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock)

    evaluation = evaluator.evaluate(views())

    assert evaluation.health == Health.GREEN and evaluation.level == DegradationLevel.NORMAL
    assert evaluation.alerts == []
    assert evaluation.health_change is not None and evaluation.health_change.previous is None
    assert {change.component for change in evaluation.components} == set(COMPONENTS)


def test_evaluate_when_never_seen_within_grace_then_not_down() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock, grace_ns=3 * S)

    early = evaluator.evaluate(views(never_seen=("risk",)))
    clock.advance(3.5)
    late = evaluator.evaluate(views(never_seen=("risk",)))

    assert early.health == Health.GREEN and early.alerts == []
    assert late.health == Health.RED
    assert [alert.key for alert in late.alerts] == ["component_down:risk", "degradation:REDUCED_FUNCTIONALITY"]


def test_evaluate_when_critical_down_then_red_reduced_then_emergency_after_10s() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock)
    evaluator.evaluate(views())

    first = evaluator.evaluate(views(down=("position",)))
    clock.advance(5)
    middle = evaluator.evaluate(views(down=("position",)))
    clock.advance(5.5)
    late = evaluator.evaluate(views(down=("position",)))

    assert first.health == Health.RED and first.health_change is not None
    assert first.health_change.reasons == ("position down",)
    assert first.level == DegradationLevel.REDUCED_FUNCTIONALITY
    assert [(a.key, a.raised, a.severity) for a in first.alerts] == [
        (alert_key("position"), True, AlertSeverity.P1),
        ("degradation:REDUCED_FUNCTIONALITY", True, AlertSeverity.P2),
    ]
    assert [(c.component, c.current) for c in first.components] == [("position", ComponentState.DOWN)]
    assert middle.alerts == [] and middle.level_change is None and middle.health_change is None
    assert late.level == DegradationLevel.EMERGENCY_MODE and late.level_change is not None
    assert late.level_change.previous == DegradationLevel.REDUCED_FUNCTIONALITY
    assert [(a.key, a.raised) for a in late.alerts] == [
        ("degradation:REDUCED_FUNCTIONALITY", False),
        ("degradation:EMERGENCY_MODE", True),
    ]


def test_evaluate_when_non_critical_down_then_yellow_reduced() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock)
    evaluator.evaluate(views())
    clock.advance(60)

    evaluation = evaluator.evaluate(views(down=("strategy-imbalance", "gateway")))

    assert evaluation.health == Health.YELLOW
    assert evaluation.level == DegradationLevel.REDUCED_FUNCTIONALITY
    assert not is_critical("gateway") and not is_critical("strategy-imbalance")


def test_evaluate_when_component_returns_then_alert_resolved_and_back_to_normal() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock)
    evaluator.evaluate(views())
    evaluator.evaluate(views(down=("risk",)))
    clock.advance(11)
    evaluator.evaluate(views(down=("risk",)))

    back = evaluator.evaluate(views())

    assert [(a.key, a.raised) for a in back.alerts] == [
        ("component_down:risk", False),
        ("degradation:EMERGENCY_MODE", False),
    ]
    assert back.health == Health.GREEN and back.level == DegradationLevel.NORMAL
    assert back.level_change is not None and back.level_change.previous == DegradationLevel.EMERGENCY_MODE
    assert [(c.component, c.previous, c.current) for c in back.components] == [
        ("risk", ComponentState.DOWN, ComponentState.READY)
    ]


def test_evaluate_when_hard_shutdown_then_never_left_automatically() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock, initial_level=DegradationLevel.HARD_SHUTDOWN)

    evaluation = evaluator.evaluate(views())

    assert evaluation.level == DegradationLevel.HARD_SHUTDOWN and evaluation.level_change is None


def test_adopt_level_when_others_set_hard_shutdown_then_kept() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock)
    evaluator.evaluate(views())

    evaluator.adopt_level(DegradationLevel.EMERGENCY_MODE)  # only HARD_SHUTDOWN is adopted
    normal = evaluator.evaluate(views())
    evaluator.adopt_level(DegradationLevel.HARD_SHUTDOWN)
    kept = evaluator.evaluate(views())

    assert normal.level == DegradationLevel.NORMAL
    assert kept.level == DegradationLevel.HARD_SHUTDOWN and kept.level_change is None


def test_evaluate_when_down_persists_then_alert_raised_once() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock)
    evaluator.evaluate(views())

    raised = [alert.key for _ in range(5) for alert in evaluator.evaluate(views(down=("market-data",))).alerts]

    assert raised == ["component_down:market-data", "degradation:REDUCED_FUNCTIONALITY"]


def test_evaluate_ignores_watchdog_itself() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock)
    component_views = views()
    component_views["watchdog"] = ComponentView("watchdog", ComponentState.DOWN, None, None)
    clock.advance(10)

    evaluation = evaluator.evaluate(component_views)

    assert evaluation.health == Health.GREEN


def test_evaluate_when_some_never_seen_within_grace_then_no_health_decision_yet() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock, grace_ns=3 * S, initial_health=Health.RED)

    early = evaluator.evaluate(views(never_seen=("risk",)))

    assert early.health_change is None and early.level_change is None
    assert evaluator.health == Health.RED


# --------------------------------------------------------------------------- SPEC §5 rules beyond heartbeats


def stale(symbol: str = "BTCUSDT", age_ms: int | None = 1500, status: str = "STALE") -> list[SymbolObservation]:
    return [SymbolObservation(symbol, status, age_ms), SymbolObservation("ETHUSDT", "VALID", 20)]


def test_evaluate_when_symbol_stale_then_reduced_and_when_stale_over_10s_then_emergency() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock)
    evaluator.evaluate(views(), symbols=stale(status="VALID", age_ms=10))

    minor = evaluator.evaluate(views(), symbols=stale(age_ms=1500))
    clock.advance(9)
    major = evaluator.evaluate(views(), symbols=stale(age_ms=10_500))

    assert (minor.level, minor.health) == (DegradationLevel.REDUCED_FUNCTIONALITY, Health.YELLOW)
    assert next((a.key, a.severity) for a in minor.alerts if a.raised) == ("data_not_valid:BTCUSDT", AlertSeverity.P2)
    assert (major.level, major.health) == (DegradationLevel.EMERGENCY_MODE, Health.RED)
    assert major.level_change is not None and "BTCUSDT without fresh data" in major.level_change.reason
    assert ("data_stale_long:BTCUSDT", AlertSeverity.P1) in [(a.key, a.severity) for a in major.alerts if a.raised]
    assert major.checks["hot_state_fresh"] is False


def _stall_for_11s(btc: Callable[[int, int], SymbolObservation]) -> list[Evaluation]:
    """BTCUSDT VALID, then one evaluation a second for 11 s with BTCUSDT as `btc(second, since)`
    reports it (`since`: when it was last VALID); ETHUSDT stays VALID."""
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock)
    evaluator.evaluate(views(), symbols=stale(status="VALID", age_ms=10))
    since = clock.now
    seen = []
    for second in range(1, 12):
        clock.advance(1)
        symbols = [btc(second, since), SymbolObservation("ETHUSDT", "VALID", 20)]
        seen.append(evaluator.evaluate(views(), symbols=symbols))
    return seen


def test_evaluate_when_stalled_stream_keeps_resyncing_over_10s_then_emergency() -> None:
    # Each reconnect's REST snapshot resets the hot-state age (never above 5 s here), but the
    # symbol has not been VALID since `since`: after 10 s that is FM-D1's EMERGENCY_MODE.
    def btc(second: int, since: int) -> SymbolObservation:
        age_ms = (second % 5) * 1000  # a fresh snapshot every 5 s
        return SymbolObservation("BTCUSDT", "STALE" if second < 2 else "INVALID", age_ms, since)

    seen = _stall_for_11s(btc)

    assert [e.level for e in seen[:10]] == [DegradationLevel.REDUCED_FUNCTIONALITY] * 10  # 10 s is not > 10 s
    assert seen[10].level == DegradationLevel.EMERGENCY_MODE
    assert seen[10].level_change is not None and "BTCUSDT without fresh data for 11.0 s" in seen[10].level_change.reason
    assert ("data_stale_long:BTCUSDT", AlertSeverity.P1) in [(a.key, a.severity) for a in seen[10].alerts if a.raised]


def test_evaluate_when_state_builder_restarts_during_a_stall_then_the_10s_count_goes_on() -> None:
    # FM-D1 across a restart: the new state-builder reports the symbol INVALID without a
    # `stale_since_ns` and a young age (its fresh REST snapshot); the count must not start again.
    def btc(second: int, since: int) -> SymbolObservation:
        restarted = second >= 6  # the first process knew `since`; the restarted one does not
        return SymbolObservation("BTCUSDT", "INVALID", 500, None if restarted else since)

    levels = [evaluation.level for evaluation in _stall_for_11s(btc)]

    assert levels[:10] == [DegradationLevel.REDUCED_FUNCTIONALITY] * 10
    assert levels[10] == DegradationLevel.EMERGENCY_MODE


def test_evaluate_when_restart_while_valid_then_counted_from_when_it_left_valid() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock)
    evaluator.evaluate(views(), symbols=stale(status="VALID", age_ms=10))
    clock.advance(30)  # VALID for a long time: that is not stale time
    left = evaluator.evaluate(views(), symbols=stale(status="INVALID", age_ms=None))
    clock.advance(10)
    at_10s = evaluator.evaluate(views(), symbols=stale(status="INVALID", age_ms=200))
    clock.advance(1)
    at_11s = evaluator.evaluate(views(), symbols=stale(status="INVALID", age_ms=200))
    clock.advance(1)
    valid = evaluator.evaluate(views(), symbols=stale(status="VALID", age_ms=10))
    clock.advance(1)
    again = evaluator.evaluate(views(), symbols=stale(status="INVALID", age_ms=None))

    assert left.level == at_10s.level == DegradationLevel.REDUCED_FUNCTIONALITY
    assert at_11s.level == DegradationLevel.EMERGENCY_MODE
    assert not [f for f in valid.findings if f.key.startswith("data_")]
    # VALID again clears the memory: the next time it leaves VALID the count starts from then.
    assert not [f for f in again.findings if f.key == "data_stale_long:BTCUSDT"]


def test_evaluate_when_symbol_never_valid_then_no_stale_count() -> None:
    # A fresh start: books being built are not "stale for 10 s", however long the build takes.
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock)
    evaluator.evaluate(views(), symbols=stale(status="INVALID", age_ms=None))
    clock.advance(30)
    evaluation = evaluator.evaluate(views(), symbols=stale(status="INVALID", age_ms=None))

    assert evaluation.level == DegradationLevel.REDUCED_FUNCTIONALITY


def test_evaluate_when_symbol_valid_again_then_stale_since_ignored() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock)

    evaluation = evaluator.evaluate(views(), symbols=[SymbolObservation("BTCUSDT", "VALID", 5, clock.now - 60 * S)])

    assert evaluation.level == DegradationLevel.NORMAL


def test_symbols_from_reply_when_stale_since_given_then_observed() -> None:
    raw = (
        b'{"symbols": {"BTCUSDT": {"symbol": "BTCUSDT", "hot_state": "INVALID", "age_ms": 300,'
        b' "last_update_id": null, "stale_since_ns": 123}}}'
    )

    assert symbols_from_reply(decode_reply(SymbolsReply, raw)) == [SymbolObservation("BTCUSDT", "INVALID", 300, 123)]


def test_evaluate_when_invalid_without_data_yet_then_reduced_without_page() -> None:
    evaluator = WatchdogEvaluator(ManualClock(T0))

    evaluation = evaluator.evaluate(views(), symbols=stale(status="INVALID", age_ms=None))

    assert evaluation.level == DegradationLevel.REDUCED_FUNCTIONALITY
    assert [a.key for a in evaluation.alerts] == ["degradation:REDUCED_FUNCTIONALITY"]


def test_evaluate_when_conditions_clear_then_level_comes_down_only_after_recovery_hold() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock, thresholds=Thresholds(recovery_hold_ns=2 * S))
    evaluator.evaluate(views(), symbols=stale(age_ms=12_000))

    clock.advance(1)
    holding = evaluator.evaluate(views(), symbols=stale(status="VALID", age_ms=5))
    clock.advance(1.5)
    flapped = evaluator.evaluate(views(), symbols=stale(age_ms=1200))  # worse again: the hold restarts
    clock.advance(2)
    reduced = evaluator.evaluate(views(), symbols=stale(age_ms=1200))
    clock.advance(1)
    clear = evaluator.evaluate(views(), symbols=stale(status="VALID", age_ms=5))
    clock.advance(2)
    normal = evaluator.evaluate(views(), symbols=stale(status="VALID", age_ms=5))

    assert holding.level == DegradationLevel.EMERGENCY_MODE and holding.level_change is None
    assert holding.level_reason.startswith("recovering to NORMAL")
    assert flapped.level == DegradationLevel.EMERGENCY_MODE
    assert reduced.level_change is not None and reduced.level == DegradationLevel.REDUCED_FUNCTIONALITY
    assert clear.level == DegradationLevel.REDUCED_FUNCTIONALITY
    assert normal.level == DegradationLevel.NORMAL and normal.health == Health.GREEN


def test_evaluate_when_hard_shutdown_then_kept_whatever_the_findings() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock, initial_level=DegradationLevel.HARD_SHUTDOWN)

    worse = evaluator.evaluate(views(), links=[LinkObservation("binance-usdm.market-ws", "DEGRADED")])
    clock.advance(60)
    clear = evaluator.evaluate(views())

    assert worse.level == clear.level == DegradationLevel.HARD_SHUTDOWN
    assert worse.level_change is None and clear.level_change is None


@pytest.mark.parametrize(
    ("link", "state", "level", "health"),
    [
        ("market-ws", "DEGRADED", DegradationLevel.EMERGENCY_MODE, Health.RED),
        ("order", "DEGRADED", DegradationLevel.EMERGENCY_MODE, Health.RED),
        ("market-ws", "DISCONNECTED", DegradationLevel.REDUCED_FUNCTIONALITY, Health.YELLOW),
        ("market-ws", "SUSPECT", DegradationLevel.NORMAL, Health.YELLOW),
        ("market-ws", "CONNECTED", DegradationLevel.NORMAL, Health.GREEN),
        # Rate limited (429s persist, a 418 and its ramp): cached data, longer polls (FM-N2).
        ("market-rest", "DEGRADED", DegradationLevel.REDUCED_FUNCTIONALITY, Health.YELLOW),
        ("market-rest", "DISCONNECTED", DegradationLevel.REDUCED_FUNCTIONALITY, Health.YELLOW),
    ],
)
def test_evaluate_when_link_state_then_level_and_health(
    link: str, state: str, level: DegradationLevel, health: Health
) -> None:
    evaluation = WatchdogEvaluator(ManualClock(T0)).evaluate(views(), links=[LinkObservation(f"v.{link}", state)])

    assert (evaluation.level, evaluation.health) == (level, health)


@pytest.mark.parametrize(
    ("used", "level", "health", "key", "severity"),
    [
        (89.9, DegradationLevel.NORMAL, Health.GREEN, None, None),
        (90.0, DegradationLevel.NORMAL, Health.YELLOW, "disk_pressure:90", AlertSeverity.P2),
        (96.0, DegradationLevel.REDUCED_FUNCTIONALITY, Health.RED, "disk_pressure:95", AlertSeverity.P1),
        (99.0, DegradationLevel.EMERGENCY_MODE, Health.RED, "disk_pressure:98", AlertSeverity.P0),
    ],
)
def test_evaluate_when_disk_fills_then_fm_c4_bands(
    used: float, level: DegradationLevel, health: Health, key: str | None, severity: AlertSeverity | None
) -> None:
    evaluation = WatchdogEvaluator(ManualClock(T0)).evaluate(views(), resources=ResourceObservation(disk_used_pct=used))

    disk_alerts = [(a.key, a.severity) for a in evaluation.alerts if a.key.startswith("disk")]
    assert (evaluation.level, evaluation.health) == (level, health)
    assert disk_alerts == ([(key, severity)] if key else [])
    assert evaluation.checks["disk_free_above_10_pct"] is (used < 90)


def test_evaluate_when_cpu_high_then_yellow_only_after_30s_and_memory_at_once() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock)
    busy = ResourceObservation(cpu_pct=99.0, memory_used_pct=50.0)

    early = evaluator.evaluate(views(), resources=busy)
    clock.advance(31)
    late = evaluator.evaluate(views(), resources=busy)
    memory = evaluator.evaluate(views(), resources=ResourceObservation(cpu_pct=10.0, memory_used_pct=95.0))

    assert early.health == Health.GREEN
    assert late.health == Health.YELLOW and late.level == DegradationLevel.NORMAL  # CB-4 is risk's answer
    assert [a.key for a in late.alerts] == ["cpu_pressure"]
    assert [(a.key, a.raised) for a in memory.alerts] == [("memory_pressure", True), ("cpu_pressure", False)]


def test_evaluate_when_p99_over_twice_baseline_for_5s_then_reduced() -> None:
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock, thresholds=Thresholds(latency_floor_ms=50))
    slow = [LatencyObservation("state-builder", p99_ms=400, baseline_ms=100)]
    noise = [LatencyObservation("state-builder", p99_ms=40, baseline_ms=10)]  # 4x, but under the floor

    first = evaluator.evaluate(views(), latencies=slow)
    clock.advance(5)
    held = evaluator.evaluate(views(), latencies=slow)
    quiet = WatchdogEvaluator(clock, thresholds=Thresholds(latency_floor_ms=50))
    quiet.evaluate(views(), latencies=noise)
    clock.advance(10)

    assert first.level == DegradationLevel.NORMAL
    assert held.level == DegradationLevel.REDUCED_FUNCTIONALITY
    assert quiet.evaluate(views(), latencies=noise).level == DegradationLevel.NORMAL


def test_latency_window_and_heartbeat_details_then_observations() -> None:
    window = LatencyWindow(size=4)
    for sample in (1.0, 2.0, 3.0):
        window.add(sample)
    assert window.observation("x") is None  # no baseline before the first full window
    window.add(4.0)
    window.add(40.0)

    reading = window.observation("x")
    reported = latencies_from_views(
        {"risk": ComponentView("risk", ComponentState.READY, 1, 5, {"latency_p99_ms": 9, "latency_baseline_ms": 3})}
    )

    assert reading == LatencyObservation("x", 40.0, 4.0)
    assert reported == [LatencyObservation("risk", 9.0, 3.0)]


def test_symbols_from_reply_when_ages_unknown_or_error_then_none_for_them() -> None:
    reply = SymbolsReply(
        symbols={
            "BTCUSDT": SymbolHotState(symbol="BTCUSDT", hot_state=HotStateStatus.VALID, age_ms=3, last_update_id=9),
            "ETHUSDT": SymbolHotState(
                symbol="ETHUSDT", hot_state=HotStateStatus.STALE, age_ms=None, last_update_id=None
            ),
        }
    )

    assert symbols_from_reply(reply) == [
        SymbolObservation("BTCUSDT", "VALID", 3),
        SymbolObservation("ETHUSDT", "STALE", None),
    ]
    assert symbols_from_reply(decode_reply(SymbolsReply, error_reply("unavailable", "starting"))) == []


def test_rules_table_covers_every_spec_check() -> None:
    assert [name for name, _ in RULES] == ["components", "hot_state", "links", "disk", "memory", "cpu", "latency"]


# --------------------------------------------------------------------------- alert routing


def notice(key: str = "k", severity: AlertSeverity = AlertSeverity.P2, resolved: bool = False) -> AlertNotice:
    return AlertNotice(key, severity, "risk", "title", resolved, {"symbol": "BTCUSDT"})


def test_alert_router_when_raised_again_then_suppressed_unless_escalated() -> None:
    router = AlertRouter()

    first = router.raised(notice())
    repeat = router.raised(notice())
    lower = router.raised(notice(severity=AlertSeverity.P3))
    escalated = router.raised(notice(severity=AlertSeverity.P0))
    resolved = router.resolved("k")
    resolved_again = router.resolved("k")
    reopened = router.raised(notice())

    assert (first, repeat, lower, escalated) == (True, False, False, True)
    assert resolved is not None and resolved.severity == AlertSeverity.P0
    assert resolved_again is None and reopened is True


def test_webhook_payloads_when_raised_and_resolved_then_slack_and_pagerduty_shapes() -> None:
    slack = slack_payload(notice(severity=AlertSeverity.P1))
    page = pagerduty_payload(notice(severity=AlertSeverity.P0), "rk")
    resolve = pagerduty_payload(notice(resolved=True), "rk")

    assert slack["text"].startswith(":red_circle: [P1] risk: title")
    assert slack["blocks"][1]["fields"] == [{"type": "mrkdwn", "text": "*symbol*\nBTCUSDT"}]
    assert page["event_action"] == "trigger" and page["dedup_key"] == "k" and page["routing_key"] == "rk"
    assert page["payload"]["severity"] == "critical" and page["payload"]["source"] == "bulwark"
    assert resolve == {"routing_key": "rk", "event_action": "resolve", "dedup_key": "k"}
    assert severity_rank("P0") < severity_rank(AlertSeverity.P3) == severity_rank("bogus")


@pytest.mark.parametrize(
    ("reason", "causes", "level"),
    [
        # FM-D3: the clock alone halts trading (market-data asks risk); it does not close positions.
        ("clock offset: -7000 ms", {"clock offset"}, DegradationLevel.REDUCED_FUNCTIONALITY),
        ("corrupt messages: 6.1 %", {"corrupt messages"}, DegradationLevel.EMERGENCY_MODE),
        (
            "corrupt messages: 6.1 %; clock offset: 7000 ms",
            {"corrupt messages", "clock offset"},
            DegradationLevel.EMERGENCY_MODE,
        ),
        ("connect failed: refused", set(), DegradationLevel.EMERGENCY_MODE),
        ("", set(), DegradationLevel.EMERGENCY_MODE),
    ],
)
def test_evaluate_when_stream_degraded_then_level_follows_its_causes(
    reason: str, causes: set[str], level: DegradationLevel
) -> None:
    link = LinkObservation("binance-usdm.market-ws", "DEGRADED", reason, frozenset(causes))
    evaluation = WatchdogEvaluator(ManualClock(T0)).evaluate(views(), links=[link])

    assert evaluation.level == level
    assert evaluation.level_change is not None and (reason in evaluation.level_change.reason)


def test_expected_components_when_backup_venue_configured_then_its_position_process_is_expected() -> None:
    from libs.heartbeat import expected_components
    from libs.settings import Settings

    with_backup = expected_components(Settings(strategies=("trend",), backup_venue="binance-usdm-backup"))
    without = expected_components(Settings(strategies=("trend",)))

    assert set(with_backup) - set(without) == {"position-binance-usdm-backup"}
    assert "position" in without and not any(name.startswith("position-") for name in without)


def test_evaluate_when_backup_venue_position_process_down_then_yellow_reduced_and_never_emergency() -> None:
    backup = "position-binance-usdm-backup"
    clock = ManualClock(T0)
    evaluator = WatchdogEvaluator(clock)
    up = {**views(), backup: ComponentView(backup, ComponentState.READY, 11, 100)}
    down = {**views(), backup: ComponentView(backup, ComponentState.DOWN, 11, 5000)}
    evaluator.evaluate(up)

    first = evaluator.evaluate(down)
    clock.advance(30)
    late = evaluator.evaluate(down)
    back = evaluator.evaluate(up)

    assert not is_critical(backup) and is_critical("position")
    assert (first.health, first.level) == (Health.YELLOW, DegradationLevel.REDUCED_FUNCTIONALITY)
    assert [(a.key, a.severity) for a in first.alerts if a.raised] == [
        (alert_key(backup), AlertSeverity.P2),
        ("degradation:REDUCED_FUNCTIONALITY", AlertSeverity.P2),
    ]
    assert first.checks["components_heartbeating"] is False
    assert late.level == DegradationLevel.REDUCED_FUNCTIONALITY and late.level_change is None
    assert (back.health, back.level) == (Health.GREEN, DegradationLevel.NORMAL)
    assert (alert_key(backup), False) in [(a.key, a.raised) for a in back.alerts]

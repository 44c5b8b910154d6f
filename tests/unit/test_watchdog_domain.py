"""Watchdog evaluation rules with an injected clock (no I/O)."""

from __future__ import annotations

from libs.heartbeat import ComponentView
from proto.enums import AlertSeverity, ComponentState, DegradationLevel, Health
from services.watchdog.domain import WatchdogEvaluator, alert_key, is_critical

S = 1_000_000_000
COMPONENTS = ("gateway", "market-data", "state-builder", "risk", "position", "strategy-imbalance")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000 * S

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * S)


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
    clock = FakeClock()
    evaluator = WatchdogEvaluator(clock)

    evaluation = evaluator.evaluate(views())

    assert evaluation.health == Health.GREEN and evaluation.level == DegradationLevel.NORMAL
    assert evaluation.alerts == []
    assert evaluation.health_change is not None and evaluation.health_change.previous is None
    assert {change.component for change in evaluation.components} == set(COMPONENTS)


def test_evaluate_when_never_seen_within_grace_then_not_down() -> None:
    clock = FakeClock()
    evaluator = WatchdogEvaluator(clock, grace_ns=3 * S)

    early = evaluator.evaluate(views(never_seen=("risk",)))
    clock.advance(3.5)
    late = evaluator.evaluate(views(never_seen=("risk",)))

    assert early.health == Health.GREEN and early.alerts == []
    assert late.health == Health.RED
    assert [alert.key for alert in late.alerts] == ["component_down:risk"]


def test_evaluate_when_critical_down_then_red_reduced_then_emergency_after_10s() -> None:
    clock = FakeClock()
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
    assert [(a.key, a.raised, a.severity) for a in first.alerts] == [(alert_key("position"), True, AlertSeverity.P1)]
    assert [(c.component, c.current) for c in first.components] == [("position", ComponentState.DOWN)]
    assert middle.alerts == [] and middle.level_change is None and middle.health_change is None
    assert late.level == DegradationLevel.EMERGENCY_MODE and late.level_change is not None
    assert late.level_change.previous == DegradationLevel.REDUCED_FUNCTIONALITY


def test_evaluate_when_non_critical_down_then_yellow_reduced() -> None:
    clock = FakeClock()
    evaluator = WatchdogEvaluator(clock)
    evaluator.evaluate(views())
    clock.advance(60)

    evaluation = evaluator.evaluate(views(down=("strategy-imbalance", "gateway")))

    assert evaluation.health == Health.YELLOW
    assert evaluation.level == DegradationLevel.REDUCED_FUNCTIONALITY
    assert not is_critical("gateway") and not is_critical("strategy-imbalance")


def test_evaluate_when_component_returns_then_alert_resolved_and_back_to_normal() -> None:
    clock = FakeClock()
    evaluator = WatchdogEvaluator(clock)
    evaluator.evaluate(views())
    evaluator.evaluate(views(down=("risk",)))
    clock.advance(11)
    evaluator.evaluate(views(down=("risk",)))

    back = evaluator.evaluate(views())

    assert [(a.key, a.raised) for a in back.alerts] == [("component_down:risk", False)]
    assert back.health == Health.GREEN and back.level == DegradationLevel.NORMAL
    assert back.level_change is not None and back.level_change.previous == DegradationLevel.EMERGENCY_MODE
    assert [(c.component, c.previous, c.current) for c in back.components] == [
        ("risk", ComponentState.DOWN, ComponentState.READY)
    ]


def test_evaluate_when_hard_shutdown_then_never_left_automatically() -> None:
    clock = FakeClock()
    evaluator = WatchdogEvaluator(clock, initial_level=DegradationLevel.HARD_SHUTDOWN)

    evaluation = evaluator.evaluate(views())

    assert evaluation.level == DegradationLevel.HARD_SHUTDOWN and evaluation.level_change is None


def test_adopt_level_when_others_set_hard_shutdown_then_kept() -> None:
    clock = FakeClock()
    evaluator = WatchdogEvaluator(clock)
    evaluator.evaluate(views())

    evaluator.adopt_level(DegradationLevel.EMERGENCY_MODE)  # only HARD_SHUTDOWN is adopted
    normal = evaluator.evaluate(views())
    evaluator.adopt_level(DegradationLevel.HARD_SHUTDOWN)
    kept = evaluator.evaluate(views())

    assert normal.level == DegradationLevel.NORMAL
    assert kept.level == DegradationLevel.HARD_SHUTDOWN and kept.level_change is None


def test_evaluate_when_down_persists_then_alert_raised_once() -> None:
    clock = FakeClock()
    evaluator = WatchdogEvaluator(clock)
    evaluator.evaluate(views())

    raised = [alert for _ in range(5) for alert in evaluator.evaluate(views(down=("market-data",))).alerts]

    assert len(raised) == 1


def test_evaluate_ignores_watchdog_itself() -> None:
    clock = FakeClock()
    evaluator = WatchdogEvaluator(clock)
    component_views = views()
    component_views["watchdog"] = ComponentView("watchdog", ComponentState.DOWN, None, None)
    clock.advance(10)

    evaluation = evaluator.evaluate(component_views)

    assert evaluation.health == Health.GREEN


def test_evaluate_when_some_never_seen_within_grace_then_no_health_decision_yet() -> None:
    clock = FakeClock()
    evaluator = WatchdogEvaluator(clock, grace_ns=3 * S, initial_health=Health.RED)

    early = evaluator.evaluate(views(never_seen=("risk",)))

    assert early.health_change is None and early.level_change is None
    assert evaluator.health == Health.RED

"""Pure evaluation rules of the watchdog: component up/down, health and degradation level.

No I/O and no wall clock: the caller passes component views (from `libs.heartbeat`) and the
evaluator takes an injected clock, so every rule is unit-testable in microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from libs.heartbeat import ComponentView
from proto import subjects
from proto.enums import AlertSeverity, ComponentState, DegradationLevel, Health

Clock = Callable[[], int]
"""Returns the current time in integer nanoseconds (UTC epoch)."""

CRITICAL_COMPONENTS: frozenset[str] = frozenset(
    {subjects.MARKET_DATA, subjects.STATE_BUILDER, subjects.RISK, subjects.POSITION}
)
EMERGENCY_AFTER_NS = 10_000_000_000


def is_critical(component: str) -> bool:
    """True for components whose loss makes trading unsafe (market-data, state-builder, risk, position)."""
    return component in CRITICAL_COMPONENTS


def alert_key(component: str) -> str:
    """De-duplication key of the "component down" alert."""
    return f"component_down:{component}"


@dataclass(frozen=True)
class ComponentTransition:
    """A component changed state (e.g. READY -> DOWN)."""

    component: str
    previous: ComponentState | None
    current: ComponentState
    pid: int | None
    reason: str


@dataclass(frozen=True)
class AlertDecision:
    """Raise (or resolve) the alert `key`."""

    key: str
    component: str
    raised: bool
    severity: AlertSeverity = AlertSeverity.P1
    title: str = ""


@dataclass(frozen=True)
class HealthTransition:
    previous: Health | None
    current: Health
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class LevelTransition:
    previous: DegradationLevel | None
    current: DegradationLevel
    reason: str


@dataclass
class Evaluation:
    """Everything one evaluation decided; empty lists mean nothing changed."""

    health: Health
    reasons: tuple[str, ...]
    level: DegradationLevel
    level_reason: str
    components: list[ComponentTransition] = field(default_factory=list)
    alerts: list[AlertDecision] = field(default_factory=list)
    health_change: HealthTransition | None = None
    level_change: LevelTransition | None = None


class WatchdogEvaluator:
    """Decides component transitions, alerts, health and degradation level from heartbeat views.

    A component that was never seen is only declared DOWN once the watchdog itself has run for
    `grace_ns` (the heartbeat timeout), so a fresh start does not page for every component.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        grace_ns: int = 3_000_000_000,
        emergency_after_ns: int = EMERGENCY_AFTER_NS,
        initial_level: DegradationLevel | None = None,
        initial_health: Health | None = None,
    ) -> None:
        self._clock = clock
        self._started_ns = clock()
        self._grace_ns = grace_ns
        self._emergency_after_ns = emergency_after_ns
        self._states: dict[str, ComponentState] = {}
        self._down_since: dict[str, int] = {}
        self._active_alerts: set[str] = set()
        self.level: DegradationLevel | None = initial_level
        self.health: Health | None = initial_health

    def adopt_level(self, level: DegradationLevel | None) -> None:
        """Take over a level someone else persisted (HARD_SHUTDOWN is never left automatically)."""
        if level == DegradationLevel.HARD_SHUTDOWN:
            self.level = level

    def forget_level(self) -> None:
        """Drop the level decided last (its write lost a race); the next evaluation decides again."""
        if self.level != DegradationLevel.HARD_SHUTDOWN:
            self.level = None

    def evaluate(self, views: dict[str, ComponentView]) -> Evaluation:
        """Evaluate the current component views and return what changed."""
        now = self._clock()
        in_grace = now - self._started_ns < self._grace_ns
        undecided = False
        components: list[ComponentTransition] = []
        alerts: list[AlertDecision] = []
        for name, view in views.items():
            if name == subjects.WATCHDOG:
                continue
            previous = self._states.get(name)
            current = view.state
            if current == ComponentState.DOWN and previous is None and in_grace:
                undecided = True  # not seen yet, still within the start-up grace period
                continue
            if current != previous:
                self._states[name] = current
                reason = "no heartbeat" if current == ComponentState.DOWN else f"heartbeat state {current.value}"
                components.append(ComponentTransition(name, previous, current, view.pid, reason))
            if current == ComponentState.DOWN:
                self._down_since.setdefault(name, now)
                key = alert_key(name)
                if key not in self._active_alerts:
                    self._active_alerts.add(key)
                    severity = AlertSeverity.P1
                    alerts.append(AlertDecision(key, name, True, severity, f"component {name} is down"))
            else:
                self._down_since.pop(name, None)
                key = alert_key(name)
                if key in self._active_alerts:
                    self._active_alerts.discard(key)
                    alerts.append(AlertDecision(key, name, False, title=f"component {name} is back"))
        down = sorted(self._down_since)
        health, reasons = self._health(down)
        level, level_reason = self._level(down, now)
        evaluation = Evaluation(health, reasons, level, level_reason, components, alerts)
        if undecided:
            # Health and level are not known before every component had its chance to heartbeat.
            return evaluation
        if health != self.health:
            evaluation.health_change = HealthTransition(self.health, health, reasons)
            self.health = health
        if level != self.level:
            evaluation.level_change = LevelTransition(self.level, level, level_reason)
            self.level = level
        return evaluation

    @staticmethod
    def _health(down: Iterable[str]) -> tuple[Health, tuple[str, ...]]:
        down = list(down)
        reasons = tuple(f"{name} down" for name in down)
        if any(is_critical(name) for name in down):
            return Health.RED, reasons
        if down:
            return Health.YELLOW, reasons
        return Health.GREEN, ()

    def _level(self, down: list[str], now: int) -> tuple[DegradationLevel, str]:
        if self.level == DegradationLevel.HARD_SHUTDOWN:
            return DegradationLevel.HARD_SHUTDOWN, "hard shutdown is only left by a manual restart"
        long_down = [
            name for name in down if is_critical(name) and now - self._down_since[name] > self._emergency_after_ns
        ]
        if long_down:
            return DegradationLevel.EMERGENCY_MODE, "critical component down > 10 s: " + ", ".join(long_down)
        if down:
            return DegradationLevel.REDUCED_FUNCTIONALITY, "component down: " + ", ".join(down)
        return DegradationLevel.NORMAL, "all components up"

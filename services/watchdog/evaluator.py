"""The watchdog's evaluator: from one round of observations (SPEC §5) it decides component
transitions, alerts to raise or resolve, health and the degradation level, and keeps the memory
that spans rounds (component states, rule timers, open alerts, the recovery-hold timer).

Every rule turns observations into `Finding`s. A finding says which degradation level and health
it calls for and whether it pages (severity); the evaluator takes the worst level and health of
all findings, raises an alert when a finding appears and resolves it when it disappears (so an
alert is raised once while its condition holds). Levels go up at once and come down only after
the lower level held for `recovery_hold_ns`; HARD_SHUTDOWN is never left automatically.

No I/O and no wall clock: the caller passes what it observed and the evaluator takes an injected
clock, so every rule is unit-testable in microseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from libs.clock import Clock
from libs.heartbeat import ComponentView
from proto import subjects
from proto.enums import AlertSeverity, ComponentState, DegradationLevel, Health, HotStateStatus
from services.watchdog.observations import (
    LatencyObservation,
    LinkObservation,
    ResourceObservation,
    SymbolObservation,
)
from services.watchdog.rules import (
    EMERGENCY_AFTER_NS,
    RULES,
    Facts,
    Finding,
    Rule,
    S,
    Thresholds,
    alert_key,
    checks,
)

LEVEL_RANK: dict[DegradationLevel, int] = {
    DegradationLevel.NORMAL: 0,
    DegradationLevel.REDUCED_FUNCTIONALITY: 1,
    DegradationLevel.EMERGENCY_MODE: 2,
    DegradationLevel.HARD_SHUTDOWN: 3,
}
HEALTH_RANK: dict[Health, int] = {Health.GREEN: 0, Health.YELLOW: 1, Health.RED: 2}
LEVEL_ALERT_SEVERITY: dict[DegradationLevel, AlertSeverity] = {
    DegradationLevel.REDUCED_FUNCTIONALITY: AlertSeverity.P2,
    DegradationLevel.EMERGENCY_MODE: AlertSeverity.P1,
    DegradationLevel.HARD_SHUTDOWN: AlertSeverity.P0,
}


def level_alert_key(level: DegradationLevel) -> str:
    """De-duplication key of the alert that says the system runs at `level`."""
    return f"degradation:{level.value}"


# --------------------------------------------------------------------------- evaluation results


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
    details: dict[str, Any] = field(default_factory=dict)


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
    findings: tuple[Finding, ...] = ()
    checks: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluatorState:
    """The evaluator's memory, as snapshotted (SPEC §8)."""

    states: dict[str, ComponentState] = field(default_factory=dict)
    first_seen: dict[str, int] = field(default_factory=dict)
    active_alerts: list[Finding] = field(default_factory=list)
    lower_since_ns: int | None = None
    level: DegradationLevel | None = None
    health: Health | None = None


class WatchdogEvaluator:
    """Decides component transitions, alerts, health and degradation level from observations.

    A component that was never seen is only declared DOWN once the watchdog itself has run for
    `grace_ns` (the heartbeat timeout), so a fresh start does not page for every component.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        grace_ns: int = 3 * S,
        emergency_after_ns: int = EMERGENCY_AFTER_NS,
        initial_level: DegradationLevel | None = None,
        initial_health: Health | None = None,
        thresholds: Thresholds | None = None,
        rules: tuple[tuple[str, Rule], ...] = RULES,
    ) -> None:
        self._clock = clock
        self._started_ns = clock()
        self._grace_ns = grace_ns
        base = thresholds or Thresholds()
        if emergency_after_ns != base.critical_down_emergency_ns:
            base = Thresholds(**{**base.__dict__, "critical_down_emergency_ns": emergency_after_ns})
        self.thresholds = base
        self._rules = rules
        self._states: dict[str, ComponentState] = {}
        self._first_seen: dict[str, int] = {}
        self._active_alerts: dict[str, Finding] = {}
        self._lower_since: int | None = None
        self._heard: set[str] = set()
        self._seen_valid: set[str] = set()
        self._not_valid_since: dict[str, int] = {}
        self.level: DegradationLevel | None = initial_level
        self.health: Health | None = initial_health
        self.condition_keys: frozenset[str] | None = None
        """Keys of every condition the rules found in the last evaluation (held long enough or not);
        None before the first decided one (`alert_lifecycle` resolves nothing of theirs then)."""

    def export_state(self) -> EvaluatorState:
        """What must survive a restart: component states, rule timers, open alerts, the recovery timer.

        Level and health are included for the record only: KV is their authority (fail closed).
        """
        return EvaluatorState(
            states=dict(self._states),
            first_seen=dict(self._first_seen),
            active_alerts=list(self._active_alerts.values()),
            lower_since_ns=self._lower_since,
            level=self.level,
            health=self.health,
        )

    def restore_state(self, state: EvaluatorState) -> None:
        """Take over a snapshot's timers and open alerts; level and health stay as given at construction."""
        self._states = dict(state.states)
        self._first_seen = dict(state.first_seen)
        self._active_alerts = {finding.key: finding for finding in state.active_alerts}
        self._lower_since = state.lower_since_ns

    def adopt_level(self, level: DegradationLevel | None) -> None:
        """Take over a level someone else persisted (HARD_SHUTDOWN is never left automatically)."""
        if level == DegradationLevel.HARD_SHUTDOWN:
            self.level = level

    def forget_level(self) -> None:
        """Drop the level decided last (its write lost a race); the next evaluation decides again."""
        if self.level != DegradationLevel.HARD_SHUTDOWN:
            self.level = None

    def evaluate(
        self,
        views: dict[str, ComponentView],
        *,
        symbols: Iterable[SymbolObservation] = (),
        links: Iterable[LinkObservation] = (),
        resources: ResourceObservation | None = None,
        latencies: Iterable[LatencyObservation] = (),
    ) -> Evaluation:
        """Evaluate one round of observations and return what changed."""
        now = self._clock()
        components, down, undecided = self._component_transitions(views, now)
        facts = Facts(
            down=tuple(down),
            symbols=tuple(self._carry_stale_since(symbols, now)),
            links=tuple(links),
            resources=resources or ResourceObservation(),
            latencies=tuple(latencies),
            thresholds=self.thresholds,
            now_ns=now,
        )
        findings = self._held(now, [finding for _, rule in self._rules for finding in rule(facts)])
        # While undecided, a component's condition is unknown: its open alert is neither raised nor resolved.
        alerts = self._alert_decisions(findings, resolve=not undecided)
        self.condition_keys = None if undecided else frozenset(self._first_seen)
        health = max((finding.health for finding in findings), key=HEALTH_RANK.__getitem__, default=Health.GREEN)
        reasons = tuple(finding.title for finding in findings if finding.health != Health.GREEN)
        level, level_reason = self._level(findings, now)
        evaluation = Evaluation(
            health, reasons, level, level_reason, components, alerts, findings=tuple(findings), checks=checks(facts)
        )
        if undecided:
            # Health and level are not known before every component had its chance to heartbeat.
            return evaluation
        if health != self.health:
            evaluation.health_change = HealthTransition(self.health, health, reasons)
            self.health = health
        if level != self.level:
            evaluation.level_change = LevelTransition(self.level, level, level_reason)
            evaluation.alerts.extend(_level_alerts(self.level, level, level_reason))
            self.level = level
        return evaluation

    def _carry_stale_since(self, symbols: Iterable[SymbolObservation], now: int) -> Iterator[SymbolObservation]:
        """The symbols with `stale_since_ns` as the watchdog has followed it (FM-D1 "stale > 10 s").

        A restarted state-builder starts its symbols INVALID without a `stale_since_ns`: on its own,
        the 10 s count would start again at every restart (a crash loop during a dead stream would
        never escalate). The watchdog keeps the earliest moment since which a symbol it has seen
        VALID has not been VALID, until it is VALID again. A symbol never seen VALID (a fresh start)
        has none. The memory lives in this process only: a restarted watchdog starts it afresh, so a
        whole-system restart does not count the time the system was stopped.
        """
        for symbol in symbols:
            if symbol.status == HotStateStatus.VALID:
                self._seen_valid.add(symbol.symbol)
                self._not_valid_since.pop(symbol.symbol, None)
                yield symbol
                continue
            known = [
                since
                for since in (symbol.stale_since_ns, self._not_valid_since.get(symbol.symbol))
                if since is not None
            ]
            if not known and symbol.symbol in self._seen_valid:
                known = [now]  # left VALID without saying since when (a restarted state-builder): from now
            if not known:
                yield symbol
                continue
            since = self._not_valid_since[symbol.symbol] = min(known)
            yield replace(symbol, stale_since_ns=since)

    def _component_transitions(
        self, views: dict[str, ComponentView], now: int
    ) -> tuple[list[ComponentTransition], list[str], bool]:
        in_grace = now - self._started_ns < self._grace_ns
        undecided = False
        transitions: list[ComponentTransition] = []
        down: list[str] = []
        for name, view in views.items():
            if name == subjects.WATCHDOG:
                continue
            previous = self._states.get(name)
            current = view.state
            if current == ComponentState.DOWN and in_grace and (previous is None or name not in self._heard):
                # Not heard from by this process yet, still within the start-up grace period (a state
                # restored from a snapshot says what it was before the restart, not that it is down now).
                undecided = True
                continue
            if current != ComponentState.DOWN:
                self._heard.add(name)
            if current != previous:
                self._states[name] = current
                reason = "no heartbeat" if current == ComponentState.DOWN else f"heartbeat state {current.value}"
                transitions.append(ComponentTransition(name, previous, current, view.pid, reason))
            if current == ComponentState.DOWN:
                down.append(name)
        if not in_grace:
            for name in [name for name in self._states if name not in views]:
                # Forgotten by the heartbeat tracker (not expected, long silent): nothing left to follow.
                del self._states[name]
                self._heard.discard(name)
        return transitions, sorted(down), undecided

    def _held(self, now: int, findings: list[Finding]) -> list[Finding]:
        """The findings that have held long enough; remembers when each one was first seen."""
        current = {finding.key for finding in findings}
        for key in list(self._first_seen):
            if key not in current:
                del self._first_seen[key]
        held: list[Finding] = []
        for finding in findings:
            first = self._first_seen.setdefault(finding.key, now)
            if now - first >= finding.hold_ns:
                held.append(finding)
        return held

    def _alert_decisions(self, findings: list[Finding], *, resolve: bool = True) -> list[AlertDecision]:
        alerting = {finding.key: finding for finding in findings if finding.severity is not None}
        decisions: list[AlertDecision] = []
        for key, finding in alerting.items():
            if key not in self._active_alerts:
                assert finding.severity is not None
                decisions.append(
                    AlertDecision(key, finding.component, True, finding.severity, finding.title, finding.details)
                )
        if not resolve:
            self._active_alerts = {**self._active_alerts, **alerting}
            return decisions
        for key, finding in list(self._active_alerts.items()):
            if key not in alerting:
                back = f"component {finding.component} is back" if key == alert_key(finding.component) else "cleared"
                decisions.append(AlertDecision(key, finding.component, False, title=back))
        self._active_alerts = alerting
        return decisions

    def _level(self, findings: list[Finding], now: int) -> tuple[DegradationLevel, str]:
        if self.level == DegradationLevel.HARD_SHUTDOWN:
            self._lower_since = None
            return DegradationLevel.HARD_SHUTDOWN, "hard shutdown is only left by a manual restart"
        target = max((f.level for f in findings), key=LEVEL_RANK.__getitem__, default=DegradationLevel.NORMAL)
        causes = [finding.title for finding in findings if finding.level == target]
        reason = "; ".join(causes) if causes else "all checks pass"
        current = self.level
        if current is None or LEVEL_RANK[target] >= LEVEL_RANK[current]:
            self._lower_since = None
            return target, reason
        # Going down: only after the lower level held for a while, so a flapping input does not flap the level.
        if self._lower_since is None:
            self._lower_since = now
        if now - self._lower_since >= self.thresholds.recovery_hold_ns:
            self._lower_since = None
            return target, reason
        return current, f"recovering to {target.value}: {reason}"


def _level_alerts(previous: DegradationLevel | None, current: DegradationLevel, reason: str) -> Iterator[AlertDecision]:
    """Resolve the alert of the level left, raise the one of the level entered (NORMAL has none)."""
    if previous is not None and previous in LEVEL_ALERT_SEVERITY:
        yield AlertDecision(level_alert_key(previous), subjects.WATCHDOG, False, title=f"left {previous.value}")
    if current in LEVEL_ALERT_SEVERITY:
        yield AlertDecision(
            level_alert_key(current),
            subjects.WATCHDOG,
            True,
            LEVEL_ALERT_SEVERITY[current],
            f"degradation level {current.value}",
            {"reason": reason, "previous": previous.value if previous else None},
        )

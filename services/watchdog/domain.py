"""Pure evaluation rules of the watchdog: component up/down, health, degradation level (SPEC §5),
and alert routing (SPEC §9).

No I/O and no wall clock: the caller passes what it observed (component heartbeat views from
`libs.heartbeat`, hot-state age per symbol, link states, resource usage, latencies) and the
evaluator takes an injected clock, so every rule is unit-testable in microseconds.

Every rule turns observations into `Finding`s. A finding says which degradation level and health
it calls for and whether it pages (severity); the evaluator takes the worst level and health of
all findings, raises an alert when a finding appears and resolves it when it disappears (so an
alert is raised once while its condition holds). Levels go up at once and come down only after
the lower level held for `recovery_hold_ns`; HARD_SHUTDOWN is never left automatically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from libs.heartbeat import ComponentView
from libs.latency import LatencyWindow as _LatencyWindow
from proto import subjects
from proto.enums import (
    AlertSeverity,
    ComponentState,
    ConnectionState,
    DegradationLevel,
    Health,
    HotStateStatus,
    LinkDegradeCause,
)

Clock = Callable[[], int]
"""Returns the current time in integer nanoseconds (UTC epoch)."""

S = 1_000_000_000
CRITICAL_COMPONENTS: frozenset[str] = frozenset(
    {subjects.MARKET_DATA, subjects.STATE_BUILDER, subjects.RISK, subjects.POSITION}
)
EMERGENCY_AFTER_NS = 10 * S

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


def is_critical(component: str) -> bool:
    """True for components whose loss makes trading unsafe (market-data, state-builder, risk, position).

    The backup venue's position process (`position-<venue>`, FM-N6) is not critical: without it the
    main venue still trades and its positions keep their stops; only the failover is missing, and
    whatever risk routed to the backup waits on the durable log for the process to return. Its
    absence is "a non-critical component down" (SPEC §5): REDUCED_FUNCTIONALITY, YELLOW, P2, never
    EMERGENCY_MODE (which would close every position on the main venue too).
    """
    return component in CRITICAL_COMPONENTS


def alert_key(component: str) -> str:
    """De-duplication key of the "component down" alert."""
    return f"component_down:{component}"


def level_alert_key(level: DegradationLevel) -> str:
    """De-duplication key of the alert that says the system runs at `level`."""
    return f"degradation:{level.value}"


def severity_rank(severity: AlertSeverity | str) -> int:
    """0 for P0 (most severe) ... 3 for P3; unknown values rank as P3."""
    try:
        return int(str(severity)[1:]) if str(severity)[:1] == "P" else 3
    except ValueError:
        return 3


# --------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class SymbolObservation:
    """Hot state of one symbol: status, data age (None: unknown, e.g. never had data), and since
    when it has had no trustworthy data (`stale_since_ns`: its last update while VALID, None while
    VALID or never VALID; a resync's REST snapshot resets the age but not this)."""

    symbol: str
    status: str
    age_ms: int | None = None
    stale_since_ns: int | None = None


@dataclass(frozen=True)
class LinkObservation:
    """State of one venue link (`<venue>.<link>`)."""

    name: str
    state: str
    reason: str = ""
    causes: frozenset[str] = frozenset()
    """Why a connected link is DEGRADED (`LinkDegradeCause` values, `LinkStateChanged.causes`)."""


@dataclass(frozen=True)
class ResourceObservation:
    """Machine resource usage in percent (None: not measured)."""

    disk_used_pct: float | None = None
    memory_used_pct: float | None = None
    cpu_pct: float | None = None


@dataclass(frozen=True)
class LatencyObservation:
    """A latency p99 and the baseline it is compared with (milliseconds)."""

    name: str
    p99_ms: float
    baseline_ms: float


@dataclass(frozen=True)
class Thresholds:
    """Every number the rules use; defaults are SPEC §5, FM-D1, FM-C4 and FM-N5."""

    stale_emergency_ms: int = 10_000
    critical_down_emergency_ns: int = EMERGENCY_AFTER_NS
    disk_bands: tuple[tuple[float, DegradationLevel, Health, AlertSeverity], ...] = (
        (98.0, DegradationLevel.EMERGENCY_MODE, Health.RED, AlertSeverity.P0),
        (95.0, DegradationLevel.REDUCED_FUNCTIONALITY, Health.RED, AlertSeverity.P1),
        (90.0, DegradationLevel.NORMAL, Health.YELLOW, AlertSeverity.P2),
    )
    """(used % at or above, level, health, severity), most severe first (FM-C4)."""
    memory_max_pct: float = 90.0
    cpu_max_pct: float = 95.0
    cpu_sustain_ns: int = 30 * S
    latency_factor: float = 2.0
    latency_floor_ms: float = 250.0
    latency_sustain_ns: int = 5 * S
    recovery_hold_ns: int = 0


@dataclass(frozen=True)
class Finding:
    """One condition that currently holds.

    Attributes:
        key: De-duplication key (also the alert key).
        component: Who the condition is about.
        level: Degradation level it calls for (NORMAL: health only).
        health: Health it calls for.
        severity: Alert severity, None when it does not alert on its own.
        title: One line for operators.
        hold_ns: The condition counts only once it has held this long.
    """

    key: str
    component: str
    level: DegradationLevel
    health: Health
    severity: AlertSeverity | None
    title: str
    details: dict[str, Any] = field(default_factory=dict)
    hold_ns: int = 0


@dataclass(frozen=True)
class Facts:
    """What the rules look at: the observation plus the components found DOWN."""

    down: tuple[str, ...]
    symbols: tuple[SymbolObservation, ...]
    links: tuple[LinkObservation, ...]
    resources: ResourceObservation
    latencies: tuple[LatencyObservation, ...]
    thresholds: Thresholds
    now_ns: int = 0


# --------------------------------------------------------------------------- rules (the table)


def _components_rule(facts: Facts) -> Iterator[Finding]:
    """A component without heartbeat for 3 s is down: critical -> RED and REDUCED at once, EMERGENCY
    after 10 s; non-critical (gateway, strategies, a backup venue's position process) -> YELLOW and REDUCED."""
    for name in facts.down:
        if is_critical(name):
            yield Finding(
                alert_key(name),
                name,
                DegradationLevel.REDUCED_FUNCTIONALITY,
                Health.RED,
                AlertSeverity.P1,
                f"{name} down",
                {"reason": "no heartbeat"},
            )
            seconds = facts.thresholds.critical_down_emergency_ns / S
            yield Finding(
                f"component_down_long:{name}",
                name,
                DegradationLevel.EMERGENCY_MODE,
                Health.RED,
                None,
                f"critical component {name} down > {seconds:g} s",
                hold_ns=facts.thresholds.critical_down_emergency_ns,
            )
        else:
            yield Finding(
                alert_key(name),
                name,
                DegradationLevel.REDUCED_FUNCTIONALITY,
                Health.YELLOW,
                AlertSeverity.P2,
                f"{name} down",
                {"reason": "no heartbeat"},
            )


def stale_for_ms(symbol: SymbolObservation, now_ns: int) -> int | None:
    """How long a symbol that is not VALID has been without trustworthy data, in ms.

    The longer of its data age and the time since it left VALID: during a stalled stream every
    reconnect's REST snapshot makes the age young again (the symbol goes STALE, then INVALID
    with a fresh `age_ms`), while `stale_since_ns` keeps counting until the symbol is VALID.
    """
    stale_ms = None if symbol.stale_since_ns is None else max(0, now_ns - symbol.stale_since_ns) // 1_000_000
    known = [value for value in (symbol.age_ms, stale_ms) if value is not None]
    return max(known) if known else None


def _hot_state_rule(facts: Facts) -> Iterator[Finding]:
    """FM-D1: a symbol not VALID is a minor data issue (REDUCED); without trustworthy data for
    > 10 s (not VALID that long, through any number of resyncs) a major one (EMERGENCY), which
    closes the positions (SPEC §5: risk and position flatten in EMERGENCY_MODE)."""
    limit_ms = facts.thresholds.stale_emergency_ms
    for symbol in facts.symbols:
        if symbol.status == HotStateStatus.VALID:
            continue
        stale_ms = stale_for_ms(symbol, facts.now_ns)
        details = {"symbol": symbol.symbol, "status": symbol.status, "age_ms": symbol.age_ms, "stale_ms": stale_ms}
        # INVALID means a resync is running (reported by market-data); STALE pages on its own.
        severity = AlertSeverity.P2 if symbol.status == HotStateStatus.STALE else None
        yield Finding(
            f"data_not_valid:{symbol.symbol}",
            subjects.STATE_BUILDER,
            DegradationLevel.REDUCED_FUNCTIONALITY,
            Health.YELLOW,
            severity,
            f"{symbol.symbol} hot state {symbol.status}",
            details,
        )
        if stale_ms is not None and stale_ms > limit_ms:
            yield Finding(
                f"data_stale_long:{symbol.symbol}",
                subjects.STATE_BUILDER,
                DegradationLevel.EMERGENCY_MODE,
                Health.RED,
                AlertSeverity.P1,
                f"{symbol.symbol} without fresh data for {stale_ms / 1000:.1f} s (> {limit_ms / 1000:g} s)",
                details,
            )


LINK_RULES: dict[str, tuple[DegradationLevel, Health, AlertSeverity | None, str]] = {
    ConnectionState.DEGRADED: (
        DegradationLevel.EMERGENCY_MODE,
        Health.RED,
        AlertSeverity.P1,
        "persistent connection loss",
    ),
    ConnectionState.DISCONNECTED: (
        DegradationLevel.REDUCED_FUNCTIONALITY,
        Health.YELLOW,
        AlertSeverity.P2,
        "disconnected, reconnecting",
    ),
    ConnectionState.SUSPECT: (DegradationLevel.NORMAL, Health.YELLOW, None, "suspect: data not yet trusted"),
}
"""Link state -> (level, health, severity, what it means)."""

LINK_KIND_RULES: dict[tuple[str, str], tuple[DegradationLevel, Health, AlertSeverity | None, str]] = {
    # market-data's REST link is DEGRADED while the rate budget is (persistent 429s, an IP ban and
    # the 5-minute ramp after it): the streams still flow and data is cached, polls are longer
    # (FM-N2). A minor data issue, not a connection loss: REDUCED_FUNCTIONALITY, not EMERGENCY_MODE.
    ("market-rest", ConnectionState.DEGRADED): (
        DegradationLevel.REDUCED_FUNCTIONALITY,
        Health.YELLOW,
        AlertSeverity.P2,
        "rate limited: cached data, longer polling",
    ),
}
"""(link kind, state) -> rule, where a kind of link differs from `LINK_RULES`."""

CLOCK_ONLY_RULE = (
    DegradationLevel.REDUCED_FUNCTIONALITY,
    Health.YELLOW,
    None,
    "clock offset against the venue; market-data has asked risk to HALT trading (FM-D3)",
)
"""A stream link DEGRADED by the clock offset alone: SPEC FM-D3 halts trading for it (market-data asks
risk, and alerts), it does not close positions; the data itself still flows and validates."""


def _links_rule(facts: Facts) -> Iterator[Finding]:
    for link in facts.links:
        kind = link.name.rsplit(".", 1)[-1]
        rule = LINK_KIND_RULES.get((kind, link.state)) or LINK_RULES.get(link.state)
        if link.state == ConnectionState.DEGRADED and link.causes == {LinkDegradeCause.CLOCK}:
            rule = CLOCK_ONLY_RULE
        if rule is not None:
            level, health, severity, meaning = rule
            yield Finding(
                f"link:{link.name}",
                subjects.MARKET_DATA,
                level,
                health,
                severity,
                f"link {link.name} {link.state}: {meaning}" + (f" ({link.reason})" if link.reason else ""),
                {"link": link.name, "state": link.state},
            )


def _disk_rule(facts: Facts) -> Iterator[Finding]:
    """FM-C4: 90 % warn, 95 % critical (non-essential writes stop: REDUCED), 98 % emergency."""
    used = facts.resources.disk_used_pct
    if used is None:
        return
    for at_least, level, health, severity in facts.thresholds.disk_bands:
        if used >= at_least:
            yield Finding(
                f"disk_pressure:{at_least:g}",
                subjects.WATCHDOG,
                level,
                health,
                severity,
                f"disk {used:.1f} % used (>= {at_least:g} %)",
                {"disk_used_pct": round(used, 1)},
            )
            return


def _memory_rule(facts: Facts) -> Iterator[Finding]:
    used = facts.resources.memory_used_pct
    if used is not None and used >= facts.thresholds.memory_max_pct:
        yield Finding(
            "memory_pressure",
            subjects.WATCHDOG,
            DegradationLevel.NORMAL,
            Health.YELLOW,
            AlertSeverity.P2,
            f"memory {used:.1f} % used (>= {facts.thresholds.memory_max_pct:g} %)",
            {"memory_used_pct": round(used, 1)},
        )


def _cpu_rule(facts: Facts) -> Iterator[Finding]:
    used = facts.resources.cpu_pct
    if used is not None and used >= facts.thresholds.cpu_max_pct:
        yield Finding(
            "cpu_pressure",
            subjects.WATCHDOG,
            DegradationLevel.NORMAL,
            Health.YELLOW,
            AlertSeverity.P3,
            f"CPU {used:.0f} % (>= {facts.thresholds.cpu_max_pct:g} % for 30 s)",
            {"cpu_pct": round(used)},
            hold_ns=facts.thresholds.cpu_sustain_ns,
        )


def _latency_rule(facts: Facts) -> Iterator[Finding]:
    """FM-N5: p99 latency above 2x its baseline (and above a floor, so scheduler noise on a
    busy machine is not a degradation) for 5 s -> REDUCED."""
    th = facts.thresholds
    for sample in facts.latencies:
        limit = max(th.latency_factor * sample.baseline_ms, th.latency_floor_ms)
        if sample.baseline_ms > 0 and sample.p99_ms > limit:
            yield Finding(
                f"latency:{sample.name}",
                sample.name,
                DegradationLevel.REDUCED_FUNCTIONALITY,
                Health.YELLOW,
                AlertSeverity.P2,
                f"{sample.name} p99 {sample.p99_ms:.0f} ms > {limit:.0f} ms (baseline {sample.baseline_ms:.0f} ms)",
                {"p99_ms": round(sample.p99_ms, 1), "baseline_ms": round(sample.baseline_ms, 1)},
                hold_ns=th.latency_sustain_ns,
            )


Rule = Callable[[Facts], Iterable[Finding]]
RULES: tuple[tuple[str, Rule], ...] = (
    ("components", _components_rule),
    ("hot_state", _hot_state_rule),
    ("links", _links_rule),
    ("disk", _disk_rule),
    ("memory", _memory_rule),
    ("cpu", _cpu_rule),
    ("latency", _latency_rule),
)
"""Every health/degradation rule, by the SPEC §5 check it implements."""


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


def checks(facts: Facts) -> dict[str, bool]:
    """The SPEC §5 health checks, each True when it passes (unmeasured resources pass)."""
    th = facts.thresholds
    resources = facts.resources
    return {
        "state_builder_responsive": subjects.STATE_BUILDER not in facts.down,
        "hot_state_fresh": all(symbol.status == HotStateStatus.VALID for symbol in facts.symbols),
        "components_heartbeating": not facts.down,
        "strategies_responsive": not any(name.startswith("strategy-") for name in facts.down),
        "disk_free_above_10_pct": resources.disk_used_pct is None or resources.disk_used_pct < 90.0,
        "memory_below_max": resources.memory_used_pct is None or resources.memory_used_pct < th.memory_max_pct,
        "cpu_below_max": resources.cpu_pct is None or resources.cpu_pct < th.cpu_max_pct,
    }


# --------------------------------------------------------------------------- observation helpers


def symbols_from_reply(reply: Any) -> list[SymbolObservation]:
    """Symbols from a `svc.state-builder.symbols` reply
    (`{"symbols": {SYM: {"hot_state", "age_ms", "stale_since_ns"?}}}`)."""
    found = reply.get("symbols") if isinstance(reply, dict) else None
    if not isinstance(found, dict):
        return []
    result = []
    for symbol, value in found.items():
        if isinstance(value, dict):
            age = value.get("age_ms")
            since = value.get("stale_since_ns")
            status = value.get("hot_state") or value.get("status") or "UNKNOWN"
            result.append(
                SymbolObservation(
                    str(symbol),
                    str(status),
                    age if _is_int(age) else None,
                    since if _is_int(since) else None,
                )
            )
    return result


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def latencies_from_views(views: dict[str, ComponentView]) -> list[LatencyObservation]:
    """Latencies components report in their heartbeat details (`latency_p99_ms`, `latency_baseline_ms`)."""
    result = []
    for name, view in views.items():
        p99, baseline = view.details.get("latency_p99_ms"), view.details.get("latency_baseline_ms")
        if isinstance(p99, int | float) and isinstance(baseline, int | float) and view.state != ComponentState.DOWN:
            result.append(LatencyObservation(name, float(p99), float(baseline)))
    return result


class LatencyWindow(_LatencyWindow):
    """`libs.latency.LatencyWindow` that reads as a `LatencyObservation`."""

    def observation(self, name: str) -> LatencyObservation | None:
        """The current reading, once a baseline exists."""
        p99 = self.p99()
        if p99 is None or self.baseline_ms is None:
            return None
        return LatencyObservation(name, p99, self.baseline_ms)


# --------------------------------------------------------------------------- alert routing (§9)


@dataclass(frozen=True)
class AlertNotice:
    """An alert as the sinks receive it."""

    key: str
    severity: AlertSeverity
    component: str
    title: str
    resolved: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    ts_ns: int = 0


class AlertRouter:
    """De-duplicates alerts for the sinks: a key is delivered when it opens, again only if its
    severity rises, and its resolution is delivered once."""

    def __init__(self) -> None:
        self.open: dict[str, AlertNotice] = {}

    def raised(self, notice: AlertNotice) -> bool:
        """True when this raise must reach the sinks."""
        known = self.open.get(notice.key)
        if known is not None and severity_rank(notice.severity) >= severity_rank(known.severity):
            return False
        self.open[notice.key] = notice
        return True

    def resolved(self, key: str) -> AlertNotice | None:
        """The open alert a resolution closes (to deliver), or None when it was not open."""
        return self.open.pop(key, None)


PAGERDUTY_SEVERITY: dict[str, str] = {"P0": "critical", "P1": "error", "P2": "warning", "P3": "info"}
SLACK_EMOJI: dict[str, str] = {
    "P0": ":rotating_light:",
    "P1": ":red_circle:",
    "P2": ":warning:",
    "P3": ":information_source:",
}


def slack_payload(notice: AlertNotice) -> dict[str, Any]:
    """A Slack incoming-webhook message."""
    state = "RESOLVED" if notice.resolved else str(notice.severity)
    emoji = ":white_check_mark:" if notice.resolved else SLACK_EMOJI.get(str(notice.severity), "")
    text = f"{emoji} [{state}] {notice.component}: {notice.title}".strip()
    fields = [{"type": "mrkdwn", "text": f"*{name}*\n{value}"} for name, value in sorted(notice.details.items())][:10]
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"bulwark alert `{notice.key}`"}]})
    return {"text": text, "blocks": blocks}


def pagerduty_payload(notice: AlertNotice, routing_key: str) -> dict[str, Any]:
    """A PagerDuty Events API v2 event; `dedup_key` is the alert key, so a resolve closes the incident."""
    if notice.resolved:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": notice.key}
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": notice.key,
        "payload": {
            "summary": f"[{notice.severity}] {notice.component}: {notice.title}"[:1024],
            "severity": PAGERDUTY_SEVERITY.get(str(notice.severity), "warning"),
            "source": "bulwark",
            "component": notice.component,
            "custom_details": notice.details,
        },
    }

"""The health and degradation rules of SPEC §5 as a table: each rule turns the observed `Facts`
into `Finding`s (the level and health a condition calls for, and whether it pages), plus the
§5 health checks. Pure functions, no I/O and no clock: `Facts.now_ns` is the evaluation time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from proto import subjects
from proto.enums import AlertSeverity, ConnectionState, DegradationLevel, Health, HotStateStatus, LinkDegradeCause
from services.watchdog.observations import (
    LatencyObservation,
    LinkObservation,
    ResourceObservation,
    SymbolObservation,
)

S = 1_000_000_000
CRITICAL_COMPONENTS: frozenset[str] = frozenset(
    {subjects.MARKET_DATA, subjects.STATE_BUILDER, subjects.RISK, subjects.POSITION}
)
EMERGENCY_AFTER_NS = 10 * S


def is_critical(component: str) -> bool:
    """True for components whose loss makes trading unsafe (market-data, state-builder, risk, position).

    The backup venue's position process (`position-<venue>`, FM-N6) is not critical: without it the
    main venue still trades and its positions keep their stops; only the failover is missing, and
    whatever risk routed to the backup waits on the durable log for the process to return. Its
    absence is "a non-critical component down" (SPEC §5): REDUCED_FUNCTIONALITY, YELLOW, P2, never
    EMERGENCY_MODE (which would close every position on the main venue too). The same holds for the
    paper venue's position process (`position-<venue>-paper`, `bulwark up --paper-link`): it trades
    no money; without it only paper strategies' orders wait.
    """
    return component in CRITICAL_COMPONENTS


def alert_key(component: str) -> str:
    """De-duplication key of the "component down" alert."""
    return f"component_down:{component}"


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
    paper_venue: str = ""
    """The paper venue beside live (`BULWARK_PAPER_VENUE`, "" none): its links never raise the level
    past REDUCED_FUNCTIONALITY (EMERGENCY_MODE would close the live positions for a paper outage)."""
    backup_venue: str = ""
    """The backup venue (`BULWARK_BACKUP_VENUE`, FM-N6, "" none): capped the same way, its position process
    is not critical either (`is_critical`): while its links are out only the failover is missing."""
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
            if facts.thresholds.paper_venue and link.name.startswith(f"{facts.thresholds.paper_venue}."):
                level, health, meaning = paper_link_capped(level, health, meaning)
            if facts.thresholds.backup_venue and link.name.startswith(f"{facts.thresholds.backup_venue}."):
                level, health, meaning = paper_link_capped(level, health, meaning, BACKUP_LINK_CAPPED)
            yield Finding(
                f"link:{link.name}",
                subjects.MARKET_DATA,
                level,
                health,
                severity,
                f"link {link.name} {link.state}: {meaning}" + (f" ({link.reason})" if link.reason else ""),
                {"link": link.name, "state": link.state},
            )


PAPER_LINK_CAPPED = "paper venue: paper orders wait"
BACKUP_LINK_CAPPED = "backup venue: no failover while it is out"


def paper_link_capped(
    level: DegradationLevel, health: Health, meaning: str, why: str = PAPER_LINK_CAPPED
) -> tuple[DegradationLevel, Health, str]:
    """A link of a non-critical venue (the paper venue trades no money; the backup venue is only the
    failover): at most REDUCED_FUNCTIONALITY and YELLOW, `why` said in the meaning."""
    if level in (DegradationLevel.NORMAL, DegradationLevel.REDUCED_FUNCTIONALITY):
        return level, health, meaning
    return DegradationLevel.REDUCED_FUNCTIONALITY, Health.YELLOW, f"{meaning} ({why})"


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

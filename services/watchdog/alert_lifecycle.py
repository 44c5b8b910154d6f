"""How each open alert ends (SPEC §9): an alert about a condition stays open while the condition
holds and is resolved when it clears; a notification about a one-off event (an order rejected, a
snapshot skipped) is resolved after `NOTIFICATION_TTL_NS`, so it never stays in the open alerts, at
PagerDuty or on `/v1/alerts` for ever.

Every alert kind has a `Lifecycle` (`ALERT_LIFECYCLES`, the same glob patterns as `libs.runbooks`):

- `RAISER`: a condition its raiser resolves itself (market-data's alerts, the order link, the
  preflight, risk's bus halt, the projections check); nothing to do here.
- `WATCHED`: a condition whose raiser does not (always) resolve it and that the watchdog can see:
  the watchdog's own rules after a restart, the degradation level, a breaker, a FAILED strategy, the
  venue's API key, an unprotected position. `AlertCloser` resolves it once the condition has been
  seen clear for `clear_hold_ns` (an alert that overtakes the state it is about is not resolved).
- `NOTIFICATION`: no condition; de-duplicated while open, resolved when it expires.

Pure: the caller observes (`Conditions`) and publishes the `Resolution`s; time is `Conditions.now_ns`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase

from proto import subjects
from proto.enums import BreakerState, DegradationLevel, StrategyState
from services.watchdog.alerts import AlertNotice

S = 1_000_000_000
NOTIFICATION_TTL_NS = 15 * 60 * S
"""A notification stays open (and de-duplicated) this long, then it is resolved as expired."""
CLEAR_HOLD_NS = 3 * S
"""A watched condition must be seen clear this long before its alert is resolved."""
MAX_RESOLUTIONS_PER_ROUND = 20
"""Resolutions asked per round at most: a backlog (the first start after an upgrade finds every old
notification expired) reaches the sinks spread over rounds, not as one burst."""


class Lifecycle(StrEnum):
    RAISER = "raiser"
    WATCHED = "watched"
    NOTIFICATION = "notification"


class Condition(StrEnum):
    """What the watchdog looks at to know a `WATCHED` alert's condition has cleared."""

    RULE = "a watchdog rule"
    LEVEL = "the degradation level"
    HARD_SHUTDOWN = "HARD_SHUTDOWN"
    BREAKER = "the breaker"
    STRATEGY = "the strategy's state"
    API_KEY = "the venue's preflight api_key check"
    POSITION = "the position"


ALERT_LIFECYCLES: tuple[tuple[str, Lifecycle, Condition | None], ...] = (
    # the watchdog's rules (`rules.py`): resolved by the evaluator, re-checked after a restart
    ("component_down:*", Lifecycle.WATCHED, Condition.RULE),
    ("component_down_long:*", Lifecycle.WATCHED, Condition.RULE),
    ("data_not_valid:*", Lifecycle.WATCHED, Condition.RULE),
    ("data_stale_long:*", Lifecycle.WATCHED, Condition.RULE),
    ("link:*", Lifecycle.WATCHED, Condition.RULE),
    ("disk_pressure:*", Lifecycle.WATCHED, Condition.RULE),
    ("memory_pressure", Lifecycle.WATCHED, Condition.RULE),
    ("cpu_pressure", Lifecycle.WATCHED, Condition.RULE),
    ("latency:*", Lifecycle.WATCHED, Condition.RULE),
    # the level: the watchdog resolves a level it leaves, but not one the gateway raised
    # (emergency stop) nor one left while it was down
    ("degradation:*", Lifecycle.WATCHED, Condition.LEVEL),
    ("invariant-violation*", Lifecycle.WATCHED, Condition.HARD_SHUTDOWN),
    ("breaker.*", Lifecycle.WATCHED, Condition.BREAKER),
    ("strategy-failed:*", Lifecycle.WATCHED, Condition.STRATEGY),
    ("venue-auth:*", Lifecycle.WATCHED, Condition.API_KEY),
    ("protection-unavailable:*", Lifecycle.WATCHED, Condition.POSITION),
    # conditions their raiser resolves
    ("projections-diverged", Lifecycle.RAISER, None),
    ("bus-lost.*", Lifecycle.RAISER, None),
    ("md.*", Lifecycle.RAISER, None),  # market-data resolves its one-off ones after a quiet minute
    ("venue-order-link:*", Lifecycle.RAISER, None),
    ("venue-preflight:*", Lifecycle.RAISER, None),
    # notifications: something happened (and was handled); nothing to wait for
    ("snapshot-corrupt.*", Lifecycle.NOTIFICATION, None),
    ("bus-outbox-overflow.*", Lifecycle.NOTIFICATION, None),
    ("order-vanished:*", Lifecycle.NOTIFICATION, None),
    ("order-rejected:*", Lifecycle.NOTIFICATION, None),
    ("invariant-*", Lifecycle.NOTIFICATION, None),  # an overfill: booked, the order is final
    ("protection-*", Lifecycle.NOTIFICATION, None),  # triggered at once: closed at market already
    ("reconcile-*", Lifecycle.NOTIFICATION, None),  # corrected to the venue / adopted already
    ("external-order:*", Lifecycle.NOTIFICATION, None),
    ("strategy-crashed:*", Lifecycle.NOTIFICATION, None),  # restarted already; FAILED is its own alert
)
"""(alert key pattern, lifecycle, the condition watched), first match wins: specific patterns first."""


def lifecycle_of(key: str) -> tuple[Lifecycle, Condition | None]:
    """The lifecycle of an alert key; an unknown kind is left to its raiser (never resolved here)."""
    for pattern, lifecycle, condition in ALERT_LIFECYCLES:
        if fnmatchcase(key, pattern):
            return lifecycle, condition
    return Lifecycle.RAISER, None


def subject_of(key: str) -> str:
    """What the alert is about: the part after the kind (`breaker.CB-1` -> `CB-1`, `strategy-failed:trend`
    -> `trend`); a venue scope (`@venue`) stays on it."""
    if key.startswith("breaker."):
        return key.removeprefix("breaker.")
    return key.partition(":")[2]


def venue_of(component: str, main_venue: str) -> str:
    """The venue a position process trades: `position` the main one, `position-<venue>` its own."""
    return component.removeprefix(f"{subjects.POSITION}-") if component != subjects.POSITION else main_venue


@dataclass(frozen=True)
class PositionSeen:
    """The newest `PositionChanged` of a venue and symbol."""

    flat: bool
    ts_ns: int


@dataclass(frozen=True)
class Conditions:
    """What the watchdog observed about the conditions of the open alerts, at `now_ns`.

    Attributes:
        now_ns: the time of the observation.
        level: the degradation level now (None: not known).
        rule_keys: keys of every condition the watchdog's rules find now, held long enough or not;
            None while the evaluator is undecided (just started): nothing of theirs is resolved then.
        breakers: breaker id -> its state in KV (absent: not read or never set).
        strategies: strategy name -> its state in KV.
        api_key_ok_ns: venue -> time of its latest preflight whose `api_key` check passed.
        positions: (venue, symbol) -> its newest position event.
    """

    now_ns: int
    level: DegradationLevel | None = None
    rule_keys: frozenset[str] | None = None
    breakers: Mapping[str, BreakerState] = field(default_factory=dict)
    strategies: Mapping[str, StrategyState] = field(default_factory=dict)
    api_key_ok_ns: Mapping[str, int] = field(default_factory=dict)
    positions: Mapping[tuple[str, str], PositionSeen] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolution:
    """Resolve the open alert `key` (publish `AlertResolved`) for `reason`."""

    key: str
    component: str
    reason: str


@dataclass(frozen=True)
class Wanted:
    """What to read so that `Conditions` covers the open alerts."""

    breakers: frozenset[str] = frozenset()
    strategies: frozenset[str] = frozenset()
    venues: frozenset[str] = frozenset()
    positions: frozenset[tuple[str, str]] = frozenset()


def position_key(notice: AlertNotice, main_venue: str) -> tuple[str, str] | None:
    """(venue, symbol) an unprotected-position alert is about; None when its details do not say."""
    symbol = notice.details.get("symbol")
    return (venue_of(notice.component, main_venue), str(symbol)) if symbol else None


def wanted(open_alerts: Iterable[AlertNotice], main_venue: str) -> Wanted:
    """The breakers, strategies, venues and positions the open `WATCHED` alerts are about."""
    breakers, strategies, venues, positions = set(), set(), set(), set()
    for notice in open_alerts:
        lifecycle, condition = lifecycle_of(notice.key)
        if lifecycle is not Lifecycle.WATCHED:
            continue
        match condition:
            case Condition.BREAKER:
                breakers.add(subject_of(notice.key))
            case Condition.STRATEGY:
                strategies.add(subject_of(notice.key))
            case Condition.API_KEY:
                venues.add(subject_of(notice.key))
            case Condition.POSITION:
                found = position_key(notice, main_venue)
                if found is not None:
                    positions.add(found)
    return Wanted(frozenset(breakers), frozenset(strategies), frozenset(venues), frozenset(positions))


class AlertCloser:
    """Decides which open alerts to resolve: expired notifications, and watched conditions seen clear
    for `clear_hold_ns`. Remembers since when each condition is clear and which resolutions it asked
    for (asked once per raise: the open alert leaves the router when its resolution comes back).

    Args:
        main_venue: the venue of the `position` process (`BULWARK_VENUE`).
        notification_ttl_ns: how long a notification stays open.
        clear_hold_ns: how long a condition must be seen clear.
        per_round: resolutions returned by one call at most (the rest by the next ones).
    """

    def __init__(
        self,
        main_venue: str = subjects.DEFAULT_VENUE,
        *,
        notification_ttl_ns: int = NOTIFICATION_TTL_NS,
        clear_hold_ns: int = CLEAR_HOLD_NS,
        per_round: int = MAX_RESOLUTIONS_PER_ROUND,
    ) -> None:
        self.main_venue = main_venue
        self.notification_ttl_ns = notification_ttl_ns
        self.clear_hold_ns = clear_hold_ns
        self.per_round = per_round
        self._clear_since: dict[str, int] = {}
        self._asked: dict[str, int] = {}
        """key -> `ts_ns` of the raise whose resolution was published."""

    def resolutions(self, open_alerts: Mapping[str, AlertNotice], conditions: Conditions) -> list[Resolution]:
        """The alerts of `open_alerts` to resolve now (each asked once per raise)."""
        now = conditions.now_ns
        for key in [key for key in self._clear_since if key not in open_alerts]:
            del self._clear_since[key]
        for key in [key for key, ts in self._asked.items() if key not in open_alerts or open_alerts[key].ts_ns != ts]:
            del self._asked[key]
        found: list[Resolution] = []
        for key, notice in open_alerts.items():
            if key in self._asked:
                continue
            reason = self._reason(notice, conditions)
            if reason is None:
                self._clear_since.pop(key, None)
                continue
            since = self._clear_since.setdefault(key, now)
            if now - since < self._hold(notice) or len(found) >= self.per_round:
                continue
            self._asked[key] = notice.ts_ns
            del self._clear_since[key]
            found.append(Resolution(key, notice.component, reason))
        return found

    def retry(self, key: str) -> None:
        """The resolution of `key` could not be published: ask for it again next round."""
        self._asked.pop(key, None)

    def _hold(self, notice: AlertNotice) -> int:
        lifecycle, _ = lifecycle_of(notice.key)
        return 0 if lifecycle is Lifecycle.NOTIFICATION else self.clear_hold_ns

    def _reason(self, notice: AlertNotice, seen: Conditions) -> str | None:
        """Why the alert may be resolved now; None while its condition holds (or is not known)."""
        lifecycle, condition = lifecycle_of(notice.key)
        if lifecycle is Lifecycle.NOTIFICATION:
            if seen.now_ns - notice.ts_ns >= self.notification_ttl_ns:
                minutes = self.notification_ttl_ns // (60 * S)
                return f"notification expired after {minutes} min (no condition to wait for)"
            return None
        if lifecycle is not Lifecycle.WATCHED:
            return None
        subject = subject_of(notice.key)
        match condition:
            case Condition.RULE:
                if seen.rule_keys is not None and notice.key not in seen.rule_keys:
                    return "cleared: the watchdog no longer finds the condition"
            case Condition.LEVEL:
                if seen.level is not None and seen.level.value != subject:
                    return f"degradation level is {seen.level.value} now"
            case Condition.HARD_SHUTDOWN:
                if seen.level is not None and seen.level != DegradationLevel.HARD_SHUTDOWN:
                    return f"HARD_SHUTDOWN left (level {seen.level.value}) after a manual restart"
            case Condition.BREAKER:
                if seen.breakers.get(subject) == BreakerState.CLOSED:
                    return f"breaker {subject} CLOSED"
            case Condition.STRATEGY:
                state = seen.strategies.get(subject)
                if state is not None and state != StrategyState.FAILED:
                    return f"strategy {subject} is {state.value} again"
            case Condition.API_KEY:
                if seen.api_key_ok_ns.get(subject, 0) > notice.ts_ns:
                    return f"the venue accepted the API key in a later preflight of {subject}"
            case Condition.POSITION:
                where = position_key(notice, self.main_venue)
                position = seen.positions.get(where) if where is not None else None
                if position is not None and position.flat and position.ts_ns > notice.ts_ns:
                    return f"position {where[1] if where else ''} is flat: nothing left to protect"
        return None

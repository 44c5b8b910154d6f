"""Client-side request budget of one venue (SPEC FM-N2), pure: no I/O, an injected clock.

Every REST request asks `admit(priority, weight, orders)` first. The budget keeps the venue's
own counters (request weight per minute, orders per 10 s and per minute, as reported in the
`X-MBX-USED-WEIGHT-1M` / `X-MBX-ORDER-COUNT-*` headers, and counted locally between answers)
under the limits with a safety margin. Priorities share the remaining headroom unequally: a
history query stops at half of the usable budget, an account query at 70 %, a book snapshot at
85 %, while order placement and cancellation may use all of it, so the venue never refuses an
order because the budget went to a backfill.

A 429 halves the request rate (a minimum spacing between requests), backs off for the venue's
`Retry-After` plus jitter, and moves the budget to THROTTLED; three 429s within a minute make it
DEGRADED (the caller polls less often and serves cached data). The rate then doubles every minute
without a 429, and five minutes without one bring it back to NORMAL. A 418 (IP ban) refuses every
request until `Retry-After` has passed (BANNED), then continues DEGRADED.

State changes are returned by `drain_transitions()`, for the caller to publish and alert on.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from libs.fsm import next_state

NS_PER_S = 1_000_000_000
_MINUTE_NS = 60 * NS_PER_S
_TEN_S_NS = 10 * NS_PER_S

WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
ORDER_COUNT_PREFIX = "X-MBX-ORDER-COUNT-"


class Priority(IntEnum):
    """Request priority, most important first (SPEC FM-N2)."""

    ORDER = 0
    """Order placement and cancellation (and the venue's dead-man's switch)."""
    SNAPSHOT = 1
    """Order-book snapshots."""
    ACCOUNT = 2
    """Account, positions, order queries, and the small market polls (mark, OI, server time)."""
    HISTORY = 3
    """History and backfill."""


PRIORITY_SHARE: Mapping[Priority, float] = {
    Priority.ORDER: 1.0,
    Priority.SNAPSHOT: 0.85,
    Priority.ACCOUNT: 0.7,
    Priority.HISTORY: 0.5,
}
"""Share of the usable budget (limit minus margin) a priority may fill before it has to wait."""


class BudgetState(StrEnum):
    NORMAL = "NORMAL"
    THROTTLED = "THROTTLED"
    """A 429 was answered recently: rate halved, backing off."""
    DEGRADED = "DEGRADED"
    """429s persist (or a ban just ended): cached data, longer polling."""
    BANNED = "BANNED"
    """418: nothing may be sent until Retry-After has passed."""


class BudgetTrigger(StrEnum):
    RATE_LIMITED = "RATE_LIMITED"
    PERSISTENT_RATE_LIMIT = "PERSISTENT_RATE_LIMIT"
    IP_BANNED = "IP_BANNED"
    BAN_EXPIRED = "BAN_EXPIRED"
    QUIET_PERIOD = "QUIET_PERIOD"


BUDGET_TRANSITIONS: dict[tuple[BudgetState, BudgetTrigger], BudgetState] = {
    (BudgetState.NORMAL, BudgetTrigger.RATE_LIMITED): BudgetState.THROTTLED,
    (BudgetState.THROTTLED, BudgetTrigger.RATE_LIMITED): BudgetState.THROTTLED,
    (BudgetState.DEGRADED, BudgetTrigger.RATE_LIMITED): BudgetState.DEGRADED,
    (BudgetState.THROTTLED, BudgetTrigger.PERSISTENT_RATE_LIMIT): BudgetState.DEGRADED,
    (BudgetState.DEGRADED, BudgetTrigger.PERSISTENT_RATE_LIMIT): BudgetState.DEGRADED,
    (BudgetState.NORMAL, BudgetTrigger.IP_BANNED): BudgetState.BANNED,
    (BudgetState.THROTTLED, BudgetTrigger.IP_BANNED): BudgetState.BANNED,
    (BudgetState.DEGRADED, BudgetTrigger.IP_BANNED): BudgetState.BANNED,
    (BudgetState.BANNED, BudgetTrigger.IP_BANNED): BudgetState.BANNED,
    (BudgetState.BANNED, BudgetTrigger.BAN_EXPIRED): BudgetState.DEGRADED,
    (BudgetState.THROTTLED, BudgetTrigger.QUIET_PERIOD): BudgetState.NORMAL,
    (BudgetState.DEGRADED, BudgetTrigger.QUIET_PERIOD): BudgetState.NORMAL,
}


@dataclass(frozen=True)
class BudgetTransition:
    """One state change of a venue's budget, for the caller to publish."""

    venue: str
    previous: BudgetState
    current: BudgetState
    reason: str


@dataclass(frozen=True)
class Admission:
    """Answer of `admit`: go now, or wait `wait_s` (and why)."""

    allowed: bool
    wait_s: float = 0.0
    reason: str = ""


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    raw = str(raw).strip()
    return int(raw) if raw.isdigit() else None


class RateBudget:
    """The request budget of one venue.

    Args:
        venue: venue name (goes into transitions).
        clock_ns: wall clock in integer ns (the venue's counters reset on wall-clock boundaries).
        weight_limit_1m: request weight allowed per minute (Binance USD-M: 2400).
        order_limit_10s: orders allowed per 10 s (300).
        order_limit_1m: orders allowed per minute (1200).
        margin: fraction of every limit kept free (0.2: use at most 80 %).
        persistent_after: this many 429s within `persistent_window_s` mean DEGRADED.
        ramp_interval_s: after a 429 the allowed rate doubles every this many seconds without one.
        quiet_s: this long without a 429 restores NORMAL and an unlimited rate.
        default_ban_s: ban length when a 418 carries no Retry-After.
        uniform: `uniform(a, b)` random source of the back-off jitter (injected in tests).
    """

    def __init__(
        self,
        venue: str,
        clock_ns: Callable[[], int],
        *,
        weight_limit_1m: int = 2400,
        order_limit_10s: int = 300,
        order_limit_1m: int = 1200,
        margin: float = 0.2,
        persistent_after: int = 3,
        persistent_window_s: float = 60.0,
        ramp_interval_s: float = 60.0,
        quiet_s: float = 300.0,
        default_ban_s: float = 60.0,
        min_rate_per_s: float = 0.5,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.venue = venue
        self._clock_ns = clock_ns
        self.weight_limit_1m = weight_limit_1m
        self.order_limit_10s = order_limit_10s
        self.order_limit_1m = order_limit_1m
        self.margin = margin
        self._persistent_after = persistent_after
        self._persistent_window_ns = int(persistent_window_s * NS_PER_S)
        self._ramp_interval_ns = int(ramp_interval_s * NS_PER_S)
        self._quiet_ns = int(quiet_s * NS_PER_S)
        self._default_ban_s = default_ban_s
        self._min_rate_per_s = min_rate_per_s
        self._uniform = uniform
        self._state = BudgetState.NORMAL
        self._transitions: list[BudgetTransition] = []
        # Local accounting between answers: (ts, weight) and order timestamps.
        self._weights: deque[tuple[int, int]] = deque()
        self._orders: deque[int] = deque()
        self._requests: deque[int] = deque()
        # What the venue said last, and in which window it said it.
        self._reported_weight: tuple[int, int, int] | None = None  # (minute index, used, local sum then)
        self._reported_orders_10s: tuple[int, int] | None = None
        self._reported_orders_1m: tuple[int, int] | None = None
        self._rate_per_s: float | None = None  # None: no rate cap
        self._last_admit_ns: int | None = None
        self._backoff_until_ns = 0
        self._banned_until_ns = 0
        self._recent_429s: deque[int] = deque()
        self._last_429_ns: int | None = None
        self._last_ramp_ns = 0
        self.rate_limited = 0
        self.bans = 0
        self.refused = 0

    # ------------------------------------------------------------------ queries

    @property
    def state(self) -> BudgetState:
        """The current state, after time-driven transitions (ban expiry, quiet period)."""
        self._advance(self._clock_ns())
        return self._state

    @property
    def rate_per_s(self) -> float | None:
        """The current request-rate cap (None: only the weight limits apply)."""
        self._advance(self._clock_ns())
        return self._rate_per_s

    def polling_factor(self) -> float:
        """Multiply optional polling intervals by this (longer polling while throttled or degraded)."""
        match self.state:
            case BudgetState.NORMAL:
                return 1.0
            case BudgetState.THROTTLED:
                return 2.0
            case _:
                return 4.0

    def used_weight(self) -> int:
        """Best estimate of the weight used in the venue's current minute."""
        now = self._clock_ns()
        self._prune(now)
        return self._used_weight(now)

    def view(self) -> dict[str, Any]:
        """JSON-able summary for heartbeat details."""
        now = self._clock_ns()
        self._advance(now)
        self._prune(now)
        return {
            "state": self._state.value,
            "used_weight_1m": self._used_weight(now),
            "rate_per_s": self._rate_per_s,
            "banned_for_s": round(max(0, self._banned_until_ns - now) / NS_PER_S, 3),
            "rate_limited": self.rate_limited,
            "bans": self.bans,
            "refused": self.refused,
        }

    def drain_transitions(self) -> list[BudgetTransition]:
        """The state changes since the last call (oldest first)."""
        self._advance(self._clock_ns())
        out, self._transitions = self._transitions, []
        return out

    # ------------------------------------------------------------------ admission

    def admit(self, priority: Priority, weight: int = 1, orders: int = 0) -> Admission:
        """May a request of `weight` (placing `orders` orders) go out now? Records it when yes."""
        now = self._clock_ns()
        self._advance(now)
        self._prune(now)
        refusal = self._refusal(now, priority, weight, orders)
        if refusal is not None:
            self.refused += 1
            return refusal
        self._weights.append((now, weight))
        self._requests.append(now)
        for _ in range(orders):
            self._orders.append(now)
        self._last_admit_ns = now
        return Admission(True)

    def _refusal(self, now: int, priority: Priority, weight: int, orders: int) -> Admission | None:
        if now < self._banned_until_ns:
            return Admission(False, (self._banned_until_ns - now) / NS_PER_S, "IP banned (418)")
        if now < self._backoff_until_ns:
            return Admission(False, (self._backoff_until_ns - now) / NS_PER_S, "backing off after 429")
        if self._rate_per_s is not None and self._last_admit_ns is not None:
            # Lower priorities need a longer pause since the last request, so the next free slot
            # goes to the most important request waiting.
            spacing_ns = int(NS_PER_S / self._rate_per_s / PRIORITY_SHARE[priority])
            if now - self._last_admit_ns < spacing_ns:
                return Admission(False, (self._last_admit_ns + spacing_ns - now) / NS_PER_S, "request rate halved")
        usable = self.weight_limit_1m * (1.0 - self.margin) * PRIORITY_SHARE[priority]
        used = self._used_weight(now)
        if used + weight > usable:
            return Admission(False, self._weight_wait_s(now, used + weight - usable), f"{priority.name} weight budget")
        if orders:
            orders_10s, orders_1m = self._used_orders(now)
            if orders_10s + orders > self.order_limit_10s * (1.0 - self.margin):
                return Admission(False, (_TEN_S_NS - now % _TEN_S_NS) / NS_PER_S, "order budget (10 s)")
            if orders_1m + orders > self.order_limit_1m * (1.0 - self.margin):
                return Admission(False, (_MINUTE_NS - now % _MINUTE_NS) / NS_PER_S, "order budget (1 min)")
        return None

    def _weight_wait_s(self, now: int, excess: float) -> float:
        """Time until `excess` weight has left the window, or the venue's minute ends."""
        until_minute_end = (_MINUTE_NS - now % _MINUTE_NS) / NS_PER_S
        freed = 0
        for ts, weight in self._weights:
            freed += weight
            if freed >= excess:
                return max(0.001, min(until_minute_end, (ts + _MINUTE_NS - now) / NS_PER_S))
        return max(0.001, until_minute_end)

    # ------------------------------------------------------------------ answers

    def on_headers(self, headers: Mapping[str, str]) -> None:
        """Take the venue's own usage counters from an answer's headers."""
        now = self._clock_ns()
        minute, ten_s = now // _MINUTE_NS, now // _TEN_S_NS
        weight = _header_int(headers, WEIGHT_HEADER)
        if weight is not None:
            self._reported_weight = (minute, weight, self._local_minute_weight(minute))
        for name, value in headers.items():
            upper = str(name).upper()
            if not upper.startswith(ORDER_COUNT_PREFIX):
                continue
            count = _header_int({"v": value}, "v")
            if count is None:
                continue
            if upper.endswith("10S"):
                self._reported_orders_10s = (ten_s, count)
            elif upper.endswith("1M"):
                self._reported_orders_1m = (minute, count)

    def on_rate_limited(self, retry_after_s: float | None) -> None:
        """A 429: halve the rate, back off for Retry-After plus jitter; persistent → DEGRADED."""
        now = self._clock_ns()
        self._advance(now)
        self.rate_limited += 1
        self._recent_429s.append(now)
        while self._recent_429s and now - self._recent_429s[0] > self._persistent_window_ns:
            self._recent_429s.popleft()
        self._last_429_ns = now
        self._last_ramp_ns = now
        self._rate_per_s = max(self._min_rate_per_s, self._current_rate(now) / 2)
        if retry_after_s is not None:
            # The venue said when to come back; its weight figure on this answer (at or over the
            # limit) would otherwise hold every request until the minute ends.
            self._reported_weight = None
        base = retry_after_s if retry_after_s is not None and retry_after_s > 0 else 1.0
        wait = base + self._uniform(0.0, base / 2)
        self._backoff_until_ns = max(self._backoff_until_ns, now + int(wait * NS_PER_S))
        self._fire(BudgetTrigger.RATE_LIMITED, f"429, rate now {self._rate_per_s:.2f}/s, backing off {wait:.1f}s")
        if len(self._recent_429s) >= self._persistent_after:
            self._fire(
                BudgetTrigger.PERSISTENT_RATE_LIMIT,
                f"{len(self._recent_429s)} 429s within {self._persistent_window_ns // NS_PER_S}s",
            )

    def on_banned(self, retry_after_s: float | None) -> None:
        """A 418: nothing goes out until Retry-After (or the default ban length) has passed."""
        now = self._clock_ns()
        self._advance(now)
        self.bans += 1
        ban_s = retry_after_s if retry_after_s is not None and retry_after_s > 0 else self._default_ban_s
        self._reported_weight = None  # the ban's end, not the minute's, is when requests may resume
        self._banned_until_ns = max(self._banned_until_ns, now + int(ban_s * NS_PER_S))
        self._rate_per_s = max(self._min_rate_per_s, self._current_rate(now) / 2)
        self._fire(BudgetTrigger.IP_BANNED, f"418: IP banned for {ban_s:g}s")

    # ------------------------------------------------------------------ internals

    def _current_rate(self, now: int) -> float:
        if self._rate_per_s is not None:
            return self._rate_per_s
        recent = sum(1 for ts in self._requests if now - ts <= _TEN_S_NS)
        return max(self._min_rate_per_s * 2, recent / 10.0)

    def _used_weight(self, now: int) -> int:
        local = sum(weight for _, weight in self._weights)
        reported = self._reported_weight
        if reported is not None and reported[0] == now // _MINUTE_NS:
            # The venue also counts other clients on the same IP: its figure plus what we sent
            # since it answered, or our own count, whichever is larger.
            minute, used, local_then = reported
            return max(local, used + self._local_minute_weight(minute) - local_then)
        return local

    def _local_minute_weight(self, minute: int) -> int:
        return sum(weight for ts, weight in self._weights if ts // _MINUTE_NS == minute)

    def _used_orders(self, now: int) -> tuple[int, int]:
        local_10s = sum(1 for ts in self._orders if now - ts < _TEN_S_NS)
        local_1m = len(self._orders)
        ten = self._reported_orders_10s
        one = self._reported_orders_1m
        if ten is not None and ten[0] == now // _TEN_S_NS:
            local_10s = max(local_10s, ten[1])
        if one is not None and one[0] == now // _MINUTE_NS:
            local_1m = max(local_1m, one[1])
        return local_10s, local_1m

    def _prune(self, now: int) -> None:
        while self._weights and now - self._weights[0][0] >= _MINUTE_NS:
            self._weights.popleft()
        while self._orders and now - self._orders[0] >= _MINUTE_NS:
            self._orders.popleft()
        while self._requests and now - self._requests[0] > _TEN_S_NS:
            self._requests.popleft()

    def _advance(self, now: int) -> None:
        if self._state is BudgetState.BANNED and now >= self._banned_until_ns:
            # A ban just ended: continue carefully, as after a 429.
            self._last_429_ns = now
            self._last_ramp_ns = now
            self._fire(BudgetTrigger.BAN_EXPIRED, "ban expired")
        if self._rate_per_s is not None and self._last_429_ns is not None:
            if now - self._last_429_ns >= self._quiet_ns:
                self._rate_per_s = None
                self._recent_429s.clear()
                if self._state in (BudgetState.THROTTLED, BudgetState.DEGRADED):
                    self._fire(BudgetTrigger.QUIET_PERIOD, f"no 429 for {self._quiet_ns // NS_PER_S}s")
                return
            while now - self._last_ramp_ns >= self._ramp_interval_ns:
                self._last_ramp_ns += self._ramp_interval_ns
                self._rate_per_s *= 2

    def _fire(self, trigger: BudgetTrigger, reason: str) -> None:
        previous = self._state
        self._state = next_state(BUDGET_TRANSITIONS, previous, trigger)
        if self._state is not previous:
            self._transitions.append(BudgetTransition(self.venue, previous, self._state, reason))

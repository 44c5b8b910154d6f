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

Bans are shared between processes (Binance bans the IP, and escalates the ban when requests
keep coming): `on_ban` is called whenever this budget learns of a ban from the venue (a 418, or a
429 carrying Retry-After), and `apply_shared_ban` takes one that another process learned of.
`SharedBans` at the end of this module is the thin I/O adapter that connects the two through the
JetStream KV key `ratelimit.<venue>.ban`; the budget itself stays pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Protocol

import msgspec

from libs.clock import NS_PER_S
from libs.fsm import next_state
from libs.logging import Logger
from proto import subjects
from proto.kv import RateLimitBanValue, encode_value

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


BanHook = Callable[[int, int, str], None]
"""`on_ban(status, until_ns, reason)`: the venue answered 418 (or 429 with Retry-After) until `until_ns`."""


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
        on_ban: called with `(status, until_ns, reason)` when the venue bans this client (418) or
            names a Retry-After on a 429, so other processes can honour it too (`SharedBans`).
            Not called for bans taken from others (`apply_shared_ban`).
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
        on_ban: BanHook | None = None,
    ) -> None:
        self.venue = venue
        self.on_ban = on_ban
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
        self.shared_bans = 0
        """Bans (418) and back-offs (429) taken from other processes."""

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
            "shared_bans": self.shared_bans,
            "refused": self.refused,
        }

    def refused_for_s(self) -> float:
        """Seconds until the venue takes this client's requests again (0: now): an IP ban (418) or
        a 429's back-off. WebSocket connects wait for it too: a banned IP is refused at the upgrade."""
        now = self._clock_ns()
        self._advance(now)
        return max(0, max(self._banned_until_ns, self._backoff_until_ns) - now) / NS_PER_S

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

    def hold(self, priority: Priority, weight: int = 1, orders: int = 0) -> Admission:
        """Would such a request go out now? Like `admit`, but records nothing."""
        now = self._clock_ns()
        self._advance(now)
        self._prune(now)
        return self._refusal(now, priority, weight, orders) or Admission(True)

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
        if self.on_ban is not None and retry_after_s is not None and retry_after_s > 0:
            # Without jitter: the venue's own figure is what every other process must honour.
            self.on_ban(429, now + int(retry_after_s * NS_PER_S), f"429: Retry-After {retry_after_s:g}s")
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
        if self.on_ban is not None:
            self.on_ban(418, self._banned_until_ns, f"418: IP banned for {ban_s:g}s")

    def apply_shared_ban(self, status: int, until_ns: int, reason: str = "") -> bool:
        """Honour a ban another process received from the same venue (SPEC FM-N2).

        A 418 refuses every request until `until_ns` (BANNED, as if this budget had been answered
        418); a 429's Retry-After holds requests back until `until_ns` without changing the state
        or the rate (this process was not refused itself). Expired records and ones this budget
        already honours change nothing, so a process's own record coming back is harmless.

        Returns:
            True when the ban extended what this budget already refused.
        """
        now = self._clock_ns()
        self._advance(now)
        if until_ns <= now:
            return False
        if status == 418:
            if until_ns <= self._banned_until_ns:
                return False
            self._banned_until_ns = until_ns
            self._reported_weight = None
            # As after an own 418: continue carefully once it ends (and ramp back to NORMAL).
            self._rate_per_s = max(self._min_rate_per_s, self._current_rate(now) / 2)
            self.shared_bans += 1
            self._fire(
                BudgetTrigger.IP_BANNED, f"418 shared by another process: {reason}; {(until_ns - now) / NS_PER_S:.1f}s"
            )
            return True
        if until_ns <= self._backoff_until_ns:
            return False
        self._backoff_until_ns = until_ns
        self.shared_bans += 1
        return True

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


# --------------------------------------------------------------------------- sharing bans (I/O)


def decode_ban(raw: bytes) -> RateLimitBanValue:
    """Parse a KV `ratelimit.<venue>.ban` value.

    Raises:
        ValueError: not a ban record (or not a 418/429 one).
    """
    try:
        record = msgspec.json.decode(raw, type=RateLimitBanValue)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a ban record: {raw[:200]!r}: {exc}") from exc
    if record.status not in (418, 429):
        raise ValueError(f"ban record with status {record.status}")
    return record


class KvBus(Protocol):
    """What `SharedBans` needs of `libs.bus.Bus`."""

    async def kv_get(self, key: str) -> tuple[bytes, int] | None: ...

    async def kv_put(self, key: str, value: bytes) -> int: ...

    async def subscribe_core(self, subject: str, callback: Callable[[Any], Awaitable[None]]) -> Any: ...


class SharedBans:
    """Shares one venue's bans between every process that talks to it, through JetStream KV.

    SPEC FM-N2: on a 418 nothing may be sent to the venue until Retry-After, and Binance bans
    the IP (not the process) and escalates the ban when requests keep coming, so one process's 418
    must stop all of them. `start()` hooks the budget: a ban it receives is written to
    `ratelimit.<venue>.ban` in the state bucket; the key's current value is read at start (a
    process started during a ban honours it), watched live (a core subscription on the bucket's
    subject) and re-read every `refresh_s` (in case a live update was missed over a NATS
    reconnect); every record is applied with `RateBudget.apply_shared_ban`. Between a ban's
    arrival in one process and the others reading it lies one KV round trip: a request another
    process sends in that instant cannot be held back.

    Args:
        bus: `libs.bus.Bus` (connected).
        budget: the process's budget for the venue (its `venue` names the key).
        origin: who this process is, e.g. `f"position:{os.getpid()}"` (informational).
        clock_ns: wall clock in integer ns (the record's timestamp).
        log: component logger; None: nothing logged.
        refresh_s: period of the safety re-read of the key.
        bucket: the KV bucket (`subjects.KV_STATE`, where `bus.kv_get/kv_put` write).
    """

    def __init__(
        self,
        bus: KvBus,
        budget: RateBudget,
        *,
        origin: str,
        clock_ns: Callable[[], int],
        log: Logger | None = None,
        refresh_s: float = 5.0,
        bucket: str = subjects.KV_STATE,
    ) -> None:
        self.bus = bus
        self.budget = budget
        self.origin = origin
        self.key = subjects.key_ratelimit_ban(budget.venue)
        self._clock_ns = clock_ns
        self._log = log
        self._refresh_s = refresh_s
        self._subject = f"$KV.{bucket}.{self.key}"
        self._subscription: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._latest_until: dict[int, int] = {}
        self.published = 0
        self.applied = 0
        self.bad_records = 0

    async def start(self) -> None:
        """Hook the budget, subscribe to the key, take the ban in force now (if any)."""
        self.budget.on_ban = self._on_local_ban
        self._subscription = await self.bus.subscribe_core(self._subject, self._on_message)
        await self.refresh()
        self._refresher = asyncio.create_task(self._refresh_forever(), name=f"shared-bans-{self.budget.venue}")

    async def close(self) -> None:
        """Unhook, unsubscribe, and finish the writes in flight (bounded)."""
        if self.budget.on_ban == self._on_local_ban:
            self.budget.on_ban = None
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.flush(2.0)
        if self._subscription is not None:
            with contextlib.suppress(Exception):  # the connection may already be closed
                await self._subscription.unsubscribe()
            self._subscription = None

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait for the ban records being written (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def refresh(self) -> None:
        """Read the key and apply what it holds; bus trouble is logged, never raised."""
        try:
            entry = await self.bus.kv_get(self.key)
        except Exception as exc:  # noqa: BLE001 - NATS down: the live watch and the next refresh catch up
            self._warn("shared_ban_read_failed", error=f"{type(exc).__name__}: {exc}"[:200])
            return
        if entry is not None:
            self._apply(entry[0])

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh()

    async def _on_message(self, msg: Any) -> None:
        if msg.data:
            self._apply(msg.data)

    def _apply(self, raw: bytes) -> None:
        try:
            record = decode_ban(raw)
        except ValueError as exc:
            self.bad_records += 1
            self._warn("shared_ban_bad_record", error=str(exc)[:300])
            return
        if record.venue != self.budget.venue:
            return
        self._latest_until[record.status] = max(self._latest_until.get(record.status, 0), record.until_ns)
        if self.budget.apply_shared_ban(record.status, record.until_ns, f"{record.origin}: {record.reason}"):
            self.applied += 1
            self._warn(
                "shared_ban_applied",
                status=record.status,
                origin=record.origin,
                until_ns=record.until_ns,
                action_taken="no requests to the venue until then" if record.status == 418 else "holding back",
            )

    def _on_local_ban(self, status: int, until_ns: int, reason: str) -> None:
        # The budget is synchronous; the write happens in a task. A shorter ban never overwrites a
        # longer one already known, so a process starting later still sees the longest.
        until_ns = max(until_ns, self._latest_until.get(status, 0))
        self._latest_until[status] = until_ns
        record = RateLimitBanValue(
            venue=self.budget.venue,
            status=status,
            until_ns=until_ns,
            origin=self.origin,
            reason=reason,
            ts_ns=self._clock_ns(),
        )
        task = asyncio.get_running_loop().create_task(self._put(record), name=f"shared-ban-put-{status}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, record: RateLimitBanValue) -> None:
        try:
            await self.bus.kv_put(self.key, encode_value(record))
        except Exception as exc:  # noqa: BLE001 - this process still honours its ban; others may not know
            self._warn("shared_ban_write_failed", error=f"{type(exc).__name__}: {exc}"[:200], status=record.status)
            return
        self.published += 1
        self._warn("shared_ban_recorded", status=record.status, until_ns=record.until_ns, reason=record.reason)

    def _warn(self, event: str, **details: Any) -> None:
        if self._log is not None:
            self._log.warning(event, **details)

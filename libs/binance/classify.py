"""Venue errors → SPEC error classes, and the one retry story built on them (SPEC §6, STYLE 7).

`classify` maps anything a venue call can raise to `ErrorClass` plus a short reason; the tenacity
policies are named after the classes and used in adapters only. `retry_while_wanted` is the policy of
work that must go on for as long as it is wanted (a book's snapshot, start-up reconciliation, an
order query): TRANSIENT and RECOVERABLE errors are retried after the venue's Retry-After or the
breaker's cool-down, PERMANENT and CRITICAL ones stop it at once. An ambiguous order outcome
(`VenueTimeout`, 5xx, -1006/-1007) is never retried blind: its classification says `ambiguous`, the
caller queries by client order id first (FM-N7), and no `retry_policy` predicate retries it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from libs.breaker import BreakerOpen
from proto.enums import ErrorClass

T = TypeVar("T")

RATE_LIMIT_CODES = frozenset({-1003, -1015})
CLOCK_CODES = frozenset({-1021})
AUTH_CODES = frozenset({-1002, -1022, -2014, -2015})
AMBIGUOUS_CODES = frozenset({-1006, -1007})
UNKNOWN_ORDER_CODES = frozenset({-2011, -2013})
INSUFFICIENT_FUNDS_CODES = frozenset({-2018, -2019, -4050})
TRANSIENT_CODES = frozenset({-1001, -1008})
"""-1001 disconnected, -1008 server overloaded: the venue asks to try again."""


@dataclass(frozen=True)
class Classification:
    """What an error means for the caller.

    Attributes:
        error_class: SPEC class (decides retry policy and dead-lettering).
        reason: short machine-readable reason, e.g. ``rate_limited``, ``auth``, ``invalid_order``.
        ambiguous: the operation may have been executed; query before any resend (FM-N7).
        retry_after_s: the venue's `Retry-After`, when it gave one.
    """

    error_class: ErrorClass
    reason: str
    ambiguous: bool = False
    retry_after_s: float | None = None


def classify_venue_error(status: int | None, code: int | None, msg: str = "") -> Classification:
    """Classify a definite venue answer by HTTP status, Binance code and message."""
    text = msg.lower()
    if status == 418 or "banned" in text:
        return Classification(ErrorClass.RECOVERABLE, "ip_banned")
    if status == 429 or code in RATE_LIMIT_CODES:
        return Classification(ErrorClass.RECOVERABLE, "rate_limited")
    if code in AMBIGUOUS_CODES:
        return Classification(ErrorClass.TRANSIENT, "ambiguous_outcome", ambiguous=True)
    if code in CLOCK_CODES:
        return Classification(ErrorClass.RECOVERABLE, "clock_skew")
    if code in AUTH_CODES or status in (401, 403):
        return Classification(ErrorClass.PERMANENT, "auth")
    if code in UNKNOWN_ORDER_CODES:
        return Classification(ErrorClass.PERMANENT, "unknown_order")
    if code in INSUFFICIENT_FUNDS_CODES or "insufficient" in text or "margin is insufficient" in text:
        return Classification(ErrorClass.PERMANENT, "insufficient_funds")
    if code in TRANSIENT_CODES:
        return Classification(ErrorClass.TRANSIENT, "venue_busy")
    if status is not None and status >= 500:
        # The request reached the venue; an order may or may not exist behind a 5xx.
        return Classification(ErrorClass.TRANSIENT, "venue_5xx", ambiguous=True)
    if status == 404:
        return Classification(ErrorClass.PERMANENT, "not_found")
    if code is not None and (-4999 <= code <= -4000 or -2099 <= code <= -2000 or -1199 <= code <= -1100):
        # -11xx request/parameter errors, -20xx order rejections, -4xxx futures order rules.
        return Classification(ErrorClass.PERMANENT, "invalid_order")
    if status is not None and 400 <= status < 500:
        return Classification(ErrorClass.PERMANENT, "bad_request")
    return Classification(ErrorClass.PERMANENT, "unclassified")


def classify(error: BaseException) -> Classification:
    """Classify anything a venue call raised."""
    match error:
        case VenueError():
            found = classify_venue_error(error.status, error.code, error.msg)
            if error.retry_after_s is not None:
                return Classification(found.error_class, found.reason, found.ambiguous, error.retry_after_s)
            return found
        case VenueTimeout():
            return Classification(ErrorClass.TRANSIENT, "timeout", ambiguous=True)
        case VenueUnreachable():
            return Classification(ErrorClass.TRANSIENT, "unreachable")
        case MemoryError() | OSError() if getattr(error, "errno", None) == 28 or isinstance(error, MemoryError):
            return Classification(ErrorClass.CRITICAL, "resource_exhausted")
        case asyncio.TimeoutError():
            return Classification(ErrorClass.TRANSIENT, "timeout", ambiguous=True)
        case _:
            return Classification(ErrorClass.PERMANENT, type(error).__name__)


def _retryable(error_class: ErrorClass) -> Callable[[BaseException], bool]:
    def predicate(error: BaseException) -> bool:
        found = classify(error)
        return found.error_class is error_class and not found.ambiguous and found.reason != "ip_banned"

    return predicate


class _WaitRecoverable(tenacity.wait.wait_base):
    """SPEC §6 RECOVERABLE: 100 ms * 2^n + U(0, 50 ms), or the venue's Retry-After when longer."""

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        base = 0.1 * 2 ** (retry_state.attempt_number - 1) + random.uniform(0.0, 0.05)
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if error is not None:
            retry_after = classify(error).retry_after_s
            if retry_after is not None:
                return max(base, retry_after)
        return base


def retry_policy(error_class: ErrorClass) -> tenacity.AsyncRetrying:
    """The tenacity policy SPEC §6 names for `error_class` (PERMANENT/CRITICAL: a single attempt).

    TRANSIENT: up to 3 quick retries (4 attempts, 50 ms apart plus jitter). RECOVERABLE: 6 attempts
    with exponential backoff (≈ 6.3 s in all). Ambiguous outcomes and IP bans never match a retry
    predicate, so they surface to the caller at once.
    """
    match error_class:
        case ErrorClass.TRANSIENT:
            return tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(4),
                wait=tenacity.wait_fixed(0.05) + tenacity.wait_random(0, 0.05),
                retry=tenacity.retry_if_exception(_retryable(ErrorClass.TRANSIENT)),
                reraise=True,
            )
        case ErrorClass.RECOVERABLE:
            return tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(6),
                wait=_WaitRecoverable(),
                retry=tenacity.retry_if_exception(_retryable(ErrorClass.RECOVERABLE)),
                reraise=True,
            )
        case _:
            return tenacity.AsyncRetrying(stop=tenacity.stop_after_attempt(1), reraise=True)


def passes_with_time(error: BaseException) -> bool:
    """Will this error pass if the same (safe-to-repeat) call is made again later? TRANSIENT and
    RECOVERABLE classes (a ban and an ambiguous outcome included) and an open breaker: yes;
    PERMANENT and CRITICAL: no."""
    if isinstance(error, BreakerOpen):
        return True
    return classify(error).error_class in (ErrorClass.TRANSIENT, ErrorClass.RECOVERABLE)


def wait_asked_s(error: BaseException | None) -> float | None:
    """How long the error itself asks to wait: the venue's Retry-After, or an open breaker's
    cool-down (both carried as `retry_after_s`); None when it does not say."""
    retry_after = getattr(error, "retry_after_s", None)
    if isinstance(retry_after, int | float) and not isinstance(retry_after, bool) and retry_after > 0:
        return float(retry_after)
    return None


@dataclass(frozen=True)
class _WaitAskedOrBackoff(tenacity.wait.wait_base):
    """The wait the error asks for (up to `asked_max_s`), else `first_s` doubling up to `max_s`."""

    first_s: float
    max_s: float
    asked_max_s: float

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        asked = wait_asked_s(outcome.exception() if outcome is not None else None)
        if asked is not None:
            return min(asked, self.asked_max_s)
        return min(self.first_s * 2 ** (retry_state.attempt_number - 1), self.max_s)


def retry_while_wanted(
    wanted: Callable[[], bool],
    *,
    first_wait_s: float,
    max_wait_s: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    retryable: Callable[[BaseException], bool] = passes_with_time,
    asked_max_s: float = 30.0,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> tenacity.AsyncRetrying:
    """TRANSIENT / RECOVERABLE for work wanted until it succeeds: retry while `wanted()` holds.

    Each failure that `retryable` accepts is waited out (the venue's Retry-After or the breaker's
    cool-down when the error carries one, up to `asked_max_s`; else `first_wait_s` doubling up to
    `max_wait_s`) and the call made again, for as long as `wanted()` says so before the wait and
    after it. Anything else (PERMANENT, CRITICAL) is raised at once, as is the last error once the
    work is no longer wanted. Only for calls that are safe to repeat: never an order placement
    (FM-N7).

    Args:
        wanted: is the result still wanted? (a new connection, a closing service: no)
        first_wait_s: the first backoff wait; it doubles after every further failure.
        max_wait_s: the longest backoff wait.
        sleep: how to wait (tests pass a fake that advances a `ManualClock`).
        retryable: which errors pass with time (default `passes_with_time`).
        asked_max_s: the longest wait an error may ask for.
        on_retry: called with the error and the wait before each wait (to log it).
    """

    last_error: list[BaseException] = []

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        outcome, action = retry_state.outcome, retry_state.next_action
        error = outcome.exception() if outcome is not None else None
        if error is not None:
            last_error[:] = [error]
            if on_retry is not None:
                on_retry(error, action.sleep if action is not None else 0.0)

    async def sleep_while_wanted(seconds: float) -> None:
        await sleep(seconds)
        if not wanted() and last_error:
            raise last_error[0]  # no longer wanted after the wait: no further attempt

    return tenacity.AsyncRetrying(
        sleep=sleep_while_wanted,
        stop=lambda _state: not wanted(),
        wait=_WaitAskedOrBackoff(first_wait_s, max_wait_s, asked_max_s),
        retry=tenacity.retry_if_exception(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )


async def call_with_retries(operation: Callable[[], Awaitable[T]]) -> T:
    """Run a safe-to-repeat venue read (query, snapshot, account) under SPEC's retry classes.

    Reads have no side effect, so an ambiguous outcome is simply asked again. Never use this for
    order placement: there an ambiguous outcome must be resolved by a query first (FM-N7).
    """

    def _retryable_read(error: BaseException) -> bool:
        found = classify(error)
        return found.error_class in (ErrorClass.TRANSIENT, ErrorClass.RECOVERABLE) and found.reason != "ip_banned"

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(6),
        wait=_WaitRecoverable(),
        retry=tenacity.retry_if_exception(_retryable_read),
        reraise=True,
    )

    async def attempt() -> T:
        # tenacity only awaits coroutine functions; a lambda returning an awaitable must be wrapped.
        return await operation()

    return await retrying(attempt)

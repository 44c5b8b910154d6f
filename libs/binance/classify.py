"""Venue errors → SPEC error classes, and the one retry story built on them (SPEC §6, STYLE 7).

`classify` maps anything a venue call can raise to `ErrorClass` plus a short reason; the tenacity
policies are named after the classes and used in adapters only. An ambiguous order outcome
(`VenueTimeout`, 5xx, -1006/-1007) is never retried blind: `is_ambiguous` tells the caller to
query by client order id first (FM-N7), so `retry_policy` refuses to build a resend for it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
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


def is_ambiguous(error: BaseException) -> bool:
    """True when the operation may have been executed (query by client order id before resending)."""
    return classify(error).ambiguous


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

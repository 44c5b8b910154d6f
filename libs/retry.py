"""Named tenacity policies for the infrastructure a service depends on (NATS, Postgres), by SPEC error class.

A dependency that is not up yet when a service starts is RECOVERABLE: wait with exponential backoff
(0.2 s doubling, at most 5 s apart) until it answers or a deadline passes, then let the error
surface (the supervisor restarts the service). Venue calls have their own policies, keyed by the
venue error classifier, in `libs.binance.classify`.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_delay, wait_exponential


def recoverable_until_reachable(
    errors: tuple[type[BaseException], ...],
    within_s: float,
    on_retry: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """RECOVERABLE at start-up: retry `errors` with backoff for up to `within_s`, then re-raise.

    Args:
        errors: what an unreachable dependency raises (anything else surfaces at once).
        within_s: how long to keep trying before giving up.
        on_retry: called before each wait (e.g. to log the attempt).
    """
    return AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=wait_exponential(multiplier=0.2, max=5),
        stop=stop_after_delay(within_s),
        before_sleep=on_retry,
        reraise=True,
    )

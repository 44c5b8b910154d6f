"""`retry_while_wanted`: the policy of work wanted until it succeeds (a book's snapshot, start-up
reconciliation, an UNKNOWN order's query), on a `ManualClock` moved by a fake sleep."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from libs.binance.classify import retry_while_wanted
from libs.binance.errors import VenueError, VenueUnreachable
from libs.breaker import BreakerOpen
from libs.clock import ManualClock

S = 1_000_000_000


class Scripted:
    """A call that raises the scripted errors in turn, then answers "ok"; every call is timed."""

    def __init__(self, clock: ManualClock, errors: list[BaseException]) -> None:
        self.clock = clock
        self.errors = list(errors)
        self.calls_at: list[int] = []

    async def __call__(self) -> str:
        self.calls_at.append(self.clock())
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def policy(clock: ManualClock, wanted: Callable[[], bool] = lambda: True, **kwargs: float):
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return retry_while_wanted(wanted, first_wait_s=0.4, max_wait_s=5.0, sleep=sleep, **kwargs)


async def test_retry_when_venue_sends_retry_after_then_next_call_waits_exactly_that_long() -> None:
    clock = ManualClock(0)
    call = Scripted(clock, [VenueError(429, -1003, "Too many requests", retry_after_s=3)])
    assert await policy(clock)(call) == "ok"
    assert call.calls_at == [0, 3 * S]


async def test_retry_when_ip_banned_then_ban_waited_out_capped_at_asked_max() -> None:
    clock = ManualClock(0)
    call = Scripted(clock, [VenueError(418, -1003, "IP banned", retry_after_s=120)])
    assert await policy(clock, asked_max_s=30.0)(call) == "ok"
    assert call.calls_at == [0, 30 * S]


async def test_retry_when_breaker_open_then_next_call_after_its_cool_down() -> None:
    clock = ManualClock(0)
    call = Scripted(clock, [BreakerOpen("venue.binance-usdm", 12.5)])
    assert await policy(clock)(call) == "ok"
    assert call.calls_at == [0, int(12.5 * S)]


async def test_retry_when_error_asks_no_wait_then_backoff_doubles_up_to_max() -> None:
    clock = ManualClock(0)
    call = Scripted(clock, [VenueUnreachable("down")] * 6)
    assert await policy(clock)(call) == "ok"
    gaps = [(b - a) / S for a, b in zip(call.calls_at, call.calls_at[1:], strict=False)]
    assert gaps == [0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


async def test_retry_when_error_permanent_then_raised_at_once_without_waiting() -> None:
    clock = ManualClock(0)
    refused = VenueError(401, -2015, "Invalid API-key, IP, or permissions for action.")
    call = Scripted(clock, [refused])
    with pytest.raises(VenueError) as raised:
        await policy(clock)(call)
    assert raised.value is refused
    assert call.calls_at == [0] and clock() == 0


async def test_retry_when_no_longer_wanted_then_last_error_raised_and_no_further_call() -> None:
    clock = ManualClock(0)
    call = Scripted(clock, [VenueUnreachable("down")] * 10)
    # Wanted for 1 s: the call at 0, 0.4 and 1.2 s; the wait that ends at 2.8 s finds it unwanted.
    with pytest.raises(VenueUnreachable):
        await policy(clock, wanted=lambda: clock() < 1 * S)(call)
    assert call.calls_at == [0, int(0.4 * S)]


async def test_retry_when_retryable_narrowed_then_other_errors_stop_at_once() -> None:
    clock = ManualClock(0)
    call = Scripted(clock, [BreakerOpen("venue.binance-usdm", 30.0)])

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    narrowed = retry_while_wanted(
        lambda: True,
        first_wait_s=0.2,
        max_wait_s=2.0,
        sleep=sleep,
        retryable=lambda error: not isinstance(error, BreakerOpen),
    )
    with pytest.raises(BreakerOpen):
        await narrowed(call)
    assert call.calls_at == [0]

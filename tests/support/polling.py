"""The one polling helper of the tests: generous deadlines, because the CPU is shared."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    check: Callable[[], Any],
    timeout_s: float = 10.0,
    failure: Callable[[], Awaitable[str] | str] | None = None,
    interval_s: float = 0.1,
) -> Any:
    """Call `check` (plain or async) every `interval_s` until it returns something truthy; return that.

    Raises:
        AssertionError: `timeout_s` passed first; its message is `failure()`'s when given (what
            was seen instead, read at that moment).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            message = failure() if failure is not None else "condition not reached in time"
            if inspect.isawaitable(message):
                message = await message
            raise AssertionError(message)
        await asyncio.sleep(interval_s)


def eventually_blocking(check: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.2) -> Any:
    """`eventually` for synchronous tests (blocking clients): call `check` until truthy; return that.

    Raises:
        AssertionError: `timeout_s` passed first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(interval_s)

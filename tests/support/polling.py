"""Polling for an outcome in integration tests: generous deadlines, because the CPU is shared."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    check: Callable[[], Awaitable[Any]],
    timeout_s: float = 10.0,
    failure: Callable[[], Awaitable[str]] | None = None,
) -> Any:
    """Await `check` every 100 ms until it returns something truthy, and return that.

    Raises:
        AssertionError: `timeout_s` passed first; its message is `failure()`'s when given (what
            was seen instead, read at that moment).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(await failure() if failure is not None else "condition not reached in time")
        await asyncio.sleep(0.1)

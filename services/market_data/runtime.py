"""What every part of market-data shares while it runs: the clock, the sleep, the logger, the closed
flag that stops every loop, and the background tasks that `close()` cancels."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from libs.clock import Clock
from libs.logging import Logger
from libs.metrics import ServiceMetrics

Sleep = Callable[[float], Awaitable[None]]


class Runtime:
    """The service's shared run-time context (one per `MarketDataService`).

    Args:
        clock: wall clock in integer ns.
        sleep: `asyncio.sleep` (a fake one in tests).
        log: component logger.
    """

    def __init__(self, *, clock: Clock, sleep: Sleep, log: Logger) -> None:
        self.clock = clock
        self.sleep = sleep
        self.log = log
        self.closed = False
        """Set by `close()`: every loop stops by this flag too, since a cancellation can be
        swallowed by a library's wait_for (Python 3.11) and must not leave a zombie link."""
        self._background: set[asyncio.Task[Any]] = set()
        self.metrics: ServiceMetrics | None = None
        """Where reconnects are counted (set by `main`; None in unit tests)."""

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        """Run `coro` in the background; a failure is logged, and `cancel_all` stops it."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.exception("background_task_failed", task.exception(), task=task.get_name())  # type: ignore[arg-type]

    async def cancel_all(self, others: Iterable[asyncio.Task[Any]] = ()) -> None:
        """Cancel the background tasks and `others`, and wait for them to end."""
        tasks = [*others, *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._background.clear()

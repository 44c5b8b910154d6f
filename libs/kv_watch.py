"""Keys of a KV bucket kept in memory by a watch: their values delivered at the start, then every change.

A service that consults a record on its hot path (risk: a strategy's order mode at every order)
watches it instead of reading it per decision. `watch_keys` returns only once the values stored
at the start have been handed to the caller, so a consumer started after it already decides on
what is persisted. The watch is a JetStream ordered consumer (`nats.js.kv.KeyValue.watch`): after
a disconnect or a missed heartbeat it resumes after the last revision it delivered, so a change
made meanwhile still arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from nats.js.kv import KeyValue

from libs.bus import Bus
from libs.logging import Logger
from proto import subjects

OnChange = Callable[[str, bytes | None], None]
"""Called with (key, value) for every value of a watched key; value None when it was deleted or purged."""

CATCH_UP_TIMEOUT_S = 30.0


class KeyWatch:
    """A running watch; `stop` ends it."""

    def __init__(self, watcher: KeyValue.KeyWatcher, on_change: OnChange, log: Logger, pattern: str) -> None:
        self._watcher = watcher
        self._on_change = on_change
        self._log = log
        self.pattern = pattern
        self.changes = 0
        """Values delivered so far (at the start included)."""
        self._task: asyncio.Task[None] | None = None

    def deliver(self, entry: KeyValue.Entry) -> None:
        """Hand one watched value to the caller; a failing handler is logged, the watch goes on."""
        deleted = entry.operation is not None  # KV-Operation DEL or PURGE: no value any more
        self.changes += 1
        try:
            self._on_change(entry.key, None if deleted else (entry.value or b""))
        except Exception as exc:  # noqa: BLE001 - one bad value must not end the watch of every key
            self._log.exception("kv_watch_handler_failed", exc, key=entry.key, action_taken="value skipped")

    async def catch_up(self, timeout_s: float) -> None:
        """Deliver the values stored at the start (the watcher marks their end with None).

        Raises:
            TimeoutError: they did not all arrive within `timeout_s`.
        """
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                entry = await self._watcher.updates(timeout=max(remaining, 0.001))
            except TimeoutError as exc:
                raise TimeoutError(f"KV watch {self.pattern}: stored values not delivered in {timeout_s} s") from exc
            if not isinstance(entry, KeyValue.Entry):
                return  # None: the stored values are all delivered (a stop sentinel: nothing more comes)
            self.deliver(entry)

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name=f"kv-watch {self.pattern}")

    async def _follow(self) -> None:
        async for entry in self._watcher:
            if entry is not None:
                self.deliver(entry)

    async def stop(self) -> None:
        """Stop watching (idempotent)."""
        with contextlib.suppress(Exception):
            await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def watch_keys(
    bus: Bus,
    pattern: str,
    on_change: OnChange,
    log: Logger,
    *,
    bucket: str = subjects.KV_STATE,
    timeout_s: float = CATCH_UP_TIMEOUT_S,
) -> KeyWatch:
    """Watch the keys matching `pattern` (NATS wildcards, e.g. `strategy_mode.*`).

    Returns once every value stored at the start went to `on_change`; later changes follow in
    the background until `KeyWatch.stop`.

    Raises:
        TimeoutError: the stored values did not arrive within `timeout_s` (the watch is stopped).
    """
    kv = await bus.kv(bucket)
    watch = KeyWatch(await kv.watch(pattern), on_change, log, pattern)
    try:
        await watch.catch_up(timeout_s)
    except BaseException:
        await watch.stop()
        raise
    watch.start()
    return watch

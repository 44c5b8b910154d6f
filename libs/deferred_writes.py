"""Row writes that could not be made at once, kept in order and retried one by one (SPEC FM-C3,
§8 "DLQ after a bounded number of deliveries").

A writer whose row could not be written hands it here with the error. `flush` retries the kept
rows oldest first, each on its own, by what the error means (`libs.store_errors`):

- the store is down: stop, keep every row and the order; the next flush tries the same row first;
- this row is bad: it goes to the dead-letter queue at once with the reason, the rest goes on;
- unknown: retried with later flushes; after `max_attempts` failed attempts it is dead-lettered.

So a row Postgres refuses never holds back the rows deferred after it, and an outage never sends a
good row to the dead-letter queue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from libs.logging import Logger
from libs.store_errors import WriteFailure, classify_write_error, describe

Write = Callable[[], Awaitable[None]]
DeadLetter = Callable[[str, str, int], Awaitable[None]]
"""`(key, reason, attempts)`: put the row on the dead-letter queue (raises when that cannot be done)."""

DEFAULT_MAX_ATTEMPTS = 5


@dataclass
class Deferred:
    """One kept row: how to write it and why it is waiting."""

    write: Write
    failure: WriteFailure
    reason: str
    attempts: int
    """Failed attempts that were not outages (an outage is not the row's fault and is not counted)."""


class DeferredWrites:
    """Rows that wait for their write, in the order they were first deferred, one per key.

    Args:
        name: what a row is, for the log events (`projection`: `projection_write_deferred`, ...).
        log: structured logger.
        dead_letter: puts a row on the dead-letter queue.
        max_attempts: failed attempts (outages not counted) before an unclassified failure is
            dead-lettered.
    """

    def __init__(
        self, name: str, log: Logger, dead_letter: DeadLetter, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ) -> None:
        self.name = name
        self.log = log
        self.dead_letter = dead_letter
        self.max_attempts = max_attempts
        self.pending: dict[str, Deferred] = {}
        self.dead_lettered = 0

    def __len__(self) -> int:
        return len(self.pending)

    def __contains__(self, key: str) -> bool:
        return key in self.pending

    def defer(self, key: str, write: Write, exc: BaseException) -> WriteFailure:
        """Keep a row whose write failed with `exc` (a key already kept keeps its place)."""
        failure = classify_write_error(exc)
        counted = 0 if failure is WriteFailure.DEPENDENCY_DOWN else 1
        if not self.pending:
            self.log.warning(
                f"{self.name}_write_deferred",
                key=key,
                failure=failure.value,
                error=describe(exc, 200),
                action_taken="written later; a row the store refuses goes to the dead-letter queue",
            )
        kept = self.pending.get(key)
        if kept is None:
            self.pending[key] = Deferred(write, failure, describe(exc), counted)
        else:
            kept.write, kept.failure, kept.reason = write, failure, describe(exc)
            kept.attempts += counted
        return failure

    async def write_or_defer(self, key: str, write: Write, later: Write | None = None) -> bool:
        """Write a row now; if that fails, keep `later` (default: `write`) for `flush`; a bad row is
        dead-lettered at once.

        Returns:
            True when the row was written now.
        """
        try:
            await write()
        except Exception as exc:  # noqa: BLE001 - every failure is classified; none is lost
            if self.defer(key, later or write, exc) is WriteFailure.BAD_ROW:
                await self._try_dead_letter(key)
            return False
        return True

    async def flush(self) -> int:
        """Retry the kept rows oldest first (see the module docstring).

        Returns:
            How many rows were written (dead-lettered rows are not counted).
        """
        written = 0
        for key in list(self.pending):
            kept = self.pending.get(key)
            if kept is None:
                continue
            if kept.failure is WriteFailure.BAD_ROW or kept.attempts >= self.max_attempts:
                if not await self._try_dead_letter(key):
                    break  # the dead-letter queue cannot be reached: keep everything, in order
                continue
            try:
                await kept.write()
            except Exception as exc:  # noqa: BLE001 - classified below; none is lost
                failure = self.defer(key, kept.write, exc)
                if failure is WriteFailure.DEPENDENCY_DOWN:
                    break  # still down: the same row first next time
                if (failure is WriteFailure.BAD_ROW or kept.attempts >= self.max_attempts) and not (
                    await self._try_dead_letter(key)
                ):
                    break
                continue
            del self.pending[key]
            written += 1
        if written:
            self.log.info(f"{self.name}_writes_caught_up", rows=written, pending=len(self.pending))
        return written

    async def _try_dead_letter(self, key: str) -> bool:
        kept = self.pending[key]
        try:
            await self.dead_letter(key, kept.reason, max(kept.attempts, 1))
        except Exception as exc:  # noqa: BLE001 - the row stays kept and is tried again
            self.log.error(
                "dead_letter_failed", key=key, error=describe(exc, 300), action_taken="row kept, tried again"
            )
            return False
        del self.pending[key]
        self.dead_lettered += 1
        self.log.error(
            f"{self.name}_row_dead_lettered",
            key=key,
            reason=kept.reason[:300],
            attempts=max(kept.attempts, 1),
            action_taken="on the dead-letter queue; the rows behind it go on",
        )
        return True

"""One classifier for every writer (issue 15, point 2): a failed write means the store is down (wait,
keep order), this row is bad (dead-letter it) or unknown (retry it alone, bounded), by the SQLSTATE
class of the error and never by the exception's base type; and the deferred rows of a writer are
retried one by one so a bad row never holds back the good ones behind it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import nats.errors
import pytest

from libs.deferred_writes import DeferredWrites
from libs.errors import DependencyUnavailable, PermanentError, TransientError
from libs.logging import get_logger
from libs.store_errors import WriteFailure, classify_write_error, describe
from tests.unit.test_position_retention import RETENTION, S, approved_at, filling_venue
from tests.unit.test_position_venue_link import DELIVERY, FakeBus, FakeProjections, service

F = WriteFailure
exc = asyncpg.exceptions


def pg(kind: type[asyncpg.PostgresError], message: str = "refused") -> asyncpg.PostgresError:
    return kind(message)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # Bad rows: every data exception and constraint violation, whatever its Python base type.
        (pg(exc.NumericValueOutOfRangeError), F.BAD_ROW),
        (pg(exc.InvalidTextRepresentationError), F.BAD_ROW),
        (pg(exc.CharacterNotInRepertoireError), F.BAD_ROW),
        (pg(exc.UntranslatableCharacterError), F.BAD_ROW),
        (pg(exc.StringDataRightTruncationError), F.BAD_ROW),
        (pg(exc.CheckViolationError), F.BAD_ROW),
        (pg(exc.NotNullViolationError), F.BAD_ROW),
        (pg(exc.ProgramLimitExceededError), F.BAD_ROW),
        (pg(asyncpg.DataError), F.BAD_ROW),  # SQLSTATE 22000: asyncpg cannot encode Decimal('1E-20000')
        (asyncpg.exceptions._base.DataError("invalid input for query argument"), F.BAD_ROW),  # an InterfaceError
        (PermanentError("no"), F.BAD_ROW),
        # The dependency is down: wait.
        (pg(exc.ConnectionDoesNotExistError), F.DEPENDENCY_DOWN),
        (pg(exc.CannotConnectNowError), F.DEPENDENCY_DOWN),
        (pg(exc.TooManyConnectionsError), F.DEPENDENCY_DOWN),
        (pg(exc.AdminShutdownError), F.DEPENDENCY_DOWN),
        (pg(exc.DiskFullError), F.DEPENDENCY_DOWN),
        (pg(exc.UndefinedTableError), F.DEPENDENCY_DOWN),
        (asyncpg.InterfaceError("pool is closing"), F.DEPENDENCY_DOWN),
        (asyncpg.exceptions.InternalClientError("broken"), F.DEPENDENCY_DOWN),
        (ConnectionRefusedError(111, "refused"), F.DEPENDENCY_DOWN),
        (TimeoutError(), F.DEPENDENCY_DOWN),
        (DependencyUnavailable("postgres"), F.DEPENDENCY_DOWN),
        (nats.errors.ConnectionClosedError(), F.DEPENDENCY_DOWN),
        (nats.errors.TimeoutError(), F.DEPENDENCY_DOWN),
        # Neither: retried on its own, bounded.
        (pg(exc.DeadlockDetectedError), F.RETRY),
        (pg(exc.SerializationError), F.RETRY),
        (pg(exc.QueryCanceledError), F.RETRY),
        (pg(exc.LockNotAvailableError), F.RETRY),
        (TransientError("later"), F.RETRY),
        (ValueError("?"), F.RETRY),
    ],
)
def test_classify_when_error_then_its_class(error: BaseException, expected: WriteFailure) -> None:
    assert classify_write_error(error) is expected


def test_describe_when_postgres_error_then_type_sqlstate_and_message_cut() -> None:
    text = describe(pg(exc.NumericValueOutOfRangeError, "numeric field overflow " + "x" * 2000), 120)
    assert text.startswith("NumericValueOutOfRangeError 22003: numeric field overflow")
    assert len(text) == 120


# ---------------------------------------------------------------------- DeferredWrites


class Store:
    """Rows by key; `refuse` rows raise as Postgres refusing the value; `down` raises as an outage."""

    def __init__(self) -> None:
        self.rows: list[str] = []
        self.refuse: set[str] = set()
        self.flaky: dict[str, int] = {}
        self.down = False

    def writer(self, key: str) -> Callable[[], object]:
        async def write() -> None:
            if self.down:
                raise ConnectionRefusedError(111, "connection refused")
            if key in self.refuse:
                raise exc.NumericValueOutOfRangeError("value overflows numeric format")
            if self.flaky.get(key, 0) > 0:
                self.flaky[key] -= 1
                raise exc.DeadlockDetectedError("deadlock detected")
            self.rows.append(key)

        return write


class Letters:
    def __init__(self) -> None:
        self.letters: list[tuple[str, str, int]] = []
        self.down = False

    async def __call__(self, key: str, reason: str, attempts: int) -> None:
        if self.down:
            raise nats.errors.ConnectionClosedError()
        self.letters.append((key, reason, attempts))


def writes(letters: Letters, max_attempts: int = 3) -> DeferredWrites:
    return DeferredWrites("projection", get_logger("test"), letters, max_attempts=max_attempts)


async def test_write_when_row_refused_then_dead_lettered_at_once_with_reason_and_next_rows_written() -> None:
    store, letters = Store(), Letters()
    rows = writes(letters)
    store.refuse.add("order:bad")

    for key in ("order:a", "order:bad", "order:b"):
        await rows.write_or_defer(key, store.writer(key))

    assert store.rows == ["order:a", "order:b"]
    assert [(key, attempts) for key, _, attempts in letters.letters] == [("order:bad", 1)]
    assert "NumericValueOutOfRangeError 22003" in letters.letters[0][1]
    assert len(rows) == 0


async def test_flush_when_bad_row_deferred_among_good_then_good_written_bad_dead_lettered_none_stuck() -> None:
    store, letters = Store(), Letters()
    rows = writes(letters)
    store.down = True
    for key in ("order:a", "order:bad", "order:b", "fill:c:1"):
        await rows.write_or_defer(key, store.writer(key))
    assert list(rows.pending) == ["order:a", "order:bad", "order:b", "fill:c:1"]
    store.down = False
    store.refuse.add("order:bad")

    assert await rows.flush() == 3

    assert store.rows == ["order:a", "order:b", "fill:c:1"]
    assert [key for key, _, _ in letters.letters] == ["order:bad"]
    assert len(rows) == 0
    assert await rows.flush() == 0  # nothing repeats


async def test_flush_when_store_still_down_then_nothing_written_nothing_dead_lettered_order_kept() -> None:
    store, letters = Store(), Letters()
    rows = writes(letters, max_attempts=2)
    store.down = True
    for key in ("order:a", "order:b", "order:c"):
        await rows.write_or_defer(key, store.writer(key))

    for _ in range(10):  # an outage, however long, is not the rows' fault
        assert await rows.flush() == 0

    assert letters.letters == [] and list(rows.pending) == ["order:a", "order:b", "order:c"]
    store.down = False
    assert await rows.flush() == 3
    assert store.rows == ["order:a", "order:b", "order:c"]


async def test_flush_when_unclassified_failure_repeats_then_dead_lettered_after_bound_others_proceed() -> None:
    store, letters = Store(), Letters()
    rows = writes(letters, max_attempts=3)
    store.flaky = {"order:x": 100, "order:y": 1}
    for key in ("order:x", "order:y", "order:z"):
        await rows.write_or_defer(key, store.writer(key))
    assert store.rows == ["order:z"]

    assert await rows.flush() == 1  # y succeeds on its second attempt; x is retried alone
    assert store.rows == ["order:z", "order:y"] and list(rows.pending) == ["order:x"]
    await rows.flush()
    await rows.flush()

    assert [(key, attempts) for key, _, attempts in letters.letters] == [("order:x", 3)]
    assert "DeadlockDetectedError 40P01" in letters.letters[0][1]
    assert len(rows) == 0


async def test_flush_when_dead_letter_queue_unreachable_then_row_kept_and_tried_again() -> None:
    store, letters = Store(), Letters()
    rows = writes(letters)
    store.refuse.add("order:bad")
    letters.down = True
    await rows.write_or_defer("order:bad", store.writer("order:bad"))
    assert list(rows.pending) == ["order:bad"]  # never lost

    letters.down = False
    await rows.flush()

    assert [key for key, _, _ in letters.letters] == ["order:bad"] and len(rows) == 0


# ---------------------------------------------------------------------- a consumer's lookup


class RefusingProjections(FakeProjections):
    """Postgres refuses the lookup itself (as it refuses a NUL in a text parameter)."""

    async def find_order(self, client_order_id: str) -> Any:
        raise exc.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00')


@pytest.mark.parametrize(
    ("projections", "raised"),
    [(RefusingProjections, PermanentError), (FakeProjections, DependencyUnavailable)],
)
async def test_old_approval_when_lookup_fails_then_bad_id_dead_lettered_outage_waited(
    projections: type[FakeProjections], raised: type[Exception]
) -> None:
    venue, bus, store = filling_venue(), FakeBus(), projections()
    svc = service(venue, bus, store)
    svc.core.retention = RETENTION
    message = approved_at("old", svc.core.clock())
    await svc.on_approved(message, DELIVERY)
    svc.core.clock.now += 120 * S  # type: ignore[attr-defined]
    svc.integrity.trim()
    store.down = True  # FakeProjections: an outage (OSError); RefusingProjections refuses anyway

    with pytest.raises(raised) as caught:
        await svc.on_approved(message, DELIVERY)

    assert classify_write_error(caught.value) is (
        WriteFailure.BAD_ROW if raised is PermanentError else WriteFailure.DEPENDENCY_DOWN
    )
    assert venue.calls.count("place_order") == 1  # never sent twice

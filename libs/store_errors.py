"""What a failed write means, for every writer of rows and every bus consumer: the store is down
(wait and keep order: nothing is lost, nothing is skipped) or this row is bad (dead-letter it, so
everything behind it proceeds), or neither is known (retry it on its own, a bounded number of times).

The answer comes from the SQLSTATE class of a Postgres error, never from the exception's base type:
asyncpg raises a value it cannot encode (`Decimal('1E-20000')`, an int beyond bigint) as a
`PostgresError` with SQLSTATE 22000, the same base type as a broken connection, and a client-side
`DataError` is an `InterfaceError`, the base type of "connection closed". Both are bad rows.
"""

from __future__ import annotations

from enum import StrEnum

import asyncpg
import nats.errors
import nats.js.errors

from libs.errors import DependencyUnavailable, PermanentError


class WriteFailure(StrEnum):
    """How a writer handles one failed write."""

    DEPENDENCY_DOWN = "dependency_down"
    """The store (or the bus) cannot be used at all now: wait, retry the same row first, keep order."""
    BAD_ROW = "bad_row"
    """The store refuses this row and always will: dead-letter it with the reason, go on with the rest."""
    RETRY = "retry"
    """Neither is known (a deadlock, a cancelled statement, an unclassified error): retry the row on
    its own; after a bounded number of attempts it is dead-lettered."""


_BAD_ROW_CLASSES = frozenset(
    {
        "22",  # data exception: numeric out of range, invalid text representation, NUL, too long...
        "23",  # integrity constraint violation: check, not-null, foreign key, unique
        "54",  # program limit exceeded by this row: index row or jsonb too large
    }
)
_DOWN_CLASSES = frozenset(
    {
        "08",  # connection exception
        "28",  # invalid authorization: every row would fail the same way
        "3D",  # the database does not exist
        "53",  # insufficient resources: too many connections, disk full, out of memory
        "57",  # operator intervention: shutdown, cannot connect now (57014, a cancel, is a retry)
        "58",  # system error: I/O error in the server
        "XX",  # internal error: corrupted data or index, not this row's fault
        "42",  # a missing table or column, a permission: the deployment, not the row
        "0A",  # feature not supported: the statement, not the row
    }
)
_RETRY_STATES = frozenset({"57014"})  # query_canceled (statement timeout): this attempt only
_BUS_DOWN: tuple[type[BaseException], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a Postgres error (None for anything else)."""
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def classify_write_error(exc: BaseException) -> WriteFailure:
    """Classify an error raised by a write (a Postgres statement or a bus handler's effect).

    Args:
        exc: the error.

    Returns:
        `DEPENDENCY_DOWN`, `BAD_ROW` or `RETRY` (see `WriteFailure`).
    """
    state = sqlstate(exc)
    if state is not None:
        if state in _RETRY_STATES:
            return WriteFailure.RETRY
        if state[:2] in _BAD_ROW_CLASSES:
            return WriteFailure.BAD_ROW
        if state[:2] in _DOWN_CLASSES:
            return WriteFailure.DEPENDENCY_DOWN
        return WriteFailure.RETRY  # 40 (serialization, deadlock), 55 (lock not available), unknown
    match exc:
        case PermanentError() | asyncpg.exceptions._base.DataError():
            # The client-side DataError (a wrong argument) subclasses InterfaceError: checked first.
            return WriteFailure.BAD_ROW
        case (
            DependencyUnavailable()
            | OSError()
            | TimeoutError()
            | asyncpg.InterfaceError()
            | asyncpg.exceptions.InternalClientError()
        ):
            return WriteFailure.DEPENDENCY_DOWN
    if isinstance(exc, _BUS_DOWN):
        return WriteFailure.DEPENDENCY_DOWN
    return WriteFailure.RETRY


def describe(exc: BaseException, limit: int = 1000) -> str:
    """`<type>[ <SQLSTATE>]: <message>` of an error, cut to `limit` characters (a dead letter's reason)."""
    state = sqlstate(exc)
    text = f"{type(exc).__name__}{f' {state}' if state else ''}: {exc}"
    return text[:limit]

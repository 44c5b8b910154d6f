"""The gateway's Postgres adapter: every SQL statement the gateway runs, as typed functions.

Reads of the projections (`orders`, `positions`), the audit log (`audit_events`), the dead letters
and the idempotency keys. A function taking a pool runs one call through `pg_call`, so any
connection-level failure becomes a 503 with a clear reason (FM-C3); a function taking a
connection is one statement inside a transaction its caller holds.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import msgspec

from libs.db import DB_TIMEOUT_S
from proto import messages as proto_messages
from proto.enums import OrderStatus
from services.gateway.domain import jsonable
from services.gateway.errors import ApiError, unavailable

T = TypeVar("T")

PG_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # A connection broken mid-operation when Postgres dies ("cannot switch to state ...").
    asyncpg.exceptions.InternalClientError,
    asyncio.TimeoutError,
)
VALUE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,  # SQLSTATE class 22: a value Postgres refuses
    asyncpg.exceptions._base.DataError,  # an argument the driver cannot encode (an int above int64)
)
PG_CALL_TIMEOUT_S = DB_TIMEOUT_S + 1.0
"""A Postgres read or write answers within the statement timeout, or the caller gets a 503 (FM-N5)."""
POSTGRES_DOWN_MESSAGE = (
    "postgres unavailable: this read needs the projections/audit store; trading continues on the event log "
    "and the projections catch up when it is back (FM-C3)"
)


async def pg_call(pool: asyncpg.Pool | None, operation: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run a Postgres operation; any connection-level failure becomes a 503.

    Raises:
        ApiError: 503 `dependency_unavailable` when Postgres is not configured or unreachable.
    """
    if pool is None:
        raise unavailable("postgres", POSTGRES_DOWN_MESSAGE, reason="not connected")
    try:
        return await asyncio.wait_for(operation(pool), PG_CALL_TIMEOUT_S)
    except VALUE_ERRORS as exc:
        # Postgres (or the driver encoding the argument) refused a value: the caller's input, not an outage.
        raise ApiError(
            422, "invalid_value", "a value is outside what the store accepts", {"reason": str(exc)[:300]}
        ) from exc
    except PG_ERRORS as exc:
        reason = f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__
        raise unavailable("postgres", POSTGRES_DOWN_MESSAGE, reason=reason) from exc


async def ping(pool: asyncpg.Pool) -> None:
    """One round trip (`SELECT 1`); the caller bounds it and maps the failure."""
    await pool.fetchval("SELECT 1")


def json_column(raw: Any) -> Any:
    """A JSON column read as text (`payload::text`) decoded; other values as they are."""
    return msgspec.json.decode(raw) if isinstance(raw, str | bytes) else raw


def placeholder(args: list[Any], value: Any) -> str:
    """Append a query parameter to `args`; its `$n` placeholder."""
    args.append(value)
    return f"${len(args)}"


def where_clause(conditions: list[str]) -> str:
    """`WHERE` and the conditions joined by `AND`, or "" when there are none."""
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""


def window_conditions(
    column: str, since_ns: int | None, until_ns: int | None, before_id: int | None, param: Callable[[Any], str]
) -> list[str]:
    """`column` in [since_ns, until_ns) and `id` below `before_id` (a keyset page), each when given."""
    conditions: list[str] = []
    if since_ns is not None:
        conditions.append(f"{column} >= {param(since_ns)}")
    if until_ns is not None:
        conditions.append(f"{column} < {param(until_ns)}")
    if before_id is not None:
        conditions.append(f"id < {param(before_id)}")
    return conditions


# --------------------------------------------------------------------------- orders and positions

ORDER_COLUMNS = (
    "client_order_id, idempotency_key, source, strategy, venue, symbol, side, type, quantity, price, stop_price, "
    "reduce_only, status, filled_quantity, average_price, venue_order_id, reason, created_ns, updated_ns, "
    "resend_used"
)


def order_view(row: asyncpg.Record) -> dict[str, Any]:
    """An `orders` row as the API shows it (`proto.messages.OrderView`)."""
    fields = {key: row[key] for key in row.keys() if key != "idempotency_key"}
    view = msgspec.convert({**fields, "order_id": row["client_order_id"]}, proto_messages.OrderView)
    return {key: jsonable(value) for key, value in msgspec.to_builtins(view, builtin_types=(Decimal,)).items()}


async def load_order(pool: asyncpg.Pool | None, order_id: str) -> asyncpg.Record | None:
    """The `orders` row of a client order id, or None."""
    return await pg_call(
        pool, lambda pool: pool.fetchrow(f"SELECT {ORDER_COLUMNS} FROM orders WHERE client_order_id = $1", order_id)
    )


async def list_orders(
    pool: asyncpg.Pool | None, status: OrderStatus | None, before: tuple[int, str] | None, limit: int
) -> list[asyncpg.Record]:
    """Up to `limit` orders, newest first, optionally of one status and before a keyset
    position `(created_ns, client_order_id)`."""
    args: list[Any] = []
    conditions: list[str] = []
    if status is not None:
        conditions.append(f"status = {placeholder(args, status.value)}")
    if before is not None:
        created_ns, client_order_id = placeholder(args, before[0]), placeholder(args, before[1])
        conditions.append(f"(created_ns, client_order_id) < ({created_ns}, {client_order_id})")
    query = (
        f"SELECT {ORDER_COLUMNS} FROM orders {where_clause(conditions)} "
        f"ORDER BY created_ns DESC, client_order_id DESC LIMIT {placeholder(args, limit)}"
    )
    return await pg_call(pool, lambda pool: pool.fetch(query, *args))


async def list_positions(pool: asyncpg.Pool | None) -> list[asyncpg.Record]:
    """Every row of the `positions` projection, by venue and symbol."""
    return await pg_call(
        pool,
        lambda pool: pool.fetch(
            "SELECT venue, symbol, quantity, average_entry_price, realized_pnl, updated_ns FROM positions "
            "ORDER BY venue, symbol"
        ),
    )


# --------------------------------------------------------------------------- audit log


@dataclass(frozen=True)
class AuditEventFilter:
    """Which `audit_events` a page covers; payload fields match exactly, `subject` is a prefix."""

    types: tuple[str, ...] = ()
    component: str | None = None
    symbol: str | None = None
    correlation_id: str | None = None
    operator: str | None = None
    subject: str | None = None
    stream: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    before_id: int | None = None

    def where(self, args: list[Any]) -> str:
        """The SQL `WHERE` clause (or "") for this filter; appends its parameters to `args`."""
        param = functools.partial(placeholder, args)
        conditions: list[str] = []
        if self.types:
            conditions.append(f"type = ANY({param(list(self.types))}::text[])")
        for key, value in (
            ("component", self.component),
            ("symbol", self.symbol),
            ("correlation_id", self.correlation_id),
            ("operator", self.operator),
        ):
            if value:
                conditions.append(f"payload->>'{key}' = {param(value)}")
        if self.subject:
            conditions.append(f"starts_with(subject, {param(self.subject)})")
        if self.stream:
            conditions.append(f"stream = {param(self.stream)}")
        conditions += window_conditions("ts_event_ns", self.since_ns, self.until_ns, self.before_id, param)
        return where_clause(conditions)


async def list_audit_events(pool: asyncpg.Pool | None, selection: AuditEventFilter, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` audit events, newest first; `payload` as JSON text (see `json_column`)."""
    args: list[Any] = []
    where = selection.where(args)
    args.append(limit)
    query = (
        "SELECT id, stream, stream_seq, subject, type, message_id, ts_event_ns, payload::text AS payload "
        f"FROM audit_events {where} ORDER BY id DESC LIMIT ${len(args)}"
    )
    return await pg_call(pool, lambda pool: pool.fetch(query, *args))


async def alert_events(pool: asyncpg.Pool | None, recent: int) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """(the latest raise/resolve event of every alert key, the `recent` newest raise/resolve events)."""

    async def query(pool: asyncpg.Pool) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        latest = await pool.fetch(
            "SELECT DISTINCT ON (payload->>'key') id, type, ts_event_ns, payload::text AS payload "
            "FROM audit_events WHERE type IN ('AlertRaised', 'AlertResolved') "
            "ORDER BY payload->>'key', id DESC"
        )
        history = await pool.fetch(
            "SELECT id, type, ts_event_ns, payload::text AS payload FROM audit_events "
            "WHERE type IN ('AlertRaised', 'AlertResolved') ORDER BY id DESC LIMIT $1",
            recent,
        )
        return latest, history

    return await pg_call(pool, query)


# --------------------------------------------------------------------------- dead letters

DLQ_COLUMNS = "id, consumer, subject, reason, deliveries, payload, original_message_id, status, created_ns, updated_ns"


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a list, stats or bulk retry covers.

    `operation` is what failed: a consumer name (`risk-orders`) or a subject prefix
    (`cmd.order.submit`); `reason` matches a substring, case-insensitively.
    """

    ids: tuple[int, ...] = ()
    consumer: str | None = None
    operation: str | None = None
    subject: str | None = None
    reason: str | None = None
    status: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    before_id: int | None = None

    def where(self, args: list[Any]) -> str:
        """The SQL `WHERE` clause (or "") for this filter; appends its parameters to `args`."""
        param = functools.partial(placeholder, args)
        conditions: list[str] = []
        if self.ids:
            conditions.append(f"id = ANY({param(list(self.ids))}::bigint[])")
        if self.consumer:
            conditions.append(f"consumer = {param(self.consumer)}")
        if self.operation:
            value = param(self.operation)
            conditions.append(f"(consumer = {value} OR starts_with(subject, {value}))")
        if self.subject:
            conditions.append(f"starts_with(subject, {param(self.subject)})")
        if self.reason:
            escaped = self.reason.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(f"reason ILIKE {param(f'%{escaped}%')}")
        if self.status:
            conditions.append(f"status = {param(self.status)}")
        conditions += window_conditions("created_ns", self.since_ns, self.until_ns, self.before_id, param)
        return where_clause(conditions)

    @property
    def empty(self) -> bool:
        """True when nothing narrows the selection."""
        return self == DeadLetterFilter()


async def list_dead_letters(pool: asyncpg.Pool | None, selection: DeadLetterFilter, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` dead letters, newest first."""
    args: list[Any] = []
    where = selection.where(args)
    args.append(limit)
    query = f"SELECT {DLQ_COLUMNS} FROM dead_letters {where} ORDER BY id DESC LIMIT ${len(args)}"
    return await pg_call(pool, lambda pool: pool.fetch(query, *args))


async def dead_letter_ids(pool: asyncpg.Pool | None, selection: DeadLetterFilter, limit: int) -> list[int]:
    """The ids of up to `limit` dead letters, oldest first."""
    args: list[Any] = []
    where = selection.where(args)
    args.append(limit)
    query = f"SELECT id FROM dead_letters {where} ORDER BY id LIMIT ${len(args)}"
    return [row["id"] for row in await pg_call(pool, lambda pool: pool.fetch(query, *args))]


async def dead_letter_counts(pool: asyncpg.Pool | None) -> list[asyncpg.Record]:
    """Dead letters counted (`n`) by consumer, status, subject and `reason_class` (the reason up to
    its first colon), each group with its `oldest` `created_ns`."""
    return await pg_call(
        pool,
        lambda pool: pool.fetch(
            "SELECT consumer, status, subject, split_part(reason, ':', 1) AS reason_class, count(*) AS n, "
            "min(created_ns) AS oldest FROM dead_letters GROUP BY consumer, status, subject, reason_class"
        ),
    )


async def load_dead_letter(pool: asyncpg.Pool | None, letter_id: int) -> asyncpg.Record | None:
    """One dead letter, or None."""
    return await pg_call(
        pool, lambda pool: pool.fetchrow(f"SELECT {DLQ_COLUMNS} FROM dead_letters WHERE id = $1", letter_id)
    )


async def delete_dead_letter(pool: asyncpg.Pool | None, letter_id: int) -> asyncpg.Record | None:
    """Delete a dead letter; what it held (for the audit), or None when there was none."""
    return await pg_call(
        pool,
        lambda pool: pool.fetchrow(
            "DELETE FROM dead_letters WHERE id = $1 RETURNING id, consumer, subject, reason, original_message_id",
            letter_id,
        ),
    )


async def lock_dead_letter(conn: asyncpg.Connection, letter_id: int) -> asyncpg.Record | None:
    """A dead letter locked (`FOR UPDATE`) until the caller's transaction ends, or None."""
    return await conn.fetchrow(f"SELECT {DLQ_COLUMNS} FROM dead_letters WHERE id = $1 FOR UPDATE", letter_id)


async def mark_dead_letter_retried(conn: asyncpg.Connection, letter_id: int, now_ns: int) -> asyncpg.Record | None:
    """Set a dead letter's status to RETRIED; the updated row."""
    return await conn.fetchrow(
        f"UPDATE dead_letters SET status = 'RETRIED', updated_ns = $2 WHERE id = $1 RETURNING {DLQ_COLUMNS}",
        letter_id,
        now_ns,
    )


# --------------------------------------------------------------------------- idempotency keys


async def insert_idempotency_claim(conn: asyncpg.Connection, key: str, fingerprint: str, now_ns: int) -> bool:
    """Record `key` as in progress unless it is known; True when this call recorded it."""
    inserted = await conn.fetchval(
        "INSERT INTO idempotency_keys (key, fingerprint, status, created_ns) "
        "VALUES ($1, $2, 'in_progress', $3) ON CONFLICT (key) DO NOTHING RETURNING key",
        key,
        fingerprint,
        now_ns,
    )
    return inserted is not None


async def lock_idempotency_key(conn: asyncpg.Connection, key: str) -> asyncpg.Record | None:
    """The record of `key` (fingerprint, status, response, http_status, created_ns), locked, or None."""
    return await conn.fetchrow(
        "SELECT fingerprint, status, response, http_status, created_ns FROM idempotency_keys WHERE key = $1 FOR UPDATE",
        key,
    )


async def restart_idempotency_claim(conn: asyncpg.Connection, key: str, fingerprint: str, now_ns: int) -> None:
    """Take over the record of `key` as a new claim in progress (expired or left by a crash)."""
    await conn.execute(
        "UPDATE idempotency_keys SET fingerprint = $2, status = 'in_progress', response = NULL, "
        "http_status = NULL, created_ns = $3 WHERE key = $1",
        key,
        fingerprint,
        now_ns,
    )


async def store_idempotency_response(
    pool: asyncpg.Pool | None, key: str, fingerprint: str, http_status: int, response: dict[str, Any], now_ns: int
) -> None:
    """Record the final answer to `key` (inserted or over the claim)."""
    await pg_call(
        pool,
        lambda pool: pool.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, status, response, http_status, created_ns) "
            "VALUES ($1, $2, 'done', $3::jsonb, $4, $5) ON CONFLICT (key) DO UPDATE SET "
            "status = 'done', response = EXCLUDED.response, http_status = EXCLUDED.http_status",
            key,
            fingerprint,
            json.dumps(response),
            http_status,
            now_ns,
        ),
    )


async def delete_idempotency_claim(pool: asyncpg.Pool | None, key: str) -> None:
    """Forget `key` if it is still in progress (a finished answer is kept)."""
    await pg_call(
        pool, lambda pool: pool.execute("DELETE FROM idempotency_keys WHERE key = $1 AND status = 'in_progress'", key)
    )


IDEMPOTENCY_SWEEP_BATCH = 5000
"""Rows deleted per statement, so a sweep never holds a long lock over the table."""


async def delete_expired_idempotency_keys(pool: asyncpg.Pool | None, created_before_ns: int) -> int:
    """Delete idempotency records created before `created_before_ns`, in batches; how many went."""

    async def sweep(pool: asyncpg.Pool) -> int:
        deleted = 0
        while True:
            status = await pool.execute(
                "DELETE FROM idempotency_keys WHERE key IN "
                "(SELECT key FROM idempotency_keys WHERE created_ns < $1 LIMIT $2)",
                created_before_ns,
                IDEMPOTENCY_SWEEP_BATCH,
            )
            count = int(status.split()[-1])
            deleted += count
            if count < IDEMPOTENCY_SWEEP_BATCH:
                return deleted

    return await pg_call(pool, sweep)

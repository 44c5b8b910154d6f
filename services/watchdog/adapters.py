"""Postgres writes of the watchdog: the audit log and the dead-letter table."""

from __future__ import annotations

import time

import asyncpg

from libs.bus import Delivery
from libs.errors import DependencyUnavailable, PermanentError
from proto.codec import encode
from proto.envelope import Message
from proto.messages import DeadLettered

_INSERT_AUDIT = (
    "INSERT INTO audit_events (stream, stream_seq, subject, type, message_id, ts_event_ns, payload) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) ON CONFLICT (stream, stream_seq) DO NOTHING"
)
_INSERT_DEAD_LETTER = (
    "INSERT INTO dead_letters (stream_seq, consumer, subject, reason, deliveries, payload, original_message_id, "
    "status, created_ns, updated_ns) VALUES ($1, $2, $3, $4, $5, $6, $7, 'PENDING', $8, $9) "
    "ON CONFLICT (stream_seq) DO NOTHING"
)


def _require(pool: asyncpg.Pool | None) -> asyncpg.Pool:
    if pool is None:
        raise DependencyUnavailable("postgres")
    return pool


async def write_audit_event(pool: asyncpg.Pool | None, stream: str, message: Message, delivery: Delivery) -> None:
    """Insert one persisted message into `audit_events` (idempotent on stream + sequence).

    Raises:
        PermanentError: the row can never be written (bad data): the message is dead-lettered.
        Exception: Postgres is unreachable; the consumer naks and the message comes back later.
    """
    try:
        await _require(pool).execute(
            _INSERT_AUDIT,
            stream,
            delivery.stream_sequence,
            delivery.subject,
            type(message).__name__,
            message.message_id,
            message.ts_event_ns,
            encode(message).decode(),
        )
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
        raise PermanentError(f"audit row rejected: {exc}") from exc


async def write_dead_letter(pool: asyncpg.Pool | None, letter: DeadLettered, delivery: Delivery) -> None:
    """Insert a dead letter into `dead_letters` (idempotent on the DLQ stream sequence)."""
    try:
        await _require(pool).execute(
            _INSERT_DEAD_LETTER,
            delivery.stream_sequence,
            letter.consumer,
            letter.subject,
            letter.reason,
            letter.deliveries,
            letter.payload,
            letter.original_message_id,
            letter.ts_event_ns,
            time.time_ns(),
        )
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
        raise PermanentError(f"dead letter row rejected: {exc}") from exc


DEAD_LETTER_RETENTION_NS = 30 * 24 * 3600 * 1_000_000_000


async def purge_old_dead_letters(pool: asyncpg.Pool | None, now_ns: int) -> int:
    """Delete dead letters older than 30 days (SPEC §6); returns how many were removed."""
    result = await _require(pool).execute(
        "DELETE FROM dead_letters WHERE created_ns < $1", now_ns - DEAD_LETTER_RETENTION_NS
    )
    return int(result.split()[-1]) if result else 0

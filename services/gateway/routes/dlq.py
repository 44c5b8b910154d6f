"""Dead letters: list, stats and read them; retry one or many (re-published exactly once); remove one."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import asyncpg
import msgspec
from fastapi import APIRouter, Query
from nats.js.errors import NoStreamResponseError

from libs.bounds import INT64_MAX
from libs.bus import HEADER_MSG_ID, HEADER_TYPE
from proto import permissions, subjects
from proto.codec import decode
from services.gateway import queries
from services.gateway.api_models import (
    ERROR_RESPONSES,
    DeadLetterBulkRetry,
    DeadLetterList,
    DeadLetterRetryRequest,
    DeadLetterRetryResult,
    DeadLetterStats,
    DeadLetterView,
)
from services.gateway.auth import Principal
from services.gateway.context import BUS_ERRORS, Gateway
from services.gateway.dependencies import OPERATOR, VIEWER, GatewayDep
from services.gateway.domain import decode_cursor, encode_cursor, parse_dead_letter_status, reason_class
from services.gateway.errors import ApiError, unavailable
from services.gateway.fields import LETTER_ID

router = APIRouter(tags=["dlq"])

NOT_RETRIABLE_PREFIXES = (
    subjects.DLQ_PREFIX,
    subjects.HEARTBEAT_PREFIX,
    subjects.SERVICE_QUERY_PREFIX,
    subjects.PROJECTION_ROW_PREFIX,
)
"""Subjects no stream persists as a command or event: re-publishing them would go nowhere useful
(a projection row Postgres refused is fixed by a projection rebuild, `bulwark projections`)."""


@router.get("/v1/dlq", response_model=DeadLetterList, responses=ERROR_RESPONSES)
async def dead_letters(
    gateway: GatewayDep,
    consumer: Annotated[str | None, Query(max_length=128)] = None,
    operation: Annotated[str | None, Query(max_length=200, description="consumer or subject prefix")] = None,
    subject: Annotated[str | None, Query(max_length=200, description="subject prefix")] = None,
    reason: Annotated[str | None, Query(max_length=200, description="substring, case-insensitive")] = None,
    status: Annotated[str | None, Query(max_length=16, description="PENDING or RETRIED")] = None,
    since_ns: Annotated[int | None, Query(ge=0, le=INT64_MAX)] = None,
    until_ns: Annotated[int | None, Query(ge=0, le=INT64_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
    _: Principal = VIEWER,
) -> dict[str, Any]:
    """Dead letters, newest first, filterable by consumer/operation, subject, reason, status and
    time (`created_ns` in [since_ns, until_ns)); keyset pagination through `next_cursor`."""
    before_id = decode_cursor(cursor, (int,))[0] if cursor else None
    selection = queries.DeadLetterFilter(
        consumer=consumer,
        operation=operation,
        subject=subject,
        reason=reason,
        status=parse_dead_letter_status(status),
        since_ns=since_ns,
        until_ns=until_ns,
        before_id=before_id,
    )
    rows = await queries.list_dead_letters(gateway.ctx.pool, selection, limit + 1)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]["id"]) if len(rows) > limit else None
    return {"dead_letters": [dict(row) for row in page], "next_cursor": next_cursor}


@router.get("/v1/dlq/stats", response_model=DeadLetterStats, responses=ERROR_RESPONSES)
async def dead_letter_stats(gateway: GatewayDep, _: Principal = VIEWER) -> dict[str, Any]:
    """Counts of dead letters by consumer, status, subject and kind of reason."""
    rows = await queries.dead_letter_counts(gateway.ctx.pool)
    by: dict[str, dict[str, int]] = {"consumer": {}, "status": {}, "subject": {}, "reason": {}}
    for row in rows:
        for dimension, value in (
            ("consumer", row["consumer"]),
            ("status", row["status"]),
            ("subject", row["subject"]),
            ("reason", reason_class(row["reason_class"])),
        ):
            by[dimension][value] = by[dimension].get(value, 0) + row["n"]
    pending = [row for row in rows if row["status"] == "PENDING"]
    return {
        "total": sum(by["status"].values()),
        "pending": by["status"].get("PENDING", 0),
        "by_consumer": by["consumer"],
        "by_status": by["status"],
        "by_subject": by["subject"],
        "by_reason": by["reason"],
        "oldest_created_ns": min((row["oldest"] for row in rows), default=None),
        "oldest_pending_created_ns": min((row["oldest"] for row in pending), default=None),
    }


@router.get("/v1/dlq/{letter_id}", response_model=DeadLetterView, responses=ERROR_RESPONSES)
async def dead_letter(
    gateway: GatewayDep, letter_id: Annotated[int, LETTER_ID], _: Principal = VIEWER
) -> dict[str, Any]:
    """One dead letter with its payload."""
    row = await queries.load_dead_letter(gateway.ctx.pool, letter_id)
    if row is None:
        raise ApiError(404, "not_found", f"unknown dead letter {letter_id}")
    return dict(row)


@router.post("/v1/dlq/{letter_id}/retry", response_model=DeadLetterRetryResult, responses=ERROR_RESPONSES)
async def retry_dead_letter(
    gateway: GatewayDep, letter_id: Annotated[int, LETTER_ID], who: Principal = OPERATOR
) -> dict[str, Any]:
    """Re-publish a dead letter's payload to its original subject (new `Nats-Msg-Id`
    `dlq-retry:<id>`) and mark it RETRIED. Idempotent: a letter already retried is not
    re-published again (`outcome: already_retried`)."""
    result = await _retry(gateway, letter_id, who)
    if result["outcome"] == "not_found":
        raise ApiError(404, "not_found", f"unknown dead letter {letter_id}")
    if result["outcome"] == "failed":
        raise ApiError(409, "not_retriable", result["message"] or "cannot re-publish", {"id": letter_id})
    return result


@router.post("/v1/dlq/retry", response_model=DeadLetterBulkRetry, responses=ERROR_RESPONSES)
async def retry_dead_letters(
    gateway: GatewayDep, body: DeadLetterRetryRequest, who: Principal = OPERATOR
) -> dict[str, Any]:
    """Retry many: explicit `ids`, or every PENDING letter matching a filter (oldest first, up to `limit`)."""
    selection = body.filter()
    if body.ids:
        ids = list(selection.ids)
    else:
        ids = await queries.dead_letter_ids(gateway.ctx.pool, selection, body.limit)
    results = []
    for letter_id in ids:
        try:
            results.append(await _retry(gateway, letter_id, who, audit=False))
        except ApiError as exc:
            if exc.status != 503:
                raise
            # A dependency went down midway: say what was done and what was not.
            results.append({"id": letter_id, "outcome": "failed", "message": exc.message})
            results.extend(
                {"id": rest, "outcome": "failed", "message": "not attempted"} for rest in ids[len(results) :]
            )
            break
    retried = [result["id"] for result in results if result["outcome"] == "retried"]
    await gateway.record_action(who, "dlq_retry", ",".join(map(str, retried))[:500], "bulk retry", {"ids": retried})
    return {"retried": len(retried), "results": results}


@router.delete("/v1/dlq/{letter_id}", responses=ERROR_RESPONSES)
async def delete_dead_letter(
    gateway: GatewayDep, letter_id: Annotated[int, LETTER_ID], who: Principal = OPERATOR
) -> dict[str, Any]:
    """Remove a dead letter (audited with who removed it and what it held)."""
    deleted = await queries.delete_dead_letter(gateway.ctx.pool, letter_id)
    if deleted is None:
        raise ApiError(404, "not_found", f"unknown dead letter {letter_id}")
    gateway.ctx.log.info("dead_letter_removed", id=letter_id, operator=who.name)
    await gateway.record_action(who, "dlq_remove", str(letter_id), "operator removal", dict(deleted))
    return {"id": letter_id, "deleted": True}


async def _retry(gateway: Gateway, letter_id: int, who: Principal, *, audit: bool = True) -> dict[str, Any]:
    """Re-publish one dead letter and mark it RETRIED, exactly once.

    The row is locked for the duration, so two concurrent retries re-publish once; the
    `Nats-Msg-Id` is derived from the row id, so a crash between the publish and the commit
    is de-duplicated by JetStream when the retry is repeated.

    Raises:
        ApiError: 503 when Postgres or the bus is down (nothing marked as retried).
    """
    ctx = gateway.ctx
    retry_message_id = f"dlq-retry:{letter_id}"

    async def retry(pool: asyncpg.Pool) -> dict[str, Any]:
        async with pool.acquire() as conn, conn.transaction():
            row = await queries.lock_dead_letter(conn, letter_id)
            if row is None:
                return {"id": letter_id, "outcome": "not_found"}
            base = {"id": letter_id, "subject": row["subject"], "retry_message_id": retry_message_id}
            if row["status"] == "RETRIED":
                return {**base, "outcome": "already_retried", "dead_letter": dict(row)}
            if row["subject"].startswith(NOT_RETRIABLE_PREFIXES):
                message = f"subject {row['subject']} is not a persisted command or event"
                return {**base, "outcome": "failed", "message": message, "dead_letter": dict(row)}
            if not permissions.may_publish(subjects.GATEWAY, row["subject"], ctx.settings.venue):
                # Least privilege (docs/security.md): the bus would drop the publish silently.
                message = (
                    f"the gateway may not publish {row['subject']}: only the component that owns the "
                    "subject does (proto/permissions.py); the letter is kept"
                )
                return {**base, "outcome": "failed", "message": message, "dead_letter": dict(row)}
            payload = row["payload"].encode()
            headers = {HEADER_MSG_ID: retry_message_id}
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                headers[HEADER_TYPE] = type(decode(payload)).__name__
            try:
                await ctx.bus.js.publish(row["subject"], payload, headers=headers)
            except NoStreamResponseError:
                message = f"no stream stores subject {row['subject']}"
                return {**base, "outcome": "failed", "message": message, "dead_letter": dict(row)}
            except BUS_ERRORS as exc:
                raise unavailable("nats", f"re-publish failed: {type(exc).__name__}: {exc}"[:300]) from exc
            updated = await queries.mark_dead_letter_retried(conn, letter_id, gateway.clock())
            return {**base, "outcome": "retried", "dead_letter": dict(updated) if updated else dict(row)}

    gateway.require_bus()
    result = await queries.pg_call(ctx.pool, retry)
    if result["outcome"] == "retried":
        ctx.log.info("dead_letter_retried", id=letter_id, subject=result["subject"], operator=who.name)
        if audit:
            await gateway.record_action(who, "dlq_retry", str(letter_id), "operator retry", {"ids": [letter_id]})
    return result

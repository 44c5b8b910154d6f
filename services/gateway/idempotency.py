"""The Idempotency-Key store of `POST /v1/orders`: Valkey first, the Postgres table as fallback.

Every Valkey failure falls back to Postgres (FM-C7); when neither can record a key, no order is
accepted (503). A key left in progress by a crashed gateway is taken over (FM-C8). Records live
24 h: Valkey expires its keys, and `expire_forever` deletes older Postgres rows periodically.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as redis
from redis.exceptions import RedisError

from libs.cache import IDEMPOTENCY_TTL_S
from libs.clock import NS_PER_S, Clock, wall_clock
from libs.logging import Logger
from services.gateway import queries
from services.gateway.domain import IdempotencyVerdict, judge_record
from services.gateway.errors import ApiError, unavailable

IN_PROGRESS_STALE_NS = 15_000_000_000
"""An in-progress record older than this is left over from a crashed gateway and is taken over.

A live gateway settles a request within its outcome timeout (5 s) plus a Postgres call, so this
is well past any live request; a client retrying after a gateway crash waits at most this long
(FM-C8). Taking over is safe even if the first request is still alive: the client order id
derives from the key, so the bus and the position service de-duplicate the second submit."""


@dataclass
class IdempotencyStore:
    """`idem:<key>` in Valkey (SET NX, 24 h TTL) with the Postgres `idempotency_keys` table as fallback."""

    cache: redis.Redis | None
    pool: asyncpg.Pool | None
    log: Logger
    clock: Clock = wall_clock

    @staticmethod
    def _redis_key(key: str) -> str:
        return f"idem:{key}"

    async def begin(self, key: str, fingerprint: str) -> IdempotencyVerdict:
        """Claim `key` for a request, or tell how to answer a duplicate.

        Raises:
            ApiError: 503 when neither Valkey nor Postgres can record the key.
        """
        record = {"state": "in_progress", "fingerprint": fingerprint, "started_ns": self.clock()}
        if self.cache is not None:
            cache_verdict: IdempotencyVerdict | None = None
            try:
                cache_verdict = await self._begin_in_cache(key, fingerprint, record)
            except (RedisError, OSError) as exc:
                self.log.warning(
                    "idempotency_cache_unavailable", error=str(exc)[:200], action_taken="postgres fallback"
                )
            if cache_verdict is not None:
                if cache_verdict.action != "proceed":
                    return cache_verdict
                # The cache holds the lock; Postgres may know a response from a time the cache was down.
                try:
                    return await self._claim_in_postgres(key, fingerprint, authoritative=False)
                except ApiError as exc:
                    self.log.warning("idempotency_postgres_unavailable", error=exc.details, action_taken="cache only")
                    return IdempotencyVerdict(action="proceed")
        try:
            return await self._claim_in_postgres(key, fingerprint, authoritative=True)
        except ApiError as exc:
            if exc.status != 503:
                raise
            raise unavailable(
                "valkey+postgres",
                "neither Valkey nor Postgres can record the Idempotency-Key; no order is accepted without it (FM-C7)",
                reason=str(exc.details.get("reason", exc.message)) if isinstance(exc.details, dict) else exc.message,
            ) from exc

    async def _begin_in_cache(self, key: str, fingerprint: str, record: dict[str, Any]) -> IdempotencyVerdict:
        if await self._claim_in_cache(key, record):
            return IdempotencyVerdict(action="proceed")
        existing = await self._cache_get(key)
        if existing is None:  # expired between the two calls
            await self._cache_set(key, record, ttl_s=IDEMPOTENCY_TTL_S)
            return IdempotencyVerdict(action="proceed")
        verdict = judge_record(existing, fingerprint)
        if verdict.action == "in_progress" and self._stale(existing):
            self.log.warning("idempotency_takeover", key=key, action_taken="stale in-progress record taken over")
            await self._cache_set(key, record, ttl_s=IDEMPOTENCY_TTL_S)
            return IdempotencyVerdict(action="proceed")
        return verdict

    async def _claim_in_cache(self, key: str, record: dict[str, Any]) -> bool:
        assert self.cache is not None
        result = await self.cache.set(self._redis_key(key), json.dumps(record), nx=True, ex=IDEMPOTENCY_TTL_S)
        return bool(result)

    async def _cache_get(self, key: str) -> dict[str, Any] | None:
        assert self.cache is not None
        raw = await self.cache.get(self._redis_key(key))
        if raw is None:
            return None
        value = json.loads(raw)
        return value if isinstance(value, dict) else None

    async def _cache_set(self, key: str, record: dict[str, Any], *, ttl_s: int) -> None:
        assert self.cache is not None
        await self.cache.set(self._redis_key(key), json.dumps(record), ex=ttl_s)

    def _stale(self, record: dict[str, Any]) -> bool:
        started = record.get("started_ns")
        return isinstance(started, int) and self.clock() - started > IN_PROGRESS_STALE_NS

    async def _claim_in_postgres(self, key: str, fingerprint: str, *, authoritative: bool) -> IdempotencyVerdict:
        now = self.clock()

        async def claim(pool: asyncpg.Pool) -> IdempotencyVerdict:
            async with pool.acquire() as conn, conn.transaction():
                if await queries.insert_idempotency_claim(conn, key, fingerprint, now):
                    return IdempotencyVerdict(action="proceed")
                row = await queries.lock_idempotency_key(conn, key)
                if row is None:  # pragma: no cover - deleted between the two statements
                    return IdempotencyVerdict(action="proceed")
                expired = now - row["created_ns"] > IDEMPOTENCY_TTL_S * 1_000_000_000
                stale = row["status"] == "in_progress" and now - row["created_ns"] > IN_PROGRESS_STALE_NS
                if expired or stale:
                    await queries.restart_idempotency_claim(conn, key, fingerprint, now)
                    return IdempotencyVerdict(action="proceed")
                record = {
                    "fingerprint": row["fingerprint"],
                    "state": "done" if row["status"] == "done" else "in_progress",
                    "response": json.loads(row["response"]) if row["response"] is not None else None,
                    "http_status": row["http_status"],
                }
                verdict = judge_record(record, fingerprint)
                if not authoritative and verdict.action == "in_progress":
                    # The cache already made this request the only one; a Postgres-only record in
                    # progress comes from a request during a cache outage that never finished.
                    return IdempotencyVerdict(action="proceed")
                return verdict

        verdict = await queries.pg_call(self.pool, claim)
        if not authoritative and verdict.action == "replay" and verdict.response is not None:
            await self._remember_in_cache(key, fingerprint, verdict.http_status or 200, verdict.response)
        return verdict

    async def finish(self, key: str, fingerprint: str, http_status: int, response: dict[str, Any]) -> None:
        """Store the final response under `key` in Valkey and Postgres (failures are logged)."""
        await self._remember_in_cache(key, fingerprint, http_status, response)
        try:
            await queries.store_idempotency_response(self.pool, key, fingerprint, http_status, response, self.clock())
        except ApiError as exc:
            self.log.warning("idempotency_response_not_in_postgres", key=key, error=exc.details)

    async def _remember_in_cache(self, key: str, fingerprint: str, http_status: int, response: dict[str, Any]) -> None:
        if self.cache is None:
            return
        record = {"state": "done", "fingerprint": fingerprint, "http_status": http_status, "response": response}
        try:
            await self._cache_set(key, record, ttl_s=IDEMPOTENCY_TTL_S)
        except (RedisError, OSError) as exc:
            self.log.warning("idempotency_response_not_cached", key=key, error=str(exc)[:200])

    async def expire(self) -> int:
        """Delete the Postgres records older than the 24 h TTL (Valkey expires its own); how many went.

        Raises:
            ApiError: 503 when Postgres is down (the next sweep tries again).
        """
        cutoff = self.clock() - IDEMPOTENCY_TTL_S * NS_PER_S
        deleted = await queries.delete_expired_idempotency_keys(self.pool, cutoff)
        if deleted:
            self.log.info("idempotency_keys_expired", deleted=deleted, created_before_ns=cutoff)
        return deleted

    async def expire_forever(
        self, interval_s: float, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        """Run `expire` every `interval_s` for the life of the gateway; a sweep that fails is logged
        and the next one tries again (an outage only delays the cleaning)."""
        while True:
            try:
                await self.expire()
            except ApiError as exc:
                self.log.warning("idempotency_sweep_failed", error=exc.details, action_taken="next sweep retries")
            await sleep(interval_s)

    async def release(self, key: str) -> None:
        """Forget an unfinished claim (the request failed before anything was published)."""
        if self.cache is not None:
            try:
                await self.cache.delete(self._redis_key(key))
            except (RedisError, OSError) as exc:
                self.log.warning("idempotency_release_failed", store="valkey", key=key, error=str(exc)[:200])

        try:
            await queries.delete_idempotency_claim(self.pool, key)
        except ApiError as exc:
            self.log.warning("idempotency_release_failed", store="postgres", key=key, error=exc.details)

"""Postgres access: a pool with SPEC's 5 s timeout and idempotent, ordered migrations."""

from __future__ import annotations

from importlib import resources

import asyncpg

from libs.logging import get_logger

DB_TIMEOUT_S = 5.0
_MIGRATION_LOCK = 0x42_554C_5741  # advisory lock id: one migrator at a time across processes
_log = get_logger("db")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    """Open a pool; every statement times out after 5 s (FM-N5)."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=DB_TIMEOUT_S, timeout=DB_TIMEOUT_S
    )
    if pool is None:  # pragma: no cover - asyncpg returns None only when used as an awaitable context
        raise RuntimeError("asyncpg returned no pool")
    return pool


def migration_scripts() -> list[tuple[str, str]]:
    """(name, sql) of every migration shipped with the package, in order."""
    folder = resources.files("libs") / "migrations"
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(name, (folder / name).read_text()) for name in names]


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply every migration not applied yet, under an advisory lock. Returns the names applied."""
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_ns bigint NOT NULL)"
            )
            done = {row["name"] for row in await conn.fetch("SELECT name FROM schema_migrations")}
            for name, sql in migration_scripts():
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, applied_ns) "
                        "VALUES ($1, (extract(epoch from clock_timestamp()) * 1e9)::bigint)",
                        name,
                    )
                applied.append(name)
                _log.info("migration_applied", name=name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied

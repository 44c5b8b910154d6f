"""pytest fixtures: real servers from pip wheels (see `entrypoints.harness.embedded`).

- `infra`: one nats-server + Postgres + Valkey for the whole session.
- `nats_url`: a fresh nats-server for one test (streams and consumers start empty).
- `pg_pool`: a migrated pool on the session Postgres with every table emptied first.
- `redis_client`: a client on the session Valkey, flushed first.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from entrypoints.harness.embedded import EmbeddedInfra
from libs import cache, db


@pytest.fixture(scope="session")
def infra() -> Iterator[EmbeddedInfra]:
    # Not under pytest's numbered temp dirs: a second pytest session on the machine prunes the
    # oldest of those while this one still runs its servers in it (Postgres then PANICs).
    with tempfile.TemporaryDirectory(prefix="bulwark-infra-", ignore_cleanup_errors=True) as folder:
        servers = EmbeddedInfra(Path(folder)).start()
        try:
            yield servers
        finally:
            servers.stop()


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    servers = EmbeddedInfra(tmp_path / "nats").start(("nats",))
    try:
        yield servers.nats_url
    finally:
        servers.stop()


@pytest_asyncio.fixture
async def pg_pool(infra: EmbeddedInfra) -> AsyncIterator[object]:
    pool = await db.create_pool(infra.pg_dsn)
    await db.migrate(pool)
    async with pool.acquire() as conn:
        tables = [
            row["tablename"]
            for row in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
            )
        ]
        if tables:
            await conn.execute("TRUNCATE " + ", ".join(f'"{name}"' for name in tables) + " RESTART IDENTITY")
    try:
        yield pool
    finally:
        await pool.close()


@pytest_asyncio.fixture
async def redis_client(infra: EmbeddedInfra) -> AsyncIterator[object]:
    client = cache.create_client(infra.redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()

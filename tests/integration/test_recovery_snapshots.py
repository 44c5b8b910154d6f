"""SnapshotStore on a real Postgres: CRC32C verified on load, a corrupt latest snapshot is
detected and skipped for an older valid one, pruning keeps the newest."""

from __future__ import annotations

import asyncpg

from libs.snapshot import SnapshotStore


async def _corrupt(pool: asyncpg.Pool, snapshot_id: int) -> None:
    # Flip one byte of the stored state, as disk or a bad write would.
    await pool.execute(
        "UPDATE snapshots SET state = set_byte(state, 0, (get_byte(state, 0) + 1) % 256) WHERE id = $1", snapshot_id
    )


async def test_load_latest_valid_when_saved_then_newest_returned_with_its_sequence(pg_pool: asyncpg.Pool) -> None:
    store = SnapshotStore(pg_pool, clock=lambda: 123)
    await store.save("sb", 10, b"state-10")
    await store.save("sb", 20, b"state-20")
    await store.save("other", 99, b"other")
    result = await store.load_latest_valid("sb")
    assert result.snapshot is not None
    assert (result.snapshot.stream_seq, result.snapshot.state, result.snapshot.created_ns) == (20, b"state-20", 123)
    assert not result.corruption_detected


async def test_load_latest_valid_when_latest_corrupt_then_older_used_and_corruption_reported(
    pg_pool: asyncpg.Pool,
) -> None:
    store = SnapshotStore(pg_pool)
    await store.save("sb", 10, b"state-10")
    latest = await store.save("sb", 20, b"state-20")
    await _corrupt(pg_pool, latest)
    result = await store.load_latest_valid("sb")
    assert result.snapshot is not None and result.snapshot.stream_seq == 10
    assert result.corruption_detected
    assert [(c.id, c.stream_seq) for c in result.corrupt] == [(latest, 20)]
    assert "crc32c mismatch" in result.corrupt[0].reason


async def test_load_latest_valid_when_content_rejected_or_all_corrupt_then_none(pg_pool: asyncpg.Pool) -> None:
    store = SnapshotStore(pg_pool)
    first = await store.save("sb", 10, b"state-10")
    await store.save("sb", 20, b"not-decodable")
    await _corrupt(pg_pool, first)
    result = await store.load_latest_valid("sb", accept=lambda data: None if data.startswith(b"state") else "bad")
    assert result.snapshot is None
    assert [c.stream_seq for c in result.corrupt] == [20, 10]
    assert (await store.load_latest_valid("nobody")).snapshot is None


async def test_prune_when_many_then_newest_kept(pg_pool: asyncpg.Pool) -> None:
    store = SnapshotStore(pg_pool)
    for seq in range(1, 7):
        await store.save("sb", seq, f"s{seq}".encode())
    await store.save("other", 1, b"o")
    assert await store.prune("sb", keep=2) == 4
    rows = await pg_pool.fetch("SELECT component, stream_seq FROM snapshots ORDER BY id")
    assert [(r["component"], r["stream_seq"]) for r in rows] == [("sb", 5), ("sb", 6), ("other", 1)]

"""A cold backup of a real data dir restores into a new dir whose servers serve the same state:
a Postgres row, a JetStream message, a KV key and a Valkey key written before the backup are read
back from the restored servers (`bulwark backup`, `bulwark restore`)."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import asyncpg
import nats
import pytest

from entrypoints import cli
from entrypoints.harness.embedded import EmbeddedInfra
from libs import cache

STREAM, SUBJECT, BUCKET = "BACKUP_PROBE", "backup.probe", "backup_probe"


async def _write_state(servers: EmbeddedInfra) -> None:
    conn = await asyncpg.connect(servers.pg_dsn)
    try:
        await conn.execute("CREATE TABLE backup_probe (id int PRIMARY KEY, note text NOT NULL)")
        await conn.execute("INSERT INTO backup_probe VALUES (1, 'filled 0.01 BTCUSDT')")
    finally:
        await conn.close()
    client = await nats.connect(servers.nats_url)
    try:
        stream = client.jetstream()
        await stream.add_stream(name=STREAM, subjects=[SUBJECT])
        await stream.publish(SUBJECT, b"order 42 filled")
        bucket = await stream.create_key_value(bucket=BUCKET)
        await bucket.put("hot.BTCUSDT", b"mid=100000.5")
    finally:
        await client.close()
    valkey = cache.create_client(servers.redis_url)
    try:
        await valkey.set("idempotency:order-42", "seen")
    finally:
        await valkey.aclose()


async def _read_state(servers: EmbeddedInfra) -> tuple[str, bytes, bytes, object]:
    conn = await asyncpg.connect(servers.pg_dsn)
    try:
        note = await conn.fetchval("SELECT note FROM backup_probe WHERE id = 1")
    finally:
        await conn.close()
    client = await nats.connect(servers.nats_url)
    try:
        stream = client.jetstream()
        message = await stream.get_msg(STREAM, seq=1)
        entry = await (await stream.key_value(BUCKET)).get("hot.BTCUSDT")
    finally:
        await client.close()
    valkey = cache.create_client(servers.redis_url)
    try:
        seen = await valkey.get("idempotency:order-42")
    finally:
        await valkey.aclose()
    return note, message.data or b"", entry.value or b"", seen


def test_backup_then_restore_into_a_new_dir_then_servers_serve_the_same_state(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Not under pytest's numbered temp dirs (pruned by other sessions while servers run in them).
    with tempfile.TemporaryDirectory(prefix="bulwark-backup-", ignore_cleanup_errors=True) as folder:
        root = Path(folder)
        original = EmbeddedInfra(root / "data")
        try:  # stops what started even when a later server fails to start
            asyncio.run(_write_state(original.start()))
        finally:
            original.stop()
        archive = root / "bulwark.tar.gz"

        assert cli.main(["backup", "--data-dir", str(root / "data"), "--to", str(archive), "--json"]) == 0
        saved = json.loads(capsys.readouterr().out)
        assert cli.main(["restore", "--from", str(archive), "--data-dir", str(root / "restored"), "--json"]) == 0
        restored = json.loads(capsys.readouterr().out)
        assert restored["files"] == saved["files"] > 0 and restored["verified"] is True
        assert not (root / "restored" / "postgres" / "postmaster.pid").exists()

        copy = EmbeddedInfra(root / "restored")
        try:
            note, message, value, seen = asyncio.run(_read_state(copy.start()))
        finally:
            copy.stop()

        assert note == "filled 0.01 BTCUSDT"
        assert message == b"order 42 filled"
        assert value == b"mid=100000.5"
        assert seen in ("seen", b"seen")

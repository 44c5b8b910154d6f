"""Streams and the key-value buckets take `BULWARK_STREAM_REPLICAS` (R3 in the cluster deployment).

A real three-node nats-server cluster: a bus declared with three replicas creates the streams, the
state bucket and the lease bucket with three replicas, and raises a bucket created earlier with one
(a deployment that predates the setting) to three, so losing a node loses no persisted state.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js.api import KeyValueConfig, StorageType

from entrypoints import infra
from entrypoints.harness.embedded import RunningServer, start_server
from libs.bus import Bus
from libs.lease import LEASE_BUCKET
from libs.settings import Settings
from proto import subjects
from tests.support.polling import eventually


def _node_spec(folder: Path, index: int, ports: list[tuple[int, int, int]]) -> infra.ServerSpec:
    client, monitor, route = ports[index]
    store = folder / f"n{index}"
    store.mkdir(parents=True, exist_ok=True)
    routes = ", ".join(f"nats://127.0.0.1:{other[2]}" for other in ports)
    config = folder / f"n{index}.conf"
    config.write_text(
        f"""
server_name: n{index}
listen: 127.0.0.1:{client}
http: 127.0.0.1:{monitor}
jetstream {{ store_dir: "{store}" }}
cluster {{ name: test, listen: 127.0.0.1:{route}, routes: [{routes}] }}
"""
    )

    # Accepting clients is enough here: JetStream becomes healthy only once all three nodes formed
    # the cluster, which the test waits for through its first declarations.
    return infra.ServerSpec(
        f"nats-{index}",
        [str(infra.nats_server_binary()), "-c", str(config)],
        client,
        ready=lambda: infra.tcp_ready("127.0.0.1", client),
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    ports = [(infra.free_port(), infra.free_port(), infra.free_port()) for _ in range(3)]
    nodes: list[RunningServer] = []
    try:
        for index in range(3):
            nodes.append(start_server(_node_spec(tmp_path, index, ports), tmp_path / "logs", timeout_s=60))
        yield ",".join(f"nats://127.0.0.1:{client}" for client, _, _ in ports)
    finally:
        for node in nodes:
            node.stop()


async def _replicas(bus: Bus, stream: str) -> int:
    info = await bus.js.stream_info(stream)
    return int(info.config.num_replicas or 1)


async def test_kv_when_stream_replicas_is_three_then_buckets_and_streams_have_three(cluster: str) -> None:
    settings = Settings.from_env({"BULWARK_STREAM_REPLICAS": "3"})
    bus = Bus("replicas-test", replicas=settings.stream_replicas)
    await bus.connect(cluster)
    try:
        # The cluster elects its JetStream leader after start: the first declarations may be refused.
        async def declared() -> bool:
            try:
                await bus.ensure_streams()
                await bus.kv()
                await bus.kv(LEASE_BUCKET)
            except Exception:
                return False
            return True

        await eventually(declared, timeout_s=60, interval_s=1.0)
        assert await _replicas(bus, subjects.STREAM_ORDERS.name) == 3
        assert await _replicas(bus, f"KV_{subjects.KV_STATE}") == 3
        assert await _replicas(bus, f"KV_{LEASE_BUCKET}") == 3
        await bus.kv_put(subjects.KEY_TRADING_STATE, b"{}")
    finally:
        await bus.close()


async def test_kv_when_bucket_was_created_with_one_replica_then_raised_to_three(cluster: str) -> None:
    old = Bus("old-deployment")
    await old.connect(cluster)
    try:

        async def created() -> bool:
            try:
                await old.js.create_key_value(
                    KeyValueConfig(bucket=subjects.KV_STATE, history=5, storage=StorageType.FILE, replicas=1)
                )
            except Exception:
                return False
            return True

        await eventually(created, timeout_s=60, interval_s=1.0)
        kv = await old.js.key_value(subjects.KV_STATE)
        await kv.put(subjects.KEY_TRADING_STATE, b"HALTED")
        assert await _replicas(old, f"KV_{subjects.KV_STATE}") == 1
    finally:
        await old.close()
    # A service that may not change streams (every one but the provisioner) starts on the bucket as
    # it is rather than fail on a refused update; the provisioner raises it.
    service = Bus("service-before-the-provisioner", replicas=3)
    service.may_update_streams = False
    await service.connect(cluster)
    try:
        await service.kv()
        assert await _replicas(service, f"KV_{subjects.KV_STATE}") == 1
        assert await service.kv_get(subjects.KEY_TRADING_STATE) == (b"HALTED", 1)
    finally:
        await service.close()
    bus = Bus("new-deployment", replicas=3)
    await bus.connect(cluster)
    try:
        await bus.kv()
        assert await _replicas(bus, f"KV_{subjects.KV_STATE}") == 3
        assert await bus.kv_get(subjects.KEY_TRADING_STATE) == (b"HALTED", 1)
    finally:
        await bus.close()

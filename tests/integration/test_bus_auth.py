"""Nobody on the bus who doesn't belong: real nats-server and Valkey with the users `bulwark up` gives them.

A connection without (or with wrong) credentials is refused; a service's user can publish what it
owns and is refused what another service owns (market-data submitting an order); only risk may
answer risk's queries; Valkey refuses anyone without a password and the gateway's user cannot
flush it; Postgres refuses a connection without the data dir's password, also one initialised
before it had a password.
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
import pytest_asyncio
import redis.asyncio as redis
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig
from redis.exceptions import AuthenticationError, NoPermissionError

from entrypoints import infra
from entrypoints.harness.embedded import EmbeddedInfra, start_server
from libs import cache
from libs.bus import Bus, Delivery
from libs.errors import PermanentError
from proto import permissions, subjects
from proto.enums import StrategyMode, TradingState
from proto.messages import TradingStateChanged
from services.risk.paper import PaperModes
from tests.support.polling import eventually


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[EmbeddedInfra]:
    running = EmbeddedInfra(tmp_path / "servers").start(("nats", "valkey"))
    try:
        yield running
    finally:
        running.stop()


def _plain_url(servers: EmbeddedInfra) -> str:
    return f"nats://{servers.host}:{servers.nats_port}"


async def _client(servers: EmbeddedInfra, component: str, errors: list[Exception]) -> NatsClient:
    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    env = servers.service_env(component)
    return await nats.connect(
        _plain_url(servers),
        user=env["BULWARK_NATS_USER"],
        password=env["BULWARK_NATS_PASSWORD"],
        error_cb=on_error,
        allow_reconnect=False,
    )


@pytest_asyncio.fixture
async def admin(servers: EmbeddedInfra) -> AsyncIterator[Bus]:
    bus = Bus("test-admin")
    await bus.connect(servers.nats_url)
    await bus.ensure_streams()
    try:
        yield bus
    finally:
        await bus.close()


async def test_connect_when_no_credentials_then_refused(servers: EmbeddedInfra) -> None:
    with pytest.raises(PermanentError, match="refused"):
        await asyncio.wait_for(Bus("anonymous").connect(_plain_url(servers), initial_connect_timeout_s=5), 20)
    raw = NatsClient()
    try:
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await raw.connect(_plain_url(servers), allow_reconnect=False, connect_timeout=2)
    finally:
        await raw.close()


async def test_connect_when_wrong_password_then_refused(servers: EmbeddedInfra) -> None:
    with pytest.raises(PermanentError, match="market-data"):
        await asyncio.wait_for(
            Bus("market-data").connect(
                _plain_url(servers), initial_connect_timeout_s=5, user=subjects.MARKET_DATA, password="guessed"
            ),
            20,
        )


async def test_connect_when_service_credentials_then_bus_works(servers: EmbeddedInfra, admin: Bus) -> None:
    env = servers.service_env(subjects.RISK)
    bus = Bus(subjects.RISK)
    await bus.connect(env["BULWARK_NATS_URL"], user=env["BULWARK_NATS_USER"], password=env["BULWARK_NATS_PASSWORD"])
    try:
        await bus.ensure_streams(update=False)
        changed = TradingStateChanged(previous=None, current=TradingState.HALTED, reason="test")
        seq = await bus.publish(subjects.EVT_TRADING_STATE, changed)
        assert seq > 0
        await bus.kv_put(subjects.KEY_TRADING_STATE, b"{}")
        assert (await admin.kv_get(subjects.KEY_TRADING_STATE)) is not None
    finally:
        await bus.close()


async def test_publish_when_market_data_submits_an_order_then_refused_and_nothing_stored(
    servers: EmbeddedInfra, admin: Bus
) -> None:
    errors: list[Exception] = []
    client = await _client(servers, subjects.MARKET_DATA, errors)
    try:
        js = client.jetstream(timeout=2.0)
        with pytest.raises((NatsTimeoutError, NoRespondersError)):
            await js.publish(subjects.CMD_ORDER_SUBMIT, b'{"forged": true}')
        await client.publish(subjects.SVC_RISK_RESUME, b"{}")
        await client.flush()
        await eventually(lambda: any("permissions violation" in str(e).lower() for e in errors), timeout_s=5)
        # Its own subjects still work on the same connection.
        ack = await js.publish(subjects.md_trade(subjects.DEFAULT_VENUE, "BTCUSDT"), b"{}")
        assert ack.seq > 0
    finally:
        await client.close()
    assert await admin.stream_bounds(subjects.STREAM_ORDERS.name) == (0, 0)
    assert "cmd.order.submit" in " ".join(str(e) for e in errors)


async def test_subscribe_when_not_risk_then_cannot_answer_risk_queries(servers: EmbeddedInfra, admin: Bus) -> None:
    errors: list[Exception] = []
    impostor = await _client(servers, subjects.MARKET_DATA, errors)
    risk = await _client(servers, subjects.RISK, [])
    try:

        async def impostor_answers(msg: Msg) -> None:
            await msg.respond(b"impostor")

        async def risk_answers(msg: Msg) -> None:
            await msg.respond(b"risk")

        await impostor.subscribe(subjects.SVC_RISK_HALT, cb=impostor_answers)
        await impostor.flush()
        await eventually(lambda: any("permissions violation" in str(e).lower() for e in errors), timeout_s=5)
        with pytest.raises((NatsTimeoutError, NoRespondersError)):
            await admin.request(subjects.SVC_RISK_HALT, b"{}", timeout_s=1.0)
        await risk.subscribe(subjects.SVC_RISK_HALT, cb=risk_answers)
        await risk.flush()
        assert await admin.request(subjects.SVC_RISK_HALT, b"{}", timeout_s=2.0) == b"risk"
    finally:
        await impostor.close()
        await risk.close()


async def test_valkey_when_no_password_then_refused_and_gateway_cannot_flush(servers: EmbeddedInfra) -> None:
    anonymous = redis.from_url(f"redis://{servers.host}:{servers.redis_port}/0")
    try:
        with pytest.raises(AuthenticationError):
            await anonymous.get("key")
    finally:
        await anonymous.aclose()
    env = servers.service_env(subjects.GATEWAY)
    gateway = cache.create_client(
        env["BULWARK_REDIS_URL"], username=env["BULWARK_VALKEY_USER"], password=env["BULWARK_VALKEY_PASSWORD"]
    )
    try:
        assert await gateway.set("idempotency:key", "1", nx=True, ex=60)
        assert await gateway.get("idempotency:key") == b"1"
        with pytest.raises(NoPermissionError):
            await gateway.flushall()
    finally:
        await gateway.aclose()


async def test_jetstream_api_when_market_data_touches_others_consumers_or_streams_then_refused(
    servers: EmbeddedInfra, admin: Bus
) -> None:
    """JetStream's API is granted stream by stream and consumer by consumer: market-data cannot read
    the order log through a consumer, delete the position service's durable or change a stream,
    while risk runs its own durable consumer and replay and keeps the streams as they are."""
    position = Bus(subjects.POSITION)
    position_env = servers.service_env(subjects.POSITION)
    await position.connect(
        _plain_url(servers), user=position_env["BULWARK_NATS_USER"], password=position_env["BULWARK_NATS_PASSWORD"]
    )
    position_durable = subjects.position_orders_consumer(subjects.POSITION)

    async def ignore(message: object, delivery: object) -> None:
        return None

    await position.consume(
        stream=subjects.STREAM_ORDERS.name,
        durable=position_durable,
        filter_subjects=[subjects.evt_order_all_for_venue("approved", subjects.DEFAULT_VENUE)],
        handler=ignore,
    )
    await position.close()
    errors: list[Exception] = []
    client = await _client(servers, subjects.MARKET_DATA, errors)
    risk_env = servers.service_env(subjects.RISK)
    risk = Bus(subjects.RISK)
    await risk.connect(
        _plain_url(servers), user=risk_env["BULWARK_NATS_USER"], password=risk_env["BULWARK_NATS_PASSWORD"]
    )
    try:
        js = client.jetstream(timeout=1.0)
        refused = (NatsTimeoutError, NoRespondersError)
        with pytest.raises(refused):
            await js.add_consumer(subjects.STREAM_ORDERS.name, ConsumerConfig(durable_name="market-data-spy"))
        with pytest.raises(refused):
            await js.add_consumer(subjects.STREAM_ORDERS.name, ConsumerConfig(name="spy", filter_subject=">"))
        with pytest.raises(refused):
            await js.add_consumer(subjects.STREAM_ORDERS.name, ConsumerConfig())  # a server-named ephemeral
        with pytest.raises(refused):
            await js.delete_consumer(subjects.STREAM_ORDERS.name, position_durable)
        with pytest.raises(refused):
            await js.consumer_info(subjects.STREAM_ORDERS.name, position_durable)
        orders = (await admin.js.stream_info(subjects.STREAM_ORDERS.name)).config
        with pytest.raises(refused):
            await js.update_stream(orders.evolve(max_age=1.0))
        await eventually(lambda: any("permissions violation" in str(e).lower() for e in errors), timeout_s=5)
        # The durable is still there, the stream as it was.
        assert (await admin.js.consumer_info(subjects.STREAM_ORDERS.name, position_durable)).name == position_durable
        assert (await admin.js.stream_info(subjects.STREAM_ORDERS.name)).config.max_age == orders.max_age
        assert [c.name for c in await admin.js.consumers_info(subjects.STREAM_ORDERS.name)] == [position_durable]
        # Market-data's own work goes on: its data, the key-value reads, the stream declaration.
        await js.publish(subjects.md_trade(subjects.DEFAULT_VENUE, "BTCUSDT"), b"{}")
        md_bus = Bus(subjects.MARKET_DATA)
        md_env = servers.service_env(subjects.MARKET_DATA)
        await md_bus.connect(
            _plain_url(servers), user=md_env["BULWARK_NATS_USER"], password=md_env["BULWARK_NATS_PASSWORD"]
        )
        try:
            await asyncio.wait_for(md_bus.ensure_streams(update=False), 10)
            assert await md_bus.kv_get(subjects.KEY_TRADING_STATE) is None
        finally:
            await md_bus.close()

        # Risk: its own durable consumer delivers and acknowledges, its replay reads the log.
        changed = TradingStateChanged(previous=None, current=TradingState.HALTED, reason="test")
        seq = await admin.publish(subjects.CMD_ORDER_SUBMIT, changed)
        handled: list[int] = []

        async def on_order(message: object, delivery: Delivery) -> None:
            handled.append(delivery.stream_sequence)

        await risk.consume(
            stream=subjects.STREAM_ORDERS.name,
            durable=subjects.RISK_ORDERS_CONSUMER,
            filter_subjects=[subjects.CMD_ORDER_SUBMIT],
            handler=on_order,
        )
        await eventually(lambda: handled == [seq], timeout_s=10)
        replayed: list[int] = []
        assert await risk.replay(subjects.STREAM_ORDERS.name, 1, seq, lambda m, d: replayed.append(d.stream_sequence))
        assert replayed == [seq]
        assert await risk.replay(subjects.STREAM_ORDERS.name, 1, seq, lambda m, d: None) == 1  # again, same name
        # Another risk process (a standby starting beside it) is replaying under the first replay
        # consumer: this one takes the next free one and leaves the other's alone.
        busy = permissions.replay_consumers(subjects.RISK)[0]
        await admin.js.add_consumer(
            subjects.STREAM_ORDERS.name, ConsumerConfig(name=busy, ack_policy=AckPolicy.NONE, inactive_threshold=60.0)
        )
        beside: list[int] = []
        assert await risk.replay(subjects.STREAM_ORDERS.name, 1, seq, lambda m, d: beside.append(d.stream_sequence))
        assert beside == [seq]
        assert (await admin.js.consumer_info(subjects.STREAM_ORDERS.name, busy)).name == busy
        await admin.js.delete_consumer(subjects.STREAM_ORDERS.name, busy)

        # Risk's watch of the strategy modes (an ordered consumer on the state bucket) runs under its user.
        await admin.kv_put(subjects.key_strategy_mode("trend"), b'{"mode": "paper"}')
        modes = PaperModes(venue="binance-usdm-paper")
        watch = await modes.follow(risk, risk.log)
        try:
            assert modes.mode("trend") == StrategyMode.PAPER
        finally:
            await watch.stop()
    finally:
        await client.close()
        await risk.close()
    acked = await admin.js.consumer_info(subjects.STREAM_ORDERS.name, subjects.RISK_ORDERS_CONSUMER)
    assert acked.ack_floor.stream_seq == seq


async def _postgres_refuses_without_password(servers: EmbeddedInfra) -> None:
    """Over TCP no password and a wrong one are refused, the data dir's is let in; the socket's
    folder is its owner's only."""
    anonymous = f"postgresql://postgres@{servers.host}:{servers.pg_port}/bulwark"
    guessed = f"postgresql://postgres:guessed@{servers.host}:{servers.pg_port}/bulwark"
    for dsn in (anonymous, guessed):
        with pytest.raises(asyncpg.InvalidPasswordError):
            connection = await asyncpg.connect(dsn, timeout=5)
            await connection.close()
    assert stat.S_IMODE((servers.data_dir / infra.POSTGRES_SOCKETS).stat().st_mode) == 0o700
    connection = await asyncpg.connect(servers.pg_dsn, timeout=5)
    try:
        assert await connection.fetchval("SELECT current_database()") == "bulwark"
    finally:
        await connection.close()


async def test_postgres_when_data_dir_initialised_with_trust_then_next_start_requires_the_password(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "servers"
    port = infra.free_port()
    # A data dir of an earlier version: initialised without a password, trust auth.
    old = await asyncio.to_thread(start_server, infra.postgres_spec(data_dir, port), data_dir / "logs")
    try:
        await infra.ensure_database(port)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(old.stop)
    servers = await asyncio.to_thread(EmbeddedInfra(data_dir, pg_port=port).start, ("postgres",))
    try:
        await _postgres_refuses_without_password(servers)
    finally:
        await asyncio.to_thread(servers.stop)


async def test_postgres_when_initialised_then_password_required_and_a_replaced_credentials_file_takes_over(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "servers"
    first = await asyncio.to_thread(EmbeddedInfra(data_dir).start, ("postgres",))
    old_dsn, port = first.pg_dsn, first.pg_port
    try:
        await _postgres_refuses_without_password(first)
    finally:
        await asyncio.to_thread(first.stop)
    (data_dir / "bus-credentials.json").unlink()  # rotation (docs/security.md)
    servers = await asyncio.to_thread(EmbeddedInfra(data_dir, pg_port=port).start, ("postgres",))
    try:
        assert servers.pg_dsn != old_dsn
        await _postgres_refuses_without_password(servers)
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(old_dsn, timeout=5)
    finally:
        await asyncio.to_thread(servers.stop)

"""A row Postgres refuses never blocks the healthy ones (issue 15, point 2), on a real Postgres and
a real nats-server: the position service's projection rows and the watchdog's audit and dead-letter
writers. The refused row lands in the dead-letter queue (and in `dead_letters`) with the reason, the
good rows around it are written, nothing stays stuck; and Postgres really down is still waited for,
in order, with nothing dead-lettered.

Refused values are the real ones: `Decimal('1E-20000')` (asyncpg cannot encode it into numeric), a
NUL in a text column, a `\\u0000` in a jsonb payload.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from entrypoints.harness.embedded import EmbeddedInfra
from libs import db
from libs.bus import Bus, Delivery
from libs.clock import ManualClock
from libs.logging import get_logger
from libs.orders_model import OrderRecord
from libs.projections import Projections
from proto import subjects
from proto.enums import OrderSource, OrderStatus, OrderType, Side
from proto.envelope import Message
from proto.messages import DeadLettered, OrderRejected
from services.position.handlers import PositionService
from services.position.projection_writes import row_payload
from services.watchdog import adapters
from tests.support.polling import eventually
from tests.unit.test_position_venue_link import FakeVenue

VENUE = "binance-usdm"
S = 1_000_000_000


def record(coid: str, quantity: str = "0.01", reason: str | None = None) -> OrderRecord:
    return OrderRecord(
        client_order_id=coid,
        idempotency_key=coid,
        source=OrderSource.OPERATOR,
        venue=VENUE,
        symbol="BTCUSDT",
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=Decimal(quantity),
        status=OrderStatus.PENDING_SUBMISSION,
        created_ns=1,
        updated_ns=1,
        reason=reason,
    )


class RecordedProjections(Projections):
    """The real projections, noting which order rows were written, in order."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.written: list[str] = []

    async def upsert_order(self, order: OrderRecord, event_seq: int) -> None:
        await super().upsert_order(order, event_seq)
        self.written.append(order.client_order_id)


async def connected_bus(nats_url: str) -> Bus:
    bus = Bus("test")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    return bus


def position(bus: Bus, projections: Projections) -> PositionService:
    return PositionService(
        bus, get_logger("test"), projections, FakeVenue(), VENUE, ManualClock(1_700_000_000 * S), symbols=("BTCUSDT",)
    )


async def dead_letters_on_bus(bus: Bus) -> list[DeadLettered]:
    letters: list[DeadLettered] = []
    try:
        first, last = await bus.stream_bounds(subjects.STREAM_DLQ.name)
    except Exception:
        return letters
    if last >= max(first, 1):

        def collect(message: Message, delivery: Delivery) -> None:
            if isinstance(message, DeadLettered):
                letters.append(message)

        await bus.replay(subjects.STREAM_DLQ.name, max(first, 1), last, collect)
    return letters


async def record_dead_letters(bus: Bus, pool: asyncpg.Pool) -> None:
    """The watchdog's DLQ writer on the DLQ stream (-> `dead_letters`)."""

    async def write(message: Message, delivery: Delivery) -> None:
        assert isinstance(message, DeadLettered)
        await adapters.write_dead_letter(pool, message, delivery)

    await bus.consume(
        stream=subjects.STREAM_DLQ.name,
        durable=subjects.WATCHDOG_DLQ_CONSUMER,
        filter_subjects=list(subjects.STREAM_DLQ.subjects),
        handler=write,
    )


async def audit_orders(bus: Bus, pool: asyncpg.Pool) -> None:
    """The watchdog's audit writer on the ORDERS stream (-> `audit_events`)."""

    async def write(message: Message, delivery: Delivery) -> None:
        await adapters.write_audit_event(pool, subjects.STREAM_ORDERS.name, message, delivery)

    await bus.consume(
        stream=subjects.STREAM_ORDERS.name,
        durable="watchdog-audit-orders",
        filter_subjects=list(subjects.STREAM_ORDERS.subjects),
        handler=write,
    )


def rejected(coid: str, reason: str = "venue said no") -> OrderRejected:
    return OrderRejected(client_order_id=coid, symbol="BTCUSDT", reason=reason)


# ---------------------------------------------------------------------- a refused row among good ones


async def test_projection_rows_when_postgres_refuses_one_then_good_rows_written_bad_one_dead_lettered(
    nats_url: str, pg_pool: asyncpg.Pool
) -> None:
    bus = await connected_bus(nats_url)
    try:
        await record_dead_letters(bus, pg_pool)
        svc = position(bus, Projections(pg_pool))
        orders = [
            record("bw-good-1"),
            record("bw-tiny", quantity="1e-20000"),  # the gateway once let this through
            record("bw-good-2"),
            record("bw-nul", reason="a\x00b"),
            record("bw-good-3"),
        ]
        for order in orders:
            svc.ledger.orders[order.client_order_id] = order
            await svc.core.save(order)

        rows = await pg_pool.fetch("SELECT client_order_id FROM orders ORDER BY client_order_id")
        assert [row["client_order_id"] for row in rows] == ["bw-good-1", "bw-good-2", "bw-good-3"]
        assert len(svc.core.projection_writes.rows) == 0  # nothing kept back, nothing to repeat
        assert await svc.core.flush_projections() == 0

        letters = {letter.original_message_id: letter for letter in await dead_letters_on_bus(bus)}
        assert set(letters) == {"order:bw-tiny", "order:bw-nul"}
        tiny, nul = letters["order:bw-tiny"], letters["order:bw-nul"]
        assert tiny.consumer == "position-projections" and tiny.subject == "projection.orders"
        assert "DataError 22000" in tiny.reason and "exponent is too small" in tiny.reason
        assert '"quantity":"1E-20000"' in tiny.payload
        assert "CharacterNotInRepertoireError 22021" in nul.reason

        stored = await eventually(
            lambda: pg_pool.fetch("SELECT consumer, original_message_id, reason, payload FROM dead_letters"),
            timeout_s=20,
        )
        assert {row["original_message_id"] for row in stored} == {"order:bw-tiny", "order:bw-nul"}
        # The letter about the NUL is itself stored (its NUL kept as U+FFFD), not refused in turn.
        assert all("\x00" not in row["payload"] for row in stored)
    finally:
        await bus.close()


async def test_audit_writer_when_postgres_refuses_one_message_then_others_audited_and_it_dead_lettered(
    nats_url: str, pg_pool: asyncpg.Pool
) -> None:
    bus = await connected_bus(nats_url)
    try:
        await record_dead_letters(bus, pg_pool)
        for coid, reason in (("bw-a", "no"), ("bw-bad", "nul \x00 here"), ("bw-b", "no"), ("bw-c", "no")):
            await bus.publish(subjects.evt_order("rejected", VENUE, "BTCUSDT"), rejected(coid, reason))
        await audit_orders(bus, pg_pool)

        async def audited() -> list[str]:
            rows = await pg_pool.fetch("SELECT payload::text AS p FROM audit_events ORDER BY stream_seq")
            return [coid for row in rows for coid in ("bw-a", "bw-b", "bw-c") if f'"{coid}"' in row["p"]]

        assert await eventually(lambda: _equal(audited(), ["bw-a", "bw-b", "bw-c"]), timeout_s=20)
        stored = await eventually(lambda: pg_pool.fetch("SELECT consumer, subject, reason FROM dead_letters"), 20)
        assert len(stored) == 1
        assert stored[0]["consumer"] == "watchdog-audit-orders"
        assert "UntranslatableCharacterError 22P05" in stored[0]["reason"]
    finally:
        await bus.close()


async def _equal(value: Any, expected: Any) -> bool:
    return await value == expected


# ---------------------------------------------------------------------- Postgres really down


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedInfra]:
    """A Postgres of this module's own, stopped and started by its tests."""
    servers = EmbeddedInfra(Path(tmp_path_factory.mktemp("pg"))).start(("postgres",))
    try:
        yield servers
    finally:
        servers.stop()


@pytest_asyncio.fixture
async def own_pool(own_postgres: EmbeddedInfra) -> AsyncIterator[asyncpg.Pool]:
    if "postgres" not in own_postgres.servers:
        own_postgres.start_one("postgres")
    pool = await db.create_pool(own_postgres.pg_dsn)
    await db.migrate(pool)
    await pool.execute("TRUNCATE orders, audit_events, dead_letters")
    try:
        yield pool
    finally:
        await pool.close()


async def test_projection_rows_when_postgres_down_then_kept_in_order_none_dead_lettered_written_when_back(
    nats_url: str, own_postgres: EmbeddedInfra, own_pool: asyncpg.Pool
) -> None:
    bus = await connected_bus(nats_url)
    projections = RecordedProjections(own_pool)
    try:
        svc = position(bus, projections)
        own_postgres.stop_one("postgres")
        orders = [record("bw-1"), record("bw-2"), record("bw-tiny", quantity="1e-20000"), record("bw-3")]
        for order in orders:
            svc.ledger.orders[order.client_order_id] = order
            await svc.core.save(order)
        for _ in range(3):
            assert await svc.core.flush_projections() == 0  # still down: kept, the same row first

        pending = svc.core.projection_writes.rows.pending
        assert list(pending) == ["order:bw-1", "order:bw-2", "order:bw-tiny", "order:bw-3"]
        assert all(kept.attempts == 0 for kept in pending.values())  # an outage is not the rows' fault
        assert await dead_letters_on_bus(bus) == []

        await asyncio.to_thread(own_postgres.start_one, "postgres")
        await eventually(svc.core.flush_projections, timeout_s=30, interval_s=0.5)

        # Back: written oldest first; the row Postgres refuses no longer holds back the one behind it.
        assert projections.written == ["bw-1", "bw-2", "bw-3"]
        assert len(pending) == 0
        assert [letter.original_message_id for letter in await dead_letters_on_bus(bus)] == ["order:bw-tiny"]
    finally:
        await bus.close()


async def test_consumer_when_postgres_down_then_waits_keeps_order_nothing_dead_lettered(
    nats_url: str, own_postgres: EmbeddedInfra, own_pool: asyncpg.Pool
) -> None:
    bus = await connected_bus(nats_url)
    try:
        own_postgres.stop_one("postgres")
        coids = [f"bw-{n}" for n in range(6)]
        for coid in coids:
            await bus.publish(subjects.evt_order("rejected", VENUE, "BTCUSDT"), rejected(coid))
        await audit_orders(bus, own_pool)
        await asyncio.sleep(8)  # well past the bounded deliveries of an unclassified failure (5)

        info = await bus.js.consumer_info(subjects.STREAM_ORDERS.name, "watchdog-audit-orders")
        assert info.num_ack_pending >= 1 and info.num_redelivered == 0  # waiting in place, not redelivered
        assert await dead_letters_on_bus(bus) == []

        await asyncio.to_thread(own_postgres.start_one, "postgres")

        async def audited() -> list[str]:
            try:
                rows = await own_pool.fetch("SELECT payload->>'client_order_id' AS coid FROM audit_events ORDER BY id")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return []
            return [row["coid"] for row in rows]

        assert await eventually(lambda: _equal(audited(), coids), timeout_s=60, interval_s=0.5)
        assert await dead_letters_on_bus(bus) == []
    finally:
        await bus.close()


def test_dead_letter_payload_is_decodable_json() -> None:
    """The payload of a projection dead letter is JSON an operator can read (not a Python repr)."""
    payload = json.loads(row_payload("order:bw-tiny", record("bw-tiny", quantity="1e-20000")))
    assert payload["key"] == "order:bw-tiny"
    assert payload["row"]["quantity"] == "1E-20000" and payload["row"]["status"] == "PENDING_SUBMISSION"

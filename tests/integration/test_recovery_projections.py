"""Projections rebuilt from the ORDERS stream (real nats-server and Postgres): identical to what
the position service projected, idempotent, and `verify` reports a tampered row."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest_asyncio

from entrypoints.harness.embedded import EmbeddedInfra
from libs import projections
from libs.bus import Bus
from libs.orders_model import Position
from libs.projections import Projections
from proto import subjects
from proto.enums import OrderSource, OrderStatus, OrderType, Side
from proto.messages import (
    OrderAccepted,
    OrderApproved,
    OrderDenied,
    OrderFilled,
    OrderSubmitted,
    PositionChanged,
    SubmitOrder,
)

VENUE = "binance-usdm"


def _command(coid: str, quantity: str = "0.010") -> SubmitOrder:
    return SubmitOrder(
        client_order_id=coid,
        idempotency_key=f"key-{coid}",
        source=OrderSource.OPERATOR,
        symbol="BTCUSDT",
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=Decimal(quantity),
    )


def _fill(coid: str, trade_id: int, qty: str, cumulative: str, price: str) -> OrderFilled:
    return OrderFilled(
        client_order_id=coid,
        venue_order_id=77,
        trade_id=trade_id,
        symbol="BTCUSDT",
        side=Side.BUY,
        price=Decimal(price),
        quantity=Decimal(qty),
        cumulative_quantity=Decimal(cumulative),
        order_quantity=Decimal("0.010"),
        commission=Decimal("0.01"),
    )


@pytest_asyncio.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    connected = Bus("projections-test")
    await connected.connect(nats_url)
    await connected.ensure_streams()
    try:
        yield connected
    finally:
        await connected.close()


async def _publish_history(bus: Bus) -> None:
    """A filled order in two fills, its position, and a denied one, as the services publish them."""
    await bus.publish(subjects.CMD_ORDER_SUBMIT, _command("bw-a"))
    await bus.publish(subjects.evt_order("approved", VENUE, "BTCUSDT"), OrderApproved(order=_command("bw-a")))
    await bus.publish(
        subjects.evt_order("submitted", VENUE, "BTCUSDT"),
        OrderSubmitted(client_order_id="bw-a", symbol="BTCUSDT", venue=VENUE),
    )
    await bus.publish(
        subjects.evt_order("accepted", VENUE, "BTCUSDT"),
        OrderAccepted(client_order_id="bw-a", venue_order_id=77, symbol="BTCUSDT", status=OrderStatus.NEW),
    )
    for trade_id, qty, cumulative, price, position in (
        (1, "0.004", "0.004", "100", "0.004"),
        (2, "0.006", "0.010", "110", "0.010"),
    ):
        await bus.publish(subjects.evt_fill(VENUE, "BTCUSDT"), _fill("bw-a", trade_id, qty, cumulative, price))
        average = Decimal("106") if trade_id == 2 else Decimal("100")
        await bus.publish(
            subjects.evt_position(VENUE, "BTCUSDT"),
            PositionChanged(
                venue=VENUE,
                symbol="BTCUSDT",
                quantity=Decimal(position),
                average_entry_price=average,
                realized_pnl=Decimal(0),
                caused_by_client_order_id="bw-a",
            ),
        )
    await bus.publish(
        subjects.evt_order("denied", VENUE, "BTCUSDT"), OrderDenied(order=_command("bw-b"), reason="HALTED")
    )


async def test_rebuild_when_applied_to_empty_tables_then_verify_consistent_and_idempotent(
    bus: Bus, infra: EmbeddedInfra, pg_pool: asyncpg.Pool
) -> None:
    await _publish_history(bus)
    result = await projections.rebuild(bus, infra.pg_dsn, apply=True)
    assert (result["orders"], result["fills"], result["positions"]) == (2, 2, 1)
    again = await projections.rebuild(bus, infra.pg_dsn, apply=True)
    assert again["orders"] == 2
    assert await pg_pool.fetchval("SELECT count(*) FROM fills") == 2

    row = await pg_pool.fetchrow(
        "SELECT status, filled_quantity, average_price FROM orders WHERE client_order_id='bw-a'"
    )
    assert (row["status"], row["filled_quantity"], row["average_price"]) == ("FILLED", Decimal("0.010"), Decimal("106"))
    denied = await pg_pool.fetchval("SELECT status FROM orders WHERE client_order_id = 'bw-b'")
    assert denied == "DENIED"
    position = await pg_pool.fetchrow("SELECT quantity, average_entry_price FROM positions")
    assert (position["quantity"], position["average_entry_price"]) == (Decimal("0.010"), Decimal("106"))

    report = await projections.verify(bus, infra.pg_dsn)
    assert report["consistent"], report["differences"]


async def test_verify_when_live_row_tampered_or_missing_then_differences_reported(
    bus: Bus, infra: EmbeddedInfra, pg_pool: asyncpg.Pool
) -> None:
    await _publish_history(bus)
    await projections.rebuild(bus, infra.pg_dsn, apply=True)
    await pg_pool.execute("UPDATE positions SET quantity = 0.5")
    await pg_pool.execute("DELETE FROM orders WHERE client_order_id = 'bw-b'")
    live = Projections(pg_pool)
    await live.upsert_position(VENUE, "ETHUSDT", Position(Decimal(1), Decimal(2000), Decimal(0)), 1, 1)

    report = await projections.verify(bus, infra.pg_dsn)
    assert not report["consistent"]
    positions = {tuple(item["key"]): item for item in report["differences"]["positions"]}
    assert positions[(VENUE, "BTCUSDT")]["columns"]["quantity"] == {"live": "0.5", "rebuilt": "0.01"}
    assert positions[(VENUE, "ETHUSDT")]["problem"].startswith("only in live")
    orders = report["differences"]["orders"]
    assert [item["key"] for item in orders] == [["bw-b"]] and orders[0]["problem"].startswith("missing from live")

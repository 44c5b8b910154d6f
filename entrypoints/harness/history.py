"""Finished trading history written straight into the projections (COPY): months of filled orders
for recovery benches and tests, without trading them. Each filler order is a MARKET order of
1 unit at price 1, FILLED by one fill, under the idempotency key `filler-<number>`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg

from libs.ids import client_order_id_for
from proto.enums import OrderSource, OrderStatus, OrderType, Side

FILLER_SYMBOL = "FILLERUSDT"
ORDER_COLUMNS = (
    "client_order_id",
    "idempotency_key",
    "source",
    "venue",
    "symbol",
    "side",
    "type",
    "quantity",
    "status",
    "filled_quantity",
    "average_price",
    "venue_order_id",
    "created_ns",
    "updated_ns",
)
FILL_COLUMNS = ("client_order_id", "trade_id", "venue_order_id", "symbol", "side", "price", "quantity", "ts_event_ns")
FILLER_PRICE = Decimal("1.0")
FILLER_QUANTITY = Decimal("1")


def filler_rows(number: int, side: Side, venue: str, now_ns: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The `orders` row and the `fills` row of filler order `number` (venue order id and trade id
    are `number` too)."""
    key = f"filler-{number}"
    coid = client_order_id_for(key)
    order = (
        coid,
        key,
        OrderSource.OPERATOR.value,
        venue,
        FILLER_SYMBOL,
        side.value,
        OrderType.MARKET.value,
        FILLER_QUANTITY,
        OrderStatus.FILLED.value,
        FILLER_QUANTITY,
        FILLER_PRICE,
        number,
        now_ns,
        now_ns,
    )
    fill = (coid, number, number, FILLER_SYMBOL, side.value, FILLER_PRICE, FILLER_QUANTITY, now_ns)
    return order, fill


async def copy_history(pool: asyncpg.Pool, order_rows: list[tuple[Any, ...]], fill_rows: list[tuple[Any, ...]]) -> None:
    """Write `filler_rows` results into `orders` and `fills` in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.copy_records_to_table("orders", records=order_rows, columns=list(ORDER_COLUMNS))
        await conn.copy_records_to_table("fills", records=fill_rows, columns=list(FILL_COLUMNS))

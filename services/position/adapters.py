"""position's Postgres projections (`orders`, `fills`, `positions`), written idempotently.

Every upsert carries the stream sequence of the event it reflects; a row is only overwritten by
an equal or newer sequence, so a re-applied event never moves state backwards.
"""

from __future__ import annotations

from decimal import Decimal

import asyncpg

from proto.enums import OrderSource, OrderStatus, OrderType, Side

from .domain import OrderRecord, Position

_UPSERT_ORDER = """
INSERT INTO orders (client_order_id, idempotency_key, source, strategy, venue, symbol, side, type, quantity,
    price, stop_price, reduce_only, status, filled_quantity, average_price, venue_order_id, reason,
    created_ns, updated_ns, last_event_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
ON CONFLICT (client_order_id) DO UPDATE SET
    status = EXCLUDED.status, filled_quantity = EXCLUDED.filled_quantity,
    average_price = EXCLUDED.average_price, venue_order_id = EXCLUDED.venue_order_id,
    reason = EXCLUDED.reason, updated_ns = EXCLUDED.updated_ns, last_event_seq = EXCLUDED.last_event_seq
WHERE orders.last_event_seq <= EXCLUDED.last_event_seq
"""

_INSERT_FILL = """
INSERT INTO fills (client_order_id, trade_id, venue_order_id, symbol, side, price, quantity, commission, ts_event_ns)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (client_order_id, trade_id) DO NOTHING
"""

_UPSERT_POSITION = """
INSERT INTO positions (venue, symbol, quantity, average_entry_price, realized_pnl, updated_ns, last_event_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (venue, symbol) DO UPDATE SET
    quantity = EXCLUDED.quantity, average_entry_price = EXCLUDED.average_entry_price,
    realized_pnl = EXCLUDED.realized_pnl, updated_ns = EXCLUDED.updated_ns, last_event_seq = EXCLUDED.last_event_seq
WHERE positions.last_event_seq <= EXCLUDED.last_event_seq
"""


class Projections:
    """Reads and idempotent writes of the position service's tables."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def upsert_order(self, order: OrderRecord, event_seq: int) -> None:
        """Insert or update an order row (skipped when a newer event already wrote it)."""
        await self.pool.execute(
            _UPSERT_ORDER,
            order.client_order_id,
            order.idempotency_key,
            order.source.value,
            order.strategy,
            order.venue,
            order.symbol,
            order.side.value,
            order.order_type.value,
            order.quantity,
            order.price,
            order.stop_price,
            order.reduce_only,
            order.status.value,
            order.filled_quantity,
            order.average_price,
            order.venue_order_id,
            order.reason,
            order.created_ns,
            order.updated_ns,
            event_seq,
        )

    async def record_fill(
        self,
        order: OrderRecord,
        trade_id: int,
        price: Decimal,
        quantity: Decimal,
        commission: Decimal,
        ts_event_ns: int,
        position: Position,
        ts_ns: int,
        position_seq: int,
    ) -> None:
        """Write a fill and the position it produced in one transaction (never one without the other)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                _INSERT_FILL,
                order.client_order_id,
                trade_id,
                order.venue_order_id,
                order.symbol,
                order.side.value,
                price,
                quantity,
                commission,
                ts_event_ns,
            )
            await conn.execute(
                _UPSERT_POSITION,
                order.venue,
                order.symbol,
                position.quantity,
                position.average_entry_price,
                position.realized_pnl,
                ts_ns,
                position_seq,
            )

    async def upsert_position(self, venue: str, symbol: str, position: Position, ts_ns: int, event_seq: int) -> None:
        """Insert or update a position row."""
        await self.pool.execute(
            _UPSERT_POSITION,
            venue,
            symbol,
            position.quantity,
            position.average_entry_price,
            position.realized_pnl,
            ts_ns,
            event_seq,
        )

    async def load_orders(self) -> dict[str, OrderRecord]:
        """Every order of the projection, with the trade ids already applied to it."""
        rows = await self.pool.fetch("SELECT * FROM orders")
        fills = await self.pool.fetch("SELECT client_order_id, trade_id FROM fills")
        trades: dict[str, set[int]] = {}
        for fill in fills:
            trades.setdefault(fill["client_order_id"], set()).add(int(fill["trade_id"]))
        orders: dict[str, OrderRecord] = {}
        for row in rows:
            coid = row["client_order_id"]
            orders[coid] = OrderRecord(
                client_order_id=coid,
                idempotency_key=row["idempotency_key"],
                source=OrderSource(row["source"]),
                venue=row["venue"],
                symbol=row["symbol"],
                side=Side(row["side"]),
                order_type=OrderType(row["type"]),
                quantity=row["quantity"],
                status=OrderStatus(row["status"]),
                created_ns=row["created_ns"],
                updated_ns=row["updated_ns"],
                price=row["price"],
                stop_price=row["stop_price"],
                reduce_only=row["reduce_only"],
                strategy=row["strategy"],
                filled_quantity=row["filled_quantity"],
                average_price=row["average_price"],
                venue_order_id=row["venue_order_id"],
                reason=row["reason"],
                trade_ids=trades.get(coid, set()),
            )
        return orders

    async def load_positions(self, venue: str) -> tuple[dict[str, Position], int]:
        """Positions of one venue, and the highest event sequence they reflect."""
        rows = await self.pool.fetch("SELECT * FROM positions WHERE venue = $1", venue)
        positions = {
            row["symbol"]: Position(row["quantity"], row["average_entry_price"], row["realized_pnl"]) for row in rows
        }
        return positions, max((int(row["last_event_seq"]) for row in rows), default=0)

"""Rebuild and verify the Postgres projections (`orders`, `fills`, `positions`) from the ORDERS
stream, the source of truth (SPEC FM-C3, §8 "a periodic full replay verifies that the log
rebuilds the same state").

`fold_events` is pure: ORDERS events in stream order → order records, fills and positions.
`rebuild` writes the result with the position service's own idempotent upserts
(`Projections` below: a row only moves forward in `last_event_seq`), either
into a scratch schema (default) or into the live tables (`apply=True`, after a restore).
`verify` rebuilds into the scratch schema and reports every difference with the live tables.

Only facts on the log can be rebuilt: columns the position service derives locally (timestamps,
free-text reasons of queued orders) are not compared.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
from nats.js.errors import NotFoundError

from libs import db
from libs.bus import Bus, Delivery
from libs.logging import get_logger
from libs.orders_model import ORDER_EVENTS, OrderRecord, Position, record_from_command
from libs.store_errors import WriteFailure, classify_write_error, describe
from proto import subjects
from proto.enums import OrderSource, OrderStatus, OrderType, Side
from proto.envelope import Message
from proto.messages import (
    OrderAccepted,
    OrderApproved,
    OrderCanceled,
    OrderDenied,
    OrderFilled,
    OrderQueued,
    OrderRejected,
    OrderStatusUnknown,
    PositionChanged,
)

_UPSERT_ORDER = """
INSERT INTO orders (client_order_id, idempotency_key, source, strategy, venue, symbol, side, type, quantity,
    price, stop_price, reduce_only, status, filled_quantity, average_price, venue_order_id, reason,
    created_ns, updated_ns, last_event_seq, resend_used)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)
ON CONFLICT (client_order_id) DO UPDATE SET
    status = EXCLUDED.status, filled_quantity = EXCLUDED.filled_quantity,
    average_price = EXCLUDED.average_price, venue_order_id = EXCLUDED.venue_order_id,
    reason = EXCLUDED.reason, updated_ns = EXCLUDED.updated_ns, last_event_seq = EXCLUDED.last_event_seq,
    resend_used = orders.resend_used OR EXCLUDED.resend_used
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
    """Reads and idempotent writes of the tables `orders`, `fills` and `positions`.

    Every upsert carries the stream sequence of the event it reflects; a row is only overwritten by
    an equal or newer sequence, so a re-applied event never moves state backwards. The position
    service writes through it live, `rebuild` after a restore.
    """

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
            order.resend_used,
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

    async def find_order(self, client_order_id: str) -> OrderRecord | None:
        """One order by client order id (primary key), with its fills; None when the projection has none.

        The position service asks this before sending a command whose order is not in its memory
        any more (finished orders leave memory after a retention window), so an old command
        delivered again is never sent twice.
        """
        row = await self.pool.fetchrow("SELECT * FROM orders WHERE client_order_id = $1", client_order_id)
        if row is None:
            return None
        fills = await self.pool.fetch(
            "SELECT trade_id, quantity FROM fills WHERE client_order_id = $1", client_order_id
        )
        return _record_from_row(row, {int(fill["trade_id"]): fill["quantity"] for fill in fills})

    async def load_recent_orders(self, live_statuses: list[str], since_ns: int, limit: int) -> dict[str, OrderRecord]:
        """Orders whose status is in `live_statuses`, plus the `limit` newest created at or after
        `since_ns`, with their fills: what the position service keeps in memory. Indexed reads
        (`orders_status_idx`, `orders_created_idx`, the fills primary key), never the whole history.
        """
        rows = list(await self.pool.fetch("SELECT * FROM orders WHERE status = ANY($1::text[])", live_statuses))
        rows += await self.pool.fetch(
            "SELECT * FROM orders WHERE created_ns >= $1 ORDER BY created_ns DESC, client_order_id DESC LIMIT $2",
            since_ns,
            limit,
        )
        by_id = {row["client_order_id"]: row for row in rows}
        fills = await self.pool.fetch(
            "SELECT client_order_id, trade_id, quantity FROM fills WHERE client_order_id = ANY($1::text[])",
            list(by_id),
        )
        trades: dict[str, dict[int, Decimal]] = {}
        for fill in fills:
            trades.setdefault(fill["client_order_id"], {})[int(fill["trade_id"])] = fill["quantity"]
        return {coid: _record_from_row(row, trades.get(coid, {})) for coid, row in by_id.items()}

    async def load_positions(self, venue: str) -> tuple[dict[str, Position], int]:
        """Positions of one venue, and the highest event sequence they reflect."""
        rows = await self.pool.fetch("SELECT * FROM positions WHERE venue = $1", venue)
        positions = {
            row["symbol"]: Position(row["quantity"], row["average_entry_price"], row["realized_pnl"]) for row in rows
        }
        return positions, max((int(row["last_event_seq"]) for row in rows), default=0)


def _record_from_row(row: asyncpg.Record, fills: dict[int, Decimal]) -> OrderRecord:
    """An `orders` row (and its fills: trade id -> quantity) as the position service's record."""
    return OrderRecord(
        client_order_id=row["client_order_id"],
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
        trade_ids=set(fills),
        fill_quantities=dict(fills),
        resend_used=row["resend_used"],
    )


SCRATCH_SCHEMA = "projections_rebuild"
TABLES = ("orders", "fills", "positions")
_log = get_logger("projections")


@dataclass(frozen=True)
class FillRow:
    order: OrderRecord
    trade_id: int
    price: Decimal
    quantity: Decimal
    commission: Decimal
    ts_event_ns: int


@dataclass
class Folded:
    """What the ORDERS stream says the projections are."""

    orders: dict[str, OrderRecord] = field(default_factory=dict)
    order_seq: dict[str, int] = field(default_factory=dict)
    fills: list[FillRow] = field(default_factory=list)
    positions: dict[tuple[str, str], tuple[Position, int, int]] = field(default_factory=dict)
    """(venue, symbol) → (position, stream sequence, ts ns) of its latest `PositionChanged`."""
    orphans: list[str] = field(default_factory=list)
    """Events about orders the stream never approved or denied (e.g. adopted external orders)."""
    events: int = 0
    touched: set[str] = field(default_factory=set)
    """Client order ids an event of this fold changed (a fold continued from a snapshot writes only these)."""
    touched_positions: set[tuple[str, str]] = field(default_factory=set)


def fold_events(events: Iterable[tuple[Message, int]], start: Folded | None = None) -> Folded:
    """Fold ORDERS events, in stream order, into projection rows (idempotent: re-applied events
    change nothing).

    Args:
        events: (message, stream sequence) pairs.
        start: state to continue from (a snapshot, then only the tail after it is folded); it is
            updated in place and returned. None: from nothing (a full replay).
    """
    out = start if start is not None else Folded()
    for message, seq in events:
        out.events += 1
        coid = getattr(message, "client_order_id", None)
        match message:
            case OrderApproved(order=command) | OrderDenied(order=command):
                coid = command.client_order_id
                if coid not in out.orders:
                    out.orders[coid] = record_from_command(command, message.ts_event_ns)
                if isinstance(message, OrderDenied):
                    out.orders[coid].reason = message.reason
            case PositionChanged(venue=venue, symbol=symbol):
                position = Position(message.quantity, message.average_entry_price, message.realized_pnl)
                previous = out.positions.get((venue, symbol))
                if previous is None or previous[1] <= seq:
                    out.positions[(venue, symbol)] = (position, seq, message.ts_event_ns)
                    out.touched_positions.add((venue, symbol))
                continue
            case _ if isinstance(message, ORDER_EVENTS) and coid not in out.orders:
                out.orphans.append(f"{type(message).__name__} {coid} (seq {seq})")
                continue
            case OrderAccepted():
                order = out.orders[message.client_order_id]
                order.venue_order_id = message.venue_order_id or order.venue_order_id
            case OrderStatusUnknown():
                order = out.orders[message.client_order_id]
                order.reason = message.reason
                order.resend_used = order.resend_used or message.resend
            case OrderRejected() | OrderQueued():
                out.orders[message.client_order_id].reason = message.reason
            case OrderCanceled():
                order = out.orders[message.client_order_id]
                order.reason = message.reason or order.reason
            case OrderFilled():
                order = out.orders[message.client_order_id]
                order.venue_order_id = message.venue_order_id or order.venue_order_id
                if order.add_fill(message.trade_id, message.quantity, message.price):
                    out.fills.append(
                        FillRow(
                            order,
                            message.trade_id,
                            message.price,
                            message.quantity,
                            message.commission,
                            message.ts_event_ns,
                        )
                    )
            case _ if isinstance(message, ORDER_EVENTS):
                pass  # submitted, cancel requested: the status step only
            case _:
                continue  # commands and anything else on the stream: not a projection row
        if coid is not None:
            # The status: the live state machine's step for what the event records (`libs.orders_model`).
            out.orders[coid].apply_event(message, message.ts_event_ns)
            out.order_seq[coid] = max(seq, out.order_seq.get(coid, 0))
            out.touched.add(coid)
    return out


async def read_orders_stream(bus: Bus, from_seq: int = 1) -> list[tuple[Message, int]]:
    """Every message on the ORDERS stream from sequence `from_seq` on, with its sequence, in order."""
    stream = subjects.STREAM_ORDERS.name
    try:
        first, last = await bus.stream_bounds(stream)
    except NotFoundError:
        _log.warning("orders_stream_missing", stream=stream, action_taken="nothing to rebuild from")
        return []
    events: list[tuple[Message, int]] = []

    def collect(message: Message, delivery: Delivery) -> None:
        events.append((message, delivery.stream_sequence))

    if last >= max(first, from_seq, 1):
        await bus.replay(stream, max(first, from_seq, 1), last, collect)
    return events


async def _scratch_pool(dsn: str) -> asyncpg.Pool:
    """A pool whose unqualified table names resolve to the scratch schema (fresh, empty tables)."""
    admin = await db.create_pool(dsn, max_size=1)
    try:
        await db.migrate(admin)
        async with admin.acquire() as conn, conn.transaction():
            await conn.execute(f"DROP SCHEMA IF EXISTS {SCRATCH_SCHEMA} CASCADE")
            await conn.execute(f"CREATE SCHEMA {SCRATCH_SCHEMA}")
            for table in TABLES:
                await conn.execute(f"CREATE TABLE {SCRATCH_SCHEMA}.{table} (LIKE public.{table} INCLUDING ALL)")
    finally:
        await admin.close()
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=2,
        command_timeout=db.DB_TIMEOUT_S,
        server_settings={"search_path": SCRATCH_SCHEMA},
    )
    if pool is None:  # pragma: no cover
        raise RuntimeError("asyncpg returned no pool")
    return pool


async def write(folded: Folded, projections: Projections, *, touched_only: bool = False) -> list[dict[str, str]]:
    """Write folded rows with the idempotent upserts.

    A row Postgres refuses (a value it cannot store, `libs.store_errors`) is logged and skipped, so
    it never keeps the rows after it from being written; an outage raises.

    Args:
        folded: the fold.
        projections: where to write.
        touched_only: only the orders and positions the fold's events changed (after a tail replay).

    Returns:
        The refused rows: `{"key": ..., "reason": ...}` each.
    """
    rejected: list[dict[str, str]] = []

    async def attempt(key: str, row: Awaitable[None]) -> None:
        try:
            await row
        except Exception as exc:
            if classify_write_error(exc) is not WriteFailure.BAD_ROW:
                raise
            rejected.append({"key": key, "reason": describe(exc, 500)})
            _log.error("projection_row_rejected", key=key, reason=describe(exc, 300), action_taken="skipped")

    for coid, order in folded.orders.items():
        if touched_only and coid not in folded.touched:
            continue
        await attempt(f"order:{coid}", projections.upsert_order(order, folded.order_seq.get(coid, 0)))
    for fill in folded.fills:
        position, seq, ts_ns = folded.positions.get((fill.order.venue, fill.order.symbol), (Position(), 0, 0))
        await attempt(
            f"fill:{fill.order.client_order_id}:{fill.trade_id}",
            projections.record_fill(
                fill.order,
                fill.trade_id,
                fill.price,
                fill.quantity,
                fill.commission,
                fill.ts_event_ns,
                position,
                ts_ns,
                seq,
            ),
        )
    for (venue, symbol), (position, seq, ts_ns) in folded.positions.items():
        if touched_only and (venue, symbol) not in folded.touched_positions:
            continue
        await attempt(f"position:{venue}:{symbol}", projections.upsert_position(venue, symbol, position, ts_ns, seq))
    return rejected


async def rebuild(bus: Bus, dsn: str, *, apply: bool = False) -> dict[str, Any]:
    """Rebuild the projections from the ORDERS stream.

    Args:
        bus: a connected bus.
        dsn: Postgres DSN.
        apply: False: into the scratch schema `projections_rebuild` (the live tables untouched);
            True: into the live tables (idempotent upserts that never move a row backwards).

    Returns:
        Counts of events, rows written and orphan events.
    """
    events = await read_orders_stream(bus)
    folded = fold_events(events)
    pool = await (db.create_pool(dsn) if apply else _scratch_pool(dsn))
    try:
        if apply:
            await db.migrate(pool)
        rejected = await write(folded, Projections(pool))
    finally:
        await pool.close()
    result = {
        "target": "public" if apply else SCRATCH_SCHEMA,
        "events": folded.events,
        "orders": len(folded.orders),
        "fills": len(folded.fills),
        "positions": len(folded.positions),
        "orphan_events": folded.orphans[:50],
        "rejected_rows": rejected[:50],
    }
    _log.info(
        "projections_rebuilt",
        target=result["target"],
        events=folded.events,
        orders=len(folded.orders),
        fills=len(folded.fills),
        positions=len(folded.positions),
        orphan_events=len(folded.orphans),
        rejected_rows=len(rejected),
    )
    return result


_COMPARED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "orders": (
        ("client_order_id",),
        (
            "symbol",
            "side",
            "type",
            "quantity",
            "price",
            "stop_price",
            "reduce_only",
            "status",
            "filled_quantity",
            "average_price",
            "venue_order_id",
            "resend_used",
        ),
    ),
    "fills": (("client_order_id", "trade_id"), ("symbol", "side", "price", "quantity", "commission")),
    "positions": (("venue", "symbol"), ("quantity", "average_entry_price", "realized_pnl")),
}
"""Per table: key columns and the columns the log determines (timestamps and reasons excluded)."""


def _normal(value: Any) -> Any:
    return value.normalize() if isinstance(value, Decimal) else value


async def _rows(conn: asyncpg.Connection, schema: str, table: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    keys, columns = _COMPARED[table]
    rows = await conn.fetch(f"SELECT {', '.join(keys + columns)} FROM {schema}.{table}")
    return {tuple(row[k] for k in keys): {c: _normal(row[c]) for c in columns} for row in rows}


def diff_tables(
    live: dict[tuple[Any, ...], dict[str, Any]], rebuilt: dict[tuple[Any, ...], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Differences between live and rebuilt rows of one table (pure)."""
    differences: list[dict[str, Any]] = []
    for key in sorted(set(live) | set(rebuilt), key=str):
        if key not in rebuilt:
            differences.append({"key": list(key), "problem": "only in live (not derivable from the log)"})
        elif key not in live:
            differences.append({"key": list(key), "problem": "missing from live (on the log, not projected)"})
        else:
            changed = {
                column: {"live": str(live[key][column]), "rebuilt": str(rebuilt[key][column])}
                for column in live[key]
                if live[key][column] != rebuilt[key][column]
            }
            if changed:
                differences.append({"key": list(key), "problem": "values differ", "columns": changed})
    return differences


async def verify(bus: Bus, dsn: str) -> dict[str, Any]:
    """Rebuild into the scratch schema and compare with the live tables.

    Returns:
        `{"consistent": bool, "rebuild": {...counts}, "differences": {table: [...]}}`.
    """
    rebuilt = await rebuild(bus, dsn, apply=False)
    pool = await db.create_pool(dsn, max_size=1)
    try:
        async with pool.acquire() as conn:
            differences = {
                table: diff_tables(await _rows(conn, "public", table), await _rows(conn, SCRATCH_SCHEMA, table))
                for table in TABLES
            }
    finally:
        await pool.close()
    return {
        "consistent": not any(differences.values()),
        "rebuild": rebuilt,
        "differences": differences,
    }

"""Rebuild and verify the Postgres projections (`orders`, `fills`, `positions`) from the ORDERS
stream, the source of truth (SPEC FM-C3, §8 "a periodic full replay verifies that the log
rebuilds the same state").

`fold_events` is pure: ORDERS events in stream order → order records, fills and positions.
`rebuild` writes the result with the position service's own idempotent upserts
(`services.position.adapters.Projections`: a row only moves forward in `last_event_seq`), either
into a scratch schema (default) or into the live tables (`apply=True`, after a restore).
`verify` rebuilds into the scratch schema and reports every difference with the live tables.

Only facts on the log can be rebuilt: columns the position service derives locally (timestamps,
free-text reasons of queued orders) are not compared.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
from nats.js.errors import NotFoundError

from libs import db
from libs.bus import Bus, Delivery
from libs.logging import get_logger
from proto import subjects
from proto.enums import OrderStatus
from proto.envelope import Message
from proto.messages import (
    OrderAccepted,
    OrderApproved,
    OrderCanceled,
    OrderDenied,
    OrderFilled,
    OrderRejected,
    OrderStatusUnknown,
    OrderSubmitted,
    PositionChanged,
    SubmitOrder,
)
from services.position.adapters import Projections
from services.position.domain import OrderRecord, Position


def record_from_command(command: SubmitOrder, ts_ns: int) -> OrderRecord:
    """The position service's own constructor of a fresh order row (`services.position.handlers`).

    Imported at call time: `mypy proto libs` must not type-check the position service's handlers
    through this module. It belongs in `services/position/domain.py` (it is pure); once moved
    there, import it at the top like `OrderRecord`.
    """
    handlers = importlib.import_module("services.position.handlers")
    record: OrderRecord = handlers.record_from_command(command, ts_ns)
    return record


SCRATCH_SCHEMA = "projections_rebuild"
TABLES = ("orders", "fills", "positions")
_log = get_logger("projections")

S = OrderStatus
_RANK: dict[OrderStatus, int] = {
    S.PENDING_SUBMISSION: 0,
    S.SUBMITTED: 1,
    S.UNKNOWN: 1,
    S.NEW: 2,
    S.PENDING_CANCEL: 3,
    S.PARTIALLY_FILLED: 3,
}
"""How far along an order is; terminal statuses rank above all (absent here). Events only move it forward."""
_TERMINAL_RANK = 9


def _rank(status: OrderStatus) -> int:
    return _RANK.get(status, _TERMINAL_RANK)


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


def _advance(order: OrderRecord, status: OrderStatus, ts_ns: int) -> None:
    if _rank(status) >= _rank(order.status) and order.status not in (S.FILLED,):
        order.status = status
    order.updated_ns = max(order.updated_ns, ts_ns)


def fold_events(events: Iterable[tuple[Message, int]]) -> Folded:
    """Fold ORDERS events, in stream order, into projection rows (idempotent: re-applied events
    change nothing).

    Args:
        events: (message, stream sequence) pairs.
    """
    out = Folded()
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
                    _advance(out.orders[coid], S.DENIED, message.ts_event_ns)
            case PositionChanged(venue=venue, symbol=symbol):
                position = Position(message.quantity, message.average_entry_price, message.realized_pnl)
                previous = out.positions.get((venue, symbol))
                if previous is None or previous[1] <= seq:
                    out.positions[(venue, symbol)] = (position, seq, message.ts_event_ns)
                continue
            case (
                OrderSubmitted()
                | OrderAccepted()
                | OrderRejected()
                | OrderCanceled()
                | OrderStatusUnknown()
                | OrderFilled()
            ) if coid not in out.orders:
                out.orphans.append(f"{type(message).__name__} {coid} (seq {seq})")
                continue
            case OrderSubmitted():
                _advance(out.orders[message.client_order_id], S.SUBMITTED, message.ts_event_ns)
            case OrderAccepted():
                order = out.orders[message.client_order_id]
                order.venue_order_id = message.venue_order_id or order.venue_order_id
                _advance(order, message.status, message.ts_event_ns)
            case OrderRejected():
                order = out.orders[message.client_order_id]
                order.reason = message.reason
                _advance(order, S.REJECTED, message.ts_event_ns)
            case OrderCanceled():
                order = out.orders[message.client_order_id]
                # The position service reports a venue expiry as a cancel whose reason says so.
                expired = message.reason.lower() in ("expired", "expired_in_match")
                order.reason = message.reason or order.reason
                if order.status != S.FILLED:
                    _advance(order, S.EXPIRED if expired else S.CANCELED, message.ts_event_ns)
            case OrderStatusUnknown():
                order = out.orders[message.client_order_id]
                order.reason = message.reason
                _advance(order, S.UNKNOWN, message.ts_event_ns)
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
                if _rank(order.status) < _TERMINAL_RANK or order.status == S.PARTIALLY_FILLED:
                    status = S.FILLED if order.filled_quantity >= order.quantity else S.PARTIALLY_FILLED
                    _advance(order, status, message.ts_event_ns)
            case _:
                continue  # commands and anything else on the stream: not a projection row
        if coid is not None:
            out.order_seq[coid] = max(seq, out.order_seq.get(coid, 0))
    return out


async def read_orders_stream(bus: Bus) -> list[tuple[Message, int]]:
    """Every message on the ORDERS stream with its sequence, in order."""
    stream = subjects.STREAM_ORDERS.name
    try:
        first, last = await bus.stream_bounds(stream)
    except NotFoundError:
        _log.warning("orders_stream_missing", stream=stream, action_taken="nothing to rebuild from")
        return []
    events: list[tuple[Message, int]] = []

    def collect(message: Message, delivery: Delivery) -> None:
        events.append((message, delivery.stream_sequence))

    if last:
        await bus.replay(stream, max(first, 1), last, collect)
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


async def write(folded: Folded, projections: Projections) -> None:
    """Write folded rows with the position service's idempotent upserts."""
    for coid, order in folded.orders.items():
        await projections.upsert_order(order, folded.order_seq.get(coid, 0))
    for fill in folded.fills:
        position, seq, ts_ns = folded.positions.get((fill.order.venue, fill.order.symbol), (Position(), 0, 0))
        await projections.record_fill(
            fill.order,
            fill.trade_id,
            fill.price,
            fill.quantity,
            fill.commission,
            fill.ts_event_ns,
            position,
            ts_ns,
            seq,
        )
    for (venue, symbol), (position, seq, ts_ns) in folded.positions.items():
        await projections.upsert_position(venue, symbol, position, ts_ns, seq)


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
        await write(folded, Projections(pool))
    finally:
        await pool.close()
    result = {
        "target": "public" if apply else SCRATCH_SCHEMA,
        "events": folded.events,
        "orders": len(folded.orders),
        "fills": len(folded.fills),
        "positions": len(folded.positions),
        "orphan_events": folded.orphans[:50],
    }
    _log.info(
        "projections_rebuilt",
        target=result["target"],
        events=folded.events,
        orders=len(folded.orders),
        fills=len(folded.fills),
        positions=len(folded.positions),
        orphan_events=len(folded.orphans),
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

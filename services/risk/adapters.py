"""risk's edges: the persisted trading state, hot state and positions read from the bus."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
from nats.js.errors import NotFoundError

from libs.bus import Bus
from proto import subjects
from proto.codec import decode
from proto.enums import HotStateStatus
from proto.messages import PositionChanged

from .domain import TradingStateRecord, dump_trading_state, load_trading_state


async def read_trading_state(bus: Bus) -> TradingStateRecord:
    """The persisted trading state (ACTIVE when never set, HALTED when unreadable)."""
    entry = await bus.kv_get(subjects.KEY_TRADING_STATE)
    return load_trading_state(entry[0] if entry else None)


async def write_trading_state(bus: Bus, record: TradingStateRecord) -> None:
    """Persist the trading state in KV `trading_state`."""
    await bus.kv_put(subjects.KEY_TRADING_STATE, dump_trading_state(record))


def parse_hot_state(raw: bytes) -> HotStateStatus | None:
    """Hot-state status from a KV value or event payload; None when it cannot be read (not VALID)."""
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    if isinstance(value, str):
        candidate: Any = value
    elif isinstance(value, dict):
        candidate = value.get("current") or value.get("status") or value.get("hot_state") or value.get("state")
    else:
        return None
    try:
        return HotStateStatus(str(candidate))
    except ValueError:
        return None


async def read_hot_state(bus: Bus, symbol: str) -> HotStateStatus | None:
    """Hot state of one symbol from KV `hotstate.<SYM>` (None when never set)."""
    entry = await bus.kv_get(subjects.key_hot_state(symbol))
    return parse_hot_state(entry[0]) if entry else None


async def read_last_position(bus: Bus, venue: str, symbol: str) -> PositionChanged | None:
    """The newest `PositionChanged` of a symbol on the ORDERS stream (None when there is none)."""
    try:
        raw = await bus.js.get_last_msg(subjects.STREAM_ORDERS.name, subjects.evt_position(venue, symbol))
    except NotFoundError:
        return None
    message = decode(raw.data or b"")
    return message if isinstance(message, PositionChanged) else None


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def parse_symbols_reply(raw: bytes) -> dict[str, dict[str, Any]]:
    """Per-symbol hot state from a `svc.state-builder.symbols` reply.

    Accepts `{"symbols": {SYM: {...}}}`, `{"symbols": [{"symbol": SYM, ...}]}`, a bare list or a
    bare mapping; values keep `hot_state`, `best_bid`, `best_ask`, `mark_price` (Decimals).
    """
    value = msgspec.json.decode(raw)
    if isinstance(value, dict) and "symbols" in value:
        value = value["symbols"]
    rows: dict[str, dict[str, Any]] = {}
    items = value.items() if isinstance(value, dict) else ((row.get("symbol"), row) for row in value or [])
    for symbol, row in items:
        if not isinstance(row, dict) or not symbol:
            continue
        status = row.get("hot_state") or row.get("status")
        rows[str(symbol)] = {
            "hot_state": HotStateStatus(str(status)) if status in HotStateStatus.__members__ else None,
            "best_bid": _decimal(row.get("best_bid")),
            "best_ask": _decimal(row.get("best_ask")),
            "mark_price": _decimal(row.get("mark_price")),
        }
    return rows

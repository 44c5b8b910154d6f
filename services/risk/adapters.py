"""risk's edges: the persisted trading state, hot state and positions read from the bus."""

from __future__ import annotations

import msgspec
from nats.js.errors import NotFoundError

from libs.bus import Bus
from proto import subjects
from proto.codec import decode, decode_as
from proto.enums import HotStateStatus
from proto.messages import HotStateRecord, PositionChanged, SymbolHotState, SymbolsReply

from .domain import TradingStateRecord, dump_trading_state, load_trading_state


async def read_trading_state(bus: Bus) -> TradingStateRecord:
    """The persisted trading state (ACTIVE when never set, HALTED when unreadable)."""
    entry = await bus.kv_get(subjects.KEY_TRADING_STATE)
    return load_trading_state(entry[0] if entry else None)


async def write_trading_state(bus: Bus, record: TradingStateRecord) -> None:
    """Persist the trading state in KV `trading_state`."""
    await bus.kv_put(subjects.KEY_TRADING_STATE, dump_trading_state(record))


def parse_hot_state(raw: bytes) -> HotStateStatus | None:
    """Hot-state status from a KV `hotstate.<SYM>` value; None when unreadable (so: not VALID)."""
    try:
        return decode_as(raw, HotStateRecord).status
    except (msgspec.DecodeError, msgspec.ValidationError):
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


def parse_symbols_reply(raw: bytes) -> dict[str, SymbolHotState]:
    """Per-symbol hot state from a `svc.state-builder.symbols` reply.

    Raises:
        msgspec.DecodeError / msgspec.ValidationError: the reply is not a `SymbolsReply`.
    """
    return decode_as(raw, SymbolsReply).symbols

"""strategy's edges: persisted strategy state and crash history (JetStream KV, `proto.kv` values),
positions from the ORDERS stream, the state-builder's symbol view and the degradation level
(`proto` contracts of the services that own them)."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from libs.bus import Bus
from proto import subjects
from proto.enums import DegradationLevel, HotStateStatus
from proto.kv import DegradationLevelValue, StrategyCrashesValue, StrategyStateValue, decode_value, encode_value
from proto.messages import PositionChanged, SymbolsReply
from proto.replies import BookReply, BookRequest, ErrorReply, ReplyDecodeError, decode_reply

from .domain import MarketView


class UnreadableValue(ValueError):
    """A KV key holds a value that does not decode as its `proto.kv` struct (corrupt, or a bug)."""


async def read_strategy_state(bus: Bus, name: str) -> StrategyStateValue | None:
    """The persisted state (None when never set or unreadable)."""
    entry = await bus.kv_get(subjects.key_strategy(name))
    return decode_value(StrategyStateValue, entry[0] if entry is not None else None)


async def write_strategy_state(bus: Bus, name: str, value: StrategyStateValue) -> None:
    """Persist the strategy state."""
    await bus.kv_put(subjects.key_strategy(name), encode_value(value))


async def read_crash_record(bus: Bus, name: str) -> StrategyCrashesValue:
    """The crash history (empty when never written).

    Raises:
        UnreadableValue: the stored value is corrupt; the caller decides (it must not
            silently forget crashes and un-FAIL a strategy).
    """
    entry = await bus.kv_get(subjects.key_strategy_crashes(name))
    if entry is None:
        return StrategyCrashesValue()
    value = decode_value(StrategyCrashesValue, entry[0])
    if value is None:
        raise UnreadableValue(f"{subjects.key_strategy_crashes(name)}: {entry[0][:200]!r}")
    return value


async def write_crash_record(bus: Bus, name: str, value: StrategyCrashesValue) -> None:
    """Persist the crash history."""
    await bus.kv_put(subjects.key_strategy_crashes(name), encode_value(value))


async def read_degradation_level(bus: Bus) -> DegradationLevel | None:
    """The system's degradation level (KV `degradation_level`, the watchdog's); None when never set.

    Raises:
        UnreadableValue: the stored value is not a `DegradationLevelValue`.
    """
    entry = await bus.kv_get(subjects.KEY_DEGRADATION_LEVEL)
    if entry is None:
        return None
    value = decode_value(DegradationLevelValue, entry[0])
    if value is None:
        raise UnreadableValue(f"{subjects.KEY_DEGRADATION_LEVEL}: {entry[0][:200]!r}")
    return value.level


async def read_last_position(bus: Bus, venue: str, symbol: str) -> PositionChanged | None:
    """The newest `PositionChanged` of a symbol on the ORDERS stream (None when there is none)."""
    return await bus.last_message(subjects.STREAM_ORDERS.name, subjects.evt_position(venue, symbol), PositionChanged)


def market_views(raw: bytes) -> dict[str, MarketView] | ErrorReply:
    """A `svc.state-builder.symbols` reply as market views (or the error the state-builder answered).

    Raises:
        proto.replies.ReplyDecodeError: the reply is neither a `SymbolsReply` nor an `ErrorReply`.
    """
    reply = decode_reply(SymbolsReply, raw)
    if isinstance(reply, ErrorReply):
        return reply
    return {
        symbol: MarketView(
            hot_state_valid=view.hot_state == HotStateStatus.VALID,
            best_bid=view.best_bid,
            best_ask=view.best_ask,
            mark_price=view.mark_price,
            funding_rate=view.funding_rate,
            open_interest=view.open_interest,
        )
        for symbol, view in reply.symbols.items()
    }


def hot_state_attributes(raw: bytes, symbol: str) -> dict[str, str | int]:
    """What a `svc.state-builder.symbols` reply said of `symbol`, as span attributes (empty when
    the reply does not decode or does not name it: it is only described, never decided on)."""
    try:
        reply = decode_reply(SymbolsReply, raw)
    except ReplyDecodeError:
        return {}
    view = reply.symbols.get(symbol) if isinstance(reply, SymbolsReply) else None
    if view is None:
        return {}
    attributes: dict[str, str | int] = {"bulwark.hot_state": view.hot_state.value}
    if view.last_update_id is not None:
        attributes["bulwark.book.last_update_id"] = view.last_update_id
    if view.age_ms is not None:
        attributes["bulwark.hot_state.age_ms"] = view.age_ms
    return attributes


async def read_depth(bus: Bus, symbol: str, levels: int) -> tuple[tuple[tuple[Decimal, Decimal], ...], ...]:
    """The top `levels` bids and asks of `symbol` from the state-builder ((), () when it has no VALID book).

    Raises:
        proto.replies.ReplyDecodeError: the reply is neither a `BookReply` nor an `ErrorReply`.
    """
    request = msgspec.json.encode(BookRequest(symbol=symbol, depth=levels))
    reply = decode_reply(BookReply, await bus.request(subjects.SVC_STATE_BUILDER_BOOK, request, timeout_s=0.4))
    if isinstance(reply, ErrorReply) or reply.status != HotStateStatus.VALID:
        return (), ()
    return tuple(reply.bids), tuple(reply.asks)

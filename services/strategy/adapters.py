"""strategy's edges: persisted strategy state and crash history (JetStream KV), positions from the
ORDERS stream, and the state-builder's symbol view."""

from __future__ import annotations

import msgspec

from libs.bus import Bus
from proto import subjects
from proto.codec import decode_as
from proto.enums import HotStateStatus, StrategyState
from proto.messages import PositionChanged, SymbolsReply

from .domain import MarketView


class StrategyStateRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Persisted value of KV `strategy.<name>`."""

    state: StrategyState
    reason: str = ""
    symbol: str | None = None
    ts_ns: int = 0
    kind: str = ""


class CrashRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Persisted value of KV `strategy.<name>.crashes` (FM-C2: survives restarts).

    Attributes:
        crashes: times (ns) of the crashes still inside the 10-minute window.
        running: token (pid-start time) of the process running the instance; set at start,
            cleared at a clean stop, so a start that finds it set knows the previous process
            died (kill -9, OOM).
        surrendered: symbol → crash time: positions (or entries in flight) left to the position
            service, which the strategy may not re-enter.
    """

    crashes: list[int] = []
    running: str | None = None
    surrendered: dict[str, int] = {}


_record_decoder = msgspec.json.Decoder(StrategyStateRecord)
_crash_decoder = msgspec.json.Decoder(CrashRecord)


async def read_strategy_state(bus: Bus, name: str) -> StrategyStateRecord | None:
    """The persisted state (None when never set or unreadable)."""
    entry = await bus.kv_get(subjects.key_strategy(name))
    if entry is None:
        return None
    try:
        return _record_decoder.decode(entry[0])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def write_strategy_state(bus: Bus, name: str, record: StrategyStateRecord) -> None:
    """Persist the strategy state."""
    await bus.kv_put(subjects.key_strategy(name), msgspec.json.encode(record))


async def read_crash_record(bus: Bus, name: str) -> CrashRecord:
    """The crash history (empty when never written).

    Raises:
        msgspec.DecodeError / msgspec.ValidationError: the stored value is corrupt; the caller
            decides (it must not silently forget crashes and un-FAIL a strategy).
    """
    entry = await bus.kv_get(subjects.key_strategy_crashes(name))
    if entry is None:
        return CrashRecord()
    return _crash_decoder.decode(entry[0])


async def write_crash_record(bus: Bus, name: str, record: CrashRecord) -> None:
    """Persist the crash history."""
    await bus.kv_put(subjects.key_strategy_crashes(name), msgspec.json.encode(record))


async def read_last_position(bus: Bus, venue: str, symbol: str) -> PositionChanged | None:
    """The newest `PositionChanged` of a symbol on the ORDERS stream (None when there is none)."""
    return await bus.last_message(subjects.STREAM_ORDERS.name, subjects.evt_position(venue, symbol), PositionChanged)


def market_views(raw: bytes) -> dict[str, MarketView]:
    """A `svc.state-builder.symbols` reply as market views.

    Raises:
        msgspec.DecodeError / msgspec.ValidationError: the reply is not a `SymbolsReply`.
    """
    return {
        symbol: MarketView(
            hot_state_valid=view.hot_state == HotStateStatus.VALID, best_bid=view.best_bid, best_ask=view.best_ask
        )
        for symbol, view in decode_as(raw, SymbolsReply).symbols.items()
    }

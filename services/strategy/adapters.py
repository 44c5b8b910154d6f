"""strategy's edges: persisted strategy state and the state-builder's symbol view."""

from __future__ import annotations

import msgspec

from libs.bus import Bus
from proto import subjects
from proto.codec import decode_as
from proto.enums import HotStateStatus, StrategyState
from proto.messages import SymbolsReply

from .domain import MarketView


class StrategyStateRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Persisted value of KV `strategy.<name>`."""

    state: StrategyState
    reason: str = ""
    symbol: str | None = None
    ts_ns: int = 0


_record_decoder = msgspec.json.Decoder(StrategyStateRecord)


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

"""strategy's edges: persisted strategy state and the state-builder's symbol view."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from libs.bus import Bus
from proto import subjects
from proto.enums import HotStateStatus, StrategyState

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


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value)) if value is not None else None
    except InvalidOperation:
        return None


def market_views(raw: bytes) -> dict[str, MarketView]:
    """`svc.state-builder.symbols` reply as market views (list, mapping or `{"symbols": ...}`)."""
    value = msgspec.json.decode(raw)
    if isinstance(value, dict) and "symbols" in value:
        value = value["symbols"]
    items = value.items() if isinstance(value, dict) else ((row.get("symbol"), row) for row in value or [])
    views: dict[str, MarketView] = {}
    for symbol, row in items:
        if symbol and isinstance(row, dict):
            status = row.get("hot_state") or row.get("status")
            views[str(symbol)] = MarketView(
                hot_state_valid=status == HotStateStatus.VALID.value,
                best_bid=_decimal(row.get("best_bid")),
                best_ask=_decimal(row.get("best_ask")),
            )
    return views

"""What a strategy instance writes and reads across processes, through `proto`: its KV values
(`StrategyStateValue`, `StrategyCrashesValue`) as earlier versions wrote them, the state-builder's
symbols reply and the watchdog's degradation level."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from proto import subjects
from proto.codec import encode
from proto.enums import DegradationLevel, HotStateStatus, StrategyState
from proto.kv import DegradationLevelValue, StrategyCrashesValue, StrategyStateValue, encode_value
from proto.messages import SymbolHotState, SymbolsReply
from proto.replies import ErrorReply, ReplyDecodeError, error_reply
from services.strategy import adapters
from services.strategy.adapters import UnreadableValue, market_views

# Bytes as the previous version (its own `StrategyStateRecord` / `CrashRecord` structs) wrote them.
STATE_BYTES = b'{"state":"IN_POSITION","reason":"entered","symbol":"BTCUSDT","ts_ns":17,"kind":"trend"}'
CRASHES_BYTES = b'{"crashes":[1,2],"running":"41-1700","surrendered":{"ETHUSDT":2}}'


class KvBus:
    """The KV part of the bus, in memory."""

    def __init__(self, **values: bytes) -> None:
        self.values = values

    async def kv_get(self, key: str, bucket: str = subjects.KV_STATE) -> tuple[bytes, int] | None:
        value = self.values.get(key)
        return None if value is None else (value, 1)

    async def kv_put(self, key: str, value: bytes, bucket: str = subjects.KV_STATE) -> int:
        self.values[key] = value
        return 1


def test_strategy_state_when_written_by_the_previous_version_then_read_and_rewritten_the_same() -> None:
    bus = KvBus(**{subjects.key_strategy("trend"): STATE_BYTES})
    value = asyncio.run(adapters.read_strategy_state(bus, "trend"))  # type: ignore[arg-type]
    assert value == StrategyStateValue(
        state=StrategyState.IN_POSITION, reason="entered", symbol="BTCUSDT", ts_ns=17, kind="trend"
    )
    asyncio.run(adapters.write_strategy_state(bus, "trend", value))  # type: ignore[arg-type]
    assert bus.values[subjects.key_strategy("trend")] == STATE_BYTES


def test_strategy_state_when_only_the_state_then_defaults_and_when_garbage_then_none() -> None:
    bus = KvBus(**{subjects.key_strategy("a"): b'{"state":"DISABLED"}', subjects.key_strategy("b"): b"{oops"})
    assert asyncio.run(adapters.read_strategy_state(bus, "a")) == StrategyStateValue(state=StrategyState.DISABLED)  # type: ignore[arg-type]
    assert asyncio.run(adapters.read_strategy_state(bus, "b")) is None  # type: ignore[arg-type]
    assert asyncio.run(adapters.read_strategy_state(bus, "never")) is None  # type: ignore[arg-type]


def test_crash_history_when_written_by_the_previous_version_then_read_and_rewritten_the_same() -> None:
    bus = KvBus(**{subjects.key_strategy_crashes("trend"): CRASHES_BYTES})
    value = asyncio.run(adapters.read_crash_record(bus, "trend"))  # type: ignore[arg-type]
    assert value == StrategyCrashesValue(crashes=[1, 2], running="41-1700", surrendered={"ETHUSDT": 2})
    asyncio.run(adapters.write_crash_record(bus, "trend", value))  # type: ignore[arg-type]
    assert bus.values[subjects.key_strategy_crashes("trend")] == CRASHES_BYTES
    assert encode_value(StrategyCrashesValue()) == b'{"crashes":[],"running":null,"surrendered":{}}'


def test_crash_history_when_never_written_then_empty_and_when_corrupt_then_error() -> None:
    assert asyncio.run(adapters.read_crash_record(KvBus(), "trend")) == StrategyCrashesValue()  # type: ignore[arg-type]
    corrupt = KvBus(**{subjects.key_strategy_crashes("trend"): b'{"crashes": "many"}'})
    with pytest.raises(UnreadableValue):
        asyncio.run(adapters.read_crash_record(corrupt, "trend"))  # type: ignore[arg-type]


def test_degradation_level_when_set_then_level_when_never_set_then_none_when_garbage_then_error() -> None:
    value = encode_value(DegradationLevelValue(level=DegradationLevel.HARD_SHUTDOWN, reason="operator"))
    level = asyncio.run(adapters.read_degradation_level(KvBus(**{subjects.KEY_DEGRADATION_LEVEL: value})))  # type: ignore[arg-type]
    assert level == DegradationLevel.HARD_SHUTDOWN
    assert asyncio.run(adapters.read_degradation_level(KvBus())) is None  # type: ignore[arg-type]
    with pytest.raises(UnreadableValue):
        asyncio.run(adapters.read_degradation_level(KvBus(**{subjects.KEY_DEGRADATION_LEVEL: b"[1]"})))  # type: ignore[arg-type]


def test_market_views_when_symbols_reply_then_valid_flag_per_symbol() -> None:
    reply = SymbolsReply(
        symbols={
            "BTCUSDT": SymbolHotState(
                symbol="BTCUSDT", hot_state=HotStateStatus.VALID, age_ms=5, last_update_id=1, best_bid=Decimal("1.5")
            ),
            "ETHUSDT": SymbolHotState(symbol="ETHUSDT", hot_state=HotStateStatus.STALE, age_ms=1500, last_update_id=2),
        }
    )
    views = market_views(encode(reply))
    assert not isinstance(views, ErrorReply)
    assert views["BTCUSDT"].hot_state_valid and views["BTCUSDT"].best_bid == Decimal("1.5")
    assert not views["ETHUSDT"].hot_state_valid


def test_market_views_when_reply_is_not_the_contract_then_error() -> None:
    with pytest.raises(ReplyDecodeError):
        market_views(b'{"symbols": [{"symbol": "BTCUSDT", "hot_state": "VALID"}]}')


def test_market_views_when_error_reply_then_the_error() -> None:
    views = market_views(error_reply("unavailable", "no book yet"))
    assert isinstance(views, ErrorReply) and views.error.code == "unavailable"

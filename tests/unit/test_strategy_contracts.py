"""What a strategy instance writes and reads across processes, through `proto`: its durable, lease
and subject names; its KV values (`StrategyStateValue`, `StrategyCrashesValue`) as earlier versions
wrote them; the state-builder's symbols reply and the watchdog's degradation level; and its
snapshots (Postgres) as earlier versions wrote them, each kind's market memory exported by the kind."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from proto import subjects
from proto.codec import encode
from proto.enums import DegradationLevel, HotStateStatus, Side, StrategyState
from proto.kv import DegradationLevelValue, StrategyCrashesValue, StrategyStateValue, encode_value
from proto.messages import SymbolHotState, SymbolsReply
from proto.replies import ErrorReply, ReplyDecodeError, error_reply
from services.strategy import adapters
from services.strategy import snapshot as snap
from services.strategy.adapters import UnreadableValue, market_views
from services.strategy.config import instance_config
from services.strategy.domain import Strategy

# Bytes as the previous version (its own `StrategyStateRecord` / `CrashRecord` structs) wrote them.
STATE_BYTES = b'{"state":"IN_POSITION","reason":"entered","symbol":"BTCUSDT","ts_ns":17,"kind":"trend"}'
CRASHES_BYTES = b'{"crashes":[1,2],"running":"41-1700","surrendered":{"ETHUSDT":2}}'


def test_names_when_built_then_the_names_earlier_versions_used() -> None:
    # A renamed durable starts over from the stream's beginning, a renamed lease is a second writer.
    assert subjects.strategy_market_data_consumer("trend") == "strategy-trend-md"
    assert subjects.strategy_commands_consumer("trend") == "strategy-trend-commands"
    assert subjects.strategy_lease("trend") == "strategy.trend"
    assert subjects.cmd_strategy_all("trend") == "cmd.strategy.trend.>"
    assert subjects.EVT_STRATEGY_CRASHED_ALL == "evt.strategy.*.crashed"
    pattern, crashed = subjects.EVT_STRATEGY_CRASHED_ALL.split("."), subjects.evt_strategy_crashed("trend").split(".")
    assert all(want in ("*", got) for want, got in zip(pattern, crashed, strict=True))


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


# --------------------------------------------------------------------------- snapshots

S = 1_000_000_000
T0 = 1_700_000_000 * S
# A snapshot of each kind as the previous version wrote it (its kinds' states were snapshot.py's).
HEAD = (
    b'"md_seq":7,"taken_ns":1700000003000000000,"state":"SCANNING","symbol":null,"entry":null,"entry_order":null,'
    b'"state_since_ns":0,"last_entry_ns":null,"positions":{},"last_price":{"BTCUSDT":"59400"},"surrendered":{},'
)
SNAPSHOTS = {
    "trend": b'{"name":"trend","kind":"trend",'
    + HEAD
    + b'"market":{"type":"trend","averages":{"BTCUSDT":{"first_ns":1700000000000000000,"last_ns":1700000000400000000,'
    b'"fast":"59990.09926360831959759041102","slow":"59998.33610768512522470658895"}}}}',
    "imbalance": b'{"name":"imbalance","kind":"imbalance",'
    + HEAD
    + b'"market":{"type":"imbalance","windows":{"BTCUSDT":{"window_ns":10000000000,"trades":[[1700000000000000000,'
    b'false,"1"],[1700000000100000000,true,"2"],[1700000000200000000,true,"2"],[1700000000300000000,true,"2"],'
    b'[1700000000400000000,true,"2"]],"buy_volume":"8","sell_volume":"1"}}}}',
    "cascade-fade": b'{"name":"cascade-fade","kind":"cascade_fade",'
    + HEAD
    + b'"market":{"type":"cascade_fade","events":{"BTCUSDT":{"event_id":"BTCUSDT-sell-1700000000100000000",'
    b'"symbol":"BTCUSDT","direction":"SELL","started_ns":1700000000100000000,"phase_since_ns":1700000003000000000,'
    b'"last_liquidation_ns":1700000000400000000,"start_price":"60000","extreme_price":"59400","liquidations":4,'
    b'"quantity":"8","notional":"477000","start_open_interest":null,"low_open_interest":null,"phase":"DECAYING"}},'
    b'"tapes":{"BTCUSDT":{"liquidations":[[1700000000100000000,"SELL","59850","2"],[1700000000200000000,"SELL",'
    b'"59700","2"],[1700000000300000000,"SELL","59550","2"],[1700000000400000000,"SELL","59400","2"]],'
    b'"prices":[[1700000000000000000,"60000"],[1700000000100000000,"59850"],[1700000000200000000,"59700"],'
    b'[1700000000300000000,"59550"],[1700000000400000000,"59400"]],"open_interest":[]}},"traded_events":[]}}',
}


def _flushed(name: str) -> Strategy:
    """A strategy of kind `name` after a short liquidation flush (every kind remembers something)."""
    strategy = instance_config(name, {}).build(state=StrategyState.SCANNING)
    strategy.on_trade("BTCUSDT", T0, Decimal(60000), Decimal(1), True)
    for i in range(1, 5):
        price = Decimal(60000 - 150 * i)
        strategy.on_liquidation("BTCUSDT", T0 + i * S // 10, Side.SELL, price, Decimal(2))
        strategy.on_trade("BTCUSDT", T0 + i * S // 10, price, Decimal(2), False)
    strategy.on_tick(T0 + 3 * S, {})
    return strategy


@pytest.mark.parametrize("name", sorted(SNAPSHOTS))
def test_snapshot_when_written_by_the_previous_version_then_the_same_bytes_both_ways(name: str) -> None:
    instance = instance_config(name, {})
    assert snap.encode_snapshot(snap.capture(_flushed(name), instance.kind, 7, T0 + 3 * S)) == SNAPSHOTS[name]
    restored = instance.build()
    snap.restore(restored, snap.decode_snapshot(SNAPSHOTS[name]))
    assert snap.encode_snapshot(snap.capture(restored, instance.kind, 7, T0 + 3 * S)) == SNAPSHOTS[name]


def test_market_state_when_captured_then_a_copy_the_live_strategy_does_not_change() -> None:
    for name in SNAPSHOTS:
        strategy = _flushed(name)
        before = snap.encode_snapshot(snap.capture(strategy, strategy.kind, 7, T0))
        captured = snap.capture(strategy, strategy.kind, 7, T0)
        strategy.on_liquidation("BTCUSDT", T0 + S, Side.SELL, Decimal(59000), Decimal(3))
        strategy.on_trade("BTCUSDT", T0 + S, Decimal(59000), Decimal(3), False)
        assert snap.encode_snapshot(captured) == before, name


def test_market_state_when_of_another_kind_then_ignored() -> None:
    trend = _flushed("trend")
    imbalance = _flushed("imbalance")
    averages = dict(trend.averages)  # type: ignore[attr-defined]
    trend.load_market_state(imbalance.market_state())
    assert trend.averages == averages  # type: ignore[attr-defined]

"""Risk keeps every strategy's persisted order mode in memory by a KV watch (real NATS KV): the
records stored at its start are applied before `follow` returns (so the first signal already sees
them), a mode switched while risk runs is followed without a read per order, the record decides
over the enable event risk heard, and an unreadable record means paper."""

from __future__ import annotations

from libs.bus import Bus
from libs.logging import get_logger
from proto import subjects
from proto.enums import StrategyMode
from proto.kv import StrategyModeValue, encode_value
from proto.messages import EnableStrategy
from services.risk.paper import PaperModes
from tests.support.polling import eventually


def _record(mode: StrategyMode, operator: str, ts_ns: int) -> bytes:
    return encode_value(StrategyModeValue(mode=mode, operator=operator, ts_ns=ts_ns))


async def test_follow_when_modes_stored_and_then_switched_then_memory_follows_the_records(nats_url: str) -> None:
    bus = Bus("test")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    log = get_logger("test")
    trend, fade = subjects.key_strategy_mode("trend"), subjects.key_strategy_mode("fade")
    await bus.kv_put(trend, _record(StrategyMode.PAPER, "alice", 1))
    await bus.kv_put(fade, b"\x00not a record")
    modes = PaperModes(venue="binance-usdm-paper")
    watch = await modes.follow(bus, log)
    try:
        # At the start: what is stored, before any order is decided; no record is live.
        assert modes.mode("trend") == StrategyMode.PAPER
        assert modes.mode("fade") == StrategyMode.PAPER  # unreadable: never live by mistake
        assert modes.mode("imbalance") == StrategyMode.LIVE

        # Back to live by an operator while risk runs; risk heard only the old paper enable.
        modes.on_enabled(EnableStrategy(strategy="trend", operator="alice", mode=StrategyMode.PAPER))
        await bus.kv_put(trend, _record(StrategyMode.LIVE, "bob", 2))
        await eventually(lambda: modes.mode("trend") == StrategyMode.LIVE, 10.0)

        # A strategy enabled on paper for the first time while risk runs.
        await bus.kv_put(subjects.key_strategy_mode("imbalance"), _record(StrategyMode.PAPER, "carol", 3))
        await eventually(lambda: modes.mode("imbalance") == StrategyMode.PAPER, 10.0)

        # A record that cannot be read is paper.
        await bus.kv_put(trend, b'{"mode": "moon"}')
        await eventually(lambda: modes.mode("trend") == StrategyMode.PAPER, 10.0)
    finally:
        await watch.stop()
        await bus.close()


async def test_confirm_when_the_watch_lags_then_the_order_is_decided_on_the_record(nats_url: str) -> None:
    bus = Bus("test")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    log = get_logger("test")
    key = subjects.key_strategy_mode("momentum")
    beside_live, whole_system = PaperModes(venue="binance-usdm-paper"), PaperModes(paper_link=True)
    try:
        # No watch running (as if its update were still on the way): the operator's paper enable is
        # in the record only. Beside live venues the order's decision reads it: never live by mistake.
        await bus.kv_put(key, _record(StrategyMode.PAPER, "alice", 1))
        await beside_live.confirm(bus, "momentum", log)
        await whole_system.confirm(bus, "momentum", log)

        assert beside_live.mode("momentum") == StrategyMode.PAPER
        assert whole_system.mode("momentum") == StrategyMode.LIVE  # not read: nothing goes live there
    finally:
        await bus.close()

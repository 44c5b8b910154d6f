"""Risk reads a strategy's persisted order mode before deciding one of its orders (real NATS KV):
the record the gateway writes before the enable decides, whatever order the enable event and the
signal arrive in, and an unreadable record means paper."""

from __future__ import annotations

from libs.bus import Bus
from libs.logging import get_logger
from proto import subjects
from proto.enums import StrategyMode
from proto.kv import StrategyModeValue, encode_value
from proto.messages import EnableStrategy
from services.risk.paper import PaperModes


async def test_refresh_when_record_differs_from_what_risk_heard_then_the_record_decides(nats_url: str) -> None:
    bus = Bus("test")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    log = get_logger("test")
    try:
        modes = PaperModes(venue="binance-usdm-paper")
        # No record: what risk heard stands.
        await modes.refresh(bus, "trend", log)
        assert modes.mode("trend") == StrategyMode.LIVE

        # Enabled on paper: the record is written first; the enable event has not reached risk yet.
        key = subjects.key_strategy_mode("trend")
        await bus.kv_put(key, encode_value(StrategyModeValue(mode=StrategyMode.PAPER, operator="alice", ts_ns=1)))
        await modes.refresh(bus, "trend", log)
        assert modes.mode("trend") == StrategyMode.PAPER

        # Back to live by the operator; risk heard only the old paper enable.
        modes.on_enabled(EnableStrategy(strategy="trend", operator="alice", mode=StrategyMode.PAPER))
        await bus.kv_put(key, encode_value(StrategyModeValue(mode=StrategyMode.LIVE, operator="bob", ts_ns=2)))
        await modes.refresh(bus, "trend", log)
        assert modes.mode("trend") == StrategyMode.LIVE

        # A record that cannot be read is paper: never live by mistake.
        await bus.kv_put(key, b"\x00not a record")
        await modes.refresh(bus, "trend", log)
        assert modes.mode("trend") == StrategyMode.PAPER
    finally:
        await bus.close()

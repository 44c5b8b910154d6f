"""Risk says what is true of the market-data stream when it holds an entry back: DISCONNECTED is
said as DISCONNECTED, since when and reconnecting (not as the clean window after a reconnect, which
has not begun), SUSPECT as the clean window; the same text in `svc.risk.entry_gates` and in the
decision's denial, and at start the KV record's time is the since-when."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from libs.clock import ManualClock
from libs.logging import get_logger
from proto import subjects
from proto.enums import ConnectionState, HotStateStatus, TradingState
from proto.kv import LinkValue, TradingStateValue
from proto.messages import HotStateRecord, HotStateStatusChanged, OrderDenied
from services.risk import decisions, dependencies
from services.risk.checks import RiskLimits
from services.risk.dependencies import market_link_reason
from services.risk.handlers import RiskService
from tests.unit.test_risk_dependencies import OvertakenKv
from tests.unit.test_risk_entry_gates import VENUE, QuietBus, ask, btc_entry, link, service

T = 1_796_662_683_000_000_000  # 2026-12-07 16:58:03 UTC
DISCONNECTED_AT_T = (
    "market data stream DISCONNECTED since 2026-12-07 16:58:03 UTC: reconnecting; entries wait for the "
    "reconnect and the clean window after it (FM-N1)"
)


def test_reason_when_stream_disconnected_then_says_so_with_since_and_suspect_is_the_clean_window() -> None:
    assert market_link_reason(ConnectionState.DISCONNECTED, T) == DISCONNECTED_AT_T
    assert market_link_reason(ConnectionState.DISCONNECTED, None) == (
        "market data stream DISCONNECTED: reconnecting; entries wait for the reconnect and the clean window after "
        "it (FM-N1)"
    )
    assert market_link_reason(ConnectionState.SUSPECT, T) == (
        "market data stream SUSPECT: clean window after a reconnect (FM-N1)"
    )
    assert market_link_reason(ConnectionState.CONNECTED, T) is None and market_link_reason(None, None) is None


async def test_entry_gates_and_decision_when_stream_disconnected_then_both_say_disconnected_then_suspect() -> None:
    risk = service(QuietBus({"BTCUSDT": HotStateStatus.VALID, "ETHUSDT": HotStateStatus.VALID}), ManualClock(T))
    await risk.on_event(
        HotStateStatusChanged(symbol="BTCUSDT", previous=None, current=HotStateStatus.VALID, reason="built")
    )
    await risk.on_event(link(ConnectionState.DISCONNECTED, T))

    blocked = (await ask(risk)).symbols["BTCUSDT"].blocked_by
    assert [(b.gate, b.since_ns) for b in blocked] == [("link", T)]
    reason = blocked[0].reason
    assert reason.endswith(DISCONNECTED_AT_T) and "SUSPECT" not in reason and "after a reconnect" not in reason
    denied = await decisions.decide(risk, btc_entry())
    assert isinstance(denied, OrderDenied) and denied.reason == reason

    await risk.on_event(link(ConnectionState.SUSPECT, T + 5))
    blocked = (await ask(risk)).symbols["BTCUSDT"].blocked_by
    assert [b.reason.split(": ", 1)[1] for b in blocked] == [
        "market data stream SUSPECT: clean window after a reconnect (FM-N1)"
    ]


async def test_start_when_kv_says_disconnected_then_since_is_the_record_time() -> None:
    limits = RiskLimits(symbols=frozenset({"BTCUSDT"}), max_position_qty=Decimal(1), max_order_notional=Decimal(10**6))
    record = LinkValue(state=ConnectionState.DISCONNECTED, reason="closed", ts_ns=T)
    bus = OvertakenKv(
        {
            subjects.key_link(VENUE, subjects.MARKET_WS_LINK): msgspec.json.encode(record),
            subjects.key_hot_state("BTCUSDT"): msgspec.json.encode(
                HotStateRecord(status=HotStateStatus.VALID, reason="built")
            ),
        },
        {},
    )
    state = TradingStateValue(state=TradingState.ACTIVE)
    risk = RiskService(bus, get_logger("risk-test"), limits, VENUE, ManualClock(T + 60 * 10**9), state)  # type: ignore[arg-type]
    await dependencies.load_initial_state(risk)

    assert dependencies.market_link_gate(risk, "BTCUSDT") == DISCONNECTED_AT_T

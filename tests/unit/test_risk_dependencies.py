"""Fail closed on lost dependencies (SPEC FM-C1, FM-C6): the state-builder liveness rule, stale hot
state, and the entries-halted gate of the pre-trade checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import msgspec

from libs.clock import ManualClock
from libs.logging import get_logger
from proto import subjects
from proto.codec import encode
from proto.enums import ConnectionState, HotStateStatus, OrderSource, OrderType, Side, TradingState
from proto.kv import TradingStateValue
from proto.messages import (
    HotStateRecord,
    HotStateStatusChanged,
    LinkStateChanged,
    Message,
    SubmitOrder,
    SymbolHotState,
    SymbolsReply,
)
from services.risk import dependencies, monitor
from services.risk.checks import RiskLimits, check_order
from services.risk.handlers import RiskService
from services.risk.liveness import HOT_STATE_MAX_AGE_MS, StateBuilderWatch, reply_hot_state

S = 1_000_000_000
LIMITS = RiskLimits(symbols=frozenset({"BTCUSDT"}), max_position_qty=Decimal(1), max_order_notional=Decimal(100000))


def order(side: Side, quantity: str = "0.1", reduce_only: bool = False) -> SubmitOrder:
    return SubmitOrder(
        client_order_id="bw1",
        idempotency_key="k1",
        source=OrderSource.STRATEGY,
        strategy="alpha",
        symbol="BTCUSDT",
        side=side,
        order_type=OrderType.MARKET,
        quantity=Decimal(quantity),
        reduce_only=reduce_only,
    )


def decide(o: SubmitOrder, position: str, halted: str | None) -> tuple[bool, str]:
    decision = check_order(
        o,
        trading_state=TradingState.ACTIVE,
        hot_state=HotStateStatus.VALID,
        position=Decimal(position),
        reference_price=Decimal(60000),
        limits=LIMITS,
        entries_halted=halted,
    )
    return decision.approved, decision.reason


def test_watch_when_never_heard_then_dead_with_reason() -> None:
    watch = StateBuilderWatch()
    assert not watch.alive(10 * S)
    assert "not heard from" in (watch.down_reason(10 * S) or "")


def test_watch_when_heard_within_3s_then_alive_and_after_then_dead() -> None:
    watch = StateBuilderWatch()
    assert watch.heard(10 * S) is True  # from unknown to alive counts as a revival
    assert watch.alive(13 * S) and watch.down_reason(13 * S) is None
    assert not watch.alive(13 * S + 1)
    assert "silent for 3.0s" in (watch.down_reason(13 * S + 1) or "")
    assert watch.heard(14 * S) is True
    assert watch.heard(15 * S) is False


def test_reply_hot_state_when_data_older_than_limit_then_invalid() -> None:
    assert reply_hot_state(HotStateStatus.VALID, 10) == HotStateStatus.VALID
    assert reply_hot_state(HotStateStatus.VALID, None) == HotStateStatus.VALID
    assert reply_hot_state(HotStateStatus.VALID, HOT_STATE_MAX_AGE_MS + 1) == HotStateStatus.INVALID
    assert reply_hot_state(HotStateStatus.STALE, 0) == HotStateStatus.STALE


def test_check_when_entries_halted_then_entry_denied_with_reason_and_exit_approved() -> None:
    approved, reason = decide(order(Side.BUY), "0", "state-builder silent for 4.0s")
    assert not approved and reason == "trading HALTED for new entries: state-builder silent for 4.0s"
    assert decide(order(Side.SELL, "0.1", reduce_only=True), "0.1", "state-builder silent")[0]
    assert decide(order(Side.SELL, "0.05"), "0.1", "bus connection lost")[0]
    # Growing the position is an entry even with a position open.
    assert not decide(order(Side.BUY), "0.1", "bus connection lost")[0]


def test_check_when_nothing_halted_then_entry_approved() -> None:
    assert decide(order(Side.BUY), "0", None)[0]


class OvertakenKv:
    """A bus whose KV reads return what was stored when they started, while `during_read` delivers
    the newer event that overtakes them (the followers are subscribed before the reads)."""

    def __init__(self, values: dict[str, bytes], during_read: dict[str, Callable[[], Awaitable[None]]]) -> None:
        self.values = values
        self.during_read = during_read

    async def kv_get(self, key: str, bucket: str = subjects.KV_STATE) -> tuple[bytes, int] | None:
        value = self.values.get(key)
        event = self.during_read.pop(key, None)
        if event is not None:
            await event()
        return (value, 1) if value is not None else None

    async def last_message(self, stream: str, subject: str, kind: type[Any]) -> Any:
        return None


async def test_initial_reads_when_an_event_overtakes_them_then_the_event_wins() -> None:
    """Risk starting while a book turns VALID: the KV read (INVALID) must not overwrite the VALID event
    that arrived during it, or every entry in that symbol is denied until the next transition."""
    venue = "binance-usdm"
    limits = RiskLimits(symbols=frozenset({"BTCUSDT"}), max_position_qty=Decimal(1), max_order_notional=Decimal(10**6))
    service: RiskService

    async def deliver(message: Message) -> None:
        await service.on_event(message)

    link_key, hot_key = subjects.key_link(venue, subjects.MARKET_WS_LINK), subjects.key_hot_state("BTCUSDT")
    bus = OvertakenKv(
        {
            link_key: msgspec.json.encode({"state": ConnectionState.SUSPECT.value}),
            hot_key: msgspec.json.encode(HotStateRecord(status=HotStateStatus.INVALID, reason="building")),
        },
        {
            link_key: lambda: deliver(
                LinkStateChanged(
                    venue=venue,
                    link=subjects.MARKET_WS_LINK,
                    previous=ConnectionState.SUSPECT,
                    current=ConnectionState.CONNECTED,
                    reason="clean window passed",
                )
            ),
            hot_key: lambda: deliver(
                HotStateStatusChanged(
                    symbol="BTCUSDT", previous=HotStateStatus.INVALID, current=HotStateStatus.VALID, reason="rebuilt"
                )
            ),
        },
    )
    state = TradingStateValue(state=TradingState.ACTIVE)
    service = RiskService(bus, get_logger("risk-test"), limits, venue, ManualClock(), state)  # type: ignore[arg-type]
    await dependencies.load_initial_state(service)
    assert service.hot_state == {"BTCUSDT": HotStateStatus.VALID}
    assert service.market_link == ConnectionState.CONNECTED
    assert dependencies.market_link_gate(service, "BTCUSDT") is None


async def test_initial_reads_when_nothing_overtakes_them_then_kv_values_apply() -> None:
    venue = "binance-usdm"
    limits = RiskLimits(symbols=frozenset({"BTCUSDT"}), max_position_qty=Decimal(1), max_order_notional=Decimal(10**6))
    bus = OvertakenKv(
        {
            subjects.key_link(venue, subjects.MARKET_WS_LINK): msgspec.json.encode({"state": "SUSPECT"}),
            subjects.key_hot_state("BTCUSDT"): msgspec.json.encode(
                HotStateRecord(status=HotStateStatus.INVALID, reason="building")
            ),
        },
        {},
    )
    state = TradingStateValue(state=TradingState.ACTIVE)
    service = RiskService(bus, get_logger("risk-test"), limits, venue, ManualClock(), state)  # type: ignore[arg-type]
    await dependencies.load_initial_state(service)
    assert service.hot_state == {"BTCUSDT": HotStateStatus.INVALID}
    assert service.market_link == ConnectionState.SUSPECT


class StateBuilderAnswers(OvertakenKv):
    """A bus on which the state-builder answers the `symbols` query with `rows`."""

    def __init__(self, rows: dict[str, SymbolHotState]) -> None:
        super().__init__({}, {})
        self.rows = rows

    async def request(self, subject: str, payload: bytes = b"", timeout_s: float = 1.0) -> bytes:
        assert subject == subjects.SVC_STATE_BUILDER_SYMBOLS
        return encode(SymbolsReply(symbols=self.rows))


async def test_monitor_when_risk_view_of_hot_state_is_wrong_then_the_next_pass_corrects_it() -> None:
    venue = "binance-usdm"
    limits = RiskLimits(symbols=frozenset({"ETHUSDT"}), max_position_qty=Decimal(1), max_order_notional=Decimal(10**6))
    bus = StateBuilderAnswers(
        {"ETHUSDT": SymbolHotState(symbol="ETHUSDT", hot_state=HotStateStatus.VALID, age_ms=40, last_update_id=7)}
    )
    state = TradingStateValue(state=TradingState.ACTIVE)
    service = RiskService(bus, get_logger("risk-test"), limits, venue, ManualClock(), state)  # type: ignore[arg-type]
    service.hot_state["ETHUSDT"] = HotStateStatus.INVALID  # an event that arrived out of order

    await monitor.monitor_once(service)

    assert service.hot_state == {"ETHUSDT": HotStateStatus.VALID}

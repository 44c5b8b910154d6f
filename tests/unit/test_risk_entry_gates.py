"""`svc.risk.entry_gates` says what risk's decisions do: an entry is blocked exactly when risk would
deny it, and each reason is the one a denied order gets (issue 16: status said ACTIVE while every
order was DENIED for a SUSPECT market-data stream)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from libs.clock import ManualClock
from libs.logging import get_logger
from proto import subjects
from proto.codec import encode
from proto.enums import ConnectionState, DegradationLevel, HotStateStatus, OrderSource, OrderType, Side, TradingState
from proto.kv import TradingStateValue
from proto.messages import (
    HotStateStatusChanged,
    LinkStateChanged,
    OrderApproved,
    OrderDenied,
    SubmitOrder,
    SymbolHotState,
    SymbolsReply,
)
from proto.replies import EntryGatesReply
from services.risk import decisions, entry_gates
from services.risk.checks import RiskLimits, check_order
from services.risk.entry_gates import GateInputs, blockers, combined, probe_entry
from services.risk.handlers import RiskService

VENUE = "binance-usdm"
LIMITS = RiskLimits(
    symbols=frozenset({"BTCUSDT", "ETHUSDT"}),
    max_position_qty=Decimal(1),
    max_order_notional=Decimal(100000),
    liquid_symbols=frozenset({"BTCUSDT"}),
)
REASONS = st.one_of(st.none(), st.sampled_from(["bus connection lost", "price moved 25 % in 40 s"]))
LINK_REASONS = st.one_of(st.none(), st.just("market data stream SUSPECT: clean window after a reconnect (FM-N1)"))

gate_inputs = st.builds(
    GateInputs,
    trading_state=st.sampled_from(TradingState),
    breaker_halt=REASONS,
    entries_paused=REASONS,
    entries_halted=REASONS,
    market_link=LINK_REASONS,
    degradation=st.one_of(st.none(), st.sampled_from(DegradationLevel)),
    hot_state=st.one_of(st.none(), st.sampled_from(HotStateStatus)),
)


@given(gate_inputs, st.sampled_from(["BTCUSDT", "ETHUSDT"]))
def test_blockers_when_any_gates_then_empty_exactly_when_the_combined_check_approves(
    inputs: GateInputs, symbol: str
) -> None:
    order = probe_entry(symbol, VENUE)
    found = blockers(order, inputs, LIMITS, {})
    assert (found == []) == combined(order, inputs, LIMITS)
    if found:
        # The first blocker is the reason a real decision gives (check_order: first failure wins).
        trading_state = TradingState.HALTED if inputs.breaker_halt is not None else inputs.trading_state
        denied = check_order(
            order,
            trading_state=trading_state,
            hot_state=inputs.hot_state,
            position=Decimal(0),
            reference_price=Decimal(1),
            limits=LIMITS,
            degradation=inputs.degradation,
            entries_paused=inputs.entries_paused,
            entries_halted=inputs.entries_halted or inputs.market_link,
        )
        assert found[0].reason.startswith(denied.reason)


def test_blockers_when_several_gates_close_then_every_reason_with_its_time() -> None:
    inputs = GateInputs(
        trading_state=TradingState.HALTED,
        breaker_halt=None,
        entries_paused="price moved 25 % in 40 s",
        entries_halted=None,
        market_link=None,
        degradation=DegradationLevel.EMERGENCY_MODE,
        hot_state=HotStateStatus.STALE,
    )
    found = blockers(probe_entry("BTCUSDT", VENUE), inputs, LIMITS, {"trading_state": 5, "hot_state": 7})
    assert [(b.gate, b.reason, b.since_ns) for b in found] == [
        ("trading_state", "trading HALTED: no new orders", 5),
        ("degradation", "EMERGENCY_MODE: no new entries", None),
        ("breaker", "new entries paused (CB-2): price moved 25 % in 40 s", None),
        ("hot_state", "hot state of BTCUSDT is STALE, not VALID", 7),
    ]


class QuietBus:
    """A bus on which the state-builder answers `symbols` with `rows` and publishes are recorded."""

    def __init__(self, rows: dict[str, HotStateStatus]) -> None:
        self.rows = rows
        self.published: list[tuple[str, Any]] = []

    async def request(self, subject: str, payload: bytes = b"", timeout_s: float = 1.0) -> bytes:
        assert subject == subjects.SVC_STATE_BUILDER_SYMBOLS
        return encode(
            SymbolsReply(
                symbols={
                    symbol: SymbolHotState(symbol=symbol, hot_state=status, age_ms=10, last_update_id=1)
                    for symbol, status in self.rows.items()
                }
            )
        )

    async def kv_get(self, key: str, bucket: str = subjects.KV_STATE) -> tuple[bytes, int] | None:
        return None

    async def publish(self, subject: str, message: Any, msg_id: str | None = None) -> None:
        self.published.append((subject, message))


def service(bus: QuietBus, clock: ManualClock) -> RiskService:
    return RiskService(
        bus,  # type: ignore[arg-type]
        get_logger("risk-test"),
        LIMITS,
        VENUE,
        clock,
        TradingStateValue(state=TradingState.ACTIVE, ts_ns=1),
    )


def link(current: ConnectionState, ts_ns: int) -> LinkStateChanged:
    return LinkStateChanged(
        venue=VENUE, link=subjects.MARKET_WS_LINK, previous=None, current=current, reason="", ts_event_ns=ts_ns
    )


def btc_entry() -> SubmitOrder:
    """An operator's limit buy of BTCUSDT on the main venue: a new entry."""
    return SubmitOrder(
        client_order_id="bw-entry-1",
        idempotency_key="entry-1",
        source=OrderSource.OPERATOR,
        symbol="BTCUSDT",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal("0.01"),
        price=Decimal(100),
        venue=VENUE,
    )


async def ask(risk: RiskService) -> EntryGatesReply:
    return msgspec.json.decode(await entry_gates.serve_entry_gates(risk, b"{}"), type=EntryGatesReply)


async def test_entry_gates_when_market_stream_suspect_then_blocked_as_a_decision_denies_then_open() -> None:
    clock = ManualClock(1_000)
    bus = QuietBus({"BTCUSDT": HotStateStatus.VALID, "ETHUSDT": HotStateStatus.VALID})
    risk = service(bus, clock)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        await risk.on_event(
            HotStateStatusChanged(
                symbol=symbol, previous=None, current=HotStateStatus.VALID, reason="built", ts_event_ns=900
            )
        )
    await risk.on_event(
        LinkStateChanged(
            venue=VENUE,
            link=subjects.ORDER_LINK,
            previous=None,
            current=ConnectionState.CONNECTED,
            reason="",
            ts_event_ns=800,
        )
    )
    await risk.on_event(link(ConnectionState.SUSPECT, 950))

    reply = await ask(risk)
    gates = reply.symbols["BTCUSDT"]
    assert gates.entry_venue == VENUE and gates.venues[VENUE].blocked_by == []
    assert [b.gate for b in gates.blocked_by] == ["link"]
    reason = gates.blocked_by[0].reason
    assert "market data stream SUSPECT: clean window after a reconnect" in reason
    assert gates.blocked_by[0].since_ns == 1_000  # when risk saw the stream turn SUSPECT

    entry = btc_entry()
    denied = await decisions.decide(risk, entry)
    assert isinstance(denied, OrderDenied) and denied.reason == reason

    await risk.on_event(link(ConnectionState.CONNECTED, 2_000))
    reply = await ask(risk)
    assert all(s.blocked_by == [] and s.venues[VENUE].blocked_by == [] for s in reply.symbols.values())
    approved = await decisions.decide(risk, msgspec.structs.replace(entry, client_order_id="bw-entry-2"))
    assert isinstance(approved, OrderApproved)


async def test_entry_gates_when_order_link_down_or_unknown_then_that_venue_blocked() -> None:
    risk = service(QuietBus({"BTCUSDT": HotStateStatus.VALID, "ETHUSDT": HotStateStatus.INVALID}), ManualClock(5))
    reply = await ask(risk)
    assert [b.gate for b in reply.symbols["BTCUSDT"].venues[VENUE].blocked_by] == ["order_link"]
    assert "not reported yet" in reply.symbols["BTCUSDT"].venues[VENUE].blocked_by[0].reason
    # The hot state was unknown, so risk asked the state-builder first, as a decision would.
    assert reply.symbols["BTCUSDT"].blocked_by == []
    assert [b.reason for b in reply.symbols["ETHUSDT"].blocked_by] == ["hot state of ETHUSDT is INVALID, not VALID"]

"""What risk writes and answers through the `proto` structs is byte for byte what it wrote before,
and what older versions (and the other writers of a key) stored is still read: no migration."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import msgspec

from libs.clock import ManualClock
from libs.logging import get_logger
from libs.settings import Settings
from proto import subjects
from proto.enums import BreakerState, ConnectionState, DegradationLevel, HotStateStatus, TradingState
from proto.envelope import Message
from proto.kv import BreakerValue, TradingStateValue, encode_value
from proto.replies import error_reply
from services.risk import adapters, breaker_effects, trading_control
from services.risk.checks import RiskLimits
from services.risk.handlers import RiskService
from services.risk.main import breakers_from
from services.risk.trading_state import TradingTrigger, load_trading_state

S = 1_000_000_000
LIMITS = RiskLimits(symbols=frozenset({"BTCUSDT"}), max_position_qty=Decimal(1), max_order_notional=Decimal(100000))


class MemoryBus:
    """KV and publishing in memory (what trading control and breaker resets touch)."""

    connected = True

    def __init__(self, kv: dict[str, bytes] | None = None) -> None:
        self.kv: dict[str, bytes] = dict(kv or {})
        self.published: list[tuple[str, Message]] = []

    async def kv_get(self, key: str) -> tuple[bytes, int] | None:
        return (self.kv[key], 1) if key in self.kv else None

    async def kv_put(self, key: str, value: bytes) -> int:
        self.kv[key] = value
        return 1

    async def publish(self, subject: str, message: Message, *, msg_id: str | None = None) -> int:
        self.published.append((subject, message))
        return len(self.published)


def service(bus: MemoryBus, trading: TradingStateValue) -> RiskService:
    return RiskService(
        bus,  # type: ignore[arg-type]
        get_logger("risk-test"),
        LIMITS,
        "binance-usdm",
        ManualClock(100 * S),
        trading,
        breakers=breakers_from(Settings()),
        monotonic=ManualClock(10 * S),
    )


# --------------------------------------------------------------------------- KV values


def test_trading_state_when_written_then_bytes_as_before_and_old_values_read() -> None:
    value = TradingStateValue(state=TradingState.HALTED, reason="x", operator="op", ts_ns=5)
    before = b'{"state":"HALTED","reason":"x","operator":"op","ts_ns":5}'
    assert encode_value(value) == before
    assert load_trading_state(before) == value
    assert load_trading_state(b'{"state":"REDUCING"}') == TradingStateValue(state=TradingState.REDUCING)
    unreadable = load_trading_state(b'{"state":"MAYBE"}')
    assert unreadable.state == TradingState.HALTED and unreadable.reason.startswith("unreadable persisted state")


def test_breaker_when_written_then_bytes_as_before_and_unreadable_then_error() -> None:
    before = (
        b'{"breaker":"CB-1","title":"rapid loss","state":"OPEN","reason":"r","reset_mode":"manual",'
        b'"tripped_at_ns":1,"reset_at_ns":null,"operator":null,"trips":1,"details":{"session_pnl":"-2000"},"ts_ns":2}'
    )
    value = BreakerValue(
        breaker="CB-1",
        title="rapid loss",
        state=BreakerState.OPEN,
        reason="r",
        tripped_at_ns=1,
        trips=1,
        details={"session_pnl": "-2000"},
        ts_ns=2,
    )
    assert encode_value(value) == before
    bus = MemoryBus({subjects.key_breaker("CB-1"): before, subjects.key_breaker("CB-2"): b"{broken"})
    assert asyncio.run(adapters.read_breaker(bus, "CB-1")) == (value, None)  # type: ignore[arg-type]
    record, error = asyncio.run(adapters.read_breaker(bus, "CB-2"))  # type: ignore[arg-type]
    assert record is None and error
    assert asyncio.run(adapters.read_breaker(bus, "CB-4")) == (None, None)  # type: ignore[arg-type]


def test_background_work_when_written_then_bytes_as_before() -> None:
    bus = MemoryBus()
    asyncio.run(adapters.write_background_work(bus, True, "cpu", 5))  # type: ignore[arg-type]
    assert bus.kv[subjects.KEY_BACKGROUND_WORK] == b'{"paused":true,"reason":"cpu","ts_ns":5}'


def test_link_when_written_by_position_or_market_data_then_read_and_garbage_then_none() -> None:
    bus = MemoryBus(
        {
            subjects.key_link("a", subjects.ORDER_LINK): b'{"state":"CONNECTED","reason":"up","ts_ns":1}',
            subjects.key_link("a", subjects.MARKET_WS_LINK): (
                b'{"state":"SUSPECT","reason":"gap","causes":["clean_window"],"ts_ns":2}'
            ),
            subjects.key_link("b", subjects.ORDER_LINK): b'{"state":"SIDEWAYS"}',
            subjects.key_link("c", subjects.ORDER_LINK): b"[",
        }
    )

    def read(venue: str, link: str) -> ConnectionState | None:
        return asyncio.run(adapters.read_link_state(bus, venue, link))  # type: ignore[arg-type]

    assert read("a", subjects.ORDER_LINK) == ConnectionState.CONNECTED
    assert read("a", subjects.MARKET_WS_LINK) == ConnectionState.SUSPECT
    assert read("b", subjects.ORDER_LINK) is None
    assert read("c", subjects.ORDER_LINK) is None
    assert read("d", subjects.ORDER_LINK) is None


def test_degradation_when_written_by_watchdog_or_gateway_then_level_and_time_read() -> None:
    def read(raw: bytes | None) -> tuple[DegradationLevel | None, int]:
        bus = MemoryBus({subjects.KEY_DEGRADATION_LEVEL: raw} if raw is not None else {})
        return asyncio.run(adapters.read_degradation_level(bus))  # type: ignore[arg-type]

    watchdog = b'{"level":"EMERGENCY_MODE","reason":"r","previous":"NORMAL","ts_ns":9}'
    gateway = b'{"level":"HARD_SHUTDOWN","reason":"stop","operator":"ops","ts_ns":7}'
    assert read(watchdog) == (DegradationLevel.EMERGENCY_MODE, 9)
    assert read(gateway) == (DegradationLevel.HARD_SHUTDOWN, 7)
    assert read(None) == (DegradationLevel.NORMAL, 0)
    assert read(b'{"level":"PANIC","ts_ns":3}') == (None, 0)
    assert read(b"{broken") == (None, 0)


# --------------------------------------------------------------------------- replies


def test_trading_control_when_halted_then_reply_as_before_and_when_no_reason_then_error() -> None:
    bus = MemoryBus()
    risk = service(bus, TradingStateValue(state=TradingState.ACTIVE))
    halt = trading_control.request_handler(risk, TradingTrigger.HALT)
    reply = asyncio.run(halt(b'{"operator":"ops","reason":"test"}'))
    assert reply == b'{"trading_state":"HALTED","previous":"ACTIVE"}'
    assert (
        bus.kv[subjects.KEY_TRADING_STATE]
        == b'{"state":"HALTED","reason":"test","operator":"ops","ts_ns":100000000000}'
    )
    assert asyncio.run(halt(b"{}")) == b'{"error":{"code":"bad_request","message":"a reason is required"}}'
    assert error_reply("x", "y") == b'{"error":{"code":"x","message":"y"}}'


def test_breaker_reset_when_cb1_and_halted_then_reply_with_note_as_before() -> None:
    bus = MemoryBus()
    risk = service(bus, TradingStateValue(state=TradingState.HALTED))
    assert risk.breakers is not None
    risk.breakers.rapid_loss.record = msgspec.structs.replace(risk.breakers.rapid_loss.record, state=BreakerState.OPEN)
    request = b'{"breaker":"CB-1","operator":"ops","reason":"checked"}'
    reply = asyncio.run(breaker_effects.reset_breaker(risk, request))
    assert reply == (
        b'{"breaker":"CB-1","state":"CLOSED","previous":"OPEN","trading_state":"HALTED",'
        b'"note":"breaker cleared; trading stays HALTED until an operator resumes it"}'
    )
    again = asyncio.run(breaker_effects.reset_breaker(risk, request))
    assert msgspec.json.decode(again)["error"]["code"] == "not_tripped"


def test_breaker_reset_when_not_cb1_then_no_note_key() -> None:
    risk = service(MemoryBus(), TradingStateValue(state=TradingState.ACTIVE))
    assert risk.breakers is not None
    market = risk.breakers.abnormal_market
    market.record = msgspec.structs.replace(market.record, state=BreakerState.HALF_OPEN)
    reply = asyncio.run(breaker_effects.reset_breaker(risk, b'{"breaker":"CB-2","operator":"ops","reason":"ok"}'))
    assert reply == b'{"breaker":"CB-2","state":"CLOSED","previous":"HALF_OPEN","trading_state":"ACTIVE"}'


def test_state_reply_when_served_then_bytes_as_the_dict_risk_wrote_before() -> None:
    risk = service(MemoryBus(), TradingStateValue(state=TradingState.REDUCING, reason="r", operator="ops", ts_ns=4))
    risk.state.positions["BTCUSDT"] = Decimal("0.250")
    risk.hot_state = {"BTCUSDT": HotStateStatus.VALID, "ETHUSDT": None}
    risk.degradation = DegradationLevel.REDUCED_FUNCTIONALITY
    risk.bus_lost = "bus connection lost: new entries HALTED until reconnected and re-validated"
    before = msgspec.json.encode(
        {
            "trading_state": "REDUCING",
            "reason": "r",
            "operator": "ops",
            "ts_ns": 4,
            "degradation_level": "REDUCED_FUNCTIONALITY",
            "positions": {"BTCUSDT": "0.250"},
            "pending": {"BTCUSDT": ["0", "0"]},
            "hot_state": {"BTCUSDT": "VALID", "ETHUSDT": None},
            "breakers": {"CB-1": "CLOSED", "CB-2": "CLOSED", "CB-4": "CLOSED"},
            "entries_halted": risk.bus_lost,
            "recovery": None,
            "orders_seq": 0,
        }
    )
    assert asyncio.run(risk.serve_state(b"")) == before


def test_book_depth_when_state_builder_replies_then_valid_books_only() -> None:
    valid = (
        b'{"symbol":"BTCUSDT","status":"VALID","last_update_id":9,"bids":[["100","2"],["99","1"]],"asks":[["101","1"]]}'
    )
    assert adapters.book_depth(valid) == (Decimal(200 + 99 + 101), Decimal("100.5"))
    assert adapters.book_depth(valid.replace(b'"VALID"', b'"STALE"')) is None
    assert adapters.book_depth(error_reply("not_found", "unknown symbol X")) is None
    assert adapters.book_depth(b"not json") is None
    assert adapters.book_depth(b'{"symbol":"BTCUSDT","status":"VALID","asks":[]}') == (Decimal(0), None)

"""The risk service on a real nats-server: circuit breakers, their reset, degradation effects, and
one holder per symbol among strategies.

Risk runs in-process through `run_service`, exactly as its main would; the test plays the position
service, market data and the watchdog by publishing their events on the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
import pytest_asyncio
from nats.aio.msg import Msg

from libs.bus import Bus
from libs.ids import client_order_id_for
from libs.runtime.service import run_service
from libs.settings import Settings
from proto import subjects
from proto.codec import decode, encode
from proto.enums import DegradationLevel, HotStateStatus, OrderSource, OrderType, Side
from proto.envelope import Message
from proto.messages import (
    AlertRaised,
    AlertResolved,
    BreakerStateChanged,
    DegradationLevelChanged,
    DisableStrategy,
    EnableStrategy,
    HotStateRecord,
    MarkPrice,
    OrderApproved,
    OrderDenied,
    OrderFilled,
    PositionChanged,
    SignalGenerated,
    SubmitOrder,
    SymbolHotState,
    SymbolsReply,
)
from services.risk.main import setup as risk_setup
from tests.support.polling import eventually as poll_until

VENUE = "binance-usdm"
SYMBOL = "BTCUSDT"


_eventually = functools.partial(poll_until, timeout_s=15.0)


@dataclass
class Harness:
    bus: Bus
    seen: list[Message] = field(default_factory=list)

    async def request(self, operation: str, payload: dict[str, Any]) -> dict[str, Any]:
        raw = await self.bus.request(subjects.service_query(subjects.RISK, operation), msgspec.json.encode(payload))
        return msgspec.json.decode(raw)

    async def kv_json(self, key: str) -> Any:
        entry = await self.bus.kv_get(key)
        return msgspec.json.decode(entry[0]) if entry else None

    async def breaker_state(self, breaker: str) -> str | None:
        record = await self.kv_json(subjects.key_breaker(breaker))
        return record["state"] if record else None

    def of_type(self, kind: type) -> list[Any]:
        return [m for m in self.seen if isinstance(m, kind)]

    async def decision(self, coid: str) -> OrderApproved | OrderDenied:
        async def found() -> Any:
            return next(
                (
                    m
                    for m in self.seen
                    if isinstance(m, OrderApproved | OrderDenied) and m.order.client_order_id == coid
                ),
                None,
            )

        return await _eventually(found)

    async def position(self, quantity: str, realized: str, caused_by: str | None = None) -> None:
        await self.bus.publish(
            subjects.evt_position(VENUE, SYMBOL),
            PositionChanged(
                venue=VENUE,
                symbol=SYMBOL,
                quantity=Decimal(quantity),
                average_entry_price=Decimal("60000"),
                realized_pnl=Decimal(realized),
                caused_by_client_order_id=caused_by,
            ),
        )

    async def position_applied(self, quantity: str, realized: str, caused_by: str | None = None) -> None:
        """`position`, then wait until risk holds it: the position (durable `risk-events`) and a
        following signal (durable `risk-signals`) are on different consumers, in no set order."""
        await self.position(quantity, realized, caused_by)

        async def held() -> bool:
            positions = (await self.request("state", {}))["positions"]
            return Decimal(positions.get(SYMBOL, "0")) == Decimal(quantity)

        await _eventually(held)

    async def signal(self, strategy: str, side: Side = Side.BUY, reduce_only: bool = False) -> str:
        """A strategy's MARKET signal of 0.001 (as the strategy process publishes it); its order's id."""
        message = SignalGenerated(
            strategy=strategy,
            symbol=SYMBOL,
            side=side,
            order_type=OrderType.MARKET,
            quantity=Decimal("0.001"),
            reduce_only=reduce_only,
            confidence=Decimal(1),
        )
        await self.bus.publish(subjects.evt_signal(strategy, SYMBOL), message, msg_id=message.message_id)
        return client_order_id_for(message.message_id)

    async def filled(self, coid: str, side: Side = Side.BUY, quantity: str = "0.001") -> None:
        """The position service's fill of the whole order `coid`."""
        fill = OrderFilled(
            client_order_id=coid,
            venue_order_id=1,
            trade_id=1,
            symbol=SYMBOL,
            side=side,
            price=Decimal("60000"),
            quantity=Decimal(quantity),
            cumulative_quantity=Decimal(quantity),
            order_quantity=Decimal(quantity),
        )
        await self.bus.publish(subjects.evt_fill(VENUE, SYMBOL), fill, msg_id=f"fill:{coid}")

    async def mark(self, funding: str) -> None:
        await self.bus.publish(
            subjects.md_mark(VENUE, SYMBOL),
            MarkPrice(venue=VENUE, symbol=SYMBOL, mark_price=Decimal("60000"), funding_rate=Decimal(funding)),
        )

    async def submit(self, key: str, side: Side = Side.BUY, quantity: str = "0.01", reduce_only: bool = False) -> str:
        order = SubmitOrder(
            client_order_id=client_order_id_for(key),
            idempotency_key=key,
            source=OrderSource.OPERATOR,
            symbol=SYMBOL,
            side=side,
            order_type=OrderType.MARKET,
            quantity=Decimal(quantity),
            reduce_only=reduce_only,
        )
        await self.bus.publish(subjects.CMD_ORDER_SUBMIT, order, msg_id=f"submit:{key}")
        return order.client_order_id


async def _valid_symbols(_: bytes) -> bytes:
    view = SymbolHotState(symbol=SYMBOL, hot_state=HotStateStatus.VALID, age_ms=0, last_update_id=1)
    return encode(SymbolsReply(symbols={SYMBOL: view}))


@pytest_asyncio.fixture
async def risk(nats_url: str) -> AsyncIterator[Harness]:
    settings = Settings(
        nats_url=nats_url,
        symbols=(SYMBOL, "ETHUSDT"),
        risk_capital="1000",
        risk_pause_s=1.0,
        risk_monitor_interval_s=0.2,
        strategies=("imbalance", "trend"),
    )
    bus = Bus("test")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    await bus.kv_put(subjects.key_hot_state(SYMBOL), encode(HotStateRecord(status=HotStateStatus.VALID, reason="test")))
    harness = Harness(bus)

    async def collect(msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            harness.seen.append(decode(msg.data))

    # A live state-builder's answer (risk fails closed on entries without one: FM-C1).
    await bus.serve(subjects.SVC_STATE_BUILDER_SYMBOLS, _valid_symbols)
    for subject in ("evt.order.>", "evt.breaker.>", "evt.alert.>", "evt.trading.>", "cmd.order.>", "cmd.strategy.>"):
        await bus.subscribe_core(subject, collect)
    task = asyncio.create_task(run_service(subjects.RISK, risk_setup, settings=settings))

    async def ready() -> bool:
        try:
            await bus.request(subjects.SVC_RISK_STATE, timeout_s=0.5)
        except Exception:
            return False
        return True

    try:
        await _eventually(ready, timeout_s=20)
        yield harness
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bus.close()


async def test_cb1_when_trade_loses_over_5_percent_then_halted_flattened_and_reset_needs_reason(
    risk: Harness,
) -> None:
    await risk.position("0.1", "0")  # baseline
    await risk.position("0.05", "-100")  # a partial close losing 10 % of capital 1000

    async def tripped() -> bool:
        return await risk.breaker_state("CB-1") == "OPEN"

    await _eventually(tripped)
    assert (await risk.kv_json(subjects.KEY_TRADING_STATE))["state"] == "HALTED"
    record = await risk.kv_json(subjects.key_breaker("CB-1"))
    assert "one BTCUSDT trade" in record["reason"] and record["tripped_at_ns"] > 0

    async def flattened() -> Any:
        return [m for m in risk.of_type(OrderApproved) if m.order.source == OrderSource.RISK]

    (flatten,) = await _eventually(flattened)
    assert (flatten.order.side, flatten.order.quantity, flatten.order.reduce_only) == (Side.SELL, Decimal("0.05"), True)
    assert flatten.order.order_type == OrderType.MARKET
    assert any(m.breaker == "CB-1" and m.current == "OPEN" for m in risk.of_type(BreakerStateChanged))
    assert any(m.key == "breaker.CB-1" for m in risk.of_type(AlertRaised))

    denied = await risk.decision(await risk.submit("cb1-entry"))
    assert isinstance(denied, OrderDenied) and "HALTED" in denied.reason

    # Resume is refused while the breaker is tripped; a reset needs an operator and a reason.
    refused = await risk.request("resume", {"operator": "alice", "reason": "try"})
    assert refused["error"]["code"] == "breaker_open"
    no_reason = await risk.request("breaker_reset", {"breaker": "CB-1", "operator": "alice", "reason": "  "})
    assert no_reason["error"]["code"] == "bad_request"
    unknown = await risk.request("breaker_reset", {"breaker": "CB-9", "operator": "alice", "reason": "x"})
    assert unknown["error"]["code"] == "not_found"
    assert await risk.breaker_state("CB-1") == "OPEN"

    reply = await risk.request("breaker_reset", {"breaker": "CB-1", "operator": "alice", "reason": "losses reviewed"})
    assert (reply["state"], reply["previous"], reply["trading_state"]) == ("CLOSED", "OPEN", "HALTED")
    assert await risk.breaker_state("CB-1") == "CLOSED"
    assert (await risk.kv_json(subjects.KEY_TRADING_STATE))["state"] == "HALTED"  # until an explicit resume

    async def resolved() -> bool:
        return any(m.key == "breaker.CB-1" for m in risk.of_type(AlertResolved))

    await _eventually(resolved)
    again = await risk.request("breaker_reset", {"breaker": "CB-1", "operator": "alice", "reason": "twice"})
    assert again["error"]["code"] == "not_tripped"
    resumed = await risk.request("resume", {"operator": "alice", "reason": "all clear"})
    assert resumed == {"trading_state": "ACTIVE", "previous": "HALTED"}


async def test_cb2_when_funding_abnormal_then_entries_paused_and_auto_reset_after_pause(risk: Harness) -> None:
    await risk.mark("0.0001")
    await risk.mark("0.05")  # 500 x normal

    async def state_is(wanted: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await risk.breaker_state("CB-2") == wanted

        return check

    await _eventually(await state_is("OPEN"))
    denied = await risk.decision(await risk.submit("cb2-entry"))
    assert isinstance(denied, OrderDenied) and "CB-2" in denied.reason

    await risk.mark("0.0001")  # funding back to normal; hot state stays VALID
    await _eventually(await state_is("CLOSED"))
    transitions = [(m.previous, m.current) for m in risk.of_type(BreakerStateChanged) if m.breaker == "CB-2"]
    assert transitions == [("CLOSED", "OPEN"), ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED")]
    approved = await risk.decision(await risk.submit("cb2-after"))
    assert isinstance(approved, OrderApproved)
    assert (await risk.kv_json(subjects.KEY_TRADING_STATE) or {}).get("state", "ACTIVE") == "ACTIVE"


async def test_degradation_when_emergency_mode_then_entries_denied_and_positions_closed(risk: Harness) -> None:
    await risk.mark("0.0001")
    await risk.position("0.2", "0")
    record = {"level": "EMERGENCY_MODE", "reason": "test", "ts_ns": 42}
    await risk.bus.kv_put(subjects.KEY_DEGRADATION_LEVEL, msgspec.json.encode(record))
    await risk.bus.publish(
        subjects.EVT_DEGRADATION,
        DegradationLevelChanged(previous=DegradationLevel.NORMAL, current=DegradationLevel.EMERGENCY_MODE, reason="t"),
    )

    async def flattened() -> Any:
        return [m for m in risk.of_type(OrderApproved) if m.order.source == OrderSource.RISK]

    (flatten,) = await _eventually(flattened)
    assert (flatten.order.side, flatten.order.quantity, flatten.order.reduce_only) == (Side.SELL, Decimal("0.2"), True)
    assert flatten.order.client_order_id == client_order_id_for(f"flatten:EMERGENCY_MODE:42:{SYMBOL}")

    denied = await risk.decision(await risk.submit("em-entry"))
    assert isinstance(denied, OrderDenied) and "EMERGENCY_MODE" in denied.reason
    # A plain SELL would go short once the flatten fills; a reduce-only exit still passes.
    plain_exit = await risk.decision(await risk.submit("em-exit-plain", Side.SELL, "0.1"))
    assert isinstance(plain_exit, OrderDenied)
    exit_order = await risk.decision(await risk.submit("em-exit", Side.SELL, "0.1", reduce_only=True))
    assert isinstance(exit_order, OrderApproved)
    state = await risk.request("state", {})
    assert state["degradation_level"] == "EMERGENCY_MODE" and state["trading_state"] == "ACTIVE"


async def test_cb3_when_strategy_loses_20_trades_then_only_that_strategy_disabled_until_reset(risk: Harness) -> None:
    await risk.mark("0.0001")
    signals = [
        SignalGenerated(
            strategy="imbalance", symbol=SYMBOL, side=Side.BUY, order_type=OrderType.MARKET, quantity=Decimal("0.001")
        )
        for _ in range(20)
    ]
    for signal in signals:
        await risk.bus.publish(subjects.evt_signal("imbalance", SYMBOL), signal, msg_id=signal.message_id)
    coids = [client_order_id_for(signal.message_id) for signal in signals]
    for coid in coids:
        assert isinstance(await risk.decision(coid), OrderApproved)
    await risk.position("0", "0")  # baseline
    for n, coid in enumerate(coids):  # 20 round trips, each losing 1
        await risk.position("0.001", str(-n), caused_by=coid)
        await risk.position("0", str(-n - 1))

    async def disabled() -> Any:
        return risk.of_type(DisableStrategy)

    (command,) = await _eventually(disabled)
    assert command.strategy == "imbalance" and "CB-3" in command.reason
    record = await risk.kv_json(subjects.key_breaker("CB-3-imbalance"))
    assert record["state"] == "OPEN" and len(record["details"]["trades"]) == 20
    assert await risk.breaker_state("CB-1") == "OPEN"  # 5 losses in a row tripped CB-1 on the way

    reply = await risk.request(
        "breaker_reset", {"breaker": "CB-3-imbalance", "operator": "carol", "reason": "parameters fixed"}
    )
    assert reply["state"] == "CLOSED"

    async def enabled() -> Any:
        return risk.of_type(EnableStrategy)

    (enable,) = await _eventually(enabled)
    assert (enable.strategy, enable.operator) == ("imbalance", "carol")


async def test_holder_when_one_strategy_enters_a_symbol_then_another_strategy_waits_until_it_is_flat(
    risk: Harness,
) -> None:
    await risk.mark("0.0001")
    await risk.position_applied("0", "0")  # baseline: flat
    first = await risk.signal("imbalance")
    assert isinstance(await risk.decision(first), OrderApproved)
    # Its entry is in flight: the other strategy's entry in the same symbol would merge into it.
    denied = await risk.decision(await risk.signal("trend"))
    assert isinstance(denied, OrderDenied) and "held by imbalance" in denied.reason, denied
    await risk.filled(first)
    await risk.position_applied("0.001", "0", caused_by=first)
    denied = await risk.decision(await risk.signal("trend"))
    assert isinstance(denied, OrderDenied) and "held by imbalance" in denied.reason, denied
    exit_coid = await risk.signal("imbalance", Side.SELL, reduce_only=True)
    assert isinstance(await risk.decision(exit_coid), OrderApproved)  # the holder's own exit
    await risk.filled(exit_coid, Side.SELL)
    await risk.position_applied("0", "0", caused_by=exit_coid)
    # An operator's entry is the operator's call; while it is in flight or open, strategies wait.
    operator = await risk.submit("operator-entry")
    assert isinstance(await risk.decision(operator), OrderApproved)
    denied = await risk.decision(await risk.signal("trend"))
    assert isinstance(denied, OrderDenied) and "held by operator" in denied.reason, denied
    await risk.filled(operator, quantity="0.01")
    await risk.position_applied("0.01", "0", caused_by=operator)
    denied = await risk.decision(await risk.signal("trend"))
    assert isinstance(denied, OrderDenied) and "not opened by a strategy" in denied.reason, denied
    close = await risk.submit("operator-close", Side.SELL, reduce_only=True)
    assert isinstance(await risk.decision(close), OrderApproved)
    await risk.filled(close, Side.SELL, quantity="0.01")
    await risk.position_applied("0", "0", caused_by=close)
    # Flat and nothing in flight: free for any strategy.
    assert isinstance(await risk.decision(await risk.signal("trend")), OrderApproved)

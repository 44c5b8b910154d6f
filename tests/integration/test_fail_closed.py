"""Risk fails closed when it loses a dependency (SPEC FM-C1, FM-C6), on a real nats-server.

Risk runs in-process through `run_service`, as its main would. The test plays the state-builder
(heartbeats on `hb.state-builder`, answers on `svc.state-builder.symbols`) and the position
service, and submits operator orders the way the gateway does (a strategy's entry would also meet
the one-holder-per-symbol check against the seeded position, which is not what is tested here).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest_asyncio
from nats.aio.msg import Msg

from libs.bus import Bus
from libs.clock import wall_clock
from libs.ids import client_order_id_for
from libs.logging import get_logger
from libs.runtime.service import run_service
from libs.settings import Settings
from proto import subjects
from proto.codec import decode, encode
from proto.enums import ComponentState, HotStateStatus, OrderSource, OrderType, Side, TradingState
from proto.envelope import Message
from proto.kv import TradingStateValue
from proto.messages import (
    AlertRaised,
    AlertResolved,
    Heartbeat,
    HotStateRecord,
    OrderApproved,
    OrderDenied,
    PositionChanged,
    SubmitOrder,
    SymbolHotState,
    SymbolsReply,
)
from services.risk import dependencies
from services.risk.checks import RiskLimits
from services.risk.dependencies import BUS_LOST_ALERT
from services.risk.handlers import RiskService
from services.risk.main import setup as risk_setup
from tests.support.polling import eventually as poll_until

VENUE = "binance-usdm"
SYMBOL = "BTCUSDT"


eventually = functools.partial(poll_until, timeout_s=20.0)


class FakeStateBuilder:
    """Heartbeats and `svc.state-builder.symbols` answers (VALID), on its own connection."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.bus = Bus(subjects.STATE_BUILDER)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.bus.connect(self.nats_url)
        await self.bus.serve(subjects.SVC_STATE_BUILDER_SYMBOLS, self.symbols)
        self.task = asyncio.create_task(self.beat())

    async def symbols(self, _: bytes) -> bytes:
        view = SymbolHotState(
            symbol=SYMBOL,
            hot_state=HotStateStatus.VALID,
            age_ms=5,
            last_update_id=1,
            mark_price=Decimal(60000),
            best_bid=Decimal(60000),
            best_ask=Decimal("60000.1"),
        )
        return encode(SymbolsReply(symbols={SYMBOL: view}))

    async def beat(self) -> None:
        heartbeat = Heartbeat(
            component=subjects.STATE_BUILDER, pid=os.getpid(), state=ComponentState.READY, started_ns=1
        )
        while True:
            await self.bus.publish_core(subjects.heartbeat(subjects.STATE_BUILDER), heartbeat)
            await asyncio.sleep(0.3)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.bus.close()


class Harness:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seen: list[Message] = []
        self.n = 0

    async def collect(self, msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            self.seen.append(decode(msg.data))

    async def order(self, side: Side, quantity: str, reduce_only: bool = False) -> OrderApproved | OrderDenied:
        self.n += 1
        key = f"fail-closed-{self.n}-{time.time_ns()}"
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

        async def decided() -> Any:
            return next(
                (
                    m
                    for m in self.seen
                    if isinstance(m, OrderApproved | OrderDenied) and m.order.client_order_id == order.client_order_id
                ),
                None,
            )

        return await eventually(decided)


@pytest_asyncio.fixture
async def risk(nats_url: str) -> AsyncIterator[Harness]:
    settings = Settings(nats_url=nats_url, symbols=(SYMBOL,), strategies=("alpha",), max_order_notional="1000000")
    bus = Bus("test")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    # A VALID hot state left in KV by a state-builder that has since died: risk must not trust it alone.
    await bus.kv_put(subjects.key_hot_state(SYMBOL), encode(HotStateRecord(status=HotStateStatus.VALID, reason="old")))
    harness = Harness(bus)
    for subject in ("evt.order.>", "evt.alert.>"):
        await bus.subscribe_core(subject, harness.collect)
    # A long position (0.1), so that a sell of 0.05 is an exit.
    await bus.publish(
        subjects.evt_position(VENUE, SYMBOL),
        PositionChanged(
            venue=VENUE,
            symbol=SYMBOL,
            quantity=Decimal("0.1"),
            average_entry_price=Decimal(60000),
            realized_pnl=Decimal(0),
            ts_event_ns=time.time_ns(),
        ),
    )
    task = asyncio.create_task(run_service(subjects.RISK, risk_setup, settings=settings))

    async def ready() -> bool:
        try:
            await bus.request(subjects.SVC_RISK_STATE, timeout_s=0.5)
        except Exception:
            return False
        return True

    try:
        await eventually(ready, timeout_s=30)
        yield harness
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bus.close()


async def test_risk_when_state_builder_dead_then_entries_denied_exits_pass_and_entries_resume_when_it_answers(
    risk: Harness, nats_url: str
) -> None:
    # No state-builder: an entry is denied with a clear reason, a reduce-only exit is approved.
    denied = await risk.order(Side.BUY, "0.01")
    assert isinstance(denied, OrderDenied)
    assert denied.reason.startswith("trading HALTED for new entries: state-builder")
    exit_ = await risk.order(Side.SELL, "0.05", reduce_only=True)
    assert isinstance(exit_, OrderApproved)

    # A state-builder that answers VALID: entries pass again.
    state_builder = FakeStateBuilder(nats_url)
    await state_builder.start()
    try:
        approved = await risk.order(Side.BUY, "0.01")
        assert isinstance(approved, OrderApproved), approved
    finally:
        await state_builder.stop()

    # It dies again: after its heartbeats stop for > 3 s, entries are denied again.
    async def denied_again() -> bool:
        return isinstance(await risk.order(Side.BUY, "0.01"), OrderDenied)

    await eventually(denied_again, timeout_s=20)


async def test_risk_when_bus_connection_lost_then_entries_halted_until_reconnected_and_revalidated(
    nats_url: str,
) -> None:
    bus = Bus(subjects.RISK)
    await bus.connect(nats_url)
    await bus.ensure_streams()
    observer = Bus("test")
    await observer.connect(nats_url)
    seen: list[Message] = []

    async def collect(msg: Msg) -> None:
        seen.append(decode(msg.data))

    await observer.subscribe_core("evt.alert.>", collect)
    state_builder = FakeStateBuilder(nats_url)
    await state_builder.start()
    limits = RiskLimits(symbols=frozenset({SYMBOL}), max_position_qty=Decimal(1), max_order_notional=Decimal(10**6))
    service = RiskService(
        bus, get_logger("risk"), limits, VENUE, wall_clock, TradingStateValue(state=TradingState.ACTIVE)
    )
    try:
        await eventually(lambda: dependencies.probe_state_builder(service))
        assert dependencies.entries_halted(service) is None
        # The listener `Bus` calls on a disconnect / reconnect (FM-C6).
        dependencies.on_bus_connection(service, False)
        assert (dependencies.entries_halted(service) or "").startswith("bus connection lost")
        dependencies.on_bus_connection(service, True)
        assert dependencies.entries_halted(service) is not None  # not before it re-validated
        await eventually(lambda: _true(dependencies.entries_halted(service) is None))
        assert service.hot_state[SYMBOL] == HotStateStatus.VALID
        await eventually(lambda: _true(any(isinstance(m, AlertResolved) and m.key == BUS_LOST_ALERT for m in seen)))
        assert any(isinstance(m, AlertRaised) and m.key == BUS_LOST_ALERT for m in seen)
    finally:
        await state_builder.stop()
        await observer.close()
        await bus.close()


async def _true(value: Any) -> Any:
    return value

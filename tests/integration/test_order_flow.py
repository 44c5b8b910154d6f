"""Order flow end to end through risk and position, against the venue simulator.

Real nats-server, Postgres and the simulator (a subprocess on a free port, stopped by pid);
risk and position run in-process through `run_service`, exactly as their mains would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio

from libs.binance.client import BinanceRestClient
from libs.bus import Bus
from libs.ids import client_order_id_for
from libs.runtime.service import run_service
from libs.settings import Settings
from libs.testing.infra import EmbeddedInfra
from libs.testing.venue import running_venue_sim
from proto import subjects
from proto.codec import encode
from proto.enums import HotStateStatus, OrderSource, OrderType, Side
from proto.messages import CancelOrder, HotStateRecord, SubmitOrder, SymbolHotState, SymbolsReply, Trade
from services.position.main import setup as position_setup
from services.risk.main import setup as risk_setup
from services.strategy.main import setup as strategy_setup

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SYMBOL = "BTCUSDT"


@pytest.fixture
def venue_url(tmp_path: Path) -> Iterator[str]:
    """The venue simulator on a free port."""
    with running_venue_sim(tmp_path, "--source", "synthetic") as url:
        yield url


async def _eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def _sim_state(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_sim/state") as response:
        return await response.json()


@dataclass
class System:
    """The services under test, restartable one by one."""

    bus: Bus
    pool: Any
    venue_url: str
    settings: Settings
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def start(self, component: str) -> None:
        if component == subjects.RISK:
            coro = run_service(subjects.RISK, risk_setup, settings=self.settings)
        else:
            coro = run_service(subjects.POSITION, position_setup, needs_db=True, settings=self.settings)
        self.tasks[component] = asyncio.create_task(coro)

    async def stop(self, component: str) -> None:
        task = self.tasks.pop(component)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def wait_ready(self) -> None:
        async def up() -> bool:
            try:
                await self.bus.request(subjects.service_query(subjects.RISK, "state"), timeout_s=0.5)
            except Exception:
                return False
            return await _consumer_bound(self.bus, "position-orders")

        await _eventually(up, 20)


@pytest_asyncio.fixture
async def system(nats_url: str, pg_pool: Any, infra: EmbeddedInfra, venue_url: str) -> AsyncIterator[System]:
    settings = Settings(
        nats_url=nats_url,
        pg_dsn=infra.pg_dsn,
        venue_rest_url=venue_url,
        symbols=(SYMBOL, "ETHUSDT"),
        max_position_qty="1",
        max_order_notional="1000000",
    )
    bus = Bus("test")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    # What the state-builder would provide: a VALID hot state and a touch to price orders at.
    valid = HotStateRecord(status=HotStateStatus.VALID, reason="test")
    await bus.kv_put(subjects.key_hot_state(SYMBOL), encode(valid))
    book = (await _sim_state(venue_url))["books"][SYMBOL]

    async def symbols_reply(_: bytes) -> bytes:
        view = SymbolHotState(
            symbol=SYMBOL,
            hot_state=HotStateStatus.VALID,
            age_ms=0,
            last_update_id=book["last_update_id"],
            best_bid=Decimal(book["best_bid"]),
            best_ask=Decimal(book["best_ask"]),
        )
        return encode(SymbolsReply(symbols={SYMBOL: view}))

    await bus.serve(subjects.service_query(subjects.STATE_BUILDER, "symbols"), symbols_reply)
    system = System(bus=bus, pool=pg_pool, venue_url=venue_url, settings=settings)
    system.start(subjects.RISK)
    system.start(subjects.POSITION)
    await system.wait_ready()
    try:
        yield system
    finally:
        await asyncio.gather(*(system.stop(component) for component in list(system.tasks)))
        await bus.close()


async def _consumer_bound(bus: Bus, durable: str) -> bool:
    """True once a consumer exists and someone is pulling from it (the service is past setup)."""
    try:
        info = await bus.js.consumer_info(subjects.STREAM_ORDERS.name, durable)
    except Exception:
        return False
    return bool(info.num_waiting)


def _order(key: str, quantity: str = "0.01", side: Side = Side.BUY) -> SubmitOrder:
    return SubmitOrder(
        client_order_id=client_order_id_for(key),
        idempotency_key=key,
        source=OrderSource.OPERATOR,
        symbol=SYMBOL,
        side=side,
        order_type=OrderType.MARKET,
        quantity=Decimal(quantity),
    )


async def _submit(bus: Bus, order: SubmitOrder) -> None:
    # The gateway publishes with the idempotency key as de-duplication id.
    await bus.publish(subjects.CMD_ORDER_SUBMIT, order, msg_id=f"submit:{order.idempotency_key}")


async def _order_row(pool: Any, coid: str) -> Any:
    return await pool.fetchrow("SELECT * FROM orders WHERE client_order_id = $1", coid)


async def test_submit_order_when_active_then_one_venue_order_filled_and_position_opened(
    system: System,
) -> None:
    bus, pool, venue_url = system.bus, system.pool, system.venue_url
    order = _order("flow-1")
    await _submit(bus, order)
    await _submit(bus, order)  # a gateway retry: same idempotency key
    # Same command again with a fresh message id (dedupe window bypassed): still one decision.
    await bus.publish(subjects.CMD_ORDER_SUBMIT, _order("flow-1"))

    async def filled() -> Any:
        row = await _order_row(pool, order.client_order_id)
        return row if row is not None and row["status"] == "FILLED" else None

    row = await _eventually(filled, 15)
    assert row["filled_quantity"] == Decimal("0.01")
    position = await pool.fetchrow("SELECT * FROM positions WHERE symbol = $1", SYMBOL)
    assert position["quantity"] == Decimal("0.01")
    assert position["average_entry_price"] > 0
    await asyncio.sleep(1.0)  # give a duplicate every chance to show up
    state = await _sim_state(venue_url)
    venue_orders = [o for o in state["orders"] if o["client_order_id"] == order.client_order_id]
    assert len(venue_orders) == 1
    assert venue_orders[0]["status"] == "FILLED"
    venue_position = next(p for p in state["positions"] if p["symbol"] == SYMBOL)
    assert Decimal(venue_position["quantity"]) == Decimal("0.01")
    fills = await pool.fetch("SELECT * FROM fills WHERE client_order_id = $1", order.client_order_id)
    assert sum(f["quantity"] for f in fills) == Decimal("0.01")


async def test_submit_order_when_halted_then_denied_and_not_sent_until_resumed(system: System) -> None:
    bus, pool, venue_url = system.bus, system.pool, system.venue_url
    reply = msgspec.json.decode(
        await bus.request(
            subjects.service_query(subjects.RISK, "halt"),
            msgspec.json.encode({"operator": "alice", "reason": "test halt"}),
        )
    )
    assert reply == {"trading_state": "HALTED", "previous": "ACTIVE"}
    persisted = await bus.kv_get(subjects.KEY_TRADING_STATE)
    assert persisted is not None and msgspec.json.decode(persisted[0])["state"] == "HALTED"

    denied = _order("flow-halted")
    await _submit(bus, denied)

    async def denied_row() -> Any:
        row = await _order_row(pool, denied.client_order_id)
        return row if row is not None and row["status"] == "DENIED" else None

    row = await _eventually(denied_row)
    assert "HALTED" in row["reason"]
    state = await _sim_state(venue_url)
    assert not [o for o in state["orders"] if o["client_order_id"] == denied.client_order_id]

    reply = msgspec.json.decode(
        await bus.request(
            subjects.service_query(subjects.RISK, "resume"),
            msgspec.json.encode({"operator": "alice", "reason": "all clear"}),
        )
    )
    assert reply == {"trading_state": "ACTIVE", "previous": "HALTED"}
    allowed = _order("flow-resumed", side=Side.SELL)
    await _submit(bus, allowed)

    async def filled() -> Any:
        row = await _order_row(pool, allowed.client_order_id)
        return row if row is not None and row["status"] == "FILLED" else None

    await _eventually(filled, 15)
    position = await pool.fetchrow("SELECT * FROM positions WHERE symbol = $1", SYMBOL)
    assert position["quantity"] == Decimal("-0.01")


@pytest.fixture
def short_venue_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.position.main.VENUE_TIMEOUT_S", 1.0)


@pytest.mark.parametrize("fault", ["order_timeout_placed", "order_timeout_not_placed"])
async def test_submit_order_when_venue_answer_times_out_then_queried_and_exactly_one_order(
    short_venue_timeout: None, system: System, fault: str
) -> None:
    bus, pool, venue_url = system.bus, system.pool, system.venue_url
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{venue_url}/_sim/faults", json={"kind": fault, "symbol": SYMBOL, "count": 1, "params": {"ms": 1500}}
        ) as response,
    ):
        assert response.status < 300, await response.text()
    order = _order(f"flow-{fault}")
    await _submit(bus, order)

    async def filled() -> Any:
        row = await _order_row(pool, order.client_order_id)
        return row if row is not None and row["status"] == "FILLED" else None

    await _eventually(filled, 15)
    await asyncio.sleep(1.6)  # past the simulator's delayed answer: nothing else may appear
    state = await _sim_state(venue_url)
    assert len([o for o in state["orders"] if o["client_order_id"] == order.client_order_id]) == 1
    unknown = await bus.js.get_last_msg(
        subjects.STREAM_ORDERS.name, subjects.evt_order("unknown", "binance-usdm", SYMBOL)
    )
    assert order.client_order_id.encode() in (unknown.data or b"")
    position = await pool.fetchrow("SELECT * FROM positions WHERE symbol = $1", SYMBOL)
    assert position["quantity"] == Decimal("0.01")


async def test_restart_when_venue_has_unknown_order_then_adopted_and_resting_order_cancelable(system: System) -> None:
    bus, pool, venue_url = system.bus, system.pool, system.venue_url
    best_bid = Decimal((await _sim_state(venue_url))["books"][SYMBOL]["best_bid"])
    far_price = (best_bid * Decimal("0.95")).quantize(Decimal("0.1"))
    resting = SubmitOrder(
        client_order_id=client_order_id_for("flow-resting"),
        idempotency_key="flow-resting",
        source=OrderSource.OPERATOR,
        symbol=SYMBOL,
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal("0.01"),
        price=far_price,
    )
    await _submit(bus, resting)

    async def resting_new() -> Any:
        row = await _order_row(pool, resting.client_order_id)
        return row if row is not None and row["status"] == "NEW" else None

    await _eventually(resting_new)
    await bus.request(
        subjects.service_query(subjects.RISK, "halt"), msgspec.json.encode({"operator": "bob", "reason": "restart"})
    )

    # Someone places an order at the venue behind our back while position is down.
    await system.stop(subjects.POSITION)
    await system.stop(subjects.RISK)
    async with BinanceRestClient(venue_url, "bulwark-sim-key", "bulwark-sim-secret") as client:
        await client.place_order(
            symbol=SYMBOL,
            side="BUY",
            type="LIMIT",
            quantity="0.02",
            price=str(far_price),
            timeInForce="GTC",
            newClientOrderId="manual-1",
        )
    system.start(subjects.RISK)
    system.start(subjects.POSITION)
    await system.wait_ready()

    state = msgspec.json.decode(await bus.request(subjects.service_query(subjects.RISK, "state")))
    assert state["trading_state"] == "HALTED"  # fail closed across restarts
    adopted = await _order_row(pool, "manual-1")
    assert adopted is not None
    assert (adopted["source"], adopted["status"], adopted["quantity"]) == ("EXTERNAL", "NEW", Decimal("0.02"))

    # Cancels still work while HALTED.
    await bus.publish(subjects.CMD_ORDER_CANCEL, CancelOrder(client_order_id=resting.client_order_id, operator="bob"))

    async def canceled() -> Any:
        row = await _order_row(pool, resting.client_order_id)
        return row if row is not None and row["status"] == "CANCELED" else None

    await _eventually(canceled)
    venue_orders = {o["client_order_id"]: o for o in (await _sim_state(venue_url))["orders"]}
    assert venue_orders[resting.client_order_id]["status"] == "CANCELED"
    assert venue_orders["manual-1"]["status"] == "NEW"


async def test_strategy_when_taker_buying_dominates_then_enters_holds_and_flattens(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus, pool = system.bus, system.pool
    monkeypatch.setenv("BULWARK_IMBALANCE_HOLD_S", "1")
    monkeypatch.setenv("BULWARK_IMBALANCE_MIN_TRADES", "5")
    task = asyncio.create_task(
        run_service(subjects.strategy_component("imbalance"), strategy_setup, settings=system.settings)
    )
    try:

        async def strategy_state() -> str | None:
            entry = await bus.kv_get(subjects.key_strategy("imbalance"))
            return msgspec.json.decode(entry[0])["state"] if entry else None

        await _eventually(lambda: _equals(strategy_state, "SCANNING"))
        for trade_id in range(10):
            trade = Trade(
                venue="binance-usdm",
                symbol=SYMBOL,
                trade_id=trade_id,
                price=Decimal("60000"),
                quantity=Decimal("0.5"),
                buyer_is_maker=False,
            )
            await bus.nc.publish(subjects.md_trade("binance-usdm", SYMBOL), encode(trade))

        async def strategy_orders() -> list[Any]:
            rows = await pool.fetch("SELECT * FROM orders WHERE source = 'STRATEGY' ORDER BY created_ns")
            return rows if len(rows) == 2 and all(r["status"] == "FILLED" for r in rows) else []

        entry, exit_ = await _eventually(strategy_orders, 15)
        assert (entry["side"], entry["quantity"], entry["reduce_only"]) == ("BUY", Decimal("0.002"), False)
        assert (exit_["side"], exit_["quantity"], exit_["reduce_only"]) == ("SELL", Decimal("0.002"), True)
        assert entry["strategy"] == "imbalance"
        await _eventually(lambda: _equals(strategy_state, "SCANNING"))
        position = await pool.fetchrow("SELECT * FROM positions WHERE symbol = $1", SYMBOL)
        assert position["quantity"] == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _equals(read: Callable[[], Awaitable[Any]], expected: Any) -> bool:
    return await read() == expected

"""Order flow end to end through risk and position, against the venue simulator.

Real nats-server, Postgres and the simulator (a subprocess on a free port, stopped by pid);
risk and position run in-process through `run_service`, exactly as their mains would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from libs.binance.client import BinanceRestClient
from libs.ids import client_order_id_for
from libs.runtime.service import run_service
from proto import subjects
from proto.codec import encode
from proto.enums import OrderSource, OrderType, Side
from proto.messages import CancelOrder, SubmitOrder, Trade
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    SYMBOL,
    System,
    add_fault,
    order_row,
    settings_overrides_fixture,
    sim_state,
    system_fixture,
    venue_url_fixture,
)
from tests.integration.order_system import eventually as _eventually
from tests.integration.order_system import market_order as _order
from tests.integration.order_system import submit as _submit

_order_row = order_row
_sim_state = sim_state


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
            subjects.SVC_RISK_HALT,
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
            subjects.SVC_RISK_RESUME,
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
    await add_fault(venue_url, {"kind": fault, "symbol": SYMBOL, "count": 1, "params": {"ms": 1500}})
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
    far_price = (best_bid * Decimal("0.97")).quantize(Decimal("0.1"))
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
    await bus.request(subjects.SVC_RISK_HALT, msgspec.json.encode({"operator": "bob", "reason": "restart"}))

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

    state = msgspec.json.decode(await bus.request(subjects.SVC_RISK_STATE))
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
    from services.strategy.main import setup as strategy_setup

    settings = dataclasses.replace(system.settings, strategy_name="imbalance")
    task = asyncio.create_task(run_service(subjects.strategy_component("imbalance"), strategy_setup, settings=settings))
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

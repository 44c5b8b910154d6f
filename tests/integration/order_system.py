"""Risk + position (in-process, as their mains run them) against the venue simulator (a subprocess),
on real nats-server and Postgres: the fixture shared by the order-flow and order-fault tests.

Test modules import the `*_fixture` functions (fixtures `system`, `venue_url`, `settings_overrides`)
from here; a test changes settings by parametrizing `settings_overrides` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio

from entrypoints.harness.embedded import EmbeddedInfra
from entrypoints.harness.venue import running_venue_sim
from libs.bus import Bus
from libs.ids import client_order_id_for
from libs.runtime.service import run_service
from libs.settings import Settings
from proto import subjects
from proto.codec import encode
from proto.enums import HotStateStatus, OrderSource, OrderType, Side
from proto.messages import HotStateRecord, SubmitOrder, SymbolHotState, SymbolsReply
from services.position.main import setup as position_setup
from services.risk.main import setup as risk_setup
from tests.support.polling import eventually

SYMBOL = "BTCUSDT"
VENUE = "binance-usdm"


@pytest.fixture(name="venue_url")
def venue_url_fixture(tmp_path: Path) -> Iterator[str]:
    """The venue simulator on a free port."""
    with running_venue_sim(tmp_path, "--source", "synthetic") as url:
        yield url


@pytest.fixture(name="settings_overrides")
def settings_overrides_fixture() -> dict[str, Any]:
    """Settings fields to change for one test (parametrize this name to override); a value may be a
    function of the simulator's URL (e.g. alternates pointing at it)."""
    return {}


async def sim_state(url: str) -> dict:
    """The simulator's own record (`GET /_sim/state`), its orders as the system names them
    (`as_placed`: conditional orders of the Algo Service among them)."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_sim/state") as response:
        return as_placed(await response.json())


ALGO_TO_ORDER_STATUS = {"TRIGGERING": "NEW", "TRIGGERED": "NEW", "FINISHED": "FILLED"}


def as_placed(state: dict) -> dict:
    """The simulator's state with each Algo Service order (STOP_MARKET, TAKE_PROFIT_MARKET since
    Binance moved them there) among `orders` under its client algo id, as the system placed it:
    once triggered, it is the MARKET order the trigger placed (its status, fills and executed
    quantity), whose own client order id the venue chose."""
    algo = state.get("algo_orders", [])
    if not algo:
        return state
    by_actual = {a["actual_order_id"]: a for a in algo if a["actual_order_id"] is not None}
    orders: list[dict] = []
    for order in state["orders"]:
        parent = by_actual.get(order["order_id"])
        if parent is None:
            orders.append(order)
            continue
        orders.append(
            {
                **order,
                "client_order_id": parent["client_algo_id"],
                "type": parent["type"],
                "quantity": parent["quantity"],
                "stop_price": parent["trigger_price"],
            }
        )
    for parent in algo:
        if parent["actual_order_id"] is None:
            orders.append(
                {
                    "order_id": parent["algo_id"],
                    "client_order_id": parent["client_algo_id"],
                    "symbol": parent["symbol"],
                    "side": parent["side"],
                    "type": parent["type"],
                    "status": ALGO_TO_ORDER_STATUS.get(parent["status"], parent["status"]),
                    "quantity": parent["quantity"],
                    "executed_qty": "0",
                    "price": "0",
                    "stop_price": parent["trigger_price"],
                    "avg_price": "0",
                    "reduce_only": parent["reduce_only"],
                    "update_time": parent["update_time"],
                }
            )
    renamed = {a["actual_order_id"]: a["client_algo_id"] for a in by_actual.values()}
    fills = [{**f, "client_order_id": renamed.get(f["order_id"], f["client_order_id"])} for f in state["fills"]]
    return {**state, "orders": orders, "fills": fills}


async def add_fault(url: str, spec: dict[str, Any]) -> str:
    """Schedule a simulator fault; returns its id."""
    async with aiohttp.ClientSession() as session, session.post(f"{url}/_sim/faults", json=spec) as response:
        assert response.status < 300, await response.text()
        return str((await response.json())["id"])


async def sim_control(url: str, action: str) -> None:
    """`POST /_sim/<action>` (pause, resume)."""
    async with aiohttp.ClientSession() as session, session.post(f"{url}/_sim/{action}") as response:
        assert response.status < 300, await response.text()


async def spike_mark(url: str, direction: str, pct: float, symbol: str = SYMBOL) -> str:
    """Move the simulator's mark price once by `pct` % up or down (`price_spike` fault): conditional
    orders (STOP_MARKET, TAKE_PROFIT_MARKET) it crosses trigger at the venue."""
    return await add_fault(
        url, {"kind": "price_spike", "symbol": symbol, "params": {"pct": pct, "direction": direction}}
    )


def open_orders(state: dict) -> list[dict]:
    """The simulator's open orders."""
    return [o for o in state["orders"] if o["status"] in ("NEW", "PARTIALLY_FILLED")]


def venue_position(state: dict, symbol: str = SYMBOL) -> Decimal:
    """The simulator's signed position of `symbol`."""
    return sum((Decimal(p["quantity"]) for p in state["positions"] if p["symbol"] == symbol), Decimal(0))


async def local_position(pool: Any, symbol: str = SYMBOL) -> Decimal | None:
    """The position projection's quantity of `symbol` (None without a row)."""
    return await pool.fetchval("SELECT quantity FROM positions WHERE symbol = $1", symbol)


async def clear_faults(url: str) -> None:
    """Delete every simulator fault."""
    async with aiohttp.ClientSession() as session, session.delete(f"{url}/_sim/faults") as response:
        assert response.status < 300, await response.text()


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
                await self.bus.request(subjects.SVC_RISK_STATE, timeout_s=0.5)
            except Exception:
                return False
            return await consumer_bound(self.bus, "position-orders")

        await eventually(up, 30)


@pytest_asyncio.fixture(name="system")
async def system_fixture(
    nats_url: str, pg_pool: Any, infra: EmbeddedInfra, venue_url: str, settings_overrides: dict[str, Any]
) -> AsyncIterator[System]:
    """Risk and position running against the simulator, with a VALID hot state for BTCUSDT."""
    base: dict[str, Any] = {
        "nats_url": nats_url,
        "pg_dsn": infra.pg_dsn,
        "venue_rest_url": venue_url,
        "venue_ws_url": venue_url.replace("http://", "ws://"),
        "symbols": (SYMBOL, "ETHUSDT"),
        "max_position_qty": "1",
        "max_order_notional": "1000000",
    }
    overrides = {key: value(venue_url) if callable(value) else value for key, value in settings_overrides.items()}
    settings = Settings(**{**base, **overrides})
    bus = Bus("test")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    # What the state-builder would provide: a VALID hot state and a touch to price orders at.
    valid = HotStateRecord(status=HotStateStatus.VALID, reason="test")
    await bus.kv_put(subjects.key_hot_state(SYMBOL), encode(valid))
    book = (await sim_state(venue_url))["books"][SYMBOL]

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

    await bus.serve(subjects.SVC_STATE_BUILDER_SYMBOLS, symbols_reply)
    system = System(bus=bus, pool=pg_pool, venue_url=venue_url, settings=settings)
    system.start(subjects.RISK)
    system.start(subjects.POSITION)
    await system.wait_ready()
    try:
        yield system
    finally:
        await asyncio.gather(*(system.stop(component) for component in list(system.tasks)))
        await bus.close()


async def consumer_bound(bus: Bus, durable: str) -> bool:
    """True once a consumer exists and someone is pulling from it (the service is past setup)."""
    try:
        info = await bus.js.consumer_info(subjects.STREAM_ORDERS.name, durable)
    except Exception:
        return False
    return bool(info.num_waiting)


def market_order(key: str, quantity: str = "0.01", side: Side = Side.BUY) -> SubmitOrder:
    """An operator MARKET order of BTCUSDT with the client order id derived from `key`."""
    return SubmitOrder(
        client_order_id=client_order_id_for(key),
        idempotency_key=key,
        source=OrderSource.OPERATOR,
        symbol=SYMBOL,
        side=side,
        order_type=OrderType.MARKET,
        quantity=Decimal(quantity),
    )


def limit_order(key: str, price: Decimal, quantity: str = "0.01", side: Side = Side.BUY) -> SubmitOrder:
    """An operator GTC LIMIT order of BTCUSDT."""
    return SubmitOrder(
        client_order_id=client_order_id_for(key),
        idempotency_key=key,
        source=OrderSource.OPERATOR,
        symbol=SYMBOL,
        side=side,
        order_type=OrderType.LIMIT,
        quantity=Decimal(quantity),
        price=price,
    )


async def submit(bus: Bus, order: SubmitOrder) -> None:
    """Publish the command as the gateway does (idempotency key as de-duplication id)."""
    await bus.publish(subjects.CMD_ORDER_SUBMIT, order, msg_id=f"submit:{order.idempotency_key}")


async def order_row(pool: Any, coid: str) -> Any:
    """The position projection's row of one order (None when absent)."""
    return await pool.fetchrow("SELECT * FROM orders WHERE client_order_id = $1", coid)


async def wait_status(pool: Any, coid: str, *statuses: str, timeout_s: float = 20.0) -> Any:
    """The order's row once its status is one of `statuses`."""

    async def reached() -> Any:
        row = await order_row(pool, coid)
        return row if row is not None and row["status"] in statuses else None

    return await eventually(reached, timeout_s)


async def assert_venue_matches_system(pool: Any, venue_url: str, venue: str = VENUE) -> dict:
    """The venue holds exactly the orders the system believes it placed there, each with the same
    status and filled quantity, and the same position; returns the venue state."""
    state = await sim_state(venue_url)
    venue_orders = {o["client_order_id"]: o for o in state["orders"]}
    assert len(venue_orders) == len(state["orders"]), "a client order id appears twice at the venue"
    rows = await pool.fetch("SELECT * FROM orders WHERE venue = $1", venue)
    believed = {
        row["client_order_id"]: row
        for row in rows
        if row["venue_order_id"] is not None or row["status"] not in ("DENIED", "REJECTED", "PENDING_SUBMISSION")
    }
    assert set(believed) == set(venue_orders), (sorted(believed), sorted(venue_orders))
    for coid, row in believed.items():
        at_venue = venue_orders[coid]
        assert row["status"] == at_venue["status"], (coid, row["status"], at_venue["status"])
        assert row["filled_quantity"] == Decimal(at_venue["executed_qty"]), coid
        fills = await pool.fetch("SELECT quantity FROM fills WHERE client_order_id = $1", coid)
        assert sum((f["quantity"] for f in fills), Decimal(0)) == row["filled_quantity"], coid
    venue_position = {p["symbol"]: Decimal(p["quantity"]) for p in state["positions"]}
    local_position = {
        r["symbol"]: r["quantity"] for r in await pool.fetch("SELECT * FROM positions WHERE venue = $1", venue)
    }
    for symbol in set(venue_position) | set(local_position):
        assert venue_position.get(symbol, Decimal(0)) == local_position.get(symbol, Decimal(0)), symbol
    return state


async def raised_alerts(system: System) -> list[dict[str, Any]]:
    """Every `AlertRaised` on the CONTROL stream so far (decoded)."""
    found = []
    info = await system.bus.js.stream_info(subjects.STREAM_CONTROL.name)
    for seq in range(1, info.state.last_seq + 1):
        try:
            message = await system.bus.js.get_msg(subjects.STREAM_CONTROL.name, seq)
        except Exception:
            continue
        if message.subject == subjects.EVT_ALERT_RAISED:
            found.append(msgspec.json.decode(message.data or b"{}"))
    return found

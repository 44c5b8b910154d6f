"""kill -9 → accepting orders for the position service (SPEC FM-C9, issue 4 item 8).

Runs on top of the state-builder rig (`entrypoints.bench.recovery_rig.RecoveryRig`: venue simulator replaying
real recordings, market-data, state-builder), adding risk and position as real subprocesses.
A steady operator order flow goes through `cmd.order.submit` → risk → position → venue for the
whole run: GTC limit orders a few percent away from the touch (alternating sides), each cancelled
once the venue has it. They never fill, so no position builds up and no loss streak trips CB-1.

One measurement: SIGKILL the position service, start it again at once (what a supervisor does,
in the same slot: a stable instance id, so it takes its own lease back without waiting for the
TTL), and time from the kill until the venue acknowledges an order that was submitted *after*
the kill (`OrderAccepted`). That is the moment the restarted service has loaded its state,
reconciled with the venue (§6) and sends orders again. The probe orders go through risk, which
denies entries while the replayed market is not VALID or in a reconnect's clean window; such a
sample then includes that wait, and the result names risk's reasons per sample (`risk_denials`).

The history is a long trading record of a symbol that is now flat: filler round trips
(`OrderSubmitted`, `OrderAccepted`, `OrderFilled` on the ORDERS stream, and the same orders and
fills in the Postgres projections), so the service restarts against a log and projections as
big as months of trading would leave. Recovery time must not grow with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
from nats.aio.msg import Msg

from entrypoints.bench.recovery_rig import RecoveryRig, ServiceProcess
from entrypoints.harness.history import FILLER_PRICE, FILLER_QUANTITY, FILLER_SYMBOL, copy_history, filler_rows
from libs.bus import Bus
from libs.ids import client_order_id_for
from proto import subjects
from proto.codec import decode
from proto.enums import OrderSource, OrderStatus, OrderType, Side, TimeInForce
from proto.messages import CancelOrder, OrderAccepted, OrderDenied, OrderFilled, OrderSubmitted, SubmitOrder

VENUE = "binance-usdm"
ORDER_SYMBOL = "BTCUSDT"
EVENTS_PER_ROUND_TRIP = 6
"""Two filler orders (buy, sell) with submitted, accepted and filled each."""
POSITION_INSTANCE = "position-0"
ORDER_INTERVAL_S = 0.2


@dataclass
class PositionRecovery:
    """risk + position on a running `RecoveryRig`, with an order flow and filler history."""

    rig: RecoveryRig
    pool: asyncpg.Pool
    risk: ServiceProcess | None = None
    position: ServiceProcess | None = None
    accepted: dict[str, float] = field(default_factory=dict)
    """client order id → monotonic time its OrderAccepted was seen."""
    submitted: dict[str, float] = field(default_factory=dict)
    denied: dict[str, str] = field(default_factory=dict)
    """client order id → risk's reason, for orders risk denied (the market not VALID, a clean window)."""
    last_denials: list[str] = field(default_factory=list)
    """Why risk denied the probe orders of the last measurement (explains a slow sample)."""
    _flow: asyncio.Task[None] | None = None
    _sequence: int = 0
    _subscription: Any = None
    _filler_orders: int = 0
    _bid: Decimal = Decimal(0)
    _ask: Decimal = Decimal(0)

    @property
    def bus(self) -> Bus:
        assert self.rig.bus is not None
        return self.rig.bus

    async def start(self) -> None:
        env = {
            **self.rig._env(),
            "BULWARK_MAX_POSITION_QTY": "10",
            "BULWARK_MAX_ORDER_NOTIONAL": "100000000",
        }
        logs = self.rig.work_dir / "logs"
        self.risk = ServiceProcess("services.risk.main", env, logs / "risk.log")
        self.position = ServiceProcess(
            "services.position.main", {**env, "BULWARK_INSTANCE_ID": POSITION_INSTANCE}, logs / "position.log"
        )
        await self._touch()
        self.risk.start()
        self.position.start()
        self._subscription = await self.bus.subscribe_core(
            subjects.evt_order("*", VENUE, ORDER_SYMBOL), self._on_order_event
        )
        self._flow = asyncio.create_task(self._order_flow(), name="order-flow")

    async def stop(self) -> None:
        if self._flow is not None:
            self._flow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flow
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        for service in (self.position, self.risk):
            if service is not None:
                service.stop()

    async def _on_order_event(self, msg: Msg) -> None:
        try:
            message = decode(msg.data)
        except Exception:  # noqa: BLE001 - not ours to judge here; the bench only times accepts and denials
            return
        if isinstance(message, OrderDenied):
            self.denied[message.order.client_order_id] = message.reason
        if isinstance(message, OrderAccepted) and message.client_order_id not in self.accepted:
            self.accepted[message.client_order_id] = time.monotonic()
            cancel = CancelOrder(client_order_id=message.client_order_id, reason="bench: resting order done")
            with contextlib.suppress(Exception):  # left open, it is only one more resting order
                await self.bus.publish(subjects.CMD_ORDER_CANCEL, cancel, msg_id=f"cancel:{message.client_order_id}")

    async def _touch(self) -> None:
        """Remember the venue's touch once: the resting prices are set a few percent away from it."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.rig.venue_url}/_sim/state") as response:
            book = (await response.json())["books"][ORDER_SYMBOL]
        self._bid, self._ask = Decimal(book["best_bid"]), Decimal(book["best_ask"])

    def _next_order(self) -> SubmitOrder:
        self._sequence += 1
        key = f"bench-recovery-{time.time_ns()}-{self._sequence}"
        buy = self._sequence % 2 == 1
        price = (self._bid * Decimal("0.97") if buy else self._ask * Decimal("1.03")).quantize(Decimal("0.1"))
        return SubmitOrder(
            client_order_id=client_order_id_for(key),
            idempotency_key=key,
            source=OrderSource.OPERATOR,
            symbol=ORDER_SYMBOL,
            side=Side.BUY if buy else Side.SELL,
            order_type=OrderType.LIMIT,
            quantity=Decimal("0.01"),  # the venue's minimum notional is 100
            price=price,
            time_in_force=TimeInForce.GTC,
        )

    async def submit(self) -> str:
        order = self._next_order()
        self.submitted[order.client_order_id] = time.monotonic()
        await self.bus.publish(subjects.CMD_ORDER_SUBMIT, order, msg_id=f"submit:{order.idempotency_key}")
        return order.client_order_id

    async def _order_flow(self) -> None:
        """The load: one order every ORDER_INTERVAL_S, whatever is happening to the services."""
        while True:
            with contextlib.suppress(Exception):  # a slow ack under load must not end the flow
                await self.submit()
            await asyncio.sleep(ORDER_INTERVAL_S)

    async def _until_one_accepted(self, started: float, timeout_s: float, what: str) -> float:
        """Submit orders from now on (another one every second: risk may deny one, e.g. while the
        market-data link is not back to CONNECTED) until one of them is accepted; seconds from
        `started` to that acceptance."""
        mine = [await self.submit()]
        last_submit = time.monotonic()
        while not (done := [self.accepted[coid] for coid in mine if coid in self.accepted]):
            now = time.monotonic()
            if now - started > timeout_s:
                raise TimeoutError(f"{what} within {timeout_s}s (see {self.rig.work_dir}/logs)")
            if now - last_submit >= 1.0:
                mine.append(await self.submit())
                last_submit = now
            await asyncio.sleep(0.01)
        self.last_denials = sorted({self.denied[coid] for coid in mine if coid in self.denied})
        return min(done) - started

    async def wait_accepting(self, timeout_s: float) -> float:
        """Seconds until an order submitted from now on is accepted by the venue."""
        return await self._until_one_accepted(time.monotonic(), timeout_s, "no order accepted")

    async def kill_and_measure(self, timeout_s: float = 60.0) -> float:
        """kill -9 position, start it again at once; seconds from the kill to an order accepted again."""
        assert self.position is not None
        started = time.monotonic()
        self.position.kill9()
        self.position.start()
        return await self._until_one_accepted(started, timeout_s, "position not accepting orders")

    async def orders_stream_messages(self) -> int:
        first, last = await self.bus.stream_bounds(subjects.STREAM_ORDERS.name)
        return last - first + 1 if last else 0

    async def grow_history(self, target: int, batch: int = 600) -> int:
        """Add filler round trips until the ORDERS stream holds about `target` messages."""
        while (current := await self.orders_stream_messages()) < target:
            trips = max(1, min(batch, target - current) // EVENTS_PER_ROUND_TRIP)
            await self._filler_batch(trips)
        return await self.orders_stream_messages()

    async def _filler_batch(self, trips: int) -> None:
        items: list[tuple[str, Any, str | None]] = []
        order_rows: list[tuple[Any, ...]] = []
        fill_rows: list[tuple[Any, ...]] = []
        now = time.time_ns()
        for _ in range(trips):
            for side in (Side.BUY, Side.SELL):
                self._filler_orders += 1
                number = self._filler_orders
                key = f"filler-{number}"
                coid = client_order_id_for(key)
                price, quantity = FILLER_PRICE, FILLER_QUANTITY
                items.append(
                    (
                        subjects.evt_order("submitted", VENUE, FILLER_SYMBOL),
                        OrderSubmitted(client_order_id=coid, symbol=FILLER_SYMBOL, venue=VENUE),
                        f"submitted:{coid}",
                    )
                )
                items.append(
                    (
                        subjects.evt_order("accepted", VENUE, FILLER_SYMBOL),
                        OrderAccepted(
                            client_order_id=coid, venue_order_id=number, symbol=FILLER_SYMBOL, status=OrderStatus.NEW
                        ),
                        f"accepted:{coid}",
                    )
                )
                items.append(
                    (
                        subjects.evt_fill(VENUE, FILLER_SYMBOL),
                        OrderFilled(
                            client_order_id=coid,
                            venue_order_id=number,
                            trade_id=number,
                            symbol=FILLER_SYMBOL,
                            side=side,
                            price=price,
                            quantity=quantity,
                            cumulative_quantity=quantity,
                            order_quantity=quantity,
                        ),
                        f"fill:{coid}:{number}",
                    )
                )
                order_row, fill_row = filler_rows(number, side, VENUE, now)
                order_rows.append(order_row)
                fill_rows.append(fill_row)
        await self.bus.publish_many(items, timeout_s=60.0)
        await copy_history(self.pool, order_rows, fill_rows)

"""Helpers of the breaker and degradation e2e tests: the gateway and the simulator over HTTP, and
operator orders that produce real losses against the simulator's prices.

Everything here talks to a running `bulwark up` (entrypoints/harness/system.py) exactly as an operator
and a chaos script would: the gateway's REST API and the simulator's `/_sim/*` endpoints.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from entrypoints.harness.system import RunningSystem
from libs.bus import Bus
from libs.ids import client_order_id_for
from proto import subjects
from proto.enums import OrderType, Side
from proto.messages import SignalGenerated
from tests.e2e.system_api import SystemApi, connect
from tests.support.polling import eventually

TICK = Decimal("0.01")  # synthetic markets: every symbol trades in 0.01 ticks
PUSH_ATTEMPTS = 5


class Api(SystemApi):
    """The gateway and the venue simulator of one running system, as the breaker and degradation
    tests drive them."""

    # ------------------------------------------------------------------ gateway

    async def order(
        self,
        symbol: str,
        side: str,
        quantity: Decimal | str,
        *,
        order_type: str = "MARKET",
        price: Decimal | None = None,
        reduce_only: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"symbol": symbol, "side": side, "type": order_type, "quantity": str(quantity)}
        if price is not None:
            body["price"] = str(price)
        if reduce_only:
            body["reduce_only"] = True
        return await self.post_order(body, f"e2e-risk-{uuid.uuid4()}")

    async def decided_order(self, symbol: str, side: str, quantity: Decimal | str, **kwargs: Any) -> dict[str, Any]:
        """Submit an order; when the gateway could not wait for the outcome (202), wait until the
        order is in the `orders` projection (risk decided it)."""
        return await self.decided(await self.order(symbol, side, quantity, **kwargs))

    async def breakers(self) -> dict[str, Any]:
        response = await self.gateway.get("/v1/breakers")
        response.raise_for_status()
        result: dict[str, Any] = response.json()["breakers"]
        return result

    async def breaker(self, breaker_id: str) -> dict[str, Any]:
        return dict((await self.breakers()).get(breaker_id) or {})

    async def wait_breaker(self, breaker_id: str, state: str, timeout_s: float = 30.0) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            record = await self.breaker(breaker_id)
            return record if record.get("state") == state else None

        async def failure() -> str:
            return f"{breaker_id} not {state} within {timeout_s}s: {await self.breaker(breaker_id)}"

        found: dict[str, Any] = await eventually(reached, timeout_s, failure)
        return found

    async def wait_event(self, types: str, since_ns: int, timeout_s: float = 20.0, **payload: Any) -> dict[str, Any]:
        """The newest audited event of `types` since `since_ns` whose payload has every `payload` item."""

        async def found() -> dict[str, Any] | None:
            for event in reversed(await self.events(types, since_ns)):
                if all(event["payload"].get(key) == value for key, value in payload.items()):
                    return event
            return None

        async def failure() -> str:
            return f"no {types} event with {payload} since {since_ns}"

        event: dict[str, Any] = await eventually(found, timeout_s, failure)
        return event

    # ------------------------------------------------------------------ venue

    async def venue_state(self) -> dict[str, Any]:
        response = await self.venue.get("/_sim/state")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def venue_position(self, symbol: str) -> Decimal:
        state = await self.venue_state()
        return sum(
            (Decimal(p["quantity"]) for p in state["positions"] if p["symbol"] == symbol),
            Decimal(0),
        )

    async def venue_orders(self, client_order_id: str) -> list[dict[str, Any]]:
        state = await self.venue_state()
        return [o for o in state["orders"] if o["client_order_id"] == client_order_id]

    async def venue_fills_pnl(self, *client_order_ids: str) -> Decimal:
        state = await self.venue_state()
        wanted = set(client_order_ids)
        return sum(
            (Decimal(f["realized_pnl"]) for f in state["fills"] if f["client_order_id"] in wanted),
            Decimal(0),
        )

    async def realized_pnl_matches_venue(self, timeout_s: float = 15.0) -> dict[str, Decimal]:
        """Wait until the gateway's realized PnL of every symbol equals the venue's (cumulative since
        the system started); the per-symbol values. The loss breakers count the system's figures."""
        last: dict[str, Any] = {}

        async def equal() -> dict[str, Decimal] | None:
            response = await self.gateway.get("/v1/positions")
            response.raise_for_status()
            ours = {p["symbol"]: Decimal(p["realized_pnl"]) for p in response.json()["positions"]}
            venue = {p["symbol"]: Decimal(p["realized_pnl"]) for p in (await self.venue_state())["positions"]}
            last.update(ours=ours, venue=venue)
            symbols = set(ours) | {symbol for symbol, pnl in venue.items() if pnl != 0}
            if all(ours.get(s, Decimal(0)) == venue.get(s, Decimal(0)) for s in symbols):
                return venue
            return None

        async def failure() -> str:
            return f"realized PnL differs from the venue's: {last}"

        found: dict[str, Decimal] = await eventually(equal, timeout_s, failure)
        return found

    async def touch(self, symbol: str) -> tuple[Decimal, Decimal]:
        book = (await self.venue_state())["books"][symbol]
        return Decimal(book["best_bid"]), Decimal(book["best_ask"])

    async def venue_filled(self, client_order_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
        async def filled() -> dict[str, Any] | None:
            orders = await self.venue_orders(client_order_id)
            return orders[0] if orders and orders[0]["status"] == "FILLED" else None

        found: dict[str, Any] = await eventually(filled, timeout_s)
        return found

    async def wait_flat(self, symbol: str, timeout_s: float = 30.0) -> None:
        async def flat() -> bool:
            return await self.venue_position(symbol) == 0

        await eventually(flat, timeout_s)


def api_for(system: RunningSystem) -> AbstractAsyncContextManager[Api]:
    return connect(system, Api)


def now_ns() -> int:
    return time.time_ns()


# --------------------------------------------------------------------------- clean state between tests


async def flatten_at_venue(api: Api) -> None:
    """Close every venue position with reduce-only MARKET orders through the gateway."""
    for position in (await api.venue_state())["positions"]:
        quantity = Decimal(position["quantity"])
        if quantity == 0:
            continue
        side = "SELL" if quantity > 0 else "BUY"
        await api.decided_order(position["symbol"], side, abs(quantity), reduce_only=True)
        await api.wait_flat(position["symbol"])


async def reset_if_tripped(api: Api, breaker_id: str) -> None:
    record = await api.breaker(breaker_id)
    if record.get("state") not in (None, "CLOSED"):
        response = await api.control(f"/v1/breakers/{breaker_id}/reset", "e2e: start from a clean state")
        assert response.status_code == 200, response.text


async def resume(api: Api) -> None:
    if (await api.status())["trading_state"] != "ACTIVE":
        response = await api.control("/v1/trading/resume", "e2e: start from a clean state")
        assert response.status_code == 200, response.text


# --------------------------------------------------------------------------- real losses


async def _side_against_recent_move(api: Api, symbol: str) -> str:
    """The side that loses soonest: short after the mid rose over the last second, long after it fell."""
    bid0, ask0 = await api.touch(symbol)
    await asyncio.sleep(1.0)
    bid1, ask1 = await api.touch(symbol)
    return "SELL" if bid1 + ask1 > bid0 + ask0 else "BUY"


async def losing_round_trip(
    api: Api,
    symbol: str,
    quantity: Decimal,
    ticks: int,
    wait_s: float = 20.0,
    fill_wait_s: float = 45.0,
    push_after_s: float | None = None,
) -> Decimal:
    """Open `quantity` at market, then close it with a resting reduce-only LIMIT `ticks` worse than the entry.

    A resting LIMIT fills at its own price, so the loss is `quantity x (entry - exit)`, between
    `ticks` and `ticks + 1` ticks per unit: real losses against the simulator's prices, of a size
    the test chooses. When the market never moves far enough against the position within
    `wait_s`, it is closed at market instead (the result may then be a small loss or a gain); when
    it ran away and the exit does not fill within `fill_wait_s`, the exit is canceled and the rest
    closed at market (a larger loss).

    `push_after_s`: when the market has not moved past the exit by then, the synthetic market is
    moved against the position (`price_shift`, a few ticks past the exit) so the trade surely loses
    at least `ticks` ticks (possibly more, if the exit then closes at market); when the resting
    exit has not filled that long after it was placed, the market is moved back through it.

    Returns:
        The realized PnL of the round trip as the venue booked it.
    """
    side = await _side_against_recent_move(api, symbol)
    opened = await api.decided_order(symbol, side, quantity)
    assert opened["status"] not in ("DENIED", "REJECTED"), opened
    entry_order = await api.venue_filled(opened["client_order_id"])
    entry = Decimal(entry_order["avg_price"])
    long = side == "BUY"
    if long:
        exit_price = (entry / TICK).to_integral_value(ROUND_FLOOR) * TICK - ticks * TICK
    else:
        exit_price = (entry / TICK).to_integral_value(ROUND_CEILING) * TICK + ticks * TICK

    async def moved_past_exit() -> bool:
        bid, ask = await api.touch(symbol)
        return bid < exit_price if long else ask > exit_price

    close_side = "SELL" if long else "BUY"
    try:
        if push_after_s is not None:
            try:
                await eventually(moved_past_exit, push_after_s)
            except AssertionError:
                bid, ask = await api.touch(symbol)
                distance = (bid - exit_price if long else exit_price - ask) + 3 * TICK
                pct = max(distance, TICK) / entry * 100
                direction = "down" if long else "up"
                shift = {"pct": str(pct.quantize(Decimal("0.0001"), ROUND_CEILING)), "direction": direction}
                await api.post_fault({"kind": "price_shift", "symbol": symbol, "params": {**shift, "over_s": 0.5}})
        await eventually(moved_past_exit, wait_s)
    except AssertionError:
        closed = await api.decided_order(symbol, close_side, quantity, reduce_only=True)
        await api.venue_filled(closed["client_order_id"])
        return await api.venue_fills_pnl(opened["client_order_id"], closed["client_order_id"])
    closed = await api.decided_order(
        symbol, close_side, quantity, order_type="LIMIT", price=exit_price, reduce_only=True
    )
    assert closed["status"] not in ("DENIED", "REJECTED"), closed
    coids = [opened["client_order_id"], closed["client_order_id"]]
    if push_after_s is not None:
        # The market is past the exit; a random walk may take long to come back to it: move it back
        # through the resting exit, which then fills at its own price.
        try:
            await api.venue_filled(closed["client_order_id"], timeout_s=push_after_s)
        except AssertionError:
            await _push_market(api, symbol, "up" if long else "down", exit_price, entry)
    try:
        await api.venue_filled(closed["client_order_id"], timeout_s=fill_wait_s)
    except AssertionError:
        # The market ran away and never came back to the exit: cancel, close what is left at market.
        await api.gateway.delete(f"/v1/orders/{closed['client_order_id']}")

        async def closed_at_venue() -> bool:
            orders = await api.venue_orders(closed["client_order_id"])
            return bool(orders) and orders[0]["status"] in ("FILLED", "CANCELED", "EXPIRED")

        await eventually(closed_at_venue, 30)
        left = await api.venue_position(symbol)
        if left != 0:
            rest = await api.decided_order(symbol, close_side, abs(left), reduce_only=True)
            await api.venue_filled(rest["client_order_id"])
            coids.append(rest["client_order_id"])
    return await api.venue_fills_pnl(*coids)


# --------------------------------------------------------------------------- a strategy's part (CB-3)


class StrategyVoice:
    """Plays one strategy instance's part: its signals, on the system's bus, exactly as the strategy
    process publishes them (`SignalGenerated` on `evt.signal.<strategy>.<symbol>`). Risk, position
    and the venue handle them as that strategy's, so its trades are that strategy's trades."""

    def __init__(self, bus: Bus, strategy: str) -> None:
        self.bus = bus
        self.strategy = strategy

    async def entry(self, api: Api, symbol: str, side: str, quantity: Decimal | str) -> dict[str, Any]:
        """A MARKET entry signal; the order risk made of it once decided (from the `orders` projection)."""
        signal = SignalGenerated(
            strategy=self.strategy,
            symbol=symbol,
            side=Side(side),
            order_type=OrderType.MARKET,
            quantity=Decimal(quantity),
            reason="e2e scripted entry",
            confidence=Decimal(1),
        )
        await self.bus.publish(subjects.evt_signal(self.strategy, symbol), signal, msg_id=signal.message_id)
        order_id = client_order_id_for(signal.message_id)

        async def decided() -> dict[str, Any] | None:
            response = await api.gateway.get(f"/v1/orders/{order_id}")
            if response.status_code != 200:
                return None
            order: dict[str, Any] = response.json()
            return order if order["status"] != "PENDING_SUBMISSION" else None

        found: dict[str, Any] = await eventually(decided, 30)
        return found


@asynccontextmanager
async def strategy_voice(system: RunningSystem, strategy: str) -> AsyncIterator[StrategyVoice]:
    bus = Bus(f"e2e-{strategy}")
    await bus.connect(system.nats_url)
    try:
        yield StrategyVoice(bus, strategy)
    finally:
        await bus.close()


async def strategy_state(api: Api, strategy: str) -> str | None:
    response = await api.gateway.get("/v1/strategies")
    response.raise_for_status()
    return next((s["state"] for s in response.json()["strategies"] if s["name"] == strategy), None)


async def wait_strategy_state(api: Api, strategy: str, state: str, timeout_s: float = 30.0) -> None:
    async def reached() -> bool:
        return await strategy_state(api, strategy) == state

    async def failure() -> str:
        return f"{strategy} not {state} within {timeout_s}s: {await strategy_state(api, strategy)}"

    await eventually(reached, timeout_s, failure)


async def _push_market(api: Api, symbol: str, direction: str, past: Decimal, reference: Decimal) -> None:
    """Move the synthetic market (`price_shift`) until its touch is beyond `past`.

    The market is a random walk of about 2 ticks per 100 ms step, with liquidation cascades and
    their rebounds moving it tens of ticks a step for seconds, so one shift aimed 3 ticks beyond
    `past` can fall short; it is then shifted again from where it is, aimed 4 times further each time.
    """

    async def beyond() -> bool:
        bid, ask = await api.touch(symbol)
        return bid > past if direction == "up" else ask < past

    for attempt in range(PUSH_ATTEMPTS):
        bid, ask = await api.touch(symbol)
        distance = (past - bid if direction == "up" else ask - past) + 3 * 4**attempt * TICK
        if distance > 0:
            pct = (distance / reference * 100).quantize(Decimal("0.0001"), ROUND_CEILING)
            shift = {"pct": str(pct), "direction": direction, "over_s": 0.5}
            await api.post_fault({"kind": "price_shift", "symbol": symbol, "params": shift})
        try:
            await eventually(beyond, 3.0)
            return
        except AssertionError:
            continue
    raise AssertionError(
        f"{symbol} not moved {direction} past {past} in {PUSH_ATTEMPTS} shifts: {await api.touch(symbol)}"
    )


async def scripted_round_trip(api: Api, voice: StrategyVoice, symbol: str, quantity: Decimal, ticks: int) -> Decimal:
    """A long trade of `voice`'s strategy that gains (ticks > 0) or loses (ticks < 0) exactly
    `|ticks|` ticks per unit; its realized PnL as the venue booked it.

    Entry: the strategy's MARKET buy. Exit: a resting reduce-only LIMIT sell `ticks` from the entry,
    filled at its own price. A gain's exit rests above the market, which is then moved up through
    it; for a loss the market is first moved down past the exit's price, so the exit rests above
    it, then moved back up through it.
    The exits are operator orders: a trade belongs to the strategy whose order opened it.
    """
    opened = await voice.entry(api, symbol, "BUY", quantity)
    assert opened["status"] not in ("DENIED", "REJECTED"), opened
    entry = Decimal((await api.venue_filled(opened["client_order_id"]))["avg_price"])
    if ticks > 0:
        target = (entry / TICK).to_integral_value(ROUND_CEILING) * TICK + ticks * TICK
    else:
        target = (entry / TICK).to_integral_value(ROUND_FLOOR) * TICK + ticks * TICK
        await _push_market(api, symbol, "down", target, entry)
    closed = await api.decided_order(symbol, "SELL", quantity, order_type="LIMIT", price=target, reduce_only=True)
    assert closed["status"] not in ("DENIED", "REJECTED"), closed
    await _push_market(api, symbol, "up", target, entry)
    await api.venue_filled(closed["client_order_id"])
    return await api.venue_fills_pnl(opened["client_order_id"], closed["client_order_id"])

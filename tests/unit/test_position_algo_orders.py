"""Conditional orders through Binance's Algo Service: the venue link sends them to `algoOrder` under
the client order id, answers for them in order shape, and `ALGO_UPDATE`s move the local order
(cancelled -> replaced; triggered -> the MARKET order's fills booked on it once)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from libs.binance.client import endpoint_cost
from libs.binance.errors import VenueError
from libs.breaker import CircuitBreaker
from libs.clock import ManualClock
from libs.logging import get_logger
from libs.ratelimit import Priority
from proto.enums import OrderSource, OrderStatus, OrderType, Side
from proto.messages import OrderApproved, OrderFilled, SubmitOrder
from services.position.adapters import VenueLink
from services.position.algo_orders import algo_params
from tests.unit.test_position_venue_link import DELIVERY, FakeBus, FakeVenue, service

S = 1_000_000_000
STOP = {
    "symbol": "BTCUSDT",
    "side": "SELL",
    "type": "STOP_MARKET",
    "quantity": "0.01",
    "newClientOrderId": "bwstop",
    "newOrderRespType": "RESULT",
    "stopPrice": "90000",
    "reduceOnly": "true",
}


class AlgoVenue:
    """A client with both order endpoints; records what was called with what."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.algo_known: dict[str, dict[str, Any]] = {}

    async def place_order(self, **params: str) -> dict:
        self.calls.append(("place_order", params))
        if params["type"] in ("STOP_MARKET", "TAKE_PROFIT_MARKET"):
            raise VenueError(400, -4120, "Order type not supported for this endpoint.")
        return {"clientOrderId": params["newClientOrderId"], "orderId": 1, "status": "NEW", "executedQty": "0"}

    async def place_algo_order(self, **params: str) -> dict:
        self.calls.append(("place_algo_order", params))
        algo = {
            "algoId": 77,
            "clientAlgoId": params["clientAlgoId"],
            "orderType": params["type"],
            "symbol": params["symbol"],
            "side": params["side"],
            "quantity": params["quantity"],
            "triggerPrice": params["triggerPrice"],
            "algoStatus": "NEW",
            "reduceOnly": True,
        }
        self.algo_known[params["clientAlgoId"]] = algo
        return algo

    async def query_order(self, symbol: str, *, orig_client_order_id: str) -> dict:
        self.calls.append(("query_order", {"coid": orig_client_order_id}))
        raise VenueError(400, -2013, "Order does not exist.")

    async def query_algo_order(self, *, algo_id: int | None = None, client_algo_id: str | None = None) -> dict:
        self.calls.append(("query_algo_order", {"clientAlgoId": client_algo_id}))
        if client_algo_id not in self.algo_known:
            raise VenueError(400, -2013, "Order does not exist.")
        return self.algo_known[client_algo_id]

    async def query_order_by_id(self, symbol: str, order_id: int) -> dict:
        self.calls.append(("query_order_by_id", {"orderId": order_id}))
        return {"clientOrderId": "venue-chosen", "orderId": order_id, "status": "FILLED", "executedQty": "0.01"}

    async def cancel_order(self, symbol: str, *, orig_client_order_id: str) -> dict:
        self.calls.append(("cancel_order", {"coid": orig_client_order_id}))
        raise VenueError(400, -2011, "Unknown order sent.")

    async def cancel_algo_order(self, *, algo_id: int | None = None, client_algo_id: str | None = None) -> dict:
        self.calls.append(("cancel_algo_order", {"clientAlgoId": client_algo_id}))
        return {"algoId": 77, "clientAlgoId": client_algo_id, "code": "200", "msg": "success"}

    async def open_orders(self, symbol: str | None = None) -> list[dict]:
        return [{"clientOrderId": "bwlimit", "status": "NEW"}]

    async def open_algo_orders(self, symbol: str | None = None) -> list[dict]:
        return [a for a in self.algo_known.values() if a["algoStatus"] == "NEW"]


def venue_link(client: AlgoVenue) -> VenueLink:
    clock = ManualClock(1_700_000_000 * S)
    return VenueLink(client, CircuitBreaker("venue-test", clock), get_logger("test"), clock)


def test_algo_params_when_stop_then_conditional_on_mark_price_named_by_the_client_order_id() -> None:
    params = algo_params(STOP)
    assert params == {
        "algoType": "CONDITIONAL",
        "symbol": "BTCUSDT",
        "side": "SELL",
        "type": "STOP_MARKET",
        "quantity": "0.01",
        "triggerPrice": "90000",
        "workingType": "MARK_PRICE",
        "clientAlgoId": "bwstop",
        "reduceOnly": "true",
    }


def test_endpoint_cost_when_algo_order_placed_then_counted_as_an_order() -> None:
    assert endpoint_cost("POST", "/fapi/v1/algoOrder") == (Priority.ORDER, 0, 1)
    assert endpoint_cost("GET", "/fapi/v1/openAlgoOrders", {"symbol": "BTCUSDT"}) == (Priority.ACCOUNT, 1, 0)
    assert endpoint_cost("GET", "/fapi/v1/openAlgoOrders") == (Priority.ACCOUNT, 40, 0)


async def test_place_when_stop_then_algo_service_used_and_never_the_order_endpoint() -> None:
    client = AlgoVenue()
    link = venue_link(client)
    answer = await link.place_order(**STOP)
    assert [name for name, _ in client.calls] == ["place_algo_order"]
    assert answer["clientOrderId"] == "bwstop" and answer["status"] == "NEW"
    limit = {**STOP, "type": "LIMIT", "price": "1", "newClientOrderId": "bwlimit"}
    limit.pop("stopPrice")
    await link.place_order(**limit)
    assert client.calls[-1][0] == "place_order"
    opened = await link.open_orders("BTCUSDT")
    assert sorted(o["clientOrderId"] for o in opened) == ["bwlimit", "bwstop"]


async def test_query_and_cancel_when_order_unknown_to_order_endpoint_then_algo_service_asked() -> None:
    client = AlgoVenue()
    await client.place_algo_order(**algo_params(STOP))  # placed by an earlier process: not known to this link
    link = venue_link(client)
    found = await link.query_order("BTCUSDT", orig_client_order_id="bwstop")
    assert found["status"] == "NEW" and found["clientOrderId"] == "bwstop"
    assert [name for name, _ in client.calls[1:]] == ["query_order", "query_algo_order"]
    cancelled = await link.cancel_order("BTCUSDT", orig_client_order_id="bwstop")
    assert cancelled["status"] == "CANCELED"
    assert client.calls[-1] == ("cancel_algo_order", {"clientAlgoId": "bwstop"})


async def test_query_when_triggered_then_the_market_order_it_placed_answers_under_the_stop_id() -> None:
    client = AlgoVenue()
    link = venue_link(client)
    await link.place_order(**STOP)
    client.algo_known["bwstop"].update(algoStatus="FINISHED", actualOrderId="555")
    answer = await link.query_order("BTCUSDT", orig_client_order_id="bwstop")
    assert answer == {"clientOrderId": "bwstop", "orderId": 555, "status": "FILLED", "executedQty": "0.01"}


async def test_query_when_unknown_everywhere_then_the_order_endpoints_not_found_raised() -> None:
    link = venue_link(AlgoVenue())
    try:
        await link.query_order("BTCUSDT", orig_client_order_id="bwnone")
    except VenueError as exc:
        assert exc.code == -2013
    else:
        raise AssertionError("an unknown order was found")


def stop_approved() -> OrderApproved:
    return OrderApproved(
        order=SubmitOrder(
            client_order_id="bwstop",
            idempotency_key="stop",
            source=OrderSource.OPERATOR,
            symbol="BTCUSDT",
            side=Side.SELL,
            order_type=OrderType.STOP_MARKET,
            quantity=Decimal("0.01"),
            stop_price=Decimal("90000"),
            reduce_only=True,
        )
    )


async def test_algo_update_when_cancelled_by_the_venue_then_local_order_cancelled() -> None:
    venue = FakeVenue(place_order=[{"orderId": 77, "status": "NEW", "executedQty": "0"}])
    svc = service(venue, FakeBus())
    await svc.on_approved(stop_approved(), DELIVERY)
    assert svc.ledger.orders["bwstop"].status == OrderStatus.NEW
    await svc.on_user_event({"e": "ALGO_UPDATE", "o": {"caid": "bwstop", "aid": 77, "X": "EXPIRED", "ai": ""}})
    assert svc.ledger.orders["bwstop"].status == OrderStatus.EXPIRED


async def test_algo_update_when_triggered_then_market_order_fills_booked_on_the_stop_once() -> None:
    venue = FakeVenue(place_order=[{"orderId": 77, "status": "NEW", "executedQty": "0"}])
    bus = FakeBus()
    svc = service(venue, bus)
    svc.ledger.positions["BTCUSDT"] = svc.ledger.position("BTCUSDT")
    await svc.on_approved(stop_approved(), DELIVERY)
    await svc.on_user_event({"e": "ALGO_UPDATE", "o": {"caid": "bwstop", "aid": 77, "X": "TRIGGERING", "ai": ""}})
    fill = {
        "c": "venue-chosen-id",
        "s": "BTCUSDT",
        "S": "SELL",
        "o": "MARKET",
        "q": "0.01",
        "i": 555,
        "x": "TRADE",
        "X": "FILLED",
        "t": 9,
        "l": "0.01",
        "L": "89990",
        "z": "0.01",
    }
    await svc.on_user_event({"e": "ORDER_TRADE_UPDATE", "o": fill})
    await svc.on_user_event({"e": "ORDER_TRADE_UPDATE", "o": fill})
    triggered = {"caid": "bwstop", "aid": 77, "X": "TRIGGERED", "ai": "555"}
    await svc.on_user_event({"e": "ALGO_UPDATE", "o": triggered})
    await svc.on_user_event({"e": "ALGO_UPDATE", "o": {**triggered, "X": "FINISHED"}})
    stop = svc.ledger.orders["bwstop"]
    assert stop.status == OrderStatus.FILLED and stop.venue_order_id == 555
    assert len(bus.of(OrderFilled)) == 1
    assert svc.ledger.positions["BTCUSDT"].quantity == Decimal("-0.01")
    assert svc.core.reconciled  # nothing unknown was seen


async def test_user_event_when_market_order_of_someone_else_then_not_taken_for_a_stop() -> None:
    venue = FakeVenue(place_order=[{"orderId": 77, "status": "NEW", "executedQty": "0"}])
    svc = service(venue, FakeBus())
    await svc.on_approved(stop_approved(), DELIVERY)
    other = {"c": "web_x", "s": "BTCUSDT", "S": "SELL", "o": "MARKET", "q": "0.01", "i": 9, "X": "NEW", "z": "0"}
    await svc.on_user_event({"e": "ORDER_TRADE_UPDATE", "o": other})
    assert svc.ledger.orders["bwstop"].venue_order_id == 77
    # Someone else's order is adopted as an order of its own (EXTERNAL), never booked on the stop.
    assert "web_x" in svc.ledger.orders and svc.ledger.orders["web_x"].venue_order_id == 9


def test_simulator_config_when_nothing_given_then_conditional_orders_only_as_algo_orders_like_binance() -> None:
    from services.venue_sim.config import config_from

    assert config_from([], {}).conditional_orders == "algo"
    assert config_from([], {"BULWARK_SIM_CONDITIONAL_ORDERS": "legacy"}).conditional_orders == "legacy"
    assert config_from(["--conditional-orders", "legacy"], {}).conditional_orders == "legacy"

"""Conditional orders through Binance's Algo Service (since 2025-12-09 the venue refuses
STOP_MARKET, TAKE_PROFIT_MARKET and the other conditional types on `/fapi/v1/order` with -4120).

The rest of the service keeps one view of an order: its client order id, a `/fapi/v1/order`-shaped
answer. `AlgoRoute` is the adapter that sends a conditional order to `POST /fapi/v1/algoOrder` under
`clientAlgoId` = its client order id (so a retry after an ambiguous answer names the same order and
the venue refuses a second one), and answers queries, cancels and open-order lists of those orders
from the Algo Service in that shape. Once triggered, an algo order lives on as the MARKET order it
placed (`actualOrderId`): its fills are the protective order's fills.

`AlgoUpdates` follows the `ALGO_UPDATE` user-data events: cancelled, expired or rejected moves the
local order to that status (the protection is then placed again, as for any lost stop); triggering
links the MARKET order the trigger places, so its `ORDER_TRADE_UPDATE`s (under a client order id the
venue chose) are booked on the protective order, exactly once; their `OrderFilled` events carry the
MARKET order's id into the ledger (nothing here changes an order in memory directly).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from libs.binance.errors import VenueError
from libs.orders_model import OrderRecord, is_terminal

CONDITIONAL_TYPES = frozenset({"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"})
"""Order types Binance only accepts through the Algo Service."""
WORKING_TYPE = "MARK_PRICE"
"""Protective orders trigger on the mark price (FM-C2): a thin book's last trade cannot fire them."""
UNKNOWN_ON_CANCEL = -2011
NOT_FOUND = -2013
MAX_LINKS = 1000
"""Triggered orders remembered for linking their MARKET order's events (oldest forgotten first; a
late event of a forgotten one is settled by reconciliation and the query of the stop)."""

ALGO_TO_ORDER_STATUS = {
    "NEW": "NEW",
    # Forwarded to / placed in the matching engine: the order still works (its MARKET order fills it).
    "TRIGGERING": "NEW",
    "TRIGGERED": "NEW",
    "CANCELED": "CANCELED",
    "EXPIRED": "EXPIRED",
    "REJECTED": "REJECTED",
}
"""`algoStatus` -> the `/fapi/v1/order` status the service understands; FINISHED is the MARKET
order's own status (asked by `actualOrderId`)."""


def is_conditional(params: dict[str, str]) -> bool:
    """Does Binance take an order with these `/fapi/v1/order` parameters only through the Algo Service?"""
    return params.get("type") in CONDITIONAL_TYPES


def algo_params(params: dict[str, str]) -> dict[str, str]:
    """`POST /fapi/v1/algoOrder` parameters of a conditional order given as `/fapi/v1/order` ones:
    `clientAlgoId` is the client order id, `triggerPrice` the stop price, on the mark price."""
    out = {
        "algoType": "CONDITIONAL",
        "symbol": params["symbol"],
        "side": params["side"],
        "type": params["type"],
        "quantity": params["quantity"],
        "triggerPrice": params["stopPrice"],
        "workingType": WORKING_TYPE,
        "clientAlgoId": params["newClientOrderId"],
    }
    if params.get("reduceOnly"):
        out["reduceOnly"] = params["reduceOnly"]
    if params.get("price"):
        out["price"] = params["price"]
    return out


def order_view(algo: dict[str, Any]) -> dict[str, Any]:
    """An Algo Service order (REST answer) in the shape of a `/fapi/v1/order` answer."""
    status = str(algo.get("algoStatus", ""))
    return {
        "clientOrderId": str(algo.get("clientAlgoId", "")),
        "orderId": algo.get("algoId"),
        "symbol": algo.get("symbol"),
        "side": algo.get("side"),
        "type": algo.get("orderType"),
        "origQty": algo.get("quantity"),
        "price": algo.get("price", "0"),
        "stopPrice": algo.get("triggerPrice"),
        "reduceOnly": algo.get("reduceOnly", False),
        "timeInForce": algo.get("timeInForce", "GTC"),
        "status": ALGO_TO_ORDER_STATUS.get(status, status),
        "executedQty": "0",
        "algoStatus": status,
    }


class AlgoRoute:
    """Sends conditional orders to the Algo Service and answers for them in `/fapi/v1/order` shape.

    Args:
        client: a started `BinanceRestClient` (or a fake with the same methods).
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.client_algo_ids: set[str] = set()
        """Client order ids known to live in the Algo Service (placed, or listed open)."""

    async def place(self, params: dict[str, str]) -> dict[str, Any]:
        """Place a conditional order; its answer as an order (NEW)."""
        self.client_algo_ids.add(params["newClientOrderId"])  # before sending: an ambiguous answer is queried here
        return order_view(await self.client.place_algo_order(**algo_params(params)))

    async def query(self, symbol: str, client_order_id: str) -> dict[str, Any]:
        """One conditional order as an order; once triggered and finished, the MARKET order it placed
        (its fills and status) under the conditional order's client order id.

        Raises:
            VenueError: -2013 when the Algo Service does not know it.
        """
        algo = await self.client.query_algo_order(client_algo_id=client_order_id)
        self.client_algo_ids.add(client_order_id)
        actual = str(algo.get("actualOrderId") or "")
        if algo.get("algoStatus") in ("TRIGGERED", "FINISHED") and actual.isdigit():
            placed = dict(await self.client.query_order_by_id(symbol, int(actual)))
            placed["clientOrderId"] = client_order_id
            return placed
        return order_view(algo)

    async def cancel(self, symbol: str, client_order_id: str) -> dict[str, Any]:
        """Cancel a conditional order; the order after the cancel (CANCELED).

        Raises:
            VenueError: -2011 when it is unknown or no longer open (triggered, finished).
        """
        await self.client.cancel_algo_order(client_algo_id=client_order_id)
        return {"clientOrderId": client_order_id, "symbol": symbol, "status": "CANCELED", "executedQty": "0"}

    async def open_orders(self, symbol: str | None) -> list[dict[str, Any]]:
        """Untriggered conditional orders (of one symbol, or all) as orders."""
        views = [order_view(algo) for algo in await self.client.open_algo_orders(symbol)]
        self.client_algo_ids.update(view["clientOrderId"] for view in views)
        return views

    async def or_algo(
        self,
        client_order_id: str,
        regular: Callable[[], Awaitable[Any]],
        algo: Callable[[], Awaitable[Any]],
        not_found: int,
    ) -> Any:
        """`algo()` for an order known to be conditional, else `regular()`, and `algo()` after all when
        the order endpoint does not know it (`not_found`): a conditional order placed before a restart
        whose answer never came is still found."""
        if client_order_id in self.client_algo_ids:
            return await algo()
        try:
            return await regular()
        except VenueError as exc:
            if exc.code != not_found:
                raise
            try:
                return await algo()
            except VenueError:
                raise exc from None


class AlgoUpdates:
    """Follows `ALGO_UPDATE` events for the service's own conditional orders.

    Args:
        orders: the ledger's orders by client order id.
        apply: `Execution.apply_venue_order(order, answer, reason)`.
        log: structured logger.
    """

    def __init__(self, orders: Callable[[], dict[str, OrderRecord]], apply: Any, log: Any) -> None:
        self.orders = orders
        self.apply = apply
        self.log = log
        self.actual: dict[int, str] = {}
        """Venue order id of a triggered order -> client order id of the conditional order it came from."""
        self.triggering: dict[tuple[str, str], str] = {}
        """(symbol, side) -> client order id of a conditional order forwarded to the matching engine
        whose MARKET order is not linked yet."""

    async def on_event(self, event: dict[str, Any]) -> bool:
        """Apply one `ALGO_UPDATE`; False when it is not about a known order (the caller reconciles).

        Raises:
            KeyError, ValueError, ArithmeticError: a malformed event.
        """
        update = event["o"]
        coid = str(update.get("caid", ""))
        order = self.orders().get(coid)
        if order is None:
            self.log.warning("algo_update_unknown_order", client_algo_id=coid, status=update.get("X"))
            return False
        status = str(update.get("X", ""))
        actual = str(update.get("ai") or "")
        if actual.isdigit():
            # Linked here; the order's venue order id becomes the MARKET order's with its first fill
            # (`OrderFilled` carries it into the ledger, as a replay folds it).
            self._link(int(actual), coid)
        key = (order.symbol, order.side.value)
        match status:
            case "TRIGGERING" | "TRIGGERED" if not actual.isdigit():
                self.triggering[key] = coid
            case "TRIGGERING" | "TRIGGERED" | "FINISHED":
                self.triggering.pop(key, None)
            case "NEW":
                if not is_terminal(order.status):
                    answer = {"orderId": update.get("aid"), "status": "NEW", "executedQty": str(order.filled_quantity)}
                    await self.apply(order, answer)
            case "CANCELED" | "EXPIRED" | "REJECTED":
                self.triggering.pop(key, None)
                if not is_terminal(order.status) and order.filled_quantity == 0:
                    answer = {"status": status, "executedQty": "0"}
                    await self.apply(order, answer, reason=str(update.get("rm") or "").strip() or status.lower())
        self.log.info("algo_update", client_order_id=coid, algo_status=status, actual_order_id=actual or None)
        return True

    def owner_of(self, update: dict[str, Any]) -> OrderRecord | None:
        """The conditional order an `ORDER_TRADE_UPDATE` of an order we did not name belongs to: the
        MARKET order its trigger placed (by venue order id, or the first one on its symbol and side
        while it is triggering). None for any other order."""
        orders = self.orders()
        venue_id = update.get("i")
        if venue_id is not None and str(venue_id).isdigit() and int(venue_id) in self.actual:
            return orders.get(self.actual[int(venue_id)])
        key = (str(update.get("s", "")), str(update.get("S", "")))
        coid = self.triggering.get(key)
        if coid is None or update.get("o") != "MARKET" or venue_id is None or not str(venue_id).isdigit():
            return None
        order = orders.get(coid)
        if order is None or Decimal(str(update.get("q", "0"))) > order.quantity:
            return None
        del self.triggering[key]
        self._link(int(venue_id), coid)
        return order

    def _link(self, venue_order_id: int, client_order_id: str) -> None:
        self.actual[venue_order_id] = client_order_id
        while len(self.actual) > MAX_LINKS:
            del self.actual[next(iter(self.actual))]

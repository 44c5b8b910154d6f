"""Conditional orders in Binance USD-M's Algo Service (since 2025-12-09 the only way to place
STOP_MARKET and TAKE_PROFIT_MARKET orders on Binance: `POST /fapi/v1/algoOrder`, `algoType`
CONDITIONAL). An algo order waits outside the book; when its trigger price is crossed (by the last
price, `workingType` CONTRACT_PRICE, or the mark price) it places a MARKET order in the matching
engine. Each change is an `ALGO_UPDATE` event in the exchange's outbox (pure, clock injected)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from services.venue_sim.domain.orders import parse_order_request, triggers
from services.venue_sim.domain.rules import BinanceError, SymbolSpec, fmt, illegal, mandatory

ALGO_TYPES = ("STOP_MARKET", "TAKE_PROFIT_MARKET")
OPEN = ("NEW",)
CLIENT_ALGO_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
ZERO = Decimal(0)


@dataclass
class AlgoOrder:
    """One conditional order of the Algo Service."""

    algo_id: int
    client_algo_id: str
    symbol: str
    side: str
    type: str
    quantity: Decimal
    trigger_price: Decimal
    working_type: str
    reduce_only: bool
    close_position: bool
    create_ms: int
    update_ms: int
    status: str = "NEW"
    trigger_ms: int = 0
    actual_order_id: int | None = None
    reject_reason: str = ""


def algo_view(order: AlgoOrder, spec: SymbolSpec) -> dict[str, Any]:
    """The algo order as Binance's REST answers show it."""
    return {
        "algoId": order.algo_id,
        "clientAlgoId": order.client_algo_id,
        "algoType": "CONDITIONAL",
        "orderType": order.type,
        "symbol": order.symbol,
        "side": order.side,
        "positionSide": "BOTH",
        "timeInForce": "GTC",
        "quantity": fmt(order.quantity, spec.quantity_precision),
        "algoStatus": order.status,
        "actualOrderId": str(order.actual_order_id) if order.actual_order_id is not None else "",
        "triggerPrice": fmt(order.trigger_price, spec.price_precision),
        "price": "0",
        "selfTradePreventionMode": "NONE",
        "workingType": order.working_type,
        "priceMatch": "NONE",
        "closePosition": order.close_position,
        "priceProtect": False,
        "reduceOnly": order.reduce_only,
        "createTime": order.create_ms,
        "updateTime": order.update_ms,
        "triggerTime": order.trigger_ms,
        "goodTillDate": 0,
    }


def algo_update(order: AlgoOrder, spec: SymbolSpec, now_ms: int) -> dict[str, Any]:
    """The `ALGO_UPDATE` user-data event of one change."""
    return {
        "e": "ALGO_UPDATE",
        "T": now_ms,
        "E": now_ms,
        "o": {
            "caid": order.client_algo_id,
            "aid": order.algo_id,
            "at": "CONDITIONAL",
            "o": order.type,
            "s": order.symbol,
            "S": order.side,
            "ps": "BOTH",
            "f": "GTC",
            "q": fmt(order.quantity, spec.quantity_precision),
            "X": order.status,
            "ai": str(order.actual_order_id) if order.actual_order_id is not None else "",
            "tp": fmt(order.trigger_price, spec.price_precision),
            "p": "0",
            "V": "NONE",
            "wt": order.working_type,
            "pm": "NONE",
            "cp": order.close_position,
            "pP": False,
            "R": order.reduce_only,
            "tt": order.trigger_ms,
            "gtd": 0,
            "rm": order.reject_reason,
        },
    }


class AlgoBook:
    """The account's conditional orders."""

    def __init__(self, first_algo_id: int = 1_000_000_000) -> None:
        self.orders: dict[int, AlgoOrder] = {}
        self._next_id = first_algo_id

    def place(
        self,
        params: Mapping[str, str],
        spec: SymbolSpec,
        prices: tuple[Decimal | None, Decimal],
        now_ms: int,
    ) -> AlgoOrder:
        """Validate and accept a conditional order (`prices`: last price, mark price).

        Raises:
            BinanceError: the rule it breaks, with Binance's code.
        """
        if params.get("algoType") != "CONDITIONAL":
            if not params.get("algoType"):
                raise mandatory("algoType")
            raise BinanceError(400, -1130, "Data sent for parameter 'algoType' is not valid.")
        order_type = params.get("type") or ""
        if order_type and order_type not in ALGO_TYPES:
            raise BinanceError(400, -1116, "Invalid orderType.")
        trigger = params.get("triggerPrice")
        if not trigger:
            raise mandatory("triggerPrice")
        close_position = (params.get("closePosition") or "false").lower() == "true"
        if close_position and params.get("quantity"):
            raise BinanceError(400, -1106, "Parameter 'quantity' sent when not required.")
        working_type = params.get("workingType") or "CONTRACT_PRICE"
        if working_type not in ("CONTRACT_PRICE", "MARK_PRICE"):
            raise BinanceError(400, -1130, "Data sent for parameter 'workingType' is not valid.")
        client_algo_id = params.get("clientAlgoId") or ""
        if client_algo_id and not CLIENT_ALGO_ID.match(client_algo_id):
            raise illegal("clientAlgoId", "^[\\.A-Z\\:/a-z0-9_-]{1,36}$")
        if client_algo_id and any(
            o.client_algo_id == client_algo_id and o.status in OPEN for o in self.orders.values()
        ):
            raise BinanceError(400, -4116, "ClientOrderId is duplicated.")
        as_order = {
            "symbol": spec.symbol,
            "side": params.get("side", ""),
            "type": order_type,
            "quantity": fmt(spec.min_qty) if close_position else params.get("quantity", ""),
            "stopPrice": trigger,
            "reduceOnly": params.get("reduceOnly", "false"),
        }
        request = parse_order_request({k: v for k, v in as_order.items() if v}, spec)
        assert request.stop_price is not None
        last, mark = prices
        reference = mark if working_type == "MARK_PRICE" else (last if last is not None else mark)
        if reference and triggers(request.type, request.side, request.stop_price, reference):
            raise BinanceError(400, -2021, "Order would immediately trigger.")
        algo_id = self._next_id
        self._next_id += 1
        order = AlgoOrder(
            algo_id=algo_id,
            client_algo_id=client_algo_id or f"algo-{algo_id}",
            symbol=spec.symbol,
            side=request.side,
            type=request.type,
            quantity=ZERO if close_position else request.quantity,
            trigger_price=request.stop_price,
            working_type=working_type,
            reduce_only=request.reduce_only or close_position,
            close_position=close_position,
            create_ms=now_ms,
            update_ms=now_ms,
        )
        self.orders[algo_id] = order
        return order

    def find(self, params: Mapping[str, str]) -> AlgoOrder | None:
        """The order named by `algoId` or `clientAlgoId` (the newest with that client id)."""
        if params.get("algoId"):
            if not params["algoId"].isdigit():
                raise illegal("algoId", "^[0-9]{1,20}$")
            return self.orders.get(int(params["algoId"]))
        if params.get("clientAlgoId"):
            named = [o for o in self.orders.values() if o.client_algo_id == params["clientAlgoId"]]
            return named[-1] if named else None
        raise BinanceError(400, -1102, "Param 'algoId' or 'clientAlgoId' must be sent, but both were empty/null!")

    def cancel(self, order: AlgoOrder, now_ms: int) -> None:
        """Cancel an open conditional order."""
        order.status = "CANCELED"
        order.update_ms = now_ms

    def open_orders(self, symbol: str | None) -> list[AlgoOrder]:
        """Untriggered conditional orders, of one symbol or all."""
        return [o for o in self.orders.values() if o.status in OPEN and (symbol is None or o.symbol == symbol)]

    def due(self, symbol: str, last: Decimal | None, mark: Decimal) -> list[AlgoOrder]:
        """The open orders of a symbol whose trigger the prices cross now."""
        due = []
        for order in self.open_orders(symbol):
            reference = mark if order.working_type == "MARK_PRICE" else last
            if reference and triggers(order.type, order.side, order.trigger_price, reference):
                due.append(order)
        return due

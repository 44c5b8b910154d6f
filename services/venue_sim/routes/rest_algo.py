"""Signed REST of Binance USD-M's Algo Service: conditional orders (`algoOrder` place, query,
cancel; `openAlgoOrders`, `allAlgoOrders`, `algoOpenOrders`), and, when the simulator follows
Binance since 2025-12-09 (`--conditional-orders algo`), the refusal of conditional order types on
the order endpoints."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.venue_sim.domain import BinanceError
from services.venue_sim.routes.context import Endpoint, RouteGroup, Routes, bounded_int, by_symbol, fixed, one

CONDITIONAL_TYPES = frozenset({"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"})


def refuse_conditional(params: dict[str, str]) -> None:
    """Binance's answer to a conditional order type sent to an order endpoint since 2025-12-09.

    Raises:
        BinanceError: -4120 for a conditional type.
    """
    if params.get("type") in CONDITIONAL_TYPES:
        raise BinanceError(
            400, -4120, "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead."
        )


class AlgoRoutes(RouteGroup):
    """Conditional orders (signed)."""

    def endpoints(self) -> Routes:
        """The Algo Service endpoints."""
        return {
            ("POST", "/fapi/v1/algoOrder"): Endpoint(self.place, fixed(0), "SIGNED", places_order=True),
            ("GET", "/fapi/v1/algoOrder"): Endpoint(self.query, one, "SIGNED"),
            ("DELETE", "/fapi/v1/algoOrder"): Endpoint(self.cancel, one, "SIGNED"),
            ("GET", "/fapi/v1/openAlgoOrders"): Endpoint(self.open_orders, by_symbol(1, 40), "SIGNED"),
            ("GET", "/fapi/v1/allAlgoOrders"): Endpoint(self.all_orders, fixed(5), "SIGNED"),
            ("DELETE", "/fapi/v1/algoOpenOrders"): Endpoint(self.cancel_all, one, "SIGNED"),
        }

    async def place(self, request: web.Request, params: dict[str, str]) -> Any:
        """POST /fapi/v1/algoOrder (algoType CONDITIONAL; STOP_MARKET or TAKE_PROFIT_MARKET)."""
        symbol = self.ctx.symbol(params)
        order = self.exchange.place_algo(params, self.feed.markets[symbol].last_price)
        self.ctx.log.info("algo_order_placed", algo_id=order.algo_id, client_algo_id=order.client_algo_id)
        return self.exchange.algo_view(order)

    async def query(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/algoOrder."""
        order = self.exchange.algo.find(params)
        if order is None:
            raise BinanceError(400, -2013, "Order does not exist.")
        return self.exchange.algo_view(order)

    async def cancel(self, request: web.Request, params: dict[str, str]) -> Any:
        """DELETE /fapi/v1/algoOrder."""
        order = self.exchange.cancel_algo(params)
        return {"algoId": order.algo_id, "clientAlgoId": order.client_algo_id, "code": "200", "msg": "success"}

    async def open_orders(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/openAlgoOrders."""
        symbol = self.ctx.symbol(params) if params.get("symbol") else None
        return [self.exchange.algo_view(o) for o in self.exchange.algo.open_orders(symbol)]

    async def all_orders(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/allAlgoOrders (symbol required; algoId, startTime, endTime, limit <= 100)."""
        symbol = self.ctx.symbol(params)
        limit = bounded_int(params, "limit", 100, 1, 100)
        from_id = bounded_int(params, "algoId", 0, 0, 2**62) if params.get("algoId") else None
        rows = [
            o
            for o in self.exchange.algo.orders.values()
            if o.symbol == symbol and (from_id is None or o.algo_id >= from_id)
        ]
        chosen = rows[:limit] if from_id is not None else rows[-limit:]
        return [self.exchange.algo_view(o) for o in chosen]

    async def cancel_all(self, request: web.Request, params: dict[str, str]) -> Any:
        """DELETE /fapi/v1/algoOpenOrders: every open conditional order of a symbol."""
        symbol = self.ctx.symbol(params)
        for order in self.exchange.algo.open_orders(symbol):
            self.exchange.cancel_algo({"algoId": str(order.algo_id)})
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

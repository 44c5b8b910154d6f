"""Signed REST of the simulated account: order entry under the order faults (reject, 5xx,
timeouts, partial and delayed fills), queries and cancels, trades, positions, balances, the
account, the dead-man's switch and the position mode (one-way)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from aiohttp import web

from services.venue_sim.domain import BinanceError, views
from services.venue_sim.routes.context import (
    INTERNAL_ERROR_MSG,
    Endpoint,
    OrderTimeout,
    RouteGroup,
    Routes,
    by_symbol,
    fixed,
    one,
)
from services.venue_sim.routes.rest_algo import refuse_conditional


class OrderRoutes(RouteGroup):
    """Order and account endpoints (signed)."""

    def endpoints(self) -> Routes:
        """The signed USD-M order and account endpoints."""
        table: Routes = {
            ("POST", "/fapi/v1/order"): Endpoint(self.new_order, fixed(0), "SIGNED", places_order=True),
            ("DELETE", "/fapi/v1/order"): Endpoint(self.cancel_order, one, "SIGNED"),
            ("GET", "/fapi/v1/order"): Endpoint(self.query_order, one, "SIGNED"),
            ("GET", "/fapi/v1/openOrders"): Endpoint(self.open_orders, by_symbol(1, 40), "SIGNED"),
            ("DELETE", "/fapi/v1/allOpenOrders"): Endpoint(self.cancel_all, one, "SIGNED"),
            ("GET", "/fapi/v1/userTrades"): Endpoint(self.user_trades, fixed(5), "SIGNED"),
            ("POST", "/fapi/v1/countdownCancelAll"): Endpoint(self.countdown_cancel_all, fixed(10), "SIGNED"),
            ("GET", "/fapi/v1/positionSide/dual"): Endpoint(self.position_mode, fixed(30), "SIGNED"),
        }
        for version in ("v2", "v3"):
            table[("GET", f"/fapi/{version}/positionRisk")] = Endpoint(self.position_risk, fixed(5), "SIGNED")
            table[("GET", f"/fapi/{version}/balance")] = Endpoint(self.balance, fixed(5), "SIGNED")
            table[("GET", f"/fapi/{version}/account")] = Endpoint(self.account, fixed(5), "SIGNED")
        return table

    async def new_order(self, request: web.Request, params: dict[str, str]) -> Any:
        """POST /fapi/v1/order, under the order faults."""
        if self.ctx.conditional_orders == "algo":
            refuse_conditional(params)
        symbol = params.get("symbol")
        if self.ctx.faults.faults:
            fault = self.ctx.faults.take("order_reject", symbol)
            if fault is not None:
                raise BinanceError(fault.params["status"], fault.params["code"], fault.params["msg"])
            server_error = self.ctx.faults.take("order_http_5xx", symbol)
            if server_error is not None and not server_error.params["placed"]:
                self.ctx.log.warning("fault_order_http_5xx", placed=False, fault=server_error.id)
                raise BinanceError(server_error.params["status"], -1001, INTERNAL_ERROR_MSG)
            fault = self.ctx.faults.take("order_timeout_not_placed", symbol)
            if fault is not None:
                self.ctx.log.warning("fault_order_timeout", placed=False, fault=fault.id)
                raise OrderTimeout(fault.params["ms"] / 1000)
            timeout = self.ctx.faults.take("order_timeout_placed", symbol)
            partial = self.ctx.faults.take("partial_fill", symbol)
            delayed = self.ctx.faults.take("delayed_fill", symbol)
        else:
            timeout = partial = delayed = server_error = None
        order, ack = self.exchange.place_order(
            params,
            fill_ratio=Decimal(partial.params["ratio"]) if partial else None,
            defer_fill=delayed is not None,
        )
        self.ctx.log.info(
            "order_placed",
            order_id=order.order_id,
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            type=order.type,
            status=order.status,
        )
        if delayed is not None:
            asyncio.get_running_loop().call_later(delayed.params["ms"] / 1000, self._deferred_fill, order.order_id)
        if server_error is not None:
            self.ctx.log.warning("fault_order_http_5xx", placed=True, fault=server_error.id, order_id=order.order_id)
            raise BinanceError(server_error.params["status"], -1001, INTERNAL_ERROR_MSG)
        if timeout is not None:
            self.engine.flush_user_events()
            self.ctx.log.warning("fault_order_timeout", placed=True, fault=timeout.id, order_id=order.order_id)
            raise OrderTimeout(timeout.params["ms"] / 1000)
        if params.get("newOrderRespType", "ACK") == "RESULT":
            return self.exchange.order_view(order)
        return ack

    def _deferred_fill(self, order_id: int) -> None:
        self.exchange.execute_deferred(order_id)
        self.engine.flush_user_events()

    async def cancel_order(self, request: web.Request, params: dict[str, str]) -> Any:
        """DELETE /fapi/v1/order."""
        return self.exchange.order_view(self.exchange.cancel_order(params))

    async def query_order(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/order."""
        return self.exchange.order_view(self.exchange.query_order(params))

    async def open_orders(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/openOrders."""
        symbol = self.ctx.symbol(params) if params.get("symbol") else None
        return [self.exchange.order_view(o) for o in self.exchange.open_orders(symbol)]

    async def cancel_all(self, request: web.Request, params: dict[str, str]) -> Any:
        """DELETE /fapi/v1/allOpenOrders."""
        self.exchange.cancel_all(self.ctx.symbol(params))
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    async def user_trades(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/userTrades."""
        return views.user_trade_views(self.exchange, params)

    async def position_risk(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v2/positionRisk."""
        symbol = self.ctx.symbol(params) if params.get("symbol") else None
        return views.position_views(self.exchange, symbol)

    async def balance(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v2/balance."""
        return views.balance_views(self.exchange)

    async def account(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v2/account."""
        return views.account_view(self.exchange)

    async def countdown_cancel_all(self, request: web.Request, params: dict[str, str]) -> Any:
        """POST /fapi/v1/countdownCancelAll (dead-man's switch)."""
        symbol = self.ctx.symbol(params)
        raw = params.get("countdownTime")
        if raw is None or raw == "":
            raise BinanceError(
                400, -1102, "Mandatory parameter 'countdownTime' was not sent, was empty/null, or malformed."
            )
        if not raw.isdigit():
            raise BinanceError(
                400, -1100, "Illegal characters found in parameter 'countdownTime'; legal range is '^[0-9]{1,20}$'."
            )
        self.exchange.arm_countdown(symbol, int(raw))
        return {"symbol": symbol, "countdownTime": raw}

    async def position_mode(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/positionSide/dual: one-way mode."""
        return {"dualSidePosition": False}

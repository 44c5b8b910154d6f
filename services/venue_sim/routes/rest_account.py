"""Signed REST the standard clients call besides single orders: order history (`allOrders`),
batches (`batchOrders` place and cancel), leverage and its brackets, the commission rate and the
account's own order rate limits (`rateLimit/order`)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from services.venue_sim.domain import BinanceError
from services.venue_sim.domain.brackets import commission_rates, parse_leverage, symbol_brackets
from services.venue_sim.routes.context import Endpoint, RouteGroup, Routes, bounded_int, fixed, one
from services.venue_sim.routes.rest_algo import refuse_conditional

MAX_BATCH_ORDERS = 5
MAX_BATCH_CANCELS = 10


def _json_list(params: dict[str, str], name: str, most: int) -> list[Any]:
    """A JSON-array parameter of at most `most` items, or Binance's -1102 / -1130 answer."""
    raw = params.get(name)
    if not raw:
        raise BinanceError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BinanceError(400, -1130, f"Data sent for parameter '{name}' is not valid.") from exc
    if not isinstance(value, list) or not value or len(value) > most:
        raise BinanceError(400, -1130, f"Data sent for parameter '{name}' is not valid.")
    return value


def _batch_size(params: dict[str, str]) -> int:
    try:
        value = msgspec.json.decode(params.get("batchOrders") or "[]")
    except msgspec.DecodeError:
        return 1
    return max(1, len(value)) if isinstance(value, list) else 1


def _as_params(item: Any) -> dict[str, str]:
    """One batch item's parameters as strings, as if sent one by one."""
    if not isinstance(item, dict):
        raise BinanceError(400, -1130, "Data sent for parameter 'batchOrders' is not valid.")
    return {
        str(k): ("true" if v is True else "false" if v is False else str(v)) for k, v in item.items() if v is not None
    }


class AccountRoutes(RouteGroup):
    """Order history, batches, leverage, fees and the account's order limits (signed)."""

    def endpoints(self) -> Routes:
        """The endpoints of this group."""
        return {
            ("GET", "/fapi/v1/allOrders"): Endpoint(self.all_orders, fixed(5), "SIGNED"),
            ("POST", "/fapi/v1/batchOrders"): Endpoint(
                self.place_batch, fixed(5), "SIGNED", places_order=True, order_count=_batch_size
            ),
            ("DELETE", "/fapi/v1/batchOrders"): Endpoint(self.cancel_batch, one, "SIGNED"),
            ("POST", "/fapi/v1/leverage"): Endpoint(self.leverage, one, "SIGNED"),
            ("GET", "/fapi/v1/leverageBracket"): Endpoint(self.leverage_bracket, one, "SIGNED"),
            ("GET", "/fapi/v1/commissionRate"): Endpoint(self.commission_rate, fixed(20), "SIGNED"),
            ("GET", "/fapi/v1/rateLimit/order"): Endpoint(self.order_rate_limits, one, "SIGNED"),
        }

    async def all_orders(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/allOrders (symbol required; orderId, startTime, endTime, limit <= 1000)."""
        symbol = self.ctx.symbol(params)
        limit = bounded_int(params, "limit", 500, 1, 1000)
        order_id = bounded_int(params, "orderId", 0, 0, 2**62) if params.get("orderId") else None
        start = bounded_int(params, "startTime", 0, 0, 2**62) if params.get("startTime") else None
        end = bounded_int(params, "endTime", 0, 0, 2**62) if params.get("endTime") else None
        orders = self.exchange.all_orders(symbol, order_id, start, end, limit)
        return [self.exchange.order_view(o) for o in orders]

    async def place_batch(self, request: web.Request, params: dict[str, str]) -> Any:
        """POST /fapi/v1/batchOrders: up to 5 orders, each answered by its order or its own error."""
        results: list[Any] = []
        for item in _json_list(params, "batchOrders", MAX_BATCH_ORDERS):
            try:
                item_params = _as_params(item)
                if self.ctx.conditional_orders == "algo":
                    refuse_conditional(item_params)
                order, ack = self.exchange.place_order(item_params)
            except BinanceError as error:
                results.append(error.body())
                continue
            self.ctx.log.info(
                "order_placed", order_id=order.order_id, client_order_id=order.client_order_id, batch=True
            )
            results.append(ack)
        return results

    async def cancel_batch(self, request: web.Request, params: dict[str, str]) -> Any:
        """DELETE /fapi/v1/batchOrders: up to 10 orders by `orderIdList` or `origClientOrderIdList`."""
        symbol = self.ctx.symbol(params)
        if params.get("orderIdList"):
            keys = [("orderId", str(v)) for v in _json_list(params, "orderIdList", MAX_BATCH_CANCELS)]
        else:
            names = _json_list(params, "origClientOrderIdList", MAX_BATCH_CANCELS)
            keys = [("origClientOrderId", str(v)) for v in names]
        results: list[Any] = []
        for name, value in keys:
            try:
                order = self.exchange.cancel_order({"symbol": symbol, name: value})
            except BinanceError as error:
                results.append(error.body())
                continue
            results.append(self.exchange.order_view(order))
        return results

    async def leverage(self, request: web.Request, params: dict[str, str]) -> Any:
        """POST /fapi/v1/leverage: the symbol's initial leverage, used for margin from now on."""
        symbol = self.ctx.symbol(params)
        leverage = parse_leverage(params.get("leverage"))
        allowed = self.exchange.set_leverage(symbol, leverage)
        self.ctx.log.info("leverage_changed", symbol=symbol, leverage=leverage)
        return {"leverage": leverage, "maxNotionalValue": str(allowed), "symbol": symbol}

    async def leverage_bracket(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/leverageBracket: one object for a symbol, else a list of every symbol's."""
        if params.get("symbol"):
            return symbol_brackets(self.ctx.symbol(params))
        return [symbol_brackets(symbol) for symbol in sorted(self.exchange.specs)]

    async def commission_rate(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/commissionRate."""
        symbol = self.ctx.symbol(params)
        return commission_rates(symbol, self.exchange.MAKER_FEE, self.exchange.TAKER_FEE)

    async def order_rate_limits(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/rateLimit/order: the account's order limits, Binance `rateLimits` rows (the
        simulator's configured limits, the ones it enforces with -1015)."""
        limits = self.ctx.limits
        return [
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": limits.orders_10s_limit},
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": limits.orders_1m_limit},
        ]

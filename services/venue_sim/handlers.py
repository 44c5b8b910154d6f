"""HTTP and WebSocket entrypoints: Binance USD-M REST, market/user streams, and the `/_sim` control API.

When the simulated market is spot, the public spot REST endpoints (`/api/v3/...`) are served as
well; orders stay on the USD-M paths (the simulator has no spot order API).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from libs.binance import signing
from services.venue_sim.domain import BinanceError, BookHistoryError, Exchange, FaultError, FaultScheduler, fmt
from services.venue_sim.domain.clock import MarketClock
from services.venue_sim.domain.limits import (
    ORDER_LIMIT_1M,
    ORDER_LIMIT_10S,
    WEIGHT_LIMIT_1M,
    UsageLimits,
    depth_weight,
    spot_depth_weight,
)
from services.venue_sim.engine import MarketEngine, Subscriber

DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
STREAM_NAME = re.compile(
    r"^[a-z0-9]+@(depth(@0ms|@100ms|@250ms|@500ms)?|aggTrade|trade|markPrice(@1s)?|forceOrder|bookTicker)$"
)
Handler = Callable[[web.Request, dict[str, str]], Awaitable[Any]]
INTERNAL_ERROR_MSG = "Internal error; unable to process your request. Please try again."


@dataclass(frozen=True)
class Endpoint:
    """One REST endpoint: its handler, weight, security and whether it places orders."""

    handler: Handler
    weight: Callable[[dict[str, str]], int]
    security: str = "NONE"  # NONE, USER_STREAM (API key only), SIGNED
    places_order: bool = False


class _Timeout(Exception):
    """The order-timeout faults: the answer must never come in time."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(delay_s)
        self.delay_s = delay_s


class VenueSimulator:
    """The whole simulator behind one aiohttp application."""

    def __init__(
        self,
        engine: MarketEngine,
        exchange: Exchange,
        faults: FaultScheduler,
        market_clock: MarketClock,
        clock: Callable[[], int],
        api_key: str,
        api_secret: str,
        log: Any,
        source_description: str = "",
    ) -> None:
        self.engine = engine
        self.exchange = exchange
        self.faults = faults
        self.market_clock = market_clock
        self.clock = clock
        self.api_key = api_key
        self.api_secret = api_secret
        self.log = log
        self.source_description = source_description
        self.limits = UsageLimits(clock)
        self.routes: dict[tuple[str, str], Endpoint] = {}
        self._register()

    def now_ms(self) -> int:
        """Wall clock in ms."""
        return self.clock() // 1_000_000

    def venue_now_ms(self) -> int:
        """The venue's own clock in ms: the wall clock, shifted while a `clock_skew` fault is active."""
        skew = self.faults.active("clock_skew") if self.faults.faults else None
        return self.now_ms() + (skew.params["offset_ms"] if skew is not None else 0)

    # ================================================================= app
    def build_app(self) -> web.Application:
        """The aiohttp application with every route and the fault/weight middleware."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/_sim/state", self.sim_state)
        app.router.add_post("/_sim/pause", self.sim_pause)
        app.router.add_post("/_sim/resume", self.sim_resume)
        app.router.add_get("/_sim/book/{symbol}", self.sim_book)
        app.router.add_get("/_sim/faults", self.sim_faults_list)
        app.router.add_post("/_sim/faults", self.sim_faults_add)
        app.router.add_delete("/_sim/faults", self.sim_faults_clear)
        app.router.add_delete("/_sim/faults/{fault_id}", self.sim_faults_delete)
        app.router.add_get("/stream", self.ws_market)
        app.router.add_get("/ws", self.ws_market)
        app.router.add_get("/ws/{name:.*}", self.ws_market)
        app.router.add_route("*", "/{path:fapi/.*}", self.rest)
        if self.engine.spot:
            app.router.add_route("*", "/{path:api/.*}", self.rest)

        async def on_startup(_: web.Application) -> None:
            self.engine.start()

        async def on_cleanup(_: web.Application) -> None:
            await self.engine.stop()

        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith("/_sim"):
            try:
                return await handler(request)
            except web.HTTPException:
                raise
            except Exception as exc:  # noqa: BLE001 - the control API answers every request; logged
                self.log.error("sim_control_failed", path=request.path, error=repr(exc))
                return web.json_response({"error": f"internal error: {exc!r}"}, status=500)
        if self.faults.faults:
            symbol = request.query.get("symbol")
            if self.faults.take("refuse_connections", symbol):
                if request.transport is not None:
                    request.transport.abort()
                # The TCP connection is already gone; this answer is never written.
                return web.Response(status=503)
            latency = self.faults.take("latency", symbol)
            if latency is not None:
                await asyncio.sleep(latency.params["ms"] / 1000)
            if request.path.startswith(("/ws", "/stream")):
                if self.faults.active("outage"):
                    return web.Response(status=503, text="Service Unavailable")
                return await handler(request)
            if self.faults.active("outage", symbol) or self.faults.active("rest_outage", symbol):
                return self._error(BinanceError(503, -1001, "Service unavailable (simulated outage)."))
            response = self._http_fault(symbol)
            if response is not None:
                return response
        return await handler(request)

    def _http_fault(self, symbol: str | None) -> web.Response | None:
        fault = self.faults.take("http_429", symbol)
        if fault is not None:
            response = self._error(BinanceError(429, -1003, "Too many requests; current request has limited."))
            response.headers["Retry-After"] = str(fault.params["retry_after_s"])
            response.headers["X-MBX-USED-WEIGHT-1M"] = str(max(self.limits.weight.current(), WEIGHT_LIMIT_1M + 1))
            return response
        fault = self.faults.take("http_418", symbol)
        if fault is not None:
            until = self.now_ms() + fault.params["retry_after_s"] * 1000
            response = self._error(
                BinanceError(
                    418,
                    -1003,
                    f"Way too many requests; IP banned until {until}. "
                    "Please use the websocket for live updates to avoid bans.",
                )
            )
            response.headers["Retry-After"] = str(fault.params["retry_after_s"])
            response.headers["X-MBX-USED-WEIGHT-1M"] = str(max(self.limits.weight.current(), WEIGHT_LIMIT_1M + 1))
            return response
        fault = self.faults.take("http_5xx", symbol)
        if fault is not None:
            return self._error(
                BinanceError(
                    fault.params["status"], -1001, "Internal error; unable to process your request. Please try again."
                )
            )
        return None

    @staticmethod
    def _error(error: BinanceError) -> web.Response:
        return web.json_response(error.body(), status=error.status)

    # ================================================================= REST dispatch
    async def rest(self, request: web.Request) -> web.StreamResponse:
        """Every `/fapi/...` (spot: also `/api/...`) request: parse, authenticate, count weight, dispatch, answer."""
        endpoint = self.routes.get((request.method, request.path))
        if endpoint is None:
            known = any(path == request.path for _, path in self.routes)
            status = 405 if known else 404
            return web.json_response(
                {"code": -1000 if known else -5000, "msg": f"{request.method} {request.path} is invalid."},
                status=status,
            )
        body = ""
        if request.can_read_body:
            body = (await request.read()).decode("utf-8", errors="replace")
        params: dict[str, str] = dict(request.query)
        if body and request.content_type in ("application/x-www-form-urlencoded", "", "text/plain"):
            from urllib.parse import parse_qsl

            params.update(parse_qsl(body, keep_blank_values=True))
        headers: dict[str, str] = {}
        try:
            weight = endpoint.weight(params)
            used = self.limits.weight.add(weight)
            headers["X-MBX-USED-WEIGHT-1M"] = str(used)
            if used > WEIGHT_LIMIT_1M:
                raise BinanceError(
                    429,
                    -1003,
                    f"Too much request weight used; current limit is {WEIGHT_LIMIT_1M} request weight per 1 MINUTE. "
                    "Please use the websocket for live updates to avoid polling the API.",
                )
            if endpoint.security != "NONE":
                self._authenticate(request, body, params, signed=endpoint.security == "SIGNED")
            if endpoint.places_order:
                count_10s = self.limits.orders_10s.add(1)
                count_1m = self.limits.orders_1m.add(1)
                headers["X-MBX-ORDER-COUNT-10S"] = str(count_10s)
                headers["X-MBX-ORDER-COUNT-1M"] = str(count_1m)
                if count_10s > ORDER_LIMIT_10S or count_1m > ORDER_LIMIT_1M:
                    raise BinanceError(429, -1015, "Too many new orders.")
            result = await endpoint.handler(request, params)
            self.engine.flush_user_events()
            return web.json_response(result, headers=headers, dumps=_dumps)
        except BinanceError as error:
            self.engine.flush_user_events()
            return web.json_response(error.body(), status=error.status, headers=headers)
        except _Timeout as timeout:
            await asyncio.sleep(timeout.delay_s)
            return web.json_response(
                {
                    "code": -1007,
                    "msg": "Timeout waiting for response from backend server. Send status unknown; "
                    "execution status unknown.",
                },
                status=503,
                headers=headers,
            )
        except (ValueError, KeyError, ArithmeticError) as exc:
            self.log.warning("rest_bad_request", path=request.path, error=repr(exc))
            return web.json_response(
                {"code": -1100, "msg": f"Illegal characters found in a parameter: {exc}"}, status=400, headers=headers
            )
        except Exception as exc:  # noqa: BLE001 - never crash on a request: Binance's unknown-error answer, logged
            self.log.error("rest_unexpected_error", path=request.path, error=repr(exc))
            return web.json_response(
                {"code": -1000, "msg": "An unknown error occurred while processing the request."},
                status=500,
                headers=headers,
            )

    def _authenticate(self, request: web.Request, body: str, params: dict[str, str], *, signed: bool) -> None:
        key = request.headers.get("X-MBX-APIKEY")
        if not key:
            raise BinanceError(401, -2014, "API-key format invalid.")
        if key != self.api_key:
            raise BinanceError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        if not signed:
            return
        query_payload, query_signature = signing.split_signature(request.rel_url.raw_query_string)
        body_payload, body_signature = signing.split_signature(body)
        signature = query_signature or body_signature
        if not signature:
            raise BinanceError(
                400, -1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed."
            )
        if not signing.verify(signing.total_params(query_payload, body_payload), signature, self.api_secret):
            raise BinanceError(400, -1022, "Signature for this request is not valid.")
        raw_timestamp = params.get("timestamp")
        if not raw_timestamp:
            raise BinanceError(
                400, -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."
            )
        try:
            timestamp = int(raw_timestamp)
            recv_window = int(params.get("recvWindow") or 5000)
        except ValueError as exc:
            raise BinanceError(
                400, -1100, "Illegal characters found in parameter 'timestamp'; legal range is '^[0-9]{1,20}$'."
            ) from exc
        if recv_window <= 0 or recv_window > 60000:
            raise BinanceError(400, -1131, "recvWindow must be less than 60000")
        now = self.venue_now_ms()
        if timestamp > now + 1000:
            raise BinanceError(400, -1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now - timestamp > recv_window:
            raise BinanceError(400, -1021, "Timestamp for this request is outside of the recvWindow.")

    def _register(self) -> None:
        def one(_: dict[str, str]) -> int:
            return 1

        def by_symbol(with_symbol: int, without: int) -> Callable[[dict[str, str]], int]:
            return lambda params: with_symbol if params.get("symbol") else without

        def depth(params: dict[str, str]) -> int:
            try:
                return depth_weight(int(params.get("limit") or 500))
            except ValueError:
                return 2

        table: dict[tuple[str, str], Endpoint] = {
            ("GET", "/fapi/v1/ping"): Endpoint(self.ping, one),
            ("GET", "/fapi/v1/time"): Endpoint(self.server_time, one),
            ("GET", "/fapi/v1/exchangeInfo"): Endpoint(self.exchange_info, one),
            ("GET", "/fapi/v1/depth"): Endpoint(self.depth, depth),
            ("GET", "/fapi/v1/premiumIndex"): Endpoint(self.premium_index, by_symbol(1, 10)),
            ("GET", "/fapi/v1/openInterest"): Endpoint(self.open_interest, one),
            ("GET", "/fapi/v1/ticker/price"): Endpoint(self.ticker_price, by_symbol(1, 2)),
            ("GET", "/fapi/v2/ticker/price"): Endpoint(self.ticker_price, by_symbol(1, 2)),
            ("GET", "/fapi/v1/ticker/bookTicker"): Endpoint(self.book_ticker, by_symbol(2, 5)),
            ("GET", "/fapi/v1/aggTrades"): Endpoint(self.agg_trades, lambda _: 20),
            ("POST", "/fapi/v1/order"): Endpoint(self.new_order, lambda _: 0, "SIGNED", places_order=True),
            ("DELETE", "/fapi/v1/order"): Endpoint(self.cancel_order, one, "SIGNED"),
            ("GET", "/fapi/v1/order"): Endpoint(self.query_order, one, "SIGNED"),
            ("GET", "/fapi/v1/openOrders"): Endpoint(self.open_orders, by_symbol(1, 40), "SIGNED"),
            ("DELETE", "/fapi/v1/allOpenOrders"): Endpoint(self.cancel_all, one, "SIGNED"),
            ("GET", "/fapi/v1/userTrades"): Endpoint(self.user_trades, lambda _: 5, "SIGNED"),
            ("POST", "/fapi/v1/countdownCancelAll"): Endpoint(self.countdown_cancel_all, lambda _: 10, "SIGNED"),
            ("POST", "/fapi/v1/leverage"): Endpoint(self.leverage, one, "SIGNED"),
            ("GET", "/fapi/v1/positionSide/dual"): Endpoint(self.position_mode, lambda _: 30, "SIGNED"),
            ("POST", "/fapi/v1/listenKey"): Endpoint(self.listen_key_new, one, "USER_STREAM"),
            ("PUT", "/fapi/v1/listenKey"): Endpoint(self.listen_key_keepalive, one, "USER_STREAM"),
            ("DELETE", "/fapi/v1/listenKey"): Endpoint(self.listen_key_close, one, "USER_STREAM"),
        }
        for version in ("v2", "v3"):
            table[("GET", f"/fapi/{version}/positionRisk")] = Endpoint(self.position_risk, lambda _: 5, "SIGNED")
            table[("GET", f"/fapi/{version}/balance")] = Endpoint(self.balance, lambda _: 5, "SIGNED")
            table[("GET", f"/fapi/{version}/account")] = Endpoint(self.account, lambda _: 5, "SIGNED")
        if self.engine.spot:

            def spot_depth(params: dict[str, str]) -> int:
                try:
                    return spot_depth_weight(int(params.get("limit") or 100))
                except ValueError:
                    return 5

            table.update(
                {
                    ("GET", "/api/v3/ping"): Endpoint(self.ping, one),
                    ("GET", "/api/v3/time"): Endpoint(self.server_time, one),
                    ("GET", "/api/v3/exchangeInfo"): Endpoint(self.spot_exchange_info, lambda _: 20),
                    ("GET", "/api/v3/depth"): Endpoint(self.spot_depth, spot_depth),
                    ("GET", "/api/v3/ticker/price"): Endpoint(self.spot_ticker_price, by_symbol(2, 4)),
                    ("GET", "/api/v3/ticker/bookTicker"): Endpoint(self.spot_book_ticker, by_symbol(2, 4)),
                    ("GET", "/api/v3/aggTrades"): Endpoint(self.agg_trades, lambda _: 2),
                    ("GET", "/api/v3/trades"): Endpoint(self.spot_trades, lambda _: 25),
                    ("GET", "/api/v3/historicalTrades"): Endpoint(self.spot_trades, lambda _: 25),
                }
            )
        self.routes = table

    # ================================================================= public REST
    async def ping(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/ping."""
        return {}

    async def server_time(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/time."""
        return {"serverTime": self.venue_now_ms()}

    async def exchange_info(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/exchangeInfo."""
        symbols = []
        for spec in sorted(self.exchange.specs.values(), key=lambda s: s.symbol):
            symbols.append(
                {
                    "symbol": spec.symbol,
                    "pair": spec.symbol,
                    "contractType": "PERPETUAL",
                    "deliveryDate": 4133404800000,
                    "onboardDate": 1569398400000,
                    "status": "TRADING",
                    "maintMarginPercent": "2.5000",
                    "requiredMarginPercent": "5.0000",
                    "baseAsset": spec.base_asset,
                    "quoteAsset": spec.quote_asset,
                    "marginAsset": spec.quote_asset,
                    "pricePrecision": spec.price_precision,
                    "quantityPrecision": spec.quantity_precision,
                    "baseAssetPrecision": 8,
                    "quotePrecision": 8,
                    "underlyingType": "COIN",
                    "underlyingSubType": [],
                    "triggerProtect": "0.0500",
                    "liquidationFee": "0.012500",
                    "marketTakeBound": "0.05",
                    "maxMoveOrderLimit": 10000,
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": fmt(spec.tick_size),
                            "maxPrice": "4529764",
                            "tickSize": fmt(spec.tick_size),
                        },
                        {
                            "filterType": "LOT_SIZE",
                            "minQty": fmt(spec.min_qty),
                            "maxQty": fmt(spec.max_qty),
                            "stepSize": fmt(spec.step_size),
                        },
                        {
                            "filterType": "MARKET_LOT_SIZE",
                            "minQty": fmt(spec.min_qty),
                            "maxQty": fmt(spec.max_qty),
                            "stepSize": fmt(spec.step_size),
                        },
                        {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                        {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                        {"filterType": "MIN_NOTIONAL", "notional": fmt(spec.min_notional)},
                        {
                            "filterType": "PERCENT_PRICE",
                            "multiplierUp": "1.0500",
                            "multiplierDown": "0.9500",
                            "multiplierDecimal": "4",
                        },
                    ],
                    "orderTypes": ["LIMIT", "MARKET", "STOP_MARKET"],
                    "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
                }
            )
        return {
            "timezone": "UTC",
            "serverTime": self.now_ms(),
            "futuresType": "U_MARGINED",
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": WEIGHT_LIMIT_1M},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": ORDER_LIMIT_1M},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": ORDER_LIMIT_10S},
            ],
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
            "symbols": symbols,
        }

    def _symbol(self, params: Mapping[str, str]) -> str:
        return self.exchange.spec(params.get("symbol")).symbol

    async def depth(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/depth — the true book with its current lastUpdateId."""
        symbol = self._symbol(params)
        raw = params.get("limit") or "500"
        if not raw.isdigit() or int(raw) not in DEPTH_LIMITS:
            raise BinanceError(
                400,
                -1100,
                "Illegal characters found in parameter 'limit'; legal range is '5, 10, 20, 50, 100, 500, 1000'.",
            )
        limit = int(raw)
        book = self.engine.books[symbol]
        now = self.now_ms()
        return {
            "lastUpdateId": book.last_update_id,
            "E": now,
            "T": now,
            "bids": [[str(p), str(q)] for p, q in book.top_bids(limit)],
            "asks": [[str(p), str(q)] for p, q in book.top_asks(limit)],
        }

    def _premium(self, symbol: str) -> dict[str, Any]:
        market = self.engine.markets[symbol]
        mark = self.engine.mark_of(symbol)
        index = market.index_price if market.index_price is not None else mark
        return {
            "symbol": symbol,
            "markPrice": fmt(mark, 8),
            "indexPrice": fmt(index, 8),
            "estimatedSettlePrice": fmt(mark, 8),
            "lastFundingRate": fmt(market.funding_rate, 8),
            "interestRate": "0.00010000",
            "nextFundingTime": self.engine.next_funding_ms(),
            "time": self.now_ms(),
        }

    async def premium_index(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/premiumIndex."""
        if params.get("symbol"):
            return self._premium(self._symbol(params))
        return [self._premium(s) for s in sorted(self.engine.books)]

    async def open_interest(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/openInterest."""
        symbol = self._symbol(params)
        spec = self.exchange.specs[symbol]
        return {
            "openInterest": fmt(self.engine.markets[symbol].open_interest, spec.quantity_precision),
            "symbol": symbol,
            "time": self.now_ms(),
        }

    def _price(self, symbol: str) -> dict[str, Any]:
        market = self.engine.markets[symbol]
        price = market.last_price if market.last_price is not None else self.engine.mark_of(symbol)
        return {"symbol": symbol, "price": fmt(price), "time": self.now_ms()}

    async def ticker_price(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/ticker/price."""
        if params.get("symbol"):
            return self._price(self._symbol(params))
        return [self._price(s) for s in sorted(self.engine.books)]

    def _book_ticker(self, symbol: str) -> dict[str, Any]:
        book = self.engine.books[symbol]
        bid, ask = book.best_bid(), book.best_ask()
        zero = (Decimal(0), Decimal(0))
        bid, ask = bid or zero, ask or zero
        now = self.now_ms()
        return {
            "symbol": symbol,
            "bidPrice": str(bid[0]),
            "bidQty": str(bid[1]),
            "askPrice": str(ask[0]),
            "askQty": str(ask[1]),
            "time": now,
            "lastUpdateId": book.last_update_id,
        }

    async def agg_trades(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/aggTrades — the recent aggregate trades, from `fromId` on when given."""
        symbol = self._symbol(params)
        limit = _bounded_int(params, "limit", 500, 1, 1000)
        rows = list(self.engine.markets[symbol].agg_history)
        if "fromId" in params:
            from_id = _bounded_int(params, "fromId", 0, 0, 2**62)
            rows = [row for row in rows if row["a"] >= from_id][:limit]
        else:
            rows = rows[-limit:]
        return rows

    # ================================================================= public REST, spot
    async def spot_exchange_info(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /api/v3/exchangeInfo: the symbols and their price and lot filters."""
        symbols = [
            {
                "symbol": spec.symbol,
                "status": "TRADING",
                "baseAsset": spec.base_asset,
                "quoteAsset": spec.symbol[len(spec.base_asset) :],
                "filters": [
                    {"filterType": "PRICE_FILTER", "tickSize": fmt(spec.tick_size)},
                    {"filterType": "LOT_SIZE", "minQty": fmt(spec.min_qty), "stepSize": fmt(spec.step_size)},
                ],
            }
            for spec in sorted(self.exchange.specs.values(), key=lambda s: s.symbol)
        ]
        return {"timezone": "UTC", "serverTime": self.now_ms(), "symbols": symbols}

    async def spot_depth(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /api/v3/depth — the true book with its current lastUpdateId (spot: limit 1-5000, default 100)."""
        symbol = self._symbol(params)
        limit = _bounded_int(params, "limit", 100, 1, 5000)
        book = self.engine.books[symbol]
        return {
            "lastUpdateId": book.last_update_id,
            "bids": [[str(p), str(q)] for p, q in book.top_bids(limit)],
            "asks": [[str(p), str(q)] for p, q in book.top_asks(limit)],
        }

    async def spot_ticker_price(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /api/v3/ticker/price: `{"symbol", "price"}`."""
        if params.get("symbol"):
            symbols = [self._symbol(params)]
        else:
            symbols = sorted(self.engine.books)
        rows = [{"symbol": row["symbol"], "price": row["price"]} for row in map(self._price, symbols)]
        return rows[0] if params.get("symbol") else rows

    async def spot_book_ticker(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /api/v3/ticker/bookTicker."""
        keys = ("symbol", "bidPrice", "bidQty", "askPrice", "askQty")
        if params.get("symbol"):
            row = self._book_ticker(self._symbol(params))
            return {key: row[key] for key in keys}
        return [{key: row[key] for key in keys} for row in map(self._book_ticker, sorted(self.engine.books))]

    async def spot_trades(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /api/v3/trades and /api/v3/historicalTrades — recent trades, from `fromId` on when given."""
        symbol = self._symbol(params)
        limit = _bounded_int(params, "limit", 500, 1, 1000)
        rows = list(self.engine.markets[symbol].trade_history)
        if "fromId" in params:
            from_id = _bounded_int(params, "fromId", 0, 0, 2**62)
            return [row for row in rows if row["id"] >= from_id][:limit]
        return rows[-limit:]

    async def book_ticker(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/ticker/bookTicker."""
        if params.get("symbol"):
            return self._book_ticker(self._symbol(params))
        return [self._book_ticker(s) for s in sorted(self.engine.books)]

    # ================================================================= signed REST
    async def new_order(self, request: web.Request, params: dict[str, str]) -> Any:
        """POST /fapi/v1/order, under the order faults."""
        symbol = params.get("symbol")
        if self.faults.faults:
            fault = self.faults.take("order_reject", symbol)
            if fault is not None:
                raise BinanceError(fault.params["status"], fault.params["code"], fault.params["msg"])
            server_error = self.faults.take("order_http_5xx", symbol)
            if server_error is not None and not server_error.params["placed"]:
                self.log.warning("fault_order_http_5xx", placed=False, fault=server_error.id)
                raise BinanceError(server_error.params["status"], -1001, INTERNAL_ERROR_MSG)
            fault = self.faults.take("order_timeout_not_placed", symbol)
            if fault is not None:
                self.log.warning("fault_order_timeout", placed=False, fault=fault.id)
                raise _Timeout(fault.params["ms"] / 1000)
            timeout = self.faults.take("order_timeout_placed", symbol)
            partial = self.faults.take("partial_fill", symbol)
            delayed = self.faults.take("delayed_fill", symbol)
        else:
            timeout = partial = delayed = server_error = None
        order, ack = self.exchange.place_order(
            params,
            fill_ratio=Decimal(partial.params["ratio"]) if partial else None,
            defer_fill=delayed is not None,
        )
        self.log.info(
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
            self.log.warning("fault_order_http_5xx", placed=True, fault=server_error.id, order_id=order.order_id)
            raise BinanceError(server_error.params["status"], -1001, INTERNAL_ERROR_MSG)
        if timeout is not None:
            self.engine.flush_user_events()
            self.log.warning("fault_order_timeout", placed=True, fault=timeout.id, order_id=order.order_id)
            raise _Timeout(timeout.params["ms"] / 1000)
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
        symbol = self._symbol(params) if params.get("symbol") else None
        return [self.exchange.order_view(o) for o in self.exchange.open_orders(symbol)]

    async def cancel_all(self, request: web.Request, params: dict[str, str]) -> Any:
        """DELETE /fapi/v1/allOpenOrders."""
        self.exchange.cancel_all(self._symbol(params))
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    async def user_trades(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/userTrades."""
        return self.exchange.user_trade_views(params)

    async def position_risk(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v2/positionRisk."""
        symbol = self._symbol(params) if params.get("symbol") else None
        return self.exchange.position_views(symbol)

    async def balance(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v2/balance."""
        return self.exchange.balance_views()

    async def account(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v2/account."""
        return self.exchange.account_view()

    async def countdown_cancel_all(self, request: web.Request, params: dict[str, str]) -> Any:
        """POST /fapi/v1/countdownCancelAll (dead-man's switch)."""
        symbol = self._symbol(params)
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

    async def leverage(self, request: web.Request, params: dict[str, str]) -> Any:
        """POST /fapi/v1/leverage (accepted; the simulator keeps 20x)."""
        symbol = self._symbol(params)
        return {"leverage": int(params.get("leverage") or 20), "maxNotionalValue": "250000", "symbol": symbol}

    async def position_mode(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/positionSide/dual: one-way mode."""
        return {"dualSidePosition": False}

    async def listen_key_new(self, request: web.Request, params: dict[str, str]) -> Any:
        """POST /fapi/v1/listenKey: the active key is returned again, as Binance does."""
        for key in self.engine.listen_keys:
            self.engine.listen_keys[key] = self.now_ms() + 3_600_000
            return {"listenKey": key}
        key = secrets.token_urlsafe(48)[:64]
        self.engine.listen_keys[key] = self.now_ms() + 3_600_000
        return {"listenKey": key}

    async def listen_key_keepalive(self, request: web.Request, params: dict[str, str]) -> Any:
        """PUT /fapi/v1/listenKey."""
        if not self.engine.listen_keys:
            raise BinanceError(400, -1125, "This listenKey does not exist.")
        for key in self.engine.listen_keys:
            self.engine.listen_keys[key] = self.now_ms() + 3_600_000
        return {"listenKey": next(iter(self.engine.listen_keys))}

    async def listen_key_close(self, request: web.Request, params: dict[str, str]) -> Any:
        """DELETE /fapi/v1/listenKey: closes the user streams."""
        self.engine.listen_keys.clear()
        for subscriber in list(self.engine.user_connections):
            await subscriber.ws.close(code=1000, message=b"listenKey closed")
        return {}

    # ================================================================= WebSocket
    async def ws_market(self, request: web.Request) -> web.StreamResponse:
        """`/stream?streams=a/b` (combined), `/ws/<stream>` (raw) and `/ws/<listenKey>` (user data)."""
        name = request.match_info.get("name", "")
        combined = request.path.startswith("/stream")
        listen_key = name if name in self.engine.listen_keys else None
        streams: list[str] = []
        if combined:
            streams = [s for s in request.query.get("streams", "").split("/") if s]
        elif name and listen_key is None:
            streams = [s for s in name.split("/") if s]
        invalid = [s for s in streams if not STREAM_NAME.match(s)]
        if invalid or len(streams) > 200:
            return web.json_response({"code": -1121, "msg": f"Invalid stream name(s): {invalid[:5]}"}, status=400)
        if self.faults.faults and self.faults.active("ws_close") and self.faults.active("ws_close").duration_s:  # type: ignore[union-attr]
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        subscriber = Subscriber(ws, combined=combined or not name, listen_key=listen_key)
        self.engine.connections.add(subscriber)
        if listen_key is not None:
            self.engine.user_connections.add(subscriber)
        self.engine.subscribe(subscriber, streams)
        sender = asyncio.create_task(subscriber.run_sender())
        self.log.info("ws_connected", streams=streams[:10], user_stream=listen_key is not None)
        try:
            async for message in ws:
                if message.type == WSMsgType.PING:
                    if not self.engine.is_stalled(subscriber):
                        await ws.pong(message.data)
                elif message.type == WSMsgType.TEXT:
                    reply = self._ws_command(subscriber, message.data)
                    if reply is not None and not self.engine.is_stalled(subscriber):
                        await ws.send_str(reply)
                elif message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            subscriber.closed = True
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            self.engine.unsubscribe(subscriber)
            self.engine.connections.discard(subscriber)
            self.engine.user_connections.discard(subscriber)
        return ws

    def _ws_command(self, subscriber: Subscriber, text: str) -> str | None:
        try:
            command = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return _dumps({"error": {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}})
        if not isinstance(command, dict):
            return _dumps({"error": {"code": 2, "msg": "Invalid request: request must be an object"}})
        request_id = command.get("id")
        method = command.get("method")
        params = command.get("params", [])
        if not isinstance(request_id, int | str) or isinstance(request_id, bool):
            return _dumps({"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}})
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) and STREAM_NAME.match(p) for p in params):
                return _dumps(
                    {"error": {"code": 2, "msg": "Invalid request: invalid stream name in params"}, "id": request_id}
                )
            if method == "SUBSCRIBE":
                self.engine.subscribe(subscriber, params)
            else:
                self.engine.unsubscribe(subscriber, params)
            return _dumps({"result": None, "id": request_id})
        if method == "LIST_SUBSCRIPTIONS":
            return _dumps({"result": sorted(subscriber.streams), "id": request_id})
        return _dumps({"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": request_id})

    # ================================================================= /_sim control
    async def sim_state(self, request: web.Request) -> web.Response:
        """GET /_sim/state."""
        state = self.exchange.state_view()
        state["books"] = {
            symbol: {
                "last_update_id": book.last_update_id,
                "best_bid": fmt(book.best_bid()[0]) if book.best_bid() else None,  # type: ignore[index]
                "best_ask": fmt(book.best_ask()[0]) if book.best_ask() else None,  # type: ignore[index]
                "mark_price": fmt(self.engine.mark_of(symbol)),
                "open_interest": fmt(self.engine.markets[symbol].open_interest),
            }
            for symbol, book in self.engine.books.items()
        }
        state["market"] = self.engine.market
        state["paused"] = self.market_clock.paused
        state["source"] = self.source_description
        state["messages_published"] = self.engine.messages_published
        state["connections"] = len(self.engine.connections)
        return web.json_response(state)

    async def sim_pause(self, request: web.Request) -> web.Response:
        """POST /_sim/pause."""
        self.market_clock.pause()
        self.log.info("market_paused")
        return web.json_response({"paused": True})

    async def sim_resume(self, request: web.Request) -> web.Response:
        """POST /_sim/resume."""
        self.market_clock.resume()
        self.log.info("market_resumed")
        return web.json_response({"paused": False})

    async def sim_book(self, request: web.Request) -> web.Response:
        """GET /_sim/book/{symbol}?depth=N&update_id=L — the true book, now or right after update L."""
        symbol = request.match_info["symbol"].upper()
        book = self.engine.books.get(symbol)
        if book is None:
            return web.json_response({"error": f"unknown symbol {symbol}"}, status=404)
        try:
            depth = int(request.query.get("depth", "50"))
            update_id = int(request.query["update_id"]) if "update_id" in request.query else None
        except ValueError:
            return web.json_response({"error": "depth and update_id must be integers"}, status=400)
        if depth < 1:
            return web.json_response({"error": "depth must be >= 1"}, status=400)
        if update_id is None:
            last, bids, asks = book.last_update_id, book.top_bids(depth), book.top_asks(depth)
        else:
            if depth > 50:
                return web.json_response({"error": "history keeps 50 levels per side: depth must be <= 50"}, status=400)
            try:
                state = book.state_at(update_id)
            except BookHistoryError as exc:
                return web.json_response({"error": str(exc.args[0])}, status=404)
            last, bids, asks = state.last_update_id, list(state.bids[:depth]), list(state.asks[:depth])
        return web.json_response(
            {
                "symbol": symbol,
                "last_update_id": last,
                "bids": [[str(p), str(q)] for p, q in bids],
                "asks": [[str(p), str(q)] for p, q in asks],
            }
        )

    async def sim_faults_list(self, request: web.Request) -> web.Response:
        """GET /_sim/faults."""
        return web.json_response({"faults": self.faults.views()})

    async def sim_faults_add(self, request: web.Request) -> web.Response:
        """POST /_sim/faults."""
        try:
            spec = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as exc:
            return web.json_response({"error": f"body is not valid JSON: {exc}"}, status=400)
        if isinstance(spec, dict) and spec.get("kind") == "price_shift" and not self.engine.can_move_prices:
            return web.json_response(
                {"error": "price_shift needs a synthetic market (a replay's recorded prices cannot move)"}, status=400
            )
        try:
            fault = self.faults.add(spec)
        except FaultError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.log.warning("fault_scheduled", **{k: v for k, v in fault.view(self.clock()).items() if k != "params"})
        await self.engine.check_connection_faults()
        return web.json_response({"id": fault.id})

    async def sim_faults_clear(self, request: web.Request) -> web.Response:
        """DELETE /_sim/faults."""
        removed = self.faults.clear()
        self.log.info("faults_cleared", count=removed)
        return web.json_response({"deleted": removed})

    async def sim_faults_delete(self, request: web.Request) -> web.Response:
        """DELETE /_sim/faults/{id}."""
        fault_id = request.match_info["fault_id"]
        if not self.faults.remove(fault_id):
            return web.json_response({"error": f"no fault {fault_id}"}, status=404)
        return web.json_response({"deleted": 1})


def _dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def wall_clock() -> int:
    """The real clock (ns) — only main wires it in."""
    return time.time_ns()


def _bounded_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], or Binance's -1100 answer."""
    raw = params.get(name) or str(default)
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BinanceError(
            400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '{low}, {high}'."
        )
    return int(raw)

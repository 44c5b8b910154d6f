"""Public REST of the simulated market: USD-M `/fapi` market data (time, exchangeInfo, depth,
premium index, open interest, tickers, aggregate trades) and, for a spot market, the public spot
`/api/v3` endpoints, all read from the true books and the market feed."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from aiohttp import web

from services.venue_sim.domain import BinanceError, fmt
from services.venue_sim.domain.klines import Candle
from services.venue_sim.domain.limits import depth_weight, spot_depth_weight
from services.venue_sim.routes.context import Endpoint, RouteGroup, Routes, bounded_int, by_symbol, fixed, one

DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)


def _depth_weight(params: dict[str, str]) -> int:
    try:
        return depth_weight(int(params.get("limit") or 500))
    except ValueError:
        return 2


def _spot_depth_weight(params: dict[str, str]) -> int:
    try:
        return spot_depth_weight(int(params.get("limit") or 100))
    except ValueError:
        return 5


def _klines_weight(params: dict[str, str]) -> int:
    """Request weight of GET /fapi/v1/klines by limit (Binance USD-M table)."""
    raw = params.get("limit") or "500"
    limit = int(raw) if raw.isdigit() else 500
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


def _recent(rows: list[dict[str, Any]], params: dict[str, str], id_key: str) -> list[dict[str, Any]]:
    """The last `limit` rows, or the first `limit` from id `fromId` on when given."""
    limit = bounded_int(params, "limit", 500, 1, 1000)
    if "fromId" in params:
        from_id = bounded_int(params, "fromId", 0, 0, 2**62)
        return [row for row in rows if row[id_key] >= from_id][:limit]
    return rows[-limit:]


class MarketRoutes(RouteGroup):
    """Public market-data endpoints (no key, no signature)."""

    def endpoints(self) -> Routes:
        """The USD-M public endpoints, and the spot ones when the market is spot."""
        table: Routes = {
            ("GET", "/fapi/v1/ping"): Endpoint(self.ping, one),
            ("GET", "/fapi/v1/time"): Endpoint(self.server_time, one),
            ("GET", "/fapi/v1/exchangeInfo"): Endpoint(self.exchange_info, one),
            ("GET", "/fapi/v1/depth"): Endpoint(self.depth, _depth_weight),
            ("GET", "/fapi/v1/premiumIndex"): Endpoint(self.premium_index, by_symbol(1, 10)),
            ("GET", "/fapi/v1/openInterest"): Endpoint(self.open_interest, one),
            ("GET", "/fapi/v1/ticker/price"): Endpoint(self.ticker_price, by_symbol(1, 2)),
            ("GET", "/fapi/v2/ticker/price"): Endpoint(self.ticker_price, by_symbol(1, 2)),
            ("GET", "/fapi/v1/ticker/bookTicker"): Endpoint(self.book_ticker, by_symbol(2, 5)),
            ("GET", "/fapi/v1/aggTrades"): Endpoint(self.agg_trades, fixed(20)),
            ("GET", "/fapi/v1/klines"): Endpoint(self.klines, _klines_weight),
            ("GET", "/fapi/v1/ticker/24hr"): Endpoint(self.ticker_24hr, by_symbol(1, 40)),
        }
        if self.feed.spot:
            table.update(
                {
                    ("GET", "/api/v3/ping"): Endpoint(self.ping, one),
                    ("GET", "/api/v3/time"): Endpoint(self.server_time, one),
                    ("GET", "/api/v3/exchangeInfo"): Endpoint(self.spot_exchange_info, fixed(20)),
                    ("GET", "/api/v3/depth"): Endpoint(self.spot_depth, _spot_depth_weight),
                    ("GET", "/api/v3/ticker/price"): Endpoint(self.spot_ticker_price, by_symbol(2, 4)),
                    ("GET", "/api/v3/ticker/bookTicker"): Endpoint(self.spot_book_ticker, by_symbol(2, 4)),
                    ("GET", "/api/v3/aggTrades"): Endpoint(self.agg_trades, fixed(2)),
                    ("GET", "/api/v3/trades"): Endpoint(self.spot_trades, fixed(25)),
                    ("GET", "/api/v3/historicalTrades"): Endpoint(self.spot_trades, fixed(25)),
                }
            )
        return table

    async def ping(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/ping."""
        return {}

    async def server_time(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/time."""
        return {"serverTime": self.ctx.venue_now_ms()}

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
                        {"filterType": "MIN_NOTIONAL", "notional": fmt(spec.min_notional)},
                        {
                            "filterType": "PERCENT_PRICE",
                            "multiplierUp": fmt(spec.multiplier_up, 4),
                            "multiplierDown": fmt(spec.multiplier_down, 4),
                            "multiplierDecimal": "4",
                        },
                    ],
                    # As Binance lists them; the conditional types go through the Algo Service in
                    # `algo` mode (-4120 on /fapi/v1/order), as on Binance since 2025-12-09.
                    "orderTypes": ["LIMIT", "MARKET", "STOP_MARKET", "TAKE_PROFIT_MARKET"],
                    "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
                }
            )
        limits = self.ctx.limits
        return {
            "timezone": "UTC",
            "serverTime": self.ctx.now_ms(),
            "futuresType": "U_MARGINED",
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": limits.weight_limit,
                },
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": limits.orders_1m_limit},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": limits.orders_10s_limit},
            ],
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
            "symbols": symbols,
        }

    async def depth(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/depth — the true book with its current lastUpdateId."""
        symbol = self.ctx.symbol(params)
        raw = params.get("limit") or "500"
        if not raw.isdigit() or int(raw) not in DEPTH_LIMITS:
            raise BinanceError(
                400,
                -1100,
                "Illegal characters found in parameter 'limit'; legal range is '5, 10, 20, 50, 100, 500, 1000'.",
            )
        limit = int(raw)
        book = self.feed.books[symbol]
        now = self.ctx.now_ms()
        return {
            "lastUpdateId": book.last_update_id,
            "E": now,
            "T": now,
            "bids": [[str(p), str(q)] for p, q in book.top_bids(limit)],
            "asks": [[str(p), str(q)] for p, q in book.top_asks(limit)],
        }

    def _premium(self, symbol: str) -> dict[str, Any]:
        market = self.feed.markets[symbol]
        mark = self.feed.mark_of(symbol)
        index = market.index_price if market.index_price is not None else mark
        return {
            "symbol": symbol,
            "markPrice": fmt(mark, 8),
            "indexPrice": fmt(index, 8),
            "estimatedSettlePrice": fmt(mark, 8),
            "lastFundingRate": fmt(market.funding_rate, 8),
            "interestRate": "0.00010000",
            "nextFundingTime": self.feed.next_funding_ms(),
            "time": self.ctx.now_ms(),
        }

    async def premium_index(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/premiumIndex."""
        if params.get("symbol"):
            return self._premium(self.ctx.symbol(params))
        return [self._premium(s) for s in sorted(self.feed.books)]

    async def open_interest(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/openInterest."""
        symbol = self.ctx.symbol(params)
        spec = self.exchange.specs[symbol]
        return {
            "openInterest": fmt(self.feed.markets[symbol].open_interest, spec.quantity_precision),
            "symbol": symbol,
            "time": self.ctx.now_ms(),
        }

    def _price(self, symbol: str) -> dict[str, Any]:
        market = self.feed.markets[symbol]
        price = market.last_price if market.last_price is not None else self.feed.mark_of(symbol)
        return {"symbol": symbol, "price": fmt(price), "time": self.ctx.now_ms()}

    async def ticker_price(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/ticker/price."""
        if params.get("symbol"):
            return self._price(self.ctx.symbol(params))
        return [self._price(s) for s in sorted(self.feed.books)]

    def _book_ticker(self, symbol: str) -> dict[str, Any]:
        book = self.feed.books[symbol]
        bid, ask = book.best_bid(), book.best_ask()
        zero = (Decimal(0), Decimal(0))
        bid, ask = bid or zero, ask or zero
        now = self.ctx.now_ms()
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
        symbol = self.ctx.symbol(params)
        return _recent(list(self.feed.markets[symbol].agg_history), params, "a")

    async def klines(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/klines — candles of the market's trades (symbol, interval; startTime, endTime, limit)."""
        symbol = self.ctx.symbol(params)
        interval = params.get("interval")
        if not interval:
            raise BinanceError(400, -1102, "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.")
        limit = bounded_int(params, "limit", 500, 1, 1500)
        start = bounded_int(params, "startTime", 0, 0, 2**62) if params.get("startTime") else None
        end = bounded_int(params, "endTime", 0, 0, 2**62) if params.get("endTime") else None
        return self.feed.klines.klines(symbol, interval, self.ctx.now_ms(), start, end, limit)

    def _day(self, symbol: str) -> dict[str, Any]:
        spec = self.exchange.specs[symbol]
        now = self.ctx.now_ms()
        last = self._price(symbol)["price"]
        # No trade in 24 hours: an unchanged day at the last price, no volume.
        day = self.feed.klines.rolling(symbol, now) or Candle(now, *(Decimal(last),) * 4)
        change = day.close - day.open
        return {
            "symbol": symbol,
            "priceChange": fmt(change, spec.price_precision),
            "priceChangePercent": fmt(change / day.open * 100, 3) if day.open else "0",
            "weightedAvgPrice": fmt(day.quote_volume / day.volume, spec.price_precision) if day.volume else last,
            "lastPrice": last,
            "lastQty": "0",
            "openPrice": str(day.open),
            "highPrice": str(day.high),
            "lowPrice": str(day.low),
            "volume": str(day.volume),
            "quoteVolume": str(day.quote_volume),
            "openTime": day.open_ms,
            "closeTime": now,
            "firstId": 0,
            "lastId": self.feed.markets[symbol].last_trade_id,
            "count": day.trades,
        }

    async def ticker_24hr(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/ticker/24hr — the last 24 hours of the market's trades."""
        if params.get("symbol"):
            return self._day(self.ctx.symbol(params))
        return [self._day(s) for s in sorted(self.feed.books)]

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
        return {"timezone": "UTC", "serverTime": self.ctx.now_ms(), "symbols": symbols}

    async def spot_depth(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /api/v3/depth — the true book with its current lastUpdateId (spot: limit 1-5000, default 100)."""
        symbol = self.ctx.symbol(params)
        limit = bounded_int(params, "limit", 100, 1, 5000)
        book = self.feed.books[symbol]
        return {
            "lastUpdateId": book.last_update_id,
            "bids": [[str(p), str(q)] for p, q in book.top_bids(limit)],
            "asks": [[str(p), str(q)] for p, q in book.top_asks(limit)],
        }

    async def spot_ticker_price(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /api/v3/ticker/price: `{"symbol", "price"}`."""
        if params.get("symbol"):
            symbols = [self.ctx.symbol(params)]
        else:
            symbols = sorted(self.feed.books)
        rows = [{"symbol": row["symbol"], "price": row["price"]} for row in map(self._price, symbols)]
        return rows[0] if params.get("symbol") else rows

    async def spot_book_ticker(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /api/v3/ticker/bookTicker."""
        keys = ("symbol", "bidPrice", "bidQty", "askPrice", "askQty")
        if params.get("symbol"):
            row = self._book_ticker(self.ctx.symbol(params))
            return {key: row[key] for key in keys}
        return [{key: row[key] for key in keys} for row in map(self._book_ticker, sorted(self.feed.books))]

    async def spot_trades(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /api/v3/trades and /api/v3/historicalTrades — recent trades, from `fromId` on when given."""
        symbol = self.ctx.symbol(params)
        return _recent(list(self.feed.markets[symbol].trade_history), params, "id")

    async def book_ticker(self, request: web.Request, params: dict[str, str]) -> Any:
        """GET /fapi/v1/ticker/bookTicker."""
        if params.get("symbol"):
            return self._book_ticker(self.ctx.symbol(params))
        return [self._book_ticker(s) for s in sorted(self.feed.books)]

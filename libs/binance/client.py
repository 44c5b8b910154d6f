"""Async REST client of the Binance USD-M futures API (and of the venue simulator speaking it).

The public market-data calls also speak Binance spot (`market="spot"`): the same methods go to
the spot paths (`/api/v3/depth`, `/api/v3/time`, `/api/v3/ticker/price`, `/api/v3/aggTrades`,
`/api/v3/historicalTrades`); see `MARKET_PATHS`. Trading calls are USD-M only.

Every call ends in exactly one of: a decoded JSON answer, `VenueError` (a definite answer),
`VenueUnreachable` (nothing was sent) or `VenueTimeout` (ambiguous). Retrying and circuit
breaking are the caller's business; this client only classifies and reports, so that an order
placement is never silently repeated.

With a `RateBudget` (libs/ratelimit.py) every request first asks the budget, by the endpoint's
priority and weight, and every answer's usage headers, 429s and 418s go back into it (SPEC
FM-N2); without one the client only honours a 418 ban itself, as before. With alternate base
URLs, a request that could not reach the current endpoint (nothing was sent; or, for a GET, no
answer came) is tried on the next one, and the last endpoint that answered is used first from
then on (FM-N3/N4). A `CachingResolver` keeps the last good DNS answer of every host and serves
it when the resolver fails.

Signed endpoints carry `timestamp` and `recvWindow`, and a `signature` over the exact query
string sent (parameters go in the query string for every method, as Binance's own connector
does, so the signed text and the sent text are the same bytes).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from libs.binance.signing import sign
from libs.ratelimit import Priority, RateBudget

__all__ = [
    "MARKETS",
    "MARKET_PATHS",
    "BinanceRestClient",
    "CachingResolver",
    "RequestThrottled",
    "VenueError",
    "VenueTimeout",
    "VenueUnreachable",
    "endpoint_cost",
    "venue_name_for",
]

_decoder = msgspec.json.Decoder()
_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"


class RequestThrottled(VenueError):
    """The client's own budget refused the request (nothing was sent); `retry_after_s` says when to try.

    A `VenueError` with status 429 (418 while a ban is in force), so `classify` calls it
    rate_limited / ip_banned like the venue's own answer.
    """


class CachingResolver(AbstractResolver):
    """DNS resolver that remembers the last good answer per host and serves it when resolving fails (FM-N3).

    Args:
        inner: the resolver doing the lookups (aiohttp's default when None).
    """

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner
        self._cache: dict[tuple[str, int, int], list[ResolveResult]] = {}
        self.fallbacks = 0
        """How many lookups were answered from the cache because the resolver failed."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = DefaultResolver()
        key = (host, port, int(family))
        try:
            result = await self._inner.resolve(host, port, family)
        except OSError:
            cached = self._cache.get(key)
            if cached is None:
                raise
            self.fallbacks += 1
            return list(cached)
        if result:
            self._cache[key] = list(result)
        return result

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


USDM = "usdm"
SPOT = "spot"
MARKETS = (USDM, SPOT)
"""Binance markets whose public market data this client speaks."""

MARKET_PATHS: dict[str, dict[str, str]] = {
    USDM: {
        "ping": "/fapi/v1/ping",
        "time": "/fapi/v1/time",
        "exchange_info": "/fapi/v1/exchangeInfo",
        "depth": "/fapi/v1/depth",
        "ticker_price": "/fapi/v1/ticker/price",
        "agg_trades": "/fapi/v1/aggTrades",
    },
    SPOT: {
        "ping": "/api/v3/ping",
        "time": "/api/v3/time",
        "exchange_info": "/api/v3/exchangeInfo",
        "depth": "/api/v3/depth",
        "ticker_price": "/api/v3/ticker/price",
        "agg_trades": "/api/v3/aggTrades",
        "historical_trades": "/api/v3/historicalTrades",
    },
}
"""Public REST path of each market-data operation, per market."""

DEFAULT_USDM_VENUE = "binance-usdm"
DEFAULT_SPOT_VENUE = "binance-spot"


def venue_name_for(venue: str, market: str) -> str:
    """The venue name put in subjects and messages: spot must not pass for USD-M.

    A spot link with the USD-M default name (`binance-usdm`, i.e. `BULWARK_VENUE` left alone)
    is named `binance-spot`; any other configured name is kept as given.
    """
    if market == SPOT and venue == DEFAULT_USDM_VENUE:
        return DEFAULT_SPOT_VENUE
    return venue


def _limit_weight(params: dict[str, Any]) -> int:
    try:
        limit = int(params.get("limit") or 500)
    except (TypeError, ValueError):
        return 20
    return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20


def _spot_limit_weight(params: dict[str, Any]) -> int:
    try:
        limit = int(params.get("limit") or 100)
    except (TypeError, ValueError):
        return 50
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


_COSTS: dict[tuple[str, str], tuple[Priority, Callable[[dict[str, Any]], int], int]] = {
    ("POST", "/fapi/v1/order"): (Priority.ORDER, lambda _: 0, 1),
    ("DELETE", "/fapi/v1/order"): (Priority.ORDER, lambda _: 1, 0),
    ("DELETE", "/fapi/v1/allOpenOrders"): (Priority.ORDER, lambda _: 1, 0),
    ("POST", "/fapi/v1/countdownCancelAll"): (Priority.ORDER, lambda _: 10, 0),
    ("GET", "/fapi/v1/depth"): (Priority.SNAPSHOT, _limit_weight, 0),
    ("GET", "/fapi/v1/order"): (Priority.ACCOUNT, lambda _: 1, 0),
    ("GET", "/fapi/v1/openOrders"): (Priority.ACCOUNT, lambda p: 1 if p.get("symbol") else 40, 0),
    ("GET", "/fapi/v2/positionRisk"): (Priority.ACCOUNT, lambda _: 5, 0),
    ("GET", "/fapi/v2/balance"): (Priority.ACCOUNT, lambda _: 5, 0),
    ("GET", "/fapi/v2/account"): (Priority.ACCOUNT, lambda _: 5, 0),
    ("GET", "/fapi/v1/positionSide/dual"): (Priority.ACCOUNT, lambda _: 30, 0),
    ("GET", "/fapi/v1/multiAssetsMargin"): (Priority.ACCOUNT, lambda _: 30, 0),
    ("GET", "/fapi/v1/premiumIndex"): (Priority.ACCOUNT, lambda p: 1 if p.get("symbol") else 10, 0),
    ("GET", "/fapi/v1/ticker/price"): (Priority.ACCOUNT, lambda p: 1 if p.get("symbol") else 2, 0),
    ("GET", "/fapi/v1/userTrades"): (Priority.HISTORY, lambda _: 5, 0),
    ("GET", "/fapi/v1/aggTrades"): (Priority.HISTORY, lambda _: 20, 0),
    ("GET", "/fapi/v1/exchangeInfo"): (Priority.HISTORY, lambda _: 1, 0),
    ("GET", "/fapi/v1/ping"): (Priority.HISTORY, lambda _: 1, 0),
    ("GET", "/api/v3/depth"): (Priority.SNAPSHOT, _spot_limit_weight, 0),
    ("GET", "/api/v3/time"): (Priority.ACCOUNT, lambda _: 1, 0),
    ("GET", "/api/v3/ticker/price"): (Priority.ACCOUNT, lambda p: 2 if p.get("symbol") else 4, 0),
    ("GET", "/api/v3/aggTrades"): (Priority.HISTORY, lambda _: 2, 0),
    ("GET", "/api/v3/historicalTrades"): (Priority.HISTORY, lambda _: 25, 0),
    ("GET", "/api/v3/exchangeInfo"): (Priority.HISTORY, lambda _: 20, 0),
    ("GET", "/api/v3/ping"): (Priority.HISTORY, lambda _: 1, 0),
}
_COSTS.update(
    {
        # Binance's Algo Service (conditional orders since 2025-12-09): a placement counts as an order.
        ("POST", "/fapi/v1/algoOrder"): (Priority.ORDER, lambda _: 0, 1),
        ("DELETE", "/fapi/v1/algoOrder"): (Priority.ORDER, lambda _: 1, 0),
        ("DELETE", "/fapi/v1/algoOpenOrders"): (Priority.ORDER, lambda _: 1, 0),
        ("GET", "/fapi/v1/algoOrder"): (Priority.ACCOUNT, lambda _: 1, 0),
        ("GET", "/fapi/v1/openAlgoOrders"): (Priority.ACCOUNT, lambda p: 1 if p.get("symbol") else 40, 0),
    }
)


def endpoint_cost(method: str, path: str, params: dict[str, Any] | None = None) -> tuple[Priority, int, int]:
    """(priority, request weight, orders placed) of one request, after Binance's USD-M and spot tables."""
    priority, weight, orders = _COSTS.get((method, path), (Priority.ACCOUNT, lambda _: 1, 0))
    return priority, weight(params or {}), orders


def _retry_after(headers: Any) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


class BinanceRestClient:
    """One venue's REST endpoints over a shared aiohttp session.

    Args:
        base_url: e.g. `https://fapi.binance.com` or the simulator's `http://127.0.0.1:8100`.
        api_key: sent as `X-MBX-APIKEY` on keyed and signed endpoints.
        api_secret: HMAC key of signed endpoints (never logged).
        timeout_s: total time allowed for one request (SPEC FM-N5: venue REST 10 s).
        recv_window_ms: Binance `recvWindow` of signed requests.
        budget: the venue's request budget (FM-N2); None keeps only the client's own 418 guard.
        alternate_urls: further base URLs of the same venue, tried when the current one is unreachable.
        resolver: DNS resolver of the session (e.g. a shared `CachingResolver`); aiohttp's when None.
        max_budget_wait_s: a request the budget holds back longer than this fails at once with
            `RequestThrottled` instead of waiting.
        market: `usdm` or `spot`: which paths the public market-data calls use (`MARKET_PATHS`).

    Raises:
        ValueError: an unknown market.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str = "",
        api_secret: str = "",
        *,
        timeout_s: float = 10.0,
        recv_window_ms: int = 5000,
        budget: RateBudget | None = None,
        alternate_urls: Sequence[str] = (),
        resolver: AbstractResolver | None = None,
        max_budget_wait_s: float = 2.0,
        market: str = USDM,
    ) -> None:
        if market not in MARKET_PATHS:
            raise ValueError(f"unknown market {market!r}: use one of {', '.join(MARKETS)}")
        self.market = market
        self._paths = MARKET_PATHS[market]
        self.base_urls = [url.rstrip("/") for url in (base_url, *alternate_urls) if url]
        self.base_url = self.base_urls[0]
        """The endpoint requests go to first: the last one that answered."""
        self.budget = budget
        self.max_budget_wait_s = max_budget_wait_s
        self._resolver = resolver
        self._api_key = api_key
        self._api_secret = api_secret
        self.timeout_s = timeout_s
        self.recv_window_ms = recv_window_ms
        self.used_weight_1m: int | None = None
        self.time_offset_ms = 0
        """Added to the local clock for `timestamp`; set it from `server_time_ms` if clocks drift."""
        self._banned_until: float = 0.0
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the HTTP session (idempotent)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(resolver=self._resolver) if self._resolver is not None else None
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), connector=connector
            )

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> BinanceRestClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ transport

    async def _request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        signed: bool = False,
        keyed: bool = False,
        max_budget_wait_s: float | None = None,
    ) -> Any:
        if self._session is None or self._session.closed:
            raise RuntimeError("BinanceRestClient.start() was not called")
        if self.budget is not None:
            await self._admit(method, path, params, max_budget_wait_s)
        elif time.monotonic() < self._banned_until:
            # SPEC FM-N2: after a 418 nothing may be sent until Retry-After has passed.
            raise VenueError(418, None, "client-side: IP ban in force", self._banned_until - time.monotonic())
        items = [(key, str(value)) for key, value in (params or {}).items() if value is not None]
        headers: dict[str, str] = {}
        if signed:
            items.append(("timestamp", str(int(time.time() * 1000) + self.time_offset_ms)))
            items.append(("recvWindow", str(self.recv_window_ms)))
        query = urlencode(items)
        if signed:
            signature = sign(query, self._api_secret)
            query = f"{query}&signature={signature}"
        if signed or keyed:
            headers["X-MBX-APIKEY"] = self._api_key
        target = f"{path}?{query}" if query else path
        status, body, response_headers = await self._send(method, path, target, headers)
        if self.budget is not None:
            self.budget.on_headers(response_headers)
        weight = response_headers.get(_WEIGHT_HEADER)
        if weight is not None and weight.isdigit():
            self.used_weight_1m = int(weight)
        if status >= 400:
            raise self._error(status, body, response_headers)
        try:
            return _decoder.decode(body) if body else {}
        except msgspec.DecodeError as exc:
            raise VenueError(status, None, f"undecodable body: {body[:200]!r}") from exc

    async def _admit(
        self, method: str, path: str, params: dict[str, Any] | None, max_wait_s: float | None = None
    ) -> None:
        """Wait for the budget (briefly), or fail with `RequestThrottled` without sending anything."""
        assert self.budget is not None
        priority, weight, orders = endpoint_cost(method, path, params)
        deadline = time.monotonic() + (self.max_budget_wait_s if max_wait_s is None else max_wait_s)
        while True:
            admission = self.budget.admit(priority, weight, orders)
            if admission.allowed:
                return
            banned = admission.reason.startswith("IP banned")
            if banned or time.monotonic() + admission.wait_s > deadline:
                raise RequestThrottled(
                    418 if banned else 429, None, f"client-side: {admission.reason}", admission.wait_s
                )
            await asyncio.sleep(admission.wait_s)

    async def _send(self, method: str, path: str, target: str, headers: dict[str, str]) -> tuple[int, bytes, Any]:
        """Send to the current endpoint, then to the others while nothing could have been executed."""
        assert self._session is not None
        start = self.base_urls.index(self.base_url) if self.base_url in self.base_urls else 0
        order = self.base_urls[start:] + self.base_urls[:start]
        failures: list[str] = []
        last_error: Exception | None = None
        for base in order:
            try:
                async with self._session.request(method, f"{base}{target}", headers=headers) as response:
                    body = await response.read()
                    result = response.status, body, response.headers
            except aiohttp.ClientConnectorError as exc:
                # Raised while connecting (refused, DNS, reset during connect): no byte of the request left.
                last_error = VenueUnreachable(f"{method} {path} at {base}: {exc}")
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                last_error = VenueTimeout(f"{method} {path} at {base}: no answer within {self.timeout_s}s")
                last_error.__cause__ = exc
                if method != "GET":
                    raise last_error from exc
            except aiohttp.ClientError as exc:
                # Disconnected after the request went out (or while it did): the venue may have acted,
                # so only a read is tried elsewhere.
                last_error = VenueTimeout(f"{method} {path} at {base}: connection lost before the answer: {exc!r}")
                if method != "GET":
                    raise last_error from exc
            else:
                self.base_url = base
                return result
            failures.append(base)
        assert last_error is not None
        if len(failures) > 1:
            last_error.args = (f"{last_error.args[0]} (all {len(failures)} endpoints failed)",)
        raise last_error

    def _error(self, status: int, body: bytes, headers: Any) -> VenueError:
        retry_after = _retry_after(headers)
        if status == 418:
            self._banned_until = time.monotonic() + (retry_after if retry_after is not None else 60.0)
            if self.budget is not None:
                self.budget.on_banned(retry_after)
        elif status == 429 and self.budget is not None:
            self.budget.on_rate_limited(retry_after)
        code: int | None = None
        msg = body[:500].decode("utf-8", errors="replace")
        try:
            payload = _decoder.decode(body)
        except msgspec.DecodeError:
            payload = None
        if isinstance(payload, dict):
            raw_code = payload.get("code")
            if isinstance(raw_code, int):
                code = raw_code
            if isinstance(payload.get("msg"), str):
                msg = payload["msg"]
        return VenueError(status, code, msg, retry_after)

    # ------------------------------------------------------------------ market data (public)

    async def ping(self) -> dict:
        """Is the venue's REST answering? (`GET /fapi/v1/ping`, spot `/api/v3/ping`; weight 1.)

        Lowest priority, and never waits for the budget: a probe the budget refuses fails at once
        with `RequestThrottled` (nothing sent), so probing can never crowd out a real request.
        """
        result: dict = await self._request("GET", self._paths["ping"], max_budget_wait_s=0.0)
        return result

    async def server_time_ms(self) -> int:
        """The venue's clock (`GET /fapi/v1/time`, spot `/api/v3/time`), in ms."""
        answer = await self._request("GET", self._paths["time"])
        return int(answer["serverTime"])

    async def exchange_info(self) -> dict:
        """Symbols, filters and rate limits (`GET /fapi/v1/exchangeInfo`, spot `/api/v3/exchangeInfo`)."""
        result: dict = await self._request("GET", self._paths["exchange_info"])
        return result

    async def depth(self, symbol: str, limit: int = 1000) -> dict:
        """Order-book snapshot `{"lastUpdateId", "bids", "asks", ...}` (`GET /fapi/v1/depth`, spot `/api/v3/depth`)."""
        result: dict = await self._request("GET", self._paths["depth"], {"symbol": symbol, "limit": limit})
        return result

    async def premium_index(self, symbol: str) -> dict:
        """Mark price, index price and funding rate (`GET /fapi/v1/premiumIndex`; USD-M only)."""
        result: dict = await self._request("GET", "/fapi/v1/premiumIndex", {"symbol": symbol})
        return result

    async def ticker_price(self, symbol: str) -> dict:
        """Last traded price `{"symbol", "price", ...}` (`GET /fapi/v1/ticker/price`, spot `/api/v3/ticker/price`)."""
        result: dict = await self._request("GET", self._paths["ticker_price"], {"symbol": symbol})
        return result

    async def aggregate_trades(self, symbol: str, *, from_id: int, limit: int = 500) -> list[dict]:
        """Aggregate trades from id `from_id` on (`GET /fapi/v1/aggTrades`, spot `/api/v3/aggTrades`)."""
        params = {"symbol": symbol, "fromId": from_id, "limit": limit}
        result: list[dict] = await self._request("GET", self._paths["agg_trades"], params)
        return result

    async def historical_trades(self, symbol: str, *, from_id: int, limit: int = 500) -> list[dict]:
        """Spot trades from trade id `from_id` on (`GET /api/v3/historicalTrades`, API key sent), for
        backfilling a gap in the `@trade` stream.

        Raises:
            ValueError: called on a USD-M client (no such endpoint there).
        """
        path = self._paths.get("historical_trades")
        if path is None:
            raise ValueError("historicalTrades is a spot endpoint")
        params = {"symbol": symbol, "fromId": from_id, "limit": limit}
        result: list[dict] = await self._request("GET", path, params, keyed=True)
        return result

    async def open_interest(self, symbol: str) -> dict:
        """Open interest `{"symbol", "openInterest", "time"}` (`GET /fapi/v1/openInterest`)."""
        result: dict = await self._request("GET", "/fapi/v1/openInterest", {"symbol": symbol})
        return result

    # ------------------------------------------------------------------ trading (signed)

    async def place_order(self, **params: str) -> dict:
        """Place an order (`POST /fapi/v1/order`) with Binance parameter names.

        A `VenueTimeout` here means the order may exist: query it by `newClientOrderId`.
        """
        result: dict = await self._request("POST", "/fapi/v1/order", dict(params), signed=True)
        return result

    async def cancel_order(self, symbol: str, *, orig_client_order_id: str) -> dict:
        """Cancel one order by client order id (`DELETE /fapi/v1/order`)."""
        params = {"symbol": symbol, "origClientOrderId": orig_client_order_id}
        result: dict = await self._request("DELETE", "/fapi/v1/order", params, signed=True)
        return result

    async def query_order(self, symbol: str, *, orig_client_order_id: str) -> dict:
        """One order's venue state by client order id (`GET /fapi/v1/order`)."""
        params = {"symbol": symbol, "origClientOrderId": orig_client_order_id}
        result: dict = await self._request("GET", "/fapi/v1/order", params, signed=True)
        return result

    async def open_orders(self, symbol: str | None = None) -> list[dict]:
        """Open orders of one symbol, or of all (`GET /fapi/v1/openOrders`)."""
        result: list[dict] = await self._request("GET", "/fapi/v1/openOrders", {"symbol": symbol}, signed=True)
        return result

    async def user_trades(self, symbol: str, *, order_id: int | None = None, limit: int = 100) -> list[dict]:
        """Own fills of a symbol, optionally of one order (`GET /fapi/v1/userTrades`)."""
        params = {"symbol": symbol, "orderId": order_id, "limit": limit}
        result: list[dict] = await self._request("GET", "/fapi/v1/userTrades", params, signed=True)
        return result

    async def position_risk(self) -> list[dict]:
        """Positions of every symbol (`GET /fapi/v2/positionRisk`)."""
        result: list[dict] = await self._request("GET", "/fapi/v2/positionRisk", signed=True)
        return result

    async def balance(self) -> list[dict]:
        """Asset balances (`GET /fapi/v2/balance`)."""
        result: list[dict] = await self._request("GET", "/fapi/v2/balance", signed=True)
        return result

    async def account(self) -> dict:
        """The futures account: permissions, balances, positions (`GET /fapi/v2/account`)."""
        result: dict = await self._request("GET", "/fapi/v2/account", signed=True)
        return result

    async def position_mode(self) -> dict:
        """`{"dualSidePosition": bool}`: true is hedge mode (`GET /fapi/v1/positionSide/dual`)."""
        result: dict = await self._request("GET", "/fapi/v1/positionSide/dual", signed=True)
        return result

    async def multi_assets_mode(self) -> dict:
        """`{"multiAssetsMargin": bool}` (`GET /fapi/v1/multiAssetsMargin`)."""
        result: dict = await self._request("GET", "/fapi/v1/multiAssetsMargin", signed=True)
        return result

    async def set_leverage(self, symbol: str, leverage: int) -> dict:
        """Set a symbol's initial leverage (`POST /fapi/v1/leverage`)."""
        params = {"symbol": symbol, "leverage": leverage}
        result: dict = await self._request("POST", "/fapi/v1/leverage", params, signed=True)
        return result

    async def set_margin_type(self, symbol: str, margin_type: str) -> dict:
        """Set a symbol's margin type, `CROSSED` or `ISOLATED` (`POST /fapi/v1/marginType`); the venue
        answers -4046 when it already is."""
        params = {"symbol": symbol, "marginType": margin_type}
        result: dict = await self._request("POST", "/fapi/v1/marginType", params, signed=True)
        return result

    async def order_rate_limits(self) -> list[dict]:
        """The account's own order limits, Binance `rateLimits` rows (`GET /fapi/v1/rateLimit/order`)."""
        result: list[dict] = await self._request("GET", "/fapi/v1/rateLimit/order", signed=True)
        return result

    async def countdown_cancel_all(self, symbol: str, countdown_ms: int) -> dict:
        """Arm (or with 0 disarm) the venue's dead-man's switch (`POST /fapi/v1/countdownCancelAll`)."""
        params = {"symbol": symbol, "countdownTime": countdown_ms}
        result: dict = await self._request("POST", "/fapi/v1/countdownCancelAll", params, signed=True)
        return result

    async def new_listen_key(self) -> str:
        """Open a user-data stream (`POST /fapi/v1/listenKey`)."""
        answer = await self._request("POST", "/fapi/v1/listenKey", keyed=True)
        return str(answer["listenKey"])

    async def keepalive_listen_key(self) -> None:
        """Extend the user-data stream's life by 60 min (`PUT /fapi/v1/listenKey`)."""
        await self._request("PUT", "/fapi/v1/listenKey", keyed=True)

    # ------------------------------------------------------------------ conditional orders (Algo Service, signed)

    async def query_order_by_id(self, symbol: str, order_id: int) -> dict:
        """One order's venue state by the venue's order id (`GET /fapi/v1/order`), e.g. the order a
        triggered conditional order placed (`actualOrderId`)."""
        params = {"symbol": symbol, "orderId": order_id}
        result: dict = await self._request("GET", "/fapi/v1/order", params, signed=True)
        return result

    async def place_algo_order(self, **params: str) -> dict:
        """Place a conditional order in the Algo Service (`POST /fapi/v1/algoOrder`, `algoType`
        CONDITIONAL, `triggerPrice`, `clientAlgoId`, ...), the only way Binance accepts STOP_MARKET,
        TAKE_PROFIT_MARKET and the other conditional types since 2025-12-09 (-4120 on `/fapi/v1/order`).

        A `VenueTimeout` here means the order may exist: query it by `clientAlgoId`.
        """
        result: dict = await self._request("POST", "/fapi/v1/algoOrder", dict(params), signed=True)
        return result

    async def query_algo_order(self, *, algo_id: int | None = None, client_algo_id: str | None = None) -> dict:
        """One conditional order by `algoId` or `clientAlgoId` (`GET /fapi/v1/algoOrder`); -2013 when unknown."""
        params = {"algoId": algo_id, "clientAlgoId": client_algo_id}
        result: dict = await self._request("GET", "/fapi/v1/algoOrder", params, signed=True)
        return result

    async def open_algo_orders(self, symbol: str | None = None) -> list[dict]:
        """Untriggered conditional orders of one symbol, or of all (`GET /fapi/v1/openAlgoOrders`)."""
        result: list[dict] = await self._request("GET", "/fapi/v1/openAlgoOrders", {"symbol": symbol}, signed=True)
        return result

    async def cancel_algo_order(self, *, algo_id: int | None = None, client_algo_id: str | None = None) -> dict:
        """Cancel one conditional order (`DELETE /fapi/v1/algoOrder`); -2011 when unknown or no longer open."""
        params = {"algoId": algo_id, "clientAlgoId": client_algo_id}
        result: dict = await self._request("DELETE", "/fapi/v1/algoOrder", params, signed=True)
        return result

    async def cancel_all_algo_orders(self, symbol: str) -> dict:
        """Cancel every open conditional order of a symbol (`DELETE /fapi/v1/algoOpenOrders`)."""
        result: dict = await self._request("DELETE", "/fapi/v1/algoOpenOrders", {"symbol": symbol}, signed=True)
        return result

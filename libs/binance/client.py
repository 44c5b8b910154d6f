"""Async REST client of the Binance USD-M futures API (and of the venue simulator speaking it).

Every call ends in exactly one of: a decoded JSON answer, `VenueError` (a definite answer),
`VenueUnreachable` (nothing was sent) or `VenueTimeout` (ambiguous). Retrying and circuit
breaking are the caller's business; this client only classifies and reports, so that an order
placement is never silently repeated.

Signed endpoints carry `timestamp` and `recvWindow`, and a `signature` over the exact query
string sent (parameters go in the query string for every method, as Binance's own connector
does, so the signed text and the sent text are the same bytes).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import aiohttp
import msgspec

from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from libs.binance.signing import sign

__all__ = ["BinanceRestClient", "VenueError", "VenueTimeout", "VenueUnreachable"]

_decoder = msgspec.json.Decoder()
_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"


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
    """

    def __init__(
        self,
        base_url: str,
        api_key: str = "",
        api_secret: str = "",
        *,
        timeout_s: float = 10.0,
        recv_window_ms: int = 5000,
    ) -> None:
        self.base_url = base_url.rstrip("/")
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
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))

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
    ) -> Any:
        if self._session is None or self._session.closed:
            raise RuntimeError("BinanceRestClient.start() was not called")
        if time.monotonic() < self._banned_until:
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
        url = f"{self.base_url}{path}"
        if query:
            url = f"{url}?{query}"
        try:
            async with self._session.request(method, url, headers=headers) as response:
                body = await response.read()
                status = response.status
                response_headers = response.headers
        except aiohttp.ClientConnectorError as exc:
            # Raised while connecting (refused, DNS, reset during connect): no byte of the request left.
            raise VenueUnreachable(f"{method} {path}: {exc}") from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise VenueTimeout(f"{method} {path}: no answer within {self.timeout_s}s") from exc
        except aiohttp.ClientError as exc:
            # Disconnected after the request went out (or while it did): the venue may have acted.
            raise VenueTimeout(f"{method} {path}: connection lost before the answer: {exc!r}") from exc
        weight = response_headers.get(_WEIGHT_HEADER)
        if weight is not None and weight.isdigit():
            self.used_weight_1m = int(weight)
        if status >= 400:
            raise self._error(status, body, response_headers)
        try:
            return _decoder.decode(body) if body else {}
        except msgspec.DecodeError as exc:
            raise VenueError(status, None, f"undecodable body: {body[:200]!r}") from exc

    def _error(self, status: int, body: bytes, headers: Any) -> VenueError:
        retry_after = _retry_after(headers)
        if status == 418:
            self._banned_until = time.monotonic() + (retry_after if retry_after is not None else 60.0)
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

    async def server_time_ms(self) -> int:
        """The venue's clock (`GET /fapi/v1/time`), in ms."""
        answer = await self._request("GET", "/fapi/v1/time")
        return int(answer["serverTime"])

    async def exchange_info(self) -> dict:
        """Symbols, filters and rate limits (`GET /fapi/v1/exchangeInfo`)."""
        result: dict = await self._request("GET", "/fapi/v1/exchangeInfo")
        return result

    async def depth(self, symbol: str, limit: int = 1000) -> dict:
        """Order-book snapshot `{"lastUpdateId", "bids", "asks", ...}` (`GET /fapi/v1/depth`)."""
        result: dict = await self._request("GET", "/fapi/v1/depth", {"symbol": symbol, "limit": limit})
        return result

    async def premium_index(self, symbol: str) -> dict:
        """Mark price, index price and funding rate (`GET /fapi/v1/premiumIndex`)."""
        result: dict = await self._request("GET", "/fapi/v1/premiumIndex", {"symbol": symbol})
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

"""The venue port: every call the position service makes to its venue, as a typed `Protocol`.

`adapters.VenueLink` implements it over Binance USDⓈ-M REST (breaker, retries, signing clock);
unit tests pass in-memory fakes with the same methods. Answers are the venue's JSON objects.
"""

from __future__ import annotations

from typing import Protocol

from libs.ratelimit import Admission


class VenuePort(Protocol):
    """The venue calls of the position service (Binance `fapi` semantics)."""

    def order_hold(self) -> Admission:
        """Would the request budget (FM-N2) let an order placement go out now?"""
        ...

    async def place_order(self, **params: str) -> dict:
        """`POST /fapi/v1/order` with `params` (client order id included); the venue's order.
        Conditional types (STOP_MARKET, TAKE_PROFIT_MARKET, ...) go to the Algo Service
        (`POST /fapi/v1/algoOrder`, `clientAlgoId` = the client order id), answered in the same shape."""
        ...

    async def cancel_order(self, symbol: str, *, orig_client_order_id: str) -> dict:
        """`DELETE /fapi/v1/order` by client order id; the venue's order after the cancel."""
        ...

    async def query_order(self, symbol: str, *, orig_client_order_id: str) -> dict:
        """`GET /fapi/v1/order` by client order id."""
        ...

    async def open_orders(self, symbol: str | None = None) -> list[dict]:
        """`GET /fapi/v1/openOrders` and `GET /fapi/v1/openAlgoOrders` of one symbol (None: every symbol)."""
        ...

    async def user_trades(self, symbol: str, *, order_id: int | None = None, limit: int = 100) -> list[dict]:
        """`GET /fapi/v1/userTrades` of a symbol, optionally of one venue order."""
        ...

    async def position_risk(self) -> list[dict]:
        """`GET /fapi/v2/positionRisk`: the venue's positions."""
        ...

    async def countdown_cancel_all(self, symbol: str, countdown_ms: int) -> dict:
        """`POST /fapi/v1/countdownCancelAll` (FM-N8 dead-man's switch; 0 disarms)."""
        ...

    async def new_listen_key(self) -> str:
        """A new user-data stream listen key."""
        ...

    async def keepalive_listen_key(self) -> None:
        """Extend the current listen key's validity."""
        ...

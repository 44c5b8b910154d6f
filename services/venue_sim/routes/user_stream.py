"""The user-data stream's REST side: `listenKey` create, keep-alive and close (closing also ends
the open user streams). The WebSocket of a user stream is served by `market_streams`."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from aiohttp import web

from services.venue_sim.domain import BinanceError
from services.venue_sim.routes.context import Endpoint, RouteGroup, Routes, SimContext, one


def new_listen_key() -> str:
    """A fresh random listen key (64 URL-safe characters)."""
    return secrets.token_urlsafe(48)[:64]


class UserStreamRoutes(RouteGroup):
    """`/fapi/v1/listenKey` (API key, no signature); `make_key` draws new listen keys."""

    def __init__(self, ctx: SimContext, make_key: Callable[[], str] = new_listen_key) -> None:
        super().__init__(ctx)
        self.make_key = make_key

    def endpoints(self) -> Routes:
        """The listenKey endpoints."""
        return {
            ("POST", "/fapi/v1/listenKey"): Endpoint(self.listen_key_new, one, "USER_STREAM"),
            ("PUT", "/fapi/v1/listenKey"): Endpoint(self.listen_key_keepalive, one, "USER_STREAM"),
            ("DELETE", "/fapi/v1/listenKey"): Endpoint(self.listen_key_close, one, "USER_STREAM"),
        }

    def _deadline_ms(self) -> int:
        """When a key created or kept alive now expires (Binance: 60 min)."""
        return self.ctx.now_ms() + int(self.ctx.rules.listen_key_validity_s * 1000)

    async def listen_key_new(self, request: web.Request, params: dict[str, str]) -> Any:
        """POST /fapi/v1/listenKey: the active key is returned again, as Binance does."""
        for key in self.hub.listen_keys:
            self.hub.listen_keys[key] = self._deadline_ms()
            return {"listenKey": key}
        key = self.make_key()
        self.hub.listen_keys[key] = self._deadline_ms()
        return {"listenKey": key}

    async def listen_key_keepalive(self, request: web.Request, params: dict[str, str]) -> Any:
        """PUT /fapi/v1/listenKey."""
        if not self.hub.listen_keys:
            raise BinanceError(400, -1125, "This listenKey does not exist.")
        for key in self.hub.listen_keys:
            self.hub.listen_keys[key] = self._deadline_ms()
        return {"listenKey": next(iter(self.hub.listen_keys))}

    async def listen_key_close(self, request: web.Request, params: dict[str, str]) -> Any:
        """DELETE /fapi/v1/listenKey: closes the user streams."""
        self.hub.listen_keys.clear()
        for subscriber in list(self.hub.user_connections):
            await subscriber.ws.close(code=1000, message=b"listenKey closed")
        return {}

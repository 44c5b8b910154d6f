"""The simulator's own control API (`/_sim/*`): state and true books, pause and resume of the
market clock, scheduling, listing and deleting faults, and orders placed on the account by
someone else."""

from __future__ import annotations

import msgspec
from aiohttp import web

from services.venue_sim.domain import BinanceError, BookHistoryError, FaultError, fmt, views
from services.venue_sim.routes.context import RouteGroup, SimContext


class ControlRoutes(RouteGroup):
    """`/_sim/*` handlers (plain JSON, not Binance-shaped)."""

    def __init__(self, ctx: SimContext) -> None:
        super().__init__(ctx)
        self._external = 0

    def register(self, app: web.Application) -> None:
        """Add the control routes to the application."""
        app.router.add_get("/_sim/state", self.sim_state)
        app.router.add_post("/_sim/pause", self.sim_pause)
        app.router.add_post("/_sim/resume", self.sim_resume)
        app.router.add_get("/_sim/book/{symbol}", self.sim_book)
        app.router.add_get("/_sim/faults", self.sim_faults_list)
        app.router.add_post("/_sim/faults", self.sim_faults_add)
        app.router.add_delete("/_sim/faults", self.sim_faults_clear)
        app.router.add_delete("/_sim/faults/{fault_id}", self.sim_faults_delete)
        app.router.add_post("/_sim/orders", self.sim_external_order)

    async def sim_state(self, request: web.Request) -> web.Response:
        """GET /_sim/state."""
        state = views.state_view(self.exchange)
        state["books"] = {
            symbol: {
                "last_update_id": book.last_update_id,
                "best_bid": fmt(book.best_bid()[0]) if book.best_bid() else None,  # type: ignore[index]
                "best_ask": fmt(book.best_ask()[0]) if book.best_ask() else None,  # type: ignore[index]
                "mark_price": fmt(self.feed.mark_of(symbol)),
                "open_interest": fmt(self.feed.markets[symbol].open_interest),
            }
            for symbol, book in self.feed.books.items()
        }
        state["market"] = self.feed.market
        state["paused"] = self.ctx.market_clock.paused
        state["source"] = self.ctx.source_description
        state["messages_published"] = self.hub.messages_published
        state["connections"] = len(self.hub.connections)
        state["ws_connections"] = sorted((s.view() for s in self.hub.connections), key=str)
        state["ip_ban"] = self.ctx.ban.view(self.ctx.clock())
        return web.json_response(state)

    async def sim_pause(self, request: web.Request) -> web.Response:
        """POST /_sim/pause."""
        self.ctx.market_clock.pause()
        self.ctx.log.info("market_paused")
        return web.json_response({"paused": True})

    async def sim_resume(self, request: web.Request) -> web.Response:
        """POST /_sim/resume."""
        self.ctx.market_clock.resume()
        self.ctx.log.info("market_resumed")
        return web.json_response({"paused": False})

    async def sim_book(self, request: web.Request) -> web.Response:
        """GET /_sim/book/{symbol}?depth=N&update_id=L — the true book, now or right after update L."""
        symbol = request.match_info["symbol"].upper()
        book = self.feed.books.get(symbol)
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

    async def sim_external_order(self, request: web.Request) -> web.Response:
        """POST /_sim/orders — an order placed on the account by someone else (the venue's web page,
        another tool): Binance's new-order parameters as a JSON object, no key or signature. It is
        entered and reported on the user-data stream like any other order."""
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as exc:
            return web.json_response({"error": f"body is not valid JSON: {exc}"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be an object of order parameters"}, status=400)
        params = {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in body.items()}
        self._external += 1
        params.setdefault("newClientOrderId", f"web_{self._external}")
        try:
            order, _ = self.exchange.place_order(params)
        except BinanceError as exc:
            self.engine.flush_user_events()
            return web.json_response({"error": exc.msg, "code": exc.code}, status=400)
        self.engine.flush_user_events()
        self.ctx.log.info("external_order_placed", order_id=order.order_id, client_order_id=order.client_order_id)
        return web.json_response(self.exchange.order_view(order))

    async def sim_faults_list(self, request: web.Request) -> web.Response:
        """GET /_sim/faults."""
        return web.json_response({"faults": self.ctx.faults.views()})

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
            fault = self.ctx.faults.add(spec)
        except FaultError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.ctx.log.warning(
            "fault_scheduled", **{k: v for k, v in fault.view(self.ctx.clock()).items() if k != "params"}
        )
        await self.hub.check_connection_faults()
        return web.json_response({"id": fault.id})

    async def sim_faults_clear(self, request: web.Request) -> web.Response:
        """DELETE /_sim/faults."""
        removed = self.ctx.faults.clear()
        self.ctx.log.info("faults_cleared", count=removed)
        return web.json_response({"deleted": removed})

    async def sim_faults_delete(self, request: web.Request) -> web.Response:
        """DELETE /_sim/faults/{id}."""
        fault_id = request.match_info["fault_id"]
        if not self.ctx.faults.remove(fault_id):
            return web.json_response({"error": f"no fault {fault_id}"}, status=404)
        return web.json_response({"deleted": 1})

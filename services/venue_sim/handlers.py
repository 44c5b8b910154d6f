"""The simulator's HTTP application: the one aiohttp app, the fault and weight middleware in front
of every request, and the REST dispatch (parse, authenticate, count weight and orders, answer).

The endpoints themselves live in `routes`: `rest_market` (public market data, USD-M and spot),
`rest_orders` (signed order and account endpoints), `user_stream` (listenKey), `market_streams`
(every WebSocket) and `control` (`/_sim/*`). When the simulated market is spot, the public spot
REST endpoints (`/api/v3/...`) are served as well; orders stay on the USD-M paths.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from libs.binance import signing
from libs.clock import Clock
from services.venue_sim import control_auth
from services.venue_sim.domain import BinanceError, Exchange, FaultScheduler
from services.venue_sim.domain.clock import MarketClock
from services.venue_sim.domain.limits import UsageLimits
from services.venue_sim.domain.venue_rules import ConnectionRules, IpBan
from services.venue_sim.engine import MarketEngine
from services.venue_sim.routes.context import OrderTimeout, Routes, SimContext, dumps
from services.venue_sim.routes.control import ControlRoutes
from services.venue_sim.routes.market_streams import StreamRoutes
from services.venue_sim.routes.rest_account import AccountRoutes
from services.venue_sim.routes.rest_account_modes import AccountModeRoutes
from services.venue_sim.routes.rest_algo import AlgoRoutes
from services.venue_sim.routes.rest_market import MarketRoutes
from services.venue_sim.routes.rest_orders import OrderRoutes
from services.venue_sim.routes.user_stream import UserStreamRoutes

STREAM_PREFIXES = tuple(f"{p}/{kind}" for p in ("", "/public", "/market", "/private") for kind in ("ws", "stream"))


def is_stream_path(path: str) -> bool:
    """A WebSocket path (raw, combined, routed or not)."""
    return path.startswith(STREAM_PREFIXES)


class VenueSimulator:
    """The whole simulator behind one aiohttp application."""

    def __init__(
        self,
        engine: MarketEngine,
        exchange: Exchange,
        faults: FaultScheduler,
        market_clock: MarketClock,
        clock: Clock,
        api_key: str,
        api_secret: str,
        log: Any,
        source_description: str = "",
        rules: ConnectionRules | None = None,
        ban_escalation: float = 2.0,
        limits: UsageLimits | None = None,
        ban_after_429: int = 0,
        conditional_orders: str = "legacy",
        stream_routing: str = "binance",
        control_token: str = "",
    ) -> None:
        self.engine = engine
        # The control API (`/_sim/*`) is for the holder of this token only (empty: open).
        self.control_token = control_token
        self.clock = clock
        self.rules = rules or ConnectionRules()
        self.ban = IpBan(ban_escalation)
        self.faults = faults
        self.api_key = api_key
        self.api_secret = api_secret
        self.log = log
        self.limits = limits or UsageLimits(clock)
        # More 429 answers than this in a minute ban the IP for 2 minutes, as Binance bans clients
        # that do not back off (0: never).
        self.ban_after_429 = ban_after_429
        self.ctx = SimContext(
            engine,
            exchange,
            faults,
            market_clock,
            clock,
            log,
            self.limits,
            source_description,
            self.rules,
            self.ban,
            conditional_orders,
            stream_routing,
        )
        self.control = ControlRoutes(self.ctx)
        self.streams = StreamRoutes(self.ctx)
        self.account_modes = AccountModeRoutes(self.ctx)  # last in `routes`: its position-mode GET wins
        self.routes: Routes = {
            **MarketRoutes(self.ctx).endpoints(),
            **OrderRoutes(self.ctx).endpoints(),
            **AccountRoutes(self.ctx).endpoints(),
            **AlgoRoutes(self.ctx).endpoints(),
            **UserStreamRoutes(self.ctx).endpoints(),
            **self.account_modes.endpoints(),
        }

    # ================================================================= app
    def build_app(self) -> web.Application:
        """The aiohttp application with every route and the fault/weight middleware."""
        app = web.Application(middlewares=[self._middleware])
        self.control.register(app)
        self.account_modes.register_control(app)
        # Binance USD-M routes streams by path (/public, /market, /private); which path serves which
        # stream is `stream_routing`'s choice (routes.market_streams).
        for prefix in ("", "/public", "/market", "/private"):
            app.router.add_get(f"{prefix}/stream", self.streams.ws_market)
            app.router.add_get(f"{prefix}/ws", self.streams.ws_market)
            app.router.add_get(f"{prefix}/ws/{{name:.*}}", self.streams.ws_market)
        app.router.add_route("*", "/{path:fapi/.*}", self.rest)
        if self.engine.feed.spot:
            app.router.add_route("*", "/{path:api/.*}", self.rest)
        app.router.add_route("*", "/{path:.*}", self.unknown_path)

        async def on_startup(_: web.Application) -> None:
            self.engine.start()

        async def on_shutdown(_: web.Application) -> None:
            # Close every stream connection (1001 going away) before aiohttp waits for its handlers:
            # a connected client would otherwise hold the shutdown until its own timeout.
            hub = self.streams.hub
            await asyncio.gather(
                *(hub.close_subscriber(s, 1001, False, b"venue shutting down") for s in list(hub.connections)),
                return_exceptions=True,
            )

        async def on_cleanup(_: web.Application) -> None:
            await self.engine.stop()

        app.on_startup.append(on_startup)
        app.on_shutdown.append(on_shutdown)
        app.on_cleanup.append(on_cleanup)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith("/_sim"):
            if not control_auth.allowed(self.control_token, request.headers):
                self.log.warning("sim_control_refused", path=request.path, method=request.method)
                return web.json_response(
                    {"error": "the simulator's control API needs its token (Authorization: Bearer TOKEN)"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="venue-sim"'},
                )
            try:
                return await handler(request)
            except web.HTTPException:
                raise
            except Exception as exc:  # noqa: BLE001 - the control API answers every request; logged
                self.log.error("sim_control_failed", path=request.path, error=repr(exc))
                return web.json_response({"error": f"internal error: {exc!r}"}, status=500)
        if self.ban.active(self.clock()):
            # An IP ban refuses every request, whatever its path or symbol, WebSocket connects
            # included (at the upgrade), and grows while the client keeps sending (Binance's escalation).
            stream = is_stream_path(request.path)
            self.ban.refuse(self.clock(), connect=stream)
            self.log.warning("request_refused_banned", path=request.path, refused=self.ban.refused, ws_connect=stream)
            return self._banned()
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
            if is_stream_path(request.path):
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
            response.headers["X-MBX-USED-WEIGHT-1M"] = str(
                max(self.limits.weight.current(), self.limits.weight_limit + 1)
            )
            return response
        fault = self.faults.take("http_418", symbol)
        if fault is not None:
            self.ban.start(self.clock(), fault.params["retry_after_s"])
            self.log.warning("ip_banned", retry_after_s=fault.params["retry_after_s"], fault=fault.id)
            return self._banned()
        fault = self.faults.take("http_5xx", symbol)
        if fault is not None:
            return self._error(
                BinanceError(
                    fault.params["status"], -1001, "Internal error; unable to process your request. Please try again."
                )
            )
        return None

    def _banned(self) -> web.Response:
        """Binance's 418 answer while the IP is banned, with the time left in `Retry-After`."""
        now = self.clock()
        until_ms = (self.ban.until_ns or now) // 1_000_000
        response = self._error(
            BinanceError(
                418,
                -1003,
                f"Way too many requests; IP banned until {until_ms}. "
                "Please use the websocket for live updates to avoid bans.",
            )
        )
        response.headers["Retry-After"] = str(self.ban.retry_after_s(now))
        response.headers["X-MBX-USED-WEIGHT-1M"] = str(max(self.limits.weight.current(), self.limits.weight_limit + 1))
        return response

    @staticmethod
    def _error(error: BinanceError) -> web.Response:
        return web.json_response(error.body(), status=error.status)

    # ================================================================= REST dispatch
    async def unknown_path(self, request: web.Request) -> web.StreamResponse:
        """Any path the simulator does not serve: Binance's answer to one."""
        return web.json_response(
            {"code": -5000, "msg": f"Path {request.path}, Method {request.method} is invalid"}, status=404
        )

    async def rest(self, request: web.Request) -> web.StreamResponse:
        """Every `/fapi/...` (spot: also `/api/...`) request: parse, authenticate, count weight, dispatch, answer."""
        endpoint = self.routes.get((request.method, request.path))
        if endpoint is None:
            return await self.unknown_path(request)
        body = ""
        if request.can_read_body:
            body = (await request.read()).decode("utf-8", errors="replace")
        params: dict[str, str] = dict(request.query)
        if body and request.content_type in ("application/x-www-form-urlencoded", "", "text/plain"):
            params.update(parse_qsl(body, keep_blank_values=True))
        headers: dict[str, str] = {}
        try:
            weight = endpoint.weight(params)
            used = self.limits.weight.add(weight)
            headers["X-MBX-USED-WEIGHT-1M"] = str(used)
            if used > self.limits.weight_limit:
                self._rate_limited(headers, self.limits.weight.seconds_left())
                raise BinanceError(
                    429,
                    -1003,
                    f"Too much request weight used; current limit is {self.limits.weight_limit} request weight "
                    "per 1 MINUTE. Please use the websocket for live updates to avoid polling the API.",
                )
            if endpoint.security != "NONE":
                self._authenticate(request, body, params, signed=endpoint.security == "SIGNED")
            if endpoint.places_order:
                placed = endpoint.order_count(params) if endpoint.order_count is not None else 1
                count_10s = self.limits.orders_10s.add(placed)
                count_1m = self.limits.orders_1m.add(placed)
                headers["X-MBX-ORDER-COUNT-10S"] = str(count_10s)
                headers["X-MBX-ORDER-COUNT-1M"] = str(count_1m)
                if count_10s > self.limits.orders_10s_limit or count_1m > self.limits.orders_1m_limit:
                    over_10s = count_10s > self.limits.orders_10s_limit
                    counter = self.limits.orders_10s if over_10s else self.limits.orders_1m
                    self._rate_limited(headers, counter.seconds_left())
                    limit = self.limits.orders_10s_limit if over_10s else self.limits.orders_1m_limit
                    interval = "10 SECOND" if over_10s else "1 MINUTE"
                    raise BinanceError(
                        429, -1015, f"Too many new orders; current limit is {limit} orders per {interval}."
                    )
            result = await endpoint.handler(request, params)
            self.engine.flush_user_events()
            return web.json_response(result, headers=headers, dumps=dumps)
        except BinanceError as error:
            self.engine.flush_user_events()
            return web.json_response(error.body(), status=error.status, headers=headers)
        except OrderTimeout as timeout:
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

    def _rate_limited(self, headers: dict[str, str], retry_after_s: int) -> None:
        """A 429 is being answered: its Retry-After, and the ban of a client that keeps ignoring them."""
        headers["Retry-After"] = str(max(1, retry_after_s))
        refusals = self.limits.refusals_1m.add(1)
        if self.ban_after_429 and refusals > self.ban_after_429 and not self.ban.active(self.clock()):
            self.ban.start(self.clock(), 120)
            self.log.warning("ip_banned", reason="kept sending after 429", refusals=refusals, retry_after_s=120)

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
        # aiohttp hands the query over with "[" and "]" percent-encoded, whatever was on the wire; a
        # client that sent them bare (python-binance's JSON lists) signed them bare.
        bare = query_payload.replace("%5B", "[").replace("%5D", "]")
        if not any(
            signing.verify(signing.total_params(query, body_payload), signature, self.api_secret)
            for query in {query_payload, bare}
        ):
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
        now = self.ctx.venue_now_ms()
        if timestamp > now + 1000:
            raise BinanceError(400, -1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now - timestamp > recv_window:
            raise BinanceError(400, -1021, "Timestamp for this request is outside of the recvWindow.")

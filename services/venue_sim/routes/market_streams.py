"""WebSocket entrypoints: combined (`/stream?streams=`) and raw (`/ws/<stream>`) market streams,
user-data streams (`/ws/<listenKey>`), and the live SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS
commands. Frames reach a client through the stream hub.

Routing (`SimContext.stream_routing`): `binance` serves streams by path as Binance USD-M does
(`libs.binance.routes`): `/public/...` only public-class streams (depth, book ticker), `/market/...`
only market-class ones (trades, mark price, liquidations, klines), `/private/ws/<listenKey>` user
data, and a path without a route only public-class streams. A stream on the wrong path is accepted
and delivers nothing, silently, as on Binance. `any` serves every stream on every path (a spot
feed always does: Binance spot does not route)."""

from __future__ import annotations

import asyncio
import contextlib
import re

import msgspec
from aiohttp import WSMsgType, web

from libs.binance.routes import Route, stream_route
from services.venue_sim.routes.context import RouteGroup, dumps
from services.venue_sim.streams import Subscriber

STREAM_NAME = re.compile(
    r"^[a-z0-9]+@(depth(@0ms|@100ms|@250ms|@500ms)?|aggTrade|trade|markPrice(@1s)?|forceOrder|bookTicker"
    r"|kline_(1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w))$"
)


STREAM_ROUTINGS = ("binance", "any")
"""`binance`: streams served by path as Binance USD-M; `any`: every stream on every path."""


def request_route(path: str) -> Route | None:
    """The route of a stream path (`/market/stream` → MARKET), None for an un-routed one (`/ws/...`)."""
    first = path.lstrip("/").split("/", 1)[0]
    return next((route for route in Route if route.value == first), None)


def delivered_streams(route: Route | None, streams: list[str]) -> list[str]:
    """The streams a connection of `route` receives under Binance's routing; an un-routed path
    gets the public ones only, `/private` none (user data only)."""
    served = Route.PUBLIC if route is None else route
    return [stream for stream in streams if stream_route(stream) == served]


class TooManySubscriptions(Exception):
    """A SUBSCRIBE would take a connection past its stream limit: Binance answers `reply`
    (code 4, "Too many subscriptions") and closes the connection (1008 "Invalid request")."""

    def __init__(self, reply: str) -> None:
        super().__init__("too many subscriptions")
        self.reply = reply


class StreamRoutes(RouteGroup):
    """The WebSocket handler of every stream path."""

    def _routed(self) -> bool:
        return self.ctx.stream_routing == "binance" and not self.feed.spot

    def _subscribe(self, subscriber: Subscriber, request_path: str, streams: list[str]) -> None:
        """Subscribe the streams this connection's path delivers (all of them when not routing);
        the others are accepted (listed, counted against the limit) and deliver nothing."""
        if not self._routed():
            self.hub.subscribe(subscriber, streams)
            return
        served = delivered_streams(request_route(request_path), streams)
        self.hub.subscribe(subscriber, served)
        subscriber.streams.update(streams)
        if len(served) < len(streams):
            self.ctx.log.info(
                "ws_streams_not_on_route",
                path=request_path,
                streams=[s for s in streams if s not in served][:10],
                action_taken="accepted, nothing delivered (Binance routes streams by path)",
            )

    def _takes_user_data(self, request_path: str) -> bool:
        return not self._routed() or request_route(request_path) == Route.PRIVATE

    async def ws_market(self, request: web.Request) -> web.StreamResponse:
        """`/stream?streams=a/b` (combined), `/ws/<stream>` (raw) and `/ws/<listenKey>` (user data)."""
        name = request.match_info.get("name", "") or request.query.get("listenKey", "")
        combined = request.path.endswith("/stream")
        is_key = name in self.hub.listen_keys
        # A listen key off /private (when routing) connects and delivers nothing, as on Binance.
        listen_key = name if is_key and self._takes_user_data(request.path) else None
        streams: list[str] = []
        if combined:
            streams = [s for s in request.query.get("streams", "").split("/") if s]
        elif name and not is_key:
            streams = [s for s in name.split("/") if s]
        invalid = [s for s in streams if not STREAM_NAME.match(s)]
        if invalid:
            return web.json_response({"code": -1121, "msg": f"Invalid stream name(s): {invalid[:5]}"}, status=400)
        if len(streams) > self.ctx.rules.max_streams:
            # Not measured on Binance (its SUBSCRIBE path is): refused at the upgrade, nothing served.
            return web.json_response(
                {"code": -1121, "msg": f"Too many streams: at most {self.ctx.rules.max_streams} per connection."},
                status=400,
            )
        closing = self.ctx.faults.active("ws_close") if self.ctx.faults.faults else None
        if closing is not None and closing.duration_s:
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        subscriber = Subscriber(
            ws,
            combined=combined or not name,
            listen_key=listen_key,
            connected_ns=self.ctx.clock(),
            max_incoming_per_s=self.ctx.rules.max_incoming_per_s,
            path=request.path,
        )
        self.hub.connections.add(subscriber)
        if listen_key is not None:
            self.hub.subscribe_user(subscriber, listen_key)
        self._subscribe(subscriber, request.path, streams)
        sender = asyncio.create_task(subscriber.run_sender())
        self.ctx.log.info("ws_connected", streams=streams[:10], user_stream=listen_key is not None)
        try:
            async for message in ws:
                if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
                if not subscriber.incoming.allow(self.ctx.clock()):
                    # Binance counts pings, pongs and commands alike and disconnects past the limit.
                    self.ctx.log.warning("ws_message_rate_exceeded", limit=self.ctx.rules.max_incoming_per_s)
                    await self.hub.close_subscriber(subscriber, 1008, False, b"Too many messages")
                    break
                if message.type == WSMsgType.PONG:
                    subscriber.last_pong_ns = self.ctx.clock()
                elif message.type == WSMsgType.PING:
                    if not self.hub.is_stalled(subscriber):
                        await ws.pong(message.data)
                elif message.type == WSMsgType.TEXT:
                    try:
                        reply = self._ws_command(subscriber, message.data, request.path)
                    except TooManySubscriptions as refused:
                        self.ctx.log.warning("ws_too_many_subscriptions", limit=self.ctx.rules.max_streams)
                        await ws.send_str(refused.reply)
                        await self.hub.close_subscriber(subscriber, 1008, False, b"Invalid request")
                        break
                    if reply is not None and not self.hub.is_stalled(subscriber):
                        await ws.send_str(reply)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            subscriber.closed = True
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            self.hub.unsubscribe(subscriber)
            self.hub.connections.discard(subscriber)
            self.hub.user_connections.discard(subscriber)
        return ws

    def _ws_command(self, subscriber: Subscriber, text: str, path: str) -> str | None:
        try:
            command = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return dumps({"error": {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}})
        if not isinstance(command, dict):
            return dumps({"error": {"code": 2, "msg": "Invalid request: request must be an object"}})
        request_id = command.get("id")
        method = command.get("method")
        params = command.get("params", [])
        if not isinstance(request_id, int | str) or isinstance(request_id, bool):
            return dumps({"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}})
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                return dumps(
                    {"error": {"code": 2, "msg": "Invalid request: invalid stream name in params"}, "id": request_id}
                )
            # A listen key is a stream name too: subscribing it makes this a user-data connection.
            keys = [p for p in params if p in self.hub.listen_keys or p == subscriber.listen_key]
            streams = [p for p in params if p not in keys]
            if method == "SUBSCRIBE" and not self._takes_user_data(path):
                keys = []  # accepted, and nothing delivered: user data comes on /private only
            if not all(STREAM_NAME.match(p) for p in streams):
                return dumps(
                    {"error": {"code": 2, "msg": "Invalid request: invalid stream name in params"}, "id": request_id}
                )
            if method == "SUBSCRIBE":
                if len(subscriber.streams | set(streams)) > self.ctx.rules.max_streams:
                    # As measured on fstream: the error, then the connection closed, every stream lost.
                    raise TooManySubscriptions(
                        dumps({"error": {"code": 4, "msg": "Too many subscriptions"}, "id": request_id})
                    )
                self._subscribe(subscriber, path, streams)
                for key in keys:
                    self.hub.subscribe_user(subscriber, key)
            else:
                self.hub.unsubscribe(subscriber, streams)
                if keys:
                    self.hub.unsubscribe_user(subscriber)
            return dumps({"result": None, "id": request_id})
        if method == "LIST_SUBSCRIPTIONS":
            user = [subscriber.listen_key] if subscriber.listen_key in self.hub.listen_keys else []
            return dumps({"result": sorted(subscriber.streams) + user, "id": request_id})
        return dumps({"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": request_id})

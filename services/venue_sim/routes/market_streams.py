"""WebSocket entrypoints: combined (`/stream?streams=`) and raw (`/ws/<stream>`) market streams,
user-data streams (`/ws/<listenKey>`), and the live SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS
commands. Frames reach a client through the stream hub."""

from __future__ import annotations

import asyncio
import contextlib
import re

import msgspec
from aiohttp import WSMsgType, web

from services.venue_sim.routes.context import RouteGroup, dumps
from services.venue_sim.streams import Subscriber

STREAM_NAME = re.compile(
    r"^[a-z0-9]+@(depth(@0ms|@100ms|@250ms|@500ms)?|aggTrade|trade|markPrice(@1s)?|forceOrder|bookTicker"
    r"|kline_(1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w))$"
)


class StreamRoutes(RouteGroup):
    """The WebSocket handler of every stream path."""

    async def ws_market(self, request: web.Request) -> web.StreamResponse:
        """`/stream?streams=a/b` (combined), `/ws/<stream>` (raw) and `/ws/<listenKey>` (user data)."""
        name = request.match_info.get("name", "") or request.query.get("listenKey", "")
        combined = request.path.endswith("/stream")
        listen_key = name if name in self.hub.listen_keys else None
        streams: list[str] = []
        if combined:
            streams = [s for s in request.query.get("streams", "").split("/") if s]
        elif name and listen_key is None:
            streams = [s for s in name.split("/") if s]
        invalid = [s for s in streams if not STREAM_NAME.match(s)]
        if invalid:
            return web.json_response({"code": -1121, "msg": f"Invalid stream name(s): {invalid[:5]}"}, status=400)
        if len(streams) > self.ctx.rules.max_streams:
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
        )
        self.hub.connections.add(subscriber)
        if listen_key is not None:
            self.hub.subscribe_user(subscriber, listen_key)
        self.hub.subscribe(subscriber, streams)
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
                    reply = self._ws_command(subscriber, message.data)
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

    def _ws_command(self, subscriber: Subscriber, text: str) -> str | None:
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
            if not all(STREAM_NAME.match(p) for p in streams):
                return dumps(
                    {"error": {"code": 2, "msg": "Invalid request: invalid stream name in params"}, "id": request_id}
                )
            if method == "SUBSCRIBE":
                if len(subscriber.streams | set(streams)) > self.ctx.rules.max_streams:
                    limit = self.ctx.rules.max_streams
                    return dumps(
                        {
                            "error": {"code": 2, "msg": f"Invalid request: at most {limit} streams per connection"},
                            "id": request_id,
                        }
                    )
                self.hub.subscribe(subscriber, streams)
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

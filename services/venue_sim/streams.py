"""WebSocket fan-out of the simulator: the connected clients and their streams, the frame faults
on the way out (drop, duplicate, corrupt, latency, stall), connection faults (close, outage),
keep-alive pings, and delivery of user-data events to user streams."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from aiohttp import web

from libs.clock import Clock, wall_clock
from services.venue_sim.domain import FaultScheduler
from services.venue_sim.domain.frames import Frame, corrupt_text
from services.venue_sim.domain.venue_rules import NS_PER_S, ConnectionRules, MessageRate

_encoder = msgspec.json.Encoder()


class Subscriber:
    """One WebSocket client: its streams, and a sender task that applies latency."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        combined: bool,
        listen_key: str | None = None,
        connected_ns: int = 0,
        max_incoming_per_s: int = 10,
        path: str = "",
    ) -> None:
        self.ws = ws
        self.path = path
        """The request path it connected on (`/public/stream`), for the control API's state."""
        self.combined = combined
        self.listen_key = listen_key
        self.streams: set[str] = set()
        self.queue: asyncio.Queue[tuple[float, str]] = asyncio.Queue(maxsize=20_000)
        self.closed = False
        self.connected_ns = connected_ns
        self.last_pong_ns = connected_ns
        self.incoming = MessageRate(max_incoming_per_s)

    def view(self) -> dict[str, object]:
        """This connection in `GET /_sim/state` → `ws_connections`."""
        return {"path": self.path, "streams": len(self.streams), "user_stream": self.listen_key is not None}

    def symbols(self) -> set[str]:
        """Upper-case symbols this client listens to."""
        return {stream.split("@", 1)[0].upper() for stream in self.streams}

    def enqueue(self, due: float, text: str) -> None:
        """Queue a frame; a client that cannot keep up is disconnected, as Binance does."""
        if self.closed:
            return
        try:
            self.queue.put_nowait((due, text))
        except asyncio.QueueFull:
            self.closed = True
            asyncio.get_running_loop().create_task(self.ws.close(code=1008, message=b"slow consumer"))

    async def run_sender(self) -> None:
        """Send queued frames, each not before its due time."""
        loop = asyncio.get_running_loop()
        while not self.closed:
            due, text = await self.queue.get()
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.ws.closed:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return


class StreamHub:
    """Who listens to what, and the one way a frame or user event reaches a client."""

    def __init__(
        self, faults: FaultScheduler, log: Any, clock: Clock = wall_clock, rules: ConnectionRules | None = None
    ) -> None:
        self.faults = faults
        self.log = log
        self.clock = clock
        self.rules = rules or ConnectionRules()
        self._closing: set[asyncio.Task[None]] = set()
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.connections: set[Subscriber] = set()
        self.user_connections: set[Subscriber] = set()
        self.listen_keys: dict[str, int] = {}
        self.messages_published = 0

    async def ping_all(self) -> None:
        """Ping every live, unstalled client (the server side of Binance's keep-alive)."""
        for subscriber in list(self.connections):
            if subscriber.ws.closed or self.is_stalled(subscriber):
                continue
            with contextlib.suppress(ConnectionError, RuntimeError):
                await subscriber.ws.ping()

    def check_connection_rules(self) -> None:
        """Close connections past their lifetime or silent to pings for too long (Binance: 24 h, 10 min)."""
        now = self.clock()
        lifetime_ns = int(self.rules.lifetime_s * NS_PER_S)
        pong_ns = int(self.rules.pong_timeout_s * NS_PER_S)
        for subscriber in list(self.connections):
            if subscriber.closed or subscriber.ws.closed:
                continue
            if now - subscriber.connected_ns >= lifetime_ns:
                self.log.info("ws_lifetime_expired", lifetime_s=self.rules.lifetime_s)
                self._close_later(subscriber, 1001, b"connection lifetime expired")
            elif now - subscriber.last_pong_ns >= pong_ns:
                self.log.warning("ws_pong_timeout", pong_timeout_s=self.rules.pong_timeout_s)
                self._close_later(subscriber, 1008, b"pong timeout")

    def _close_later(self, subscriber: Subscriber, code: int, reason: bytes) -> None:
        # A close waits for the client's close frame (up to 10 s from a dead client): not on the
        # market's periodic work.
        subscriber.closed = True
        task = asyncio.get_running_loop().create_task(self.close_subscriber(subscriber, code, False, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def expire_listen_keys(self) -> list[str]:
        """Drop listen keys past their validity: their user connections get `listenKeyExpired` and
        nothing after it (they stay open, as on Binance). Returns the expired keys."""
        now_ms = self.clock() // 1_000_000
        expired = [key for key, deadline in self.listen_keys.items() if deadline <= now_ms]
        for key in expired:
            del self.listen_keys[key]
            event = {"e": "listenKeyExpired", "E": now_ms, "listenKey": key}
            for subscriber in [s for s in self.user_connections if s.listen_key == key]:
                text = _encoder.encode({"stream": key, "data": event} if subscriber.combined else event).decode()
                subscriber.enqueue(asyncio.get_running_loop().time(), text)
                self.user_connections.discard(subscriber)
            self.log.info("listen_key_expired")
        return expired

    async def close_all(self) -> None:
        """Close every WebSocket (server shutdown)."""
        for subscriber in list(self.connections):
            await subscriber.ws.close(code=1001, message=b"server shutdown")

    def is_stalled(self, subscriber: Subscriber) -> bool:
        """ws_stall applies to this client (global, or one of its symbols)."""
        if not self.faults.faults:
            return False
        fault = self.faults.active("ws_stall")
        if fault is None:
            return False
        return fault.symbol is None or fault.symbol in subscriber.symbols()

    async def check_connection_faults(self) -> None:
        """Close connections for active ws_close / outage faults."""
        if not self.faults.faults:
            return
        for kind in ("ws_close", "outage"):
            fault = self.faults.active(kind)
            if fault is None:
                continue
            victims = [s for s in self.connections if fault.symbol is None or fault.symbol in s.symbols()]
            if kind == "ws_close":
                if not victims and fault.count is not None:
                    continue
                self.faults.take(kind)
            for subscriber in victims:
                await self.close_subscriber(
                    subscriber, fault.params.get("code", 1001), fault.params.get("abrupt", False)
                )
            if victims:
                self.log.warning("fault_ws_closed", kind=kind, fault=fault.id, connections=len(victims))

    async def close_subscriber(
        self, subscriber: Subscriber, code: int, abrupt: bool, reason: bytes = b"closed by fault injection"
    ) -> None:
        """Close one client, with a close frame or by dropping the TCP connection."""
        subscriber.closed = True
        self.connections.discard(subscriber)
        if abrupt:
            transport = subscriber.ws._req.transport if subscriber.ws._req is not None else None
            if transport is not None:
                transport.abort()
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await subscriber.ws.close(code=code, message=reason)

    def subscribe_user(self, subscriber: Subscriber, listen_key: str) -> None:
        """Make a client a user-data connection of `listen_key`."""
        subscriber.listen_key = listen_key
        self.user_connections.add(subscriber)

    def unsubscribe_user(self, subscriber: Subscriber) -> None:
        """Stop sending user-data events to a client."""
        self.user_connections.discard(subscriber)

    def subscribe(self, subscriber: Subscriber, streams: list[str]) -> None:
        """Add streams to a client."""
        for stream in streams:
            subscriber.streams.add(stream)
            self.subscribers.setdefault(stream, set()).add(subscriber)

    def unsubscribe(self, subscriber: Subscriber, streams: list[str] | None = None) -> None:
        """Remove streams (all when None) from a client."""
        for stream in list(subscriber.streams if streams is None else streams):
            subscriber.streams.discard(stream)
            members = self.subscribers.get(stream)
            if members is not None:
                members.discard(subscriber)
                if not members:
                    del self.subscribers[stream]

    def _latency_s(self, symbol: str | None) -> float:
        fault = self.faults.active("latency", symbol) if self.faults.faults else None
        return fault.params["ms"] / 1000 if fault is not None else 0.0

    def publish(self, stream: str, symbol: str, channel: str, data: dict[str, Any]) -> None:
        """Send one stream message to its subscribers, through the frame faults."""
        members = self.subscribers.get(stream)
        if not members:
            return
        self.messages_published += 1
        if self.faults.faults:
            self.faults.on_message(symbol)
        frames = self.faults.transform(stream, symbol, channel, data)
        if not frames:
            return
        due = asyncio.get_running_loop().time() + self._latency_s(symbol)
        for frame in frames:
            raw_text: str | None = None
            combined_text: str | None = None
            for subscriber in list(members):
                if self.is_stalled(subscriber):
                    continue
                if subscriber.combined:
                    if combined_text is None:
                        combined_text = self._serialise(frame, stream)
                    subscriber.enqueue(due, combined_text)
                else:
                    if raw_text is None:
                        raw_text = self._serialise(frame, None)
                    subscriber.enqueue(due, raw_text)

    @staticmethod
    def _serialise(frame: Frame, stream: str | None) -> str:
        payload = frame.data if stream is None else {"stream": stream, "data": frame.data}
        text = _encoder.encode(payload).decode()
        return corrupt_text(text, frame.corrupt) if frame.corrupt else text

    def deliver_user_events(self, events: list[dict[str, Any]]) -> None:
        """Send the exchange's ORDER_TRADE_UPDATE / ACCOUNT_UPDATE events to the user streams."""
        if not self.user_connections:
            return
        due = asyncio.get_running_loop().time() + self._latency_s(None)
        for event in events:
            text = _encoder.encode(event).decode()
            for subscriber in list(self.user_connections):
                if self.is_stalled(subscriber):
                    continue
                if subscriber.combined:
                    subscriber.enqueue(due, _encoder.encode({"stream": subscriber.listen_key, "data": event}).decode())
                else:
                    subscriber.enqueue(due, text)

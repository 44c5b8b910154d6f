"""state-builder effects: market-data messages → books and hot state; hot-state transitions →
bus event + KV; book and symbol queries; resync requests to market-data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from libs.bus import Delivery
from libs.logging import Logger
from proto import subjects
from proto.codec import encode
from proto.enums import ConnectionState
from proto.envelope import Message
from proto.messages import (
    BookResyncStarted,
    BookSnapshot,
    DepthDiff,
    HotStateRecord,
    HotStateStatusChanged,
    LinkStateChanged,
    MarkPrice,
    OpenInterest,
    SymbolHotState,
    SymbolsReply,
)
from services.state_builder.domain import Clock, DiffResult, HotState, HotStateTransition, OrderBook

Publish = Callable[[str, Message], Awaitable[int]]
KvPut = Callable[[str, bytes], Awaitable[int]]
Request = Callable[[str, bytes], Awaitable[bytes]]

DEFAULT_DEPTH = 20
MAX_DEPTH = 1000
RESYNC_REQUEST_INTERVAL_NS = 2_000_000_000
"""At most one self-healing resync request per symbol per 2 s."""


@dataclass
class SymbolState:
    """Everything state-builder knows about one symbol."""

    book: OrderBook
    hot: HotState
    mark_price: Decimal | None = None
    funding_rate: Decimal | None = None
    open_interest: Decimal | None = None
    last_resync_request_ns: int = 0
    unpublished: list[HotStateTransition] = field(default_factory=list)


def _error(code: str, message: str) -> bytes:
    return msgspec.json.encode({"error": {"code": code, "message": message}})


def _levels(levels: list[tuple[Decimal, Decimal]]) -> list[list[str]]:
    return [[str(price), str(qty)] for price, qty in levels]


class StateBuilder:
    """Books and hot state of every symbol, with I/O injected.

    Args:
        symbols: upper-case symbols.
        publish: `publish(subject, message)` onto JetStream.
        kv_put: `kv_put(key, value)` into the state bucket.
        request: `request(subject, payload) -> reply` (core NATS request/reply).
        clock: integer ns wall clock.
        log: component logger.
    """

    def __init__(
        self,
        *,
        symbols: tuple[str, ...],
        publish: Publish,
        kv_put: KvPut,
        request: Request,
        clock: Clock,
        log: Logger,
    ) -> None:
        self._publish = publish
        self._kv_put = kv_put
        self._request = request
        self._clock = clock
        self.log = log
        self.symbols = {
            name: SymbolState(OrderBook(name), HotState(name, clock)) for name in (s.upper() for s in symbols)
        }
        self._flush_lock = asyncio.Lock()
        self._background: set[asyncio.Task[bool]] = set()

    # ------------------------------------------------------------------ transitions

    async def _record(self, state: SymbolState, transition: HotStateTransition | None) -> None:
        if transition is None:
            return
        self.log.info(
            "hot_state_changed",
            symbol=transition.symbol,
            previous=transition.previous,
            current=transition.current,
            reason=transition.reason,
            last_update_id=transition.last_update_id,
        )
        state.unpublished.append(transition)
        await self._flush(state)

    async def _flush(self, state: SymbolState) -> None:
        """Publish pending transitions in order; what fails stays pending for the next tick."""
        # The consumer and the timer both flush: one at a time, or a transition goes out twice.
        async with self._flush_lock:
            await self._flush_locked(state)

    async def _flush_locked(self, state: SymbolState) -> None:
        while state.unpublished:
            transition = state.unpublished[0]
            event = HotStateStatusChanged(
                symbol=transition.symbol,
                previous=transition.previous,
                current=transition.current,
                reason=transition.reason,
                last_update_id=transition.last_update_id,
                ts_event_ns=transition.ts_ns,
            )
            value = encode(
                HotStateRecord(
                    status=transition.current,
                    reason=transition.reason,
                    last_update_id=transition.last_update_id,
                    ts_ns=transition.ts_ns,
                )
            )
            try:
                await self._publish(subjects.evt_hot_state(transition.symbol), event)
                await self._kv_put(subjects.key_hot_state(transition.symbol), value)
            except Exception as exc:  # noqa: BLE001 - retried on the next tick; state in memory is right
                self.log.warning("hot_state_publish_failed", symbol=transition.symbol, error=str(exc)[:300])
                return
            state.unpublished.pop(0)

    async def publish_initial(self) -> None:
        """Announce every symbol INVALID at start (fail closed until rebuilt)."""
        for state in self.symbols.values():
            hot = state.hot
            state.unpublished.append(HotStateTransition(hot.symbol, None, hot.status, hot.reason, None, self._clock()))
            await self._flush(state)

    # ------------------------------------------------------------------ market data

    async def handle_message(self, message: Message, delivery: Delivery | None = None) -> None:
        """Consumer handler for `md.>`; never raises for data problems (they are state, not errors)."""
        match message:
            case DepthDiff(symbol=symbol) if symbol in self.symbols:
                await self._on_diff(self.symbols[symbol], message)
            case BookSnapshot(symbol=symbol) if symbol in self.symbols:
                state = self.symbols[symbol]
                state.book.apply_snapshot(message.last_update_id, message.bids, message.asks)
                self.log.info("book_rebuilt", symbol=symbol, last_update_id=message.last_update_id)
                await self._record(state, state.hot.on_rebuilt(message.last_update_id))
            case BookResyncStarted(symbol=symbol) if symbol in self.symbols:
                state = self.symbols[symbol]
                state.book.invalidate()
                await self._record(state, state.hot.on_invalid(f"resync: {message.reason}"))
            case MarkPrice(symbol=symbol) if symbol in self.symbols:
                state = self.symbols[symbol]
                state.mark_price = message.mark_price
                if message.funding_rate is not None:
                    state.funding_rate = message.funding_rate
            case OpenInterest(symbol=symbol) if symbol in self.symbols:
                self.symbols[symbol].open_interest = message.open_interest
            case _:
                pass  # trades, liquidations, other symbols: not part of the hot state

    async def _on_diff(self, state: SymbolState, diff: DepthDiff) -> None:
        result = state.book.apply_diff(
            diff.first_update_id, diff.final_update_id, diff.prev_final_update_id, diff.bids, diff.asks
        )
        if result == DiffResult.APPLIED:
            await self._record(state, state.hot.on_update(diff.final_update_id))
        elif result == DiffResult.GAP:
            self.log.warning(
                "book_gap",
                symbol=state.book.symbol,
                prev_final_update_id=diff.prev_final_update_id,
                final_update_id=diff.final_update_id,
                action_taken="INVALID until the next snapshot; resync requested",
            )
            await self._record(state, state.hot.on_invalid("sequence gap in depth diffs"))
            self._request_resync_soon(state)

    def _request_resync_soon(self, state: SymbolState) -> None:
        now = self._clock()
        if now - state.last_resync_request_ns < RESYNC_REQUEST_INTERVAL_NS:
            return
        state.last_resync_request_ns = now
        task = asyncio.create_task(self.request_resync(state.book.symbol, attempts=3))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def on_link_event(self, event: LinkStateChanged) -> None:
        """A market link went down: its symbols are STALE now, not a second later (FM-N1)."""
        if event.current in (ConnectionState.CONNECTED, ConnectionState.SUSPECT):
            return
        for symbol in event.symbols or list(self.symbols):
            state = self.symbols.get(symbol)
            if state is not None:
                await self._record(state, state.hot.on_link_down(f"link {event.link} {event.current.value}"))

    async def tick(self) -> None:
        """100 ms timer: staleness, and retry of unpublished transitions."""
        for state in self.symbols.values():
            await self._record(state, state.hot.check())
            if state.unpublished:
                await self._flush(state)

    async def run_ticks(self, interval_s: float) -> None:
        """Run `tick` forever."""
        while True:
            await asyncio.sleep(interval_s)
            await self.tick()

    # ------------------------------------------------------------------ resync requests

    async def request_resync(self, symbol: str, *, attempts: int | None = None, retry_s: float = 0.5) -> bool:
        """Ask market-data for a fresh snapshot of `symbol`, retrying until answered.

        Returns:
            True when market-data answered, False after `attempts` failures (None: forever).
        """
        subject = subjects.service_query(subjects.MARKET_DATA, "resync")
        payload = msgspec.json.encode({"symbol": symbol})
        tried = 0
        while attempts is None or tried < attempts:
            tried += 1
            try:
                reply = msgspec.json.decode(await self._request(subject, payload))
            except Exception as exc:  # noqa: BLE001 - no responder / timeout / bus down: try again
                self.log.info("resync_request_unanswered", symbol=symbol, error=type(exc).__name__, attempt=tried)
                await asyncio.sleep(retry_s)
                continue
            self.log.info("resync_requested", symbol=symbol, reply=reply)
            return True
        return False

    # ------------------------------------------------------------------ queries

    async def handle_book_request(self, payload: bytes) -> bytes:
        """`svc.state-builder.book` {"symbol", "depth"} → the book's top levels."""
        try:
            request = msgspec.json.decode(payload)
            symbol = str(request["symbol"]).upper()
            depth = int(request.get("depth", DEFAULT_DEPTH))
        except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            return _error("bad_request", f"expected {{'symbol', 'depth'?}}: {exc}")
        if not 1 <= depth <= MAX_DEPTH:
            return _error("bad_request", f"depth must be 1..{MAX_DEPTH}")
        state = self.symbols.get(symbol)
        if state is None:
            return _error("not_found", f"unknown symbol {symbol}")
        bids, asks = state.book.top(depth)
        return msgspec.json.encode(
            {
                "symbol": symbol,
                "status": state.hot.status.value,
                "last_update_id": state.book.last_update_id,
                "bids": _levels(bids),
                "asks": _levels(asks),
            }
        )

    def symbol_view(self, symbol: str) -> SymbolHotState:
        """One symbol's hot state as served to operators."""
        state = self.symbols[symbol]
        return SymbolHotState(
            symbol=symbol,
            hot_state=state.hot.status,
            age_ms=state.hot.age_ms(),
            last_update_id=state.book.last_update_id,
            mark_price=state.mark_price,
            funding_rate=state.funding_rate,
            open_interest=state.open_interest,
            best_bid=state.book.best_bid(),
            best_ask=state.book.best_ask(),
        )

    async def handle_symbols_request(self, payload: bytes) -> bytes:
        """`svc.state-builder.symbols` → {"symbols": {SYM: {...}}}."""
        return encode(SymbolsReply(symbols={symbol: self.symbol_view(symbol) for symbol in self.symbols}))

    def details(self) -> dict[str, Any]:
        """Heartbeat details: per symbol status and last update id."""
        return {
            symbol: {"hot_state": state.hot.status.value, "last_update_id": state.book.last_update_id}
            for symbol, state in self.symbols.items()
        }

"""risk's handlers: order and signal decisions, halt/resume/state requests, state followers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
from nats.aio.msg import Msg

from libs.bus import Bus, Delivery
from libs.ids import client_order_id_for
from libs.logging import Logger
from proto import subjects
from proto.codec import decode
from proto.enums import HotStateStatus, OrderSource
from proto.envelope import Message
from proto.messages import (
    HotStateStatusChanged,
    MarkPrice,
    OrderApproved,
    OrderDenied,
    PositionChanged,
    SignalGenerated,
    SubmitOrder,
    TradingStateChanged,
)

from . import adapters
from .domain import (
    InvalidTransition,
    RiskLimits,
    TradingStateRecord,
    TradingTrigger,
    check_order,
    next_trading_state,
    reference_price,
)

Clock = Callable[[], int]


class _OperatorRequest(msgspec.Struct, kw_only=True):
    operator: str = "unknown"
    reason: str = ""


_request_decoder = msgspec.json.Decoder(_OperatorRequest)


def signal_to_order(signal: SignalGenerated, venue: str) -> SubmitOrder:
    """The order a strategy signal asks for; its idempotency key is the signal's message id."""
    return SubmitOrder(
        client_order_id=client_order_id_for(signal.message_id),
        idempotency_key=signal.message_id,
        source=OrderSource.STRATEGY,
        symbol=signal.symbol,
        side=signal.side,
        order_type=signal.order_type,
        quantity=signal.quantity,
        venue=venue,
        price=signal.price,
        reduce_only=signal.reduce_only,
        strategy=signal.strategy,
        correlation_id=signal.correlation_id or signal.message_id,
        causation_id=signal.message_id,
    )


class RiskService:
    """The risk engine's live state and handlers (one instance per process)."""

    def __init__(
        self, bus: Bus, log: Logger, limits: RiskLimits, venue: str, clock: Clock, state: TradingStateRecord
    ) -> None:
        self.bus = bus
        self.log = log
        self.limits = limits
        self.venue = venue
        self.clock = clock
        self.trading = state
        self.hot_state: dict[str, HotStateStatus | None] = {}
        self.positions: dict[str, Decimal] = {}
        self._position_ts: dict[str, int] = {}
        self.mark_prices: dict[str, Decimal] = {}
        self.decided: set[str] = set()
        self._state_lock = asyncio.Lock()
        self._decide_lock = asyncio.Lock()

    # ------------------------------------------------------------------ followers

    def apply_position(self, event: PositionChanged) -> None:
        """Track the newest position of a symbol (older events are ignored)."""
        if event.ts_event_ns < self._position_ts.get(event.symbol, 0):
            return
        self._position_ts[event.symbol] = event.ts_event_ns
        self.positions[event.symbol] = event.quantity

    async def on_core_event(self, msg: Msg) -> None:
        """Core-NATS follower of hot state, positions and mark prices."""
        try:
            message = decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.log.warning("event_rejected", subject=msg.subject, error=str(exc)[:200])
            return
        match message:
            case HotStateStatusChanged():
                self.hot_state[message.symbol] = message.current
            case PositionChanged() if message.venue == self.venue:
                self.apply_position(message)
            case MarkPrice():
                self.mark_prices[message.symbol] = message.mark_price
            case _:
                pass

    async def load_initial_state(self) -> None:
        """Hot state from KV and positions from the ORDERS stream, for every configured symbol."""
        for symbol in sorted(self.limits.symbols):
            if symbol not in self.hot_state:
                self.hot_state[symbol] = await adapters.read_hot_state(self.bus, symbol)
            last = await adapters.read_last_position(self.bus, self.venue, symbol)
            if last is not None:
                self.apply_position(last)
        self.log.info(
            "risk_state_loaded",
            trading_state=self.trading.state.value,
            hot_state={k: (v.value if v else None) for k, v in self.hot_state.items()},
            positions={k: str(v) for k, v in self.positions.items()},
        )

    # ------------------------------------------------------------------ decisions

    async def _touch_prices(self, symbol: str) -> tuple[Decimal | None, Decimal | None]:
        """Best bid/ask from the state-builder, used when no mark price is known yet."""
        try:
            raw = await self.bus.request(subjects.service_query(subjects.STATE_BUILDER, "symbols"), timeout_s=1.0)
            row = adapters.parse_symbols_reply(raw).get(symbol)
        except Exception as exc:  # noqa: BLE001 - timeout, no responders, bad reply: price stays unknown
            self.log.warning("state_builder_unavailable", symbol=symbol, error=f"{type(exc).__name__}: {exc}")
            return None, None
        if row is None:
            return None, None
        if self.hot_state.get(symbol) is None:
            self.hot_state[symbol] = row.hot_state
        if row.mark_price is not None:
            self.mark_prices.setdefault(symbol, row.mark_price)
        return row.best_bid, row.best_ask

    async def decide(self, order: SubmitOrder) -> OrderApproved | OrderDenied | None:
        """Check an order and publish its decision (None when it was already decided)."""
        async with self._decide_lock:
            if order.client_order_id in self.decided:
                self.log.info("order_already_decided", client_order_id=order.client_order_id)
                return None
            bid = ask = None
            if order.price is None and order.stop_price is None and order.symbol not in self.mark_prices:
                bid, ask = await self._touch_prices(order.symbol)
            price = reference_price(order, self.mark_prices.get(order.symbol), bid, ask)
            decision = check_order(
                order,
                trading_state=self.trading.state,
                hot_state=self.hot_state.get(order.symbol),
                position=self.positions.get(order.symbol, Decimal(0)),
                reference_price=price,
                limits=self.limits,
            )
            venue = order.venue or self.venue
            coid = order.client_order_id
            correlation = order.correlation_id or order.idempotency_key
            result: OrderApproved | OrderDenied
            if decision.approved:
                result = OrderApproved(order=order, correlation_id=correlation, causation_id=order.message_id)
                await self.bus.publish(
                    subjects.evt_order("approved", venue, order.symbol), result, msg_id=f"approved:{coid}"
                )
            else:
                result = OrderDenied(
                    order=order, reason=decision.reason, correlation_id=correlation, causation_id=order.message_id
                )
                await self.bus.publish(
                    subjects.evt_order("denied", venue, order.symbol), result, msg_id=f"denied:{coid}"
                )
            self.decided.add(coid)
            self.log.info(
                "order_approved" if decision.approved else "order_denied",
                client_order_id=coid,
                symbol=order.symbol,
                side=order.side.value,
                quantity=str(order.quantity),
                reason=decision.reason,
                trading_state=self.trading.state.value,
            )
            return result

    async def on_order_message(self, message: Message, delivery: Delivery) -> None:
        """Durable `risk-orders` / `risk-signals` handler."""
        match message:
            case SubmitOrder():
                await self.decide(message)
            case SignalGenerated():
                await self.decide(signal_to_order(message, self.venue))
            case _:
                self.log.debug("message_ignored", subject=delivery.subject, type=type(message).__name__)

    # ------------------------------------------------------------------ trading state

    async def change_state(self, trigger: TradingTrigger, operator: str, reason: str) -> tuple[str, str]:
        """Apply a trigger: publish `TradingStateChanged` durably, persist, then return (new, previous).

        Raises:
            InvalidTransition: the trigger is not allowed now.
        """
        async with self._state_lock:
            previous = self.trading.state
            current = next_trading_state(previous, trigger)
            event = TradingStateChanged(previous=previous, current=current, reason=reason, operator=operator)
            await self.bus.publish(subjects.EVT_TRADING_STATE, event)
            record = TradingStateRecord(state=current, reason=reason, operator=operator, ts_ns=self.clock())
            await adapters.write_trading_state(self.bus, record)
            self.trading = record
            self.log.info(
                "trading_state_changed",
                previous=previous.value,
                current=current.value,
                operator=operator,
                reason=reason,
            )
            return current.value, previous.value

    def _request_handler(self, trigger: TradingTrigger) -> Callable[[bytes], Any]:
        async def handle(payload: bytes) -> bytes:
            try:
                request = _request_decoder.decode(payload or b"{}")
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return _error("bad_request", str(exc))
            if not request.reason.strip():
                return _error("bad_request", "a reason is required")
            try:
                current, previous = await self.change_state(trigger, request.operator, request.reason)
            except InvalidTransition as exc:
                return _error("invalid_transition", str(exc))
            return msgspec.json.encode({"trading_state": current, "previous": previous})

        return handle

    async def serve_state(self, payload: bytes) -> bytes:
        """`svc.risk.state`: current trading state, positions and hot state."""
        return msgspec.json.encode(
            {
                "trading_state": self.trading.state.value,
                "reason": self.trading.reason,
                "operator": self.trading.operator,
                "ts_ns": self.trading.ts_ns,
                "positions": {symbol: str(qty) for symbol, qty in self.positions.items()},
                "hot_state": {symbol: (s.value if s else None) for symbol, s in self.hot_state.items()},
            }
        )

    async def serve(self) -> None:
        """Register the request/reply endpoints."""
        await self.bus.serve(subjects.service_query(subjects.RISK, "halt"), self._request_handler(TradingTrigger.HALT))
        await self.bus.serve(
            subjects.service_query(subjects.RISK, "resume"), self._request_handler(TradingTrigger.RESUME)
        )
        await self.bus.serve(
            subjects.service_query(subjects.RISK, "reduce"), self._request_handler(TradingTrigger.REDUCE)
        )
        await self.bus.serve(subjects.service_query(subjects.RISK, "state"), self.serve_state)


def _error(code: str, message: str) -> bytes:
    return msgspec.json.encode({"error": {"code": code, "message": message}})

"""risk's message → handler tables: which part handles each followed event, durable message and
`svc.risk.*` request.

The handlers themselves live with their responsibility: `decisions` (orders and signals),
`dependencies` (followed hot state, links, state-builder liveness, bus loss, degradation level),
`breaker_effects` (breaker inputs from events, and what a trip or reset does), `monitor` (periodic
checks), `flattening`, `trading_control` (halt/resume/reduce), `recovery` (snapshots and replay).
What they share is `core.RiskCore`; `RiskService` adds only the routing to them.
"""

from __future__ import annotations

from functools import partial

import msgspec
from nats.aio.msg import Msg

from libs.bus import Delivery, RequestHandler
from libs.metrics import STAGE_GATEWAY_TO_RISK, STAGE_RISK_DECISION, STAGE_SIGNAL_TO_RISK, metrics_of
from libs.telemetry import tracer
from proto import subjects
from proto.codec import decode
from proto.envelope import Message
from proto.messages import (
    DegradationLevelChanged,
    EnableStrategy,
    Heartbeat,
    HotStateStatusChanged,
    LinkStateChanged,
    MarkPrice,
    OrderAccepted,
    OrderApproved,
    OrderCanceled,
    OrderDenied,
    OrderFilled,
    OrderRejected,
    PositionChanged,
    SignalGenerated,
    SubmitOrder,
)
from proto.replies import RiskStateReply

from . import breaker_effects, decisions, dependencies, entry_gates, recovery, trading_control, venue_rules
from .core import RiskCore
from .state import apply
from .trading_state import TradingTrigger


class RiskService(RiskCore):
    """risk in one process: the shared `RiskCore` and the tables routing each message to its part."""

    async def on_core_event(self, msg: Msg) -> None:
        """Core-NATS follower of hot state, positions, marks, order events, degradation, strategy commands."""
        try:
            message = decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.log.warning("event_rejected", subject=msg.subject, error=str(exc)[:200])
            return
        try:
            await self.on_event(message)
        except Exception as exc:  # one bad event must not stop the follower; logged with its cause
            self.log.exception("event_failed", exc, subject=msg.subject, type=type(message).__name__)

    async def on_event(self, message: Message) -> None:
        """Apply one followed event (dispatch by type)."""
        match message:
            case OrderFilled() | OrderRejected() | OrderCanceled() | OrderAccepted() | OrderApproved() | OrderDenied():
                apply(self.state, message)
            case HotStateStatusChanged():
                if self.hot_state.get(message.symbol) != message.current:
                    self.since[f"hot_state.{message.symbol}"] = message.ts_event_ns
                self.hot_state[message.symbol] = message.current
            case PositionChanged():
                await breaker_effects.on_position(self, message)
            case MarkPrice():
                await breaker_effects.on_mark(self, message)
            case DegradationLevelChanged():
                await dependencies.refresh_degradation(self)
            case EnableStrategy():
                await breaker_effects.on_strategy_enabled(self, message)
            case Heartbeat() if message.component == subjects.STATE_BUILDER:
                dependencies.heard_state_builder(self)
            case LinkStateChanged() if message.venue == self.venue and message.link == subjects.MARKET_WS_LINK:
                dependencies.on_market_link(self, message.current, message.reason)
            case LinkStateChanged() if message.venue in self.venues and message.link == subjects.ORDER_LINK:
                dependencies.on_order_link(self, message)
            case _:
                pass

    async def on_order_message(self, message: Message, delivery: Delivery) -> None:
        """Durable `risk-orders` / `risk-signals` handler."""
        received_ns = self.clock()
        # The span is a child of the publisher's (the bus made its context current): one trace per order.
        with tracer(subjects.RISK).start_as_current_span("risk.decision"):
            match message:
                case SubmitOrder():
                    await decisions.decide(self, message)
                case SignalGenerated():
                    order = decisions.signal_to_order(message, self.venue)
                    await decisions.decide(self, order, confidence=message.confidence)
                case _:
                    self.log.debug("message_ignored", subject=delivery.subject, type=type(message).__name__)
                    return
        metrics = metrics_of(self.bus)
        if metrics is not None:
            stage = STAGE_GATEWAY_TO_RISK if isinstance(message, SubmitOrder) else STAGE_SIGNAL_TO_RISK
            metrics.order_stage(stage, (received_ns - message.ts_init_ns) / 1e9)
            deciding_s = (self.clock() - received_ns) / 1e9
            metrics.order_stage(STAGE_RISK_DECISION, deciding_s)
            metrics.decision("risk", deciding_s)

    async def on_orders_event(self, message: Message, delivery: Delivery) -> None:
        """Durable `risk-events` handler (ORDERS `evt.order.>`, `evt.fill.>`, `evt.position.>`).

        A durable consumer rather than a core subscription: its ack floor tells a restart exactly
        what was fully processed, and what happened while risk was down is delivered, not lost.
        """
        match message:
            case OrderApproved() | OrderDenied():
                # Its own decisions too: applied once (live right after deciding, or here after a restart).
                self.replay_message(message, delivery.stream_sequence)
            case _:
                await self.on_event(message)
        recovery.after_applied(self, delivery.stream_sequence)

    async def serve_state(self, payload: bytes) -> bytes:
        """`svc.risk.state`: trading state, degradation, positions, pending orders, hot state, breakers."""
        reply = RiskStateReply(
            trading_state=self.trading.state,
            reason=self.trading.reason,
            operator=self.trading.operator,
            ts_ns=self.trading.ts_ns,
            degradation_level=self.degradation,
            positions=dict(self.state.positions),
            pending={symbol: list(self.pending.totals(symbol)) for symbol in sorted(self.limits.symbols)},
            hot_state=dict(self.hot_state),
            breakers={b.id: b.state for b in self.breakers.all()} if self.breakers else {},
            entries_halted=dependencies.entries_halted(self),
            recovery=self.recovery.as_dict() if self.recovery else None,
            orders_seq=self.orders_seq,
        )
        return msgspec.json.encode(reply)

    async def serve(self) -> None:
        """Register the request/reply endpoints."""
        for subject, handler in self.request_handlers().items():
            await self.bus.serve(subject, handler)

    def request_handlers(self) -> dict[str, RequestHandler]:
        """`svc.risk.*` subject → its handler: the request/reply table."""
        return {
            subjects.SVC_RISK_HALT: trading_control.request_handler(self, TradingTrigger.HALT),
            subjects.SVC_RISK_RESUME: trading_control.request_handler(self, TradingTrigger.RESUME),
            subjects.SVC_RISK_REDUCE: trading_control.request_handler(self, TradingTrigger.REDUCE),
            subjects.SVC_RISK_STATE: self.serve_state,
            subjects.SVC_RISK_ENTRY_GATES: partial(entry_gates.serve_entry_gates, self),
            subjects.SVC_RISK_BREAKER_RESET: partial(breaker_effects.reset_breaker, self),
            subjects.SVC_RISK_VALIDATE_ORDER: partial(
                venue_rules.serve_validate_order, self, touch=decisions.touch_prices
            ),
        }

"""risk's service object: the state its parts share, and the message → handler tables.

The handlers themselves live with their responsibility: `decisions` (orders and signals),
`dependencies` (followed hot state, links, state-builder liveness, bus loss, degradation level),
`breaker_effects` (breaker inputs from events, and what a trip or reset does), `monitor` (periodic
checks), `flattening`, `trading_control` (halt/resume/reduce), `recovery` (snapshots and replay).
`RiskService` only holds what they share and routes each message to one of them.
"""

from __future__ import annotations

import asyncio
from functools import partial

import msgspec
from nats.aio.msg import Msg

from libs.bus import Bus, Delivery, RequestHandler
from libs.clock import Clock, monotonic_clock
from libs.latency import LatencyWindow
from libs.logging import Logger
from libs.service_snapshots import RecoveryReport, SnapshotKeeper
from libs.snapshot import SnapshotPolicy
from proto import subjects
from proto.codec import decode
from proto.enums import ConnectionState, DegradationLevel, HotStateStatus
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

from . import adapters, breaker_effects, decisions, dependencies, recovery, trading_control
from . import snapshot as snap
from .breaker_rules import BreakerBoard, restore_newer
from .checks import RiskLimits
from .exposure import PendingExposure
from .liveness import StateBuilderWatch
from .state import RiskState, apply
from .trades import TradeTracker
from .trading_state import TradingStateRecord, TradingTrigger


class RiskService:
    """What risk's handlers share (one instance per process) and which handler each message goes to.

    Shared: the rebuilt `state` (changed only by `state.apply`), the trading state record, the
    followed view of the outside (hot state, links, state-builder, bus, degradation level), the
    breakers, and the bus, log and clocks they act through.
    """

    def __init__(
        self,
        bus: Bus,
        log: Logger,
        limits: RiskLimits,
        venue: str,
        clock: Clock,
        trading: TradingStateRecord,
        *,
        breakers: BreakerBoard | None = None,
        monotonic: Clock = monotonic_clock,
        resources: adapters.ProcResources | None = None,
        snapshots: SnapshotKeeper[snap.RiskSnapshot] | None = None,
        policy: SnapshotPolicy | None = None,
        backup_venue: str = "",
    ) -> None:
        self.bus = bus
        self.log = log
        self.limits = limits
        self.venue = venue
        """The main venue (market data, and orders unless routed to the backup)."""
        self.backup_venue = backup_venue
        """A configured backup venue ("" none): new entries in flat symbols go there while the main
        venue's order link is down (FM-N6, `route_order`)."""
        self.order_links: dict[str, ConnectionState | None] = {}
        """Order link state per venue, from the position processes' `LinkStateChanged` (link `orders`)."""
        self.clock = clock
        self.monotonic = monotonic
        self.trading = trading
        self.hot_state: dict[str, HotStateStatus | None] = {}
        self.market_link: ConnectionState | None = None
        """The venue's market-data stream state (None: never heard of; no market-data to wait for)."""
        self.state = RiskState(venue=venue, backup_venue=backup_venue)
        """What risk derives from the ORDERS stream: changed only by `apply` (live and replay alike)."""
        self.degradation: DegradationLevel | None = DegradationLevel.NORMAL
        self.breakers = breakers
        self.latency = LatencyWindow(size=200, minimum=20)  # decision latency for CB-4 (its baseline is configured)
        self.resources = resources
        self.trading_lock = asyncio.Lock()
        self.decide_lock = asyncio.Lock()
        self.breaker_lock = asyncio.Lock()
        self.state_builder = StateBuilderWatch()
        self.bus_lost: str | None = None
        """Why new entries are HALTED by a lost bus connection (FM-C6), None when not; never persisted."""
        self.bus_tasks: set[asyncio.Task[None]] = set()
        self.revalidation: asyncio.Task[None] | None = None
        self.snapshots = snapshots
        self.policy = policy
        self.recovery: RecoveryReport | None = None

    @property
    def venues(self) -> tuple[str, ...]:
        """Venues this desk trades on: the main one, then the backup if configured."""
        return self.state.venues

    @property
    def pending(self) -> PendingExposure:
        """Approved orders not yet filled, rejected or canceled."""
        return self.state.pending

    @property
    def trades(self) -> TradeTracker:
        """Position changes as trades (CB-1/CB-3 inputs)."""
        return self.state.trades

    @property
    def orders_seq(self) -> int:
        """Highest ORDERS sequence reflected in memory (live consumer or replay)."""
        return self.state.orders_seq

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
        match message:
            case SubmitOrder():
                await decisions.decide(self, message)
            case SignalGenerated():
                order = decisions.signal_to_order(message, self.venue)
                await decisions.decide(self, order, confidence=message.confidence)
            case _:
                self.log.debug("message_ignored", subject=delivery.subject, type=type(message).__name__)

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

    def capture(self, orders_seq: int) -> snap.RiskSnapshot:
        """Everything risk derived from the ORDERS stream up to `orders_seq`, plus breakers and trading state."""
        return snap.capture(self.state, orders_seq, self.breakers, self.trading, self.clock())

    def restore(self, snapshot: snap.RiskSnapshot) -> None:
        """Load a snapshot into memory (breakers only where newer than what is loaded: see `load_breakers`)."""
        snap.restore(self.state, snapshot)
        if self.breakers is not None:
            restore_newer(self.breakers, snapshot.breakers)

    def replay_message(self, message: Message, stream_seq: int) -> None:
        """Apply one ORDERS message of the replayed range to memory only (idempotent).

        No publishes and no breaker counting: everything in the range was processed with its effects
        before (KV breaker records include it), or is an order command whose decision follows on the log.
        """
        self.state.orders_seq = max(self.state.orders_seq, stream_seq)
        apply(self.state, message)

    async def serve_state(self, payload: bytes) -> bytes:
        """`svc.risk.state`: trading state, degradation, positions, pending orders, hot state, breakers."""
        return msgspec.json.encode(
            {
                "trading_state": self.trading.state.value,
                "reason": self.trading.reason,
                "operator": self.trading.operator,
                "ts_ns": self.trading.ts_ns,
                "degradation_level": self.degradation.value if self.degradation else None,
                "positions": {symbol: str(qty) for symbol, qty in self.state.positions.items()},
                "pending": {
                    symbol: [str(q) for q in self.pending.totals(symbol)] for symbol in sorted(self.limits.symbols)
                },
                "hot_state": {symbol: (s.value if s else None) for symbol, s in self.hot_state.items()},
                "breakers": {b.id: b.state.value for b in self.breakers.all()} if self.breakers else {},
                "entries_halted": dependencies.entries_halted(self),
                "recovery": self.recovery.as_dict() if self.recovery else None,
                "orders_seq": self.orders_seq,
            }
        )

    async def serve(self) -> None:
        """Register the request/reply endpoints."""
        for name, handler in self.request_handlers().items():
            await self.bus.serve(subjects.service_query(subjects.RISK, name), handler)

    def request_handlers(self) -> dict[str, RequestHandler]:
        """`svc.risk.<name>` → its handler: the request/reply table."""
        return {
            "halt": trading_control.request_handler(self, TradingTrigger.HALT),
            "resume": trading_control.request_handler(self, TradingTrigger.RESUME),
            "reduce": trading_control.request_handler(self, TradingTrigger.REDUCE),
            "state": self.serve_state,
            "breaker_reset": partial(breaker_effects.reset_breaker, self),
        }

"""risk's handlers: order and signal decisions, circuit breakers and their effects, degradation
effects, halt/resume/state/breaker-reset requests, and the followers that feed them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
from nats.aio.msg import Msg

from libs.breaker import BreakerState
from libs.bus import Bus, Delivery
from libs.ids import client_order_id_for
from libs.latency import LatencyWindow
from libs.logging import Logger
from libs.service_snapshots import Loaded, RecoveryReport, SnapshotKeeper, StreamLog, snapshot_fits_stream
from libs.snapshot import SnapshotPolicy
from proto import subjects
from proto.codec import decode
from proto.enums import (
    AlertSeverity,
    ConnectionState,
    DegradationLevel,
    HotStateStatus,
    OrderSource,
    TradingState,
)
from proto.envelope import Message
from proto.messages import (
    AlertRaised,
    AlertResolved,
    BackgroundWorkPaused,
    BackgroundWorkResumed,
    BreakerStateChanged,
    CancelOrder,
    DegradationLevelChanged,
    DisableStrategy,
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
    TradingStateChanged,
)

from . import adapters
from . import snapshot as snap
from .breaker_rules import BreakerBoard, ResourceSample, StrategyMalfunctionBreaker, restore_breaker, restore_newer
from .breakers import (
    ABNORMAL_MARKET,
    RAPID_LOSS,
    RESOURCE_EXHAUSTION,
    BreakerChange,
    BreakerNotTripped,
    RiskBreaker,
)
from .checks import UNATTRIBUTED, Decision, RiskLimits, check_order, reduces_exposure, reference_price
from .exposure import PendingExposure
from .liveness import StateBuilderWatch, reply_hot_state
from .routing import OrderLinks, flatten_orders, route_order, split_book
from .state import RiskState, apply, seed_position, track_position
from .trades import TradeTracker
from .trading_state import InvalidTransition, TradingStateRecord, TradingTrigger, next_trading_state

Clock = Callable[[], int]
RISK_OPERATOR = "risk"
BOOK_DEPTH_LEVELS = 20
MAX_REMEMBERED_ORDERS = 10_000

SEVERITY: dict[str, AlertSeverity] = {
    RAPID_LOSS: AlertSeverity.P0,
    ABNORMAL_MARKET: AlertSeverity.P1,
    RESOURCE_EXHAUSTION: AlertSeverity.P1,
}
FLATTEN_LEVELS = frozenset({DegradationLevel.EMERGENCY_MODE, DegradationLevel.HARD_SHUTDOWN})
BUS_LOST_ALERT = "bus-lost.risk"
PROBE_TIMEOUT_S = 0.5
REVALIDATE_RETRY_S = 0.5


class _OperatorRequest(msgspec.Struct, kw_only=True):
    operator: str = "unknown"
    reason: str = ""


class _BreakerResetRequest(msgspec.Struct, kw_only=True):
    breaker: str = ""
    operator: str = ""
    reason: str = ""


_request_decoder = msgspec.json.Decoder(_OperatorRequest)
_reset_decoder = msgspec.json.Decoder(_BreakerResetRequest)


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
        stop_loss=signal.stop_loss,
        take_profit=signal.take_profit,
        correlation_id=signal.correlation_id or signal.message_id,
        causation_id=signal.message_id,
    )


class RiskService:
    """The risk engine's live state and handlers (one instance per process)."""

    def __init__(
        self,
        bus: Bus,
        log: Logger,
        limits: RiskLimits,
        venue: str,
        clock: Clock,
        state: TradingStateRecord,
        *,
        breakers: BreakerBoard | None = None,
        monotonic: Clock = time.monotonic_ns,
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
        self.trading = state
        self.hot_state: dict[str, HotStateStatus | None] = {}
        self.market_link: ConnectionState | None = None
        """The venue's market-data stream state (None: never heard of; no market-data to wait for)."""
        self.state = RiskState(venue=venue, backup_venue=backup_venue)
        """What risk derives from the ORDERS stream: changed only by `apply` (live and replay alike)."""
        self.degradation: DegradationLevel | None = DegradationLevel.NORMAL
        self.breakers = breakers
        self.latency = LatencyWindow(size=200, minimum=20)  # decision latency for CB-4 (its baseline is configured)
        self.resources = resources
        self._state_lock = asyncio.Lock()
        self._decide_lock = asyncio.Lock()
        self._breaker_lock = asyncio.Lock()
        self.state_builder = StateBuilderWatch()
        self.bus_lost: str | None = None
        """Why new entries are HALTED by a lost bus connection (FM-C6), None when not; never persisted."""
        self._bus_tasks: set[asyncio.Task[None]] = set()
        self._revalidation: asyncio.Task[None] | None = None
        self.snapshots = snapshots
        self.policy = policy
        self.recovery: RecoveryReport | None = None

    # ------------------------------------------------------------------ followers

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

    def on_order_link(self, event: LinkStateChanged) -> None:
        """A position process's order link changed (`orders`): routing follows it (FM-N6)."""
        previous = self.order_links.get(event.venue)
        self.order_links[event.venue] = event.current
        if previous != event.current:
            self.log.info("order_link_changed", venue=event.venue, previous=previous, current=event.current)

    def links(self) -> OrderLinks:
        return OrderLinks(main=self.venue, backup=self.backup_venue, states=dict(self.order_links))

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
                await self.on_position(message)
            case MarkPrice():
                await self.on_mark(message)
            case DegradationLevelChanged():
                await self.refresh_degradation()
            case EnableStrategy():
                await self.on_strategy_enabled(message)
            case Heartbeat() if message.component == subjects.STATE_BUILDER:
                self.heard_state_builder()
            case LinkStateChanged() if message.venue == self.venue and message.link == subjects.MARKET_WS_LINK:
                self.on_market_link(message.current, message.reason)
            case LinkStateChanged() if message.venue in self.venues and message.link == subjects.ORDER_LINK:
                self.on_order_link(message)
            case _:
                pass

    def on_market_link(self, state: ConnectionState | None, reason: str) -> None:
        """The venue's market-data stream: entries wait while it is not CONNECTED (FM-N1).

        After a reconnect the stream is SUSPECT for the clean window; the books may already be
        VALID again (a snapshot and 3 fresh updates), but SPEC resumes trading only after the window.
        """
        previous = self.market_link
        self.market_link = state
        if state != previous:
            self.log.info("market_link_changed", previous=previous, current=state, reason=reason)

    # ------------------------------------------------------------------ lost dependencies (FM-C1, FM-C6)

    def heard_state_builder(self) -> None:
        """A sign of life from the state-builder (heartbeat or answer).

        When it comes back after being dead, the hot states risk remembers from before are
        forgotten: a restarted state-builder starts INVALID, and its view is re-read before any entry.
        """
        known_before = self.state_builder.last_seen_ns is not None
        if self.state_builder.heard(self.monotonic()) and known_before:
            for symbol in self.hot_state:
                self.hot_state[symbol] = None
            self.log.warning("state_builder_back", action_taken="hot state re-read before new entries")

    async def probe_state_builder(self) -> bool:
        """Ask the state-builder for every symbol's hot state; False when it does not answer."""
        try:
            raw = await self.bus.request(
                subjects.service_query(subjects.STATE_BUILDER, "symbols"), timeout_s=PROBE_TIMEOUT_S
            )
            rows = adapters.parse_symbols_reply(raw)
        except Exception as exc:  # noqa: BLE001 - timeout, no responders, bad reply: it counts as dead
            self.log.debug("state_builder_unavailable", error=f"{type(exc).__name__}: {exc}")
            return False
        self.heard_state_builder()
        for symbol, row in rows.items():
            self.hot_state[symbol] = reply_hot_state(row.hot_state, row.age_ms)
            if row.mark_price is not None:
                self.state.mark_prices.setdefault(symbol, row.mark_price)
        return True

    def entries_halted(self) -> str | None:
        """Why new entries are HALTED by a lost dependency right now (None: they are not)."""
        if self.bus_lost is not None:
            return self.bus_lost
        return self.state_builder.down_reason(self.monotonic())

    def market_link_gate(self, symbol: str) -> str | None:
        """Why an entry in `symbol` waits for the market-data stream (None: it does not).

        Only said of a VALID symbol: one that is not VALID is denied for that, more precise, reason.
        """
        if self.hot_state.get(symbol) != HotStateStatus.VALID:
            return None
        if self.market_link in (ConnectionState.SUSPECT, ConnectionState.DISCONNECTED):
            return f"market data stream {self.market_link.value}: clean window after a reconnect (FM-N1)"
        return None

    def on_bus_connection(self, connected: bool) -> None:
        """`Bus` connection listener: lost → new entries HALTED; back → re-validate, then lift."""
        if not connected:
            if self.bus_lost is None:
                self.bus_lost = "bus connection lost: new entries HALTED until reconnected and re-validated"
                self.log.error("bus_lost", action_taken="new entries HALTED (exits still allowed)")
                alert = AlertRaised(
                    key=BUS_LOST_ALERT,
                    severity=AlertSeverity.P1,
                    component=subjects.RISK,
                    title="risk lost the bus: new entries HALTED until reconnected and re-validated",
                )
                self._spawn(self.bus.publish_buffered(subjects.EVT_ALERT_RAISED, alert))
            return
        if self.bus_lost is not None:
            self.bus_lost = "bus reconnected: new entries HALTED until state is re-validated"
            if self._revalidation is not None:
                self._revalidation.cancel()  # a flapping bus: only the newest re-validation counts
            self._revalidation = self._spawn(self.revalidate())

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._bus_tasks.add(task)  # keep a reference until it ends
        task.add_done_callback(self._bus_tasks.discard)
        return task

    async def revalidate(self) -> None:
        """After a reconnect: re-read hot state, positions and degradation, then lift the bus halt."""
        while self.bus.connected:
            try:
                for symbol in sorted(self.limits.symbols):
                    self.hot_state[symbol] = await adapters.read_hot_state(self.bus, symbol)
                    for venue in self.venues:
                        last = await adapters.read_last_position(self.bus, venue, symbol)
                        if last is not None:
                            track_position(self.state, last)
                await self.refresh_degradation()
                await self.probe_state_builder()  # its answer, when there is one, is fresher than KV
                await self.bus.publish(
                    subjects.EVT_ALERT_RESOLVED,
                    AlertResolved(key=BUS_LOST_ALERT, component=subjects.RISK, reason="reconnected and re-validated"),
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a flapping bus: keep the halt, try again
                self.log.warning("revalidation_failed", error=f"{type(exc).__name__}: {exc}", action_taken="retry")
                await asyncio.sleep(REVALIDATE_RETRY_S)
                continue
            self.bus_lost = None
            self.log.warning(
                "bus_revalidated",
                hot_state={k: (v.value if v else None) for k, v in self.hot_state.items()},
                action_taken="new entries allowed again",
            )
            return

    async def on_position(self, event: PositionChanged) -> None:
        """A position change: track it, and count its realized PnL for CB-1 and CB-3."""
        update = apply(self.state, event)
        if update is None or self.breakers is None:
            return
        now = self.clock()
        changes: list[BreakerChange] = []
        rapid = self.breakers.rapid_loss
        change = rapid.on_trade_update(update, now)
        if change is not None:
            changes.append(change)
        else:
            await self._persist(rapid, now)
        if update.closed is not None and update.closed.strategy is not None:
            breaker = self.breakers.strategy(update.closed.strategy)
            change = breaker.on_closed_trade(update.closed.pnl, now)
            if change is not None:
                changes.append(change)
            else:
                await self._persist(breaker, now)
            self.log.info(
                "trade_closed",
                symbol=update.closed.symbol,
                strategy=update.closed.strategy,
                pnl=str(update.closed.pnl),
                session_pnl=str(rapid.session_pnl),
                consecutive_losses=rapid.consecutive_losses,
            )
        for change in changes:
            await self.apply_breaker_change(change)

    async def on_mark(self, mark: MarkPrice) -> None:
        """A mark price: the reference for notional checks and an input of CB-2."""
        apply(self.state, mark)
        if self.breakers is None:
            return
        now = self.clock()
        market = self.breakers.abnormal_market
        for change in (
            market.on_price(mark.symbol, mark.mark_price, now),
            market.on_funding(mark.symbol, mark.funding_rate, now) if mark.funding_rate is not None else None,
        ):
            if change is not None:
                await self.apply_breaker_change(change)

    async def on_strategy_enabled(self, command: EnableStrategy) -> None:
        """An operator re-enabled a strategy (gateway): that is the manual reset of its CB-3."""
        if self.breakers is None:
            return
        breaker = self.breakers.strategies.get(command.strategy)
        if breaker is None or not breaker.is_open:
            return
        change = breaker.reset(command.operator, command.reason or "strategy re-enabled", self.clock())
        await self.apply_breaker_change(change, announce_enable=False)

    async def load_initial_state(self) -> None:
        """Hot state from KV; positions from the ORDERS stream unless `recover` rebuilt them from it.

        After a recovery the positions are the log's up to what risk processed, and the `risk-events`
        consumer delivers the rest with their effects (CB-1/CB-3 counting): jumping to the newest
        position here would make those older events look stale and skip their counting.
        """
        # The followers are subscribed already: an event that arrives while a KV read is under way
        # is newer than what the read returns, so a read only fills what no event has set.
        if self.market_link is None:
            link = await adapters.read_link_state(self.bus, self.venue, subjects.MARKET_WS_LINK)
            if self.market_link is None:
                self.on_market_link(link, "from KV")
        for venue in self.venues:
            if venue not in self.order_links:
                state = await adapters.read_link_state(self.bus, venue, subjects.ORDER_LINK)
                self.order_links.setdefault(venue, state)
        for symbol in sorted(self.limits.symbols):
            if symbol not in self.hot_state:
                status = await adapters.read_hot_state(self.bus, symbol)
                self.hot_state.setdefault(symbol, status)
            if self.recovery is not None:
                continue
            for venue in self.venues:
                last = await adapters.read_last_position(self.bus, venue, symbol)
                if last is not None:
                    seed_position(self.state, last)
        await self.refresh_degradation()
        self.log.info(
            "risk_state_loaded",
            trading_state=self.trading.state.value,
            degradation=self.degradation.value if self.degradation else None,
            hot_state={k: (v.value if v else None) for k, v in self.hot_state.items()},
            positions={k: str(v) for k, v in self.state.positions.items()},
        )

    # ------------------------------------------------------------------ degradation level

    async def refresh_degradation(self) -> None:
        """Re-read KV `degradation_level` and apply its effects when it changed (SPEC §5)."""
        level, ts_ns = await adapters.read_degradation_level(self.bus)
        previous = self.degradation
        if level == previous:
            return
        self.degradation = level
        self.log.warning(
            "degradation_level_applied",
            previous=previous.value if previous else None,
            current=level.value if level else "UNKNOWN",
            action_taken="pre-trade checks follow the level",
        )
        if level == DegradationLevel.HARD_SHUTDOWN and self.trading.state != TradingState.HALTED:
            await self.change_state(TradingTrigger.HALT, RISK_OPERATOR, "degradation level HARD_SHUTDOWN")
        if level in FLATTEN_LEVELS:
            await self.flatten(f"{level.value}:{ts_ns}", f"degradation level {level.value}")

    # ------------------------------------------------------------------ breakers

    async def _persist(self, breaker: RiskBreaker, now: int) -> None:
        """Save a breaker's counters (no state change) so a restart resumes them."""
        await adapters.write_breaker(self.bus, breaker.snapshot(now))

    async def apply_breaker_change(self, change: BreakerChange, *, announce_enable: bool = True) -> None:
        """Act on a breaker transition, then persist it, publish it and raise/resolve its alert.

        The protective action comes first: a crash after it leaves the system safer, never less safe.
        """
        async with self._breaker_lock:
            record = change.record
            breaker_id = change.breaker
            self.log.warning(
                "breaker_state_changed",
                breaker=breaker_id,
                previous=change.previous.value,
                current=change.current.value,
                reason=change.reason,
                operator=change.operator,
            )
            strategy = record.details.get("strategy") if breaker_id.startswith("CB-3-") else None
            if change.tripped:
                await self._on_trip(change, strategy)
            elif change.current == BreakerState.CLOSED:
                await self._on_close(change, strategy, announce_enable)
            await adapters.write_breaker(self.bus, record)
            await self.bus.publish(
                subjects.evt_breaker(breaker_id),
                BreakerStateChanged(
                    breaker=breaker_id,
                    previous=change.previous.value,
                    current=change.current.value,
                    reason=change.reason,
                    operator=change.operator,
                    details=dict(record.details),
                ),
            )
            alert_key = f"breaker.{breaker_id}"
            if change.tripped:
                await self.bus.publish(
                    subjects.EVT_ALERT_RAISED,
                    AlertRaised(
                        key=alert_key,
                        severity=SEVERITY.get(breaker_id, AlertSeverity.P1),
                        component=subjects.RISK,
                        title=f"{breaker_id} {record.title} tripped",
                        details={"reason": change.reason, "reset": record.reset_mode},
                    ),
                )
            elif change.current == BreakerState.CLOSED:
                await self.bus.publish(
                    subjects.EVT_ALERT_RESOLVED,
                    AlertResolved(key=alert_key, component=subjects.RISK, reason=change.reason),
                )

    async def _on_trip(self, change: BreakerChange, strategy: str | None) -> None:
        reason = f"{change.breaker} {change.record.title}: {change.reason}"
        tripped_at = change.record.tripped_at_ns or 0
        if change.breaker == RAPID_LOSS:
            if self.trading.state != TradingState.HALTED:
                await self.change_state(TradingTrigger.HALT, RISK_OPERATOR, reason)
            await self.flatten(f"{RAPID_LOSS}:{tripped_at}", reason)
        elif change.breaker == RESOURCE_EXHAUSTION:
            await self.bus.publish(subjects.EVT_BACKGROUND_WORK, BackgroundWorkPaused(reason=change.reason))
            await adapters.write_background_work(self.bus, True, change.reason, self.clock())
        elif strategy is not None:
            command = DisableStrategy(strategy=strategy, operator=RISK_OPERATOR, reason=reason)
            await self.bus.publish(
                subjects.cmd_strategy(strategy, "disable"), command, msg_id=f"disable:{change.breaker}:{tripped_at}"
            )
        # CB-2 needs no action here: the pre-trade checks read the breaker, and positions are kept.

    async def _on_close(self, change: BreakerChange, strategy: str | None, announce_enable: bool) -> None:
        if change.breaker == RESOURCE_EXHAUSTION:
            await self.bus.publish(subjects.EVT_BACKGROUND_WORK, BackgroundWorkResumed(reason=change.reason))
            await adapters.write_background_work(self.bus, False, change.reason, self.clock())
        elif strategy is not None and announce_enable:
            operator = change.operator or RISK_OPERATOR
            command = EnableStrategy(strategy=strategy, operator=operator, reason=change.reason)
            await self.bus.publish(subjects.cmd_strategy(strategy, "enable"), command)

    async def load_breakers(self, strategies: tuple[str, ...]) -> None:
        """Restore every breaker from KV (an unreadable record trips it: fail closed) and list them all."""
        board = self.breakers
        if board is None:
            return
        for name in strategies:
            board.strategy(name)
        now = self.clock()
        for breaker in board.all():
            record, error = await adapters.read_breaker(self.bus, breaker.id)
            if record is not None and record.ts_ns < breaker.record.ts_ns:
                # KV is written at every change before anything else, so it is the newest unless it
                # was lost or rolled back: then the snapshot's record (restored in memory) stands.
                self.log.warning(
                    "breaker_kv_older_than_snapshot",
                    breaker=breaker.id,
                    kv_state=record.state.value,
                    snapshot_state=breaker.state.value,
                    action_taken="snapshot record kept and written back to KV",
                )
                await adapters.write_breaker(self.bus, breaker.record)
            elif record is not None:
                restored = restore_breaker(board, breaker, record)
                self.log.info("breaker_restored", breaker=breaker.id, state=restored.state.value)
            elif error is not None:
                self.log.error("breaker_unreadable", breaker=breaker.id, error=error, action_taken="treated as OPEN")
                breaker.record = msgspec.structs.replace(
                    breaker.record, state=BreakerState.OPEN, reason=f"unreadable persisted record: {error}", ts_ns=now
                )
                await adapters.write_breaker(self.bus, breaker.record)
            elif breaker.record.ts_ns:
                self.log.warning("breaker_missing_in_kv", breaker=breaker.id, action_taken="snapshot record written")
                await adapters.write_breaker(self.bus, breaker.record)
            else:
                await adapters.write_breaker(self.bus, breaker.snapshot(now))

    async def reset_breaker(self, payload: bytes) -> bytes:
        """`svc.risk.breaker_reset` {"breaker", "operator", "reason"}: manual reset, reason required.

        A CB-1 reset clears the breaker but leaves trading HALTED: the operator resumes explicitly.
        """
        try:
            request = _reset_decoder.decode(payload or b"{}")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _error("bad_request", f"expected {{'breaker', 'operator', 'reason'}}: {exc}")
        if not request.breaker.strip():
            return _error("bad_request", "a breaker id is required")
        if not request.operator.strip():
            return _error("bad_request", "an operator is required")
        if not request.reason.strip():
            return _error("bad_request", "a reason is required")
        breaker = self.breakers.get(request.breaker) if self.breakers is not None else None
        if breaker is None:
            return _error("not_found", f"unknown breaker {request.breaker}")
        try:
            change = breaker.reset(request.operator, request.reason.strip(), self.clock())
        except BreakerNotTripped as exc:
            return _error("not_tripped", str(exc))
        await self.apply_breaker_change(change)
        reply: dict[str, Any] = {
            "breaker": breaker.id,
            "state": change.current.value,
            "previous": change.previous.value,
            "trading_state": self.trading.state.value,
        }
        if breaker.id == RAPID_LOSS and self.trading.state == TradingState.HALTED:
            reply["note"] = "breaker cleared; trading stays HALTED until an operator resumes it"
        return msgspec.json.encode(reply)

    # ------------------------------------------------------------------ monitor

    async def monitor_once(self) -> None:
        """One pass of the periodic checks: hot state, degradation, CB-2 expiry and book depth, CB-4 resources.

        The hot state is re-read from the state-builder every pass: the events keep it current,
        and this bounds how long a lost or late one (a reply or read that raced with an event,
        a re-published event arriving after a newer one) can leave risk with a wrong view.
        """
        await self.probe_state_builder()
        await self.refresh_degradation()
        if self.breakers is None:
            return
        market = self.breakers.abnormal_market
        for symbol in sorted(self.limits.symbols):
            sample = await self._book_sample(symbol)
            if sample is None:
                continue
            depth, mid = sample
            for change in (
                market.on_depth(symbol, depth, self.clock()),
                market.on_price(symbol, mid, self.clock()) if mid is not None else None,
            ):
                if change is not None:
                    await self.apply_breaker_change(change)
        for change in market.tick(self.clock(), self.hot_state):
            await self.apply_breaker_change(change)
        resource_sample = ResourceSample(
            cpu_fraction=self.resources.cpu_fraction() if self.resources else None,
            memory_fraction=self.resources.memory_fraction() if self.resources else None,
            p99_latency_ms=self.latency.p99(),
        )
        change = self.breakers.resource.on_sample(resource_sample, self.clock())
        if change is not None:
            await self.apply_breaker_change(change)

    async def _book_sample(self, symbol: str) -> tuple[Decimal, Decimal | None] | None:
        request = msgspec.json.encode({"symbol": symbol, "depth": BOOK_DEPTH_LEVELS})
        try:
            raw = await self.bus.request(subjects.service_query(subjects.STATE_BUILDER, "book"), request, timeout_s=0.5)
        except Exception as exc:  # noqa: BLE001 - timeout or no responders: no sample this round
            self.log.debug("book_sample_unavailable", symbol=symbol, error=f"{type(exc).__name__}: {exc}")
            return None
        self.heard_state_builder()
        return adapters.book_depth(raw)

    async def monitor(self, interval_s: float) -> None:
        """Run `monitor_once` forever; a failed pass is logged and retried next period."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.monitor_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the monitor must survive a bus hiccup; logged, retried
                self.log.exception("monitor_failed", exc, action_taken="retry next period")

    # ------------------------------------------------------------------ flattening

    async def flatten(self, key: str, reason: str) -> list[SubmitOrder]:
        """Close every open position at market (reduce-only, approved by risk itself) and cancel
        pending entries; idempotent per `key`."""
        for coid in self.pending.entries():
            await self.bus.publish(
                subjects.CMD_ORDER_CANCEL,
                CancelOrder(client_order_id=coid, operator=RISK_OPERATOR, reason=f"flatten: {reason}"),
                msg_id=f"cancel:{coid}",
            )
        orders = flatten_orders(self.state.positions, key, self.venue)  # each on the venue that holds it
        for order in orders:
            approved = OrderApproved(order=order, correlation_id=order.correlation_id, ts_event_ns=self.clock())
            await self.bus.publish(
                subjects.evt_order("approved", order.venue, order.symbol),
                approved,
                msg_id=f"approved:{order.client_order_id}",
            )
            apply(self.state, approved)
        self.log.error(
            "positions_flattened",
            key=key,
            reason=reason,
            orders={o.symbol: f"{o.side.value} {o.quantity}" for o in orders},
            canceled=len(self.pending.entries()),
            action_taken="reduce-only MARKET orders approved",
        )
        return orders

    # ------------------------------------------------------------------ decisions

    async def _touch_prices(self, symbol: str) -> tuple[Decimal | None, Decimal | None]:
        """Best bid/ask from the state-builder, used when no mark price is known yet."""
        try:
            raw = await self.bus.request(subjects.service_query(subjects.STATE_BUILDER, "symbols"), timeout_s=1.0)
            row = adapters.parse_symbols_reply(raw).get(symbol)
        except Exception as exc:  # noqa: BLE001 - timeout, no responders, bad reply: price stays unknown
            self.log.warning("state_builder_unavailable", symbol=symbol, error=f"{type(exc).__name__}: {exc}")
            return None, None
        self.heard_state_builder()
        if row is None:
            return None, None
        if self.hot_state.get(symbol) is None:
            self.hot_state[symbol] = row.hot_state
        if row.mark_price is not None:
            self.state.mark_prices.setdefault(symbol, row.mark_price)
        return row.best_bid, row.best_ask

    def _breaker_gates(self, order: SubmitOrder) -> tuple[TradingState, str | None, str | None]:
        """(effective trading state, CB-2 pause reason, CB-3 reason) for one order."""
        board = self.breakers
        if board is None:
            return self.trading.state, None, None
        state = TradingState.HALTED if board.rapid_loss.is_open else self.trading.state
        paused = board.abnormal_market.record.reason if board.abnormal_market.is_open else None
        disabled = None
        if order.strategy is not None:
            strategy: StrategyMalfunctionBreaker | None = board.strategies.get(order.strategy)
            if strategy is not None and strategy.is_open:
                disabled = strategy.record.reason
        return state, paused, disabled

    def _holders(self, symbol: str) -> frozenset[str]:
        """Who holds `symbol`: its open positions' owners (on any venue) and the owners of entries in flight."""
        holders = self.pending.entry_holders(symbol)
        for venue in self.venues:
            book = self.state.book(venue, symbol)
            if self.state.positions.get(book, Decimal(0)) != 0:
                holders.add(self.trades.owner(book) or UNATTRIBUTED)
        return frozenset(holders)

    def route(self, order: SubmitOrder) -> tuple[SubmitOrder, str] | None:
        """The order as it goes out, on the venue `route_order` picks, and why when it is not the
        one asked for; None when it names a venue this desk does not trade on."""
        positions = {venue: self.state.position(venue, order.symbol) for venue in self.venues}
        route = route_order(order, self.links(), positions, self.pending.venues(order.symbol, self.venue))
        if route is None:
            return None
        if route.venue == order.venue:
            return order, route.reason
        return msgspec.structs.replace(order, venue=route.venue), route.reason

    async def decide(self, order: SubmitOrder, confidence: Decimal | None = None) -> OrderApproved | OrderDenied | None:
        """Check an order and publish its decision (None when it was already decided)."""
        async with self._decide_lock:
            started = self.monotonic()
            if order.client_order_id in self.state.decided:
                self.log.info("order_already_decided", client_order_id=order.client_order_id)
                return None
            bid = ask = None
            if order.price is None and order.stop_price is None and order.symbol not in self.state.mark_prices:
                bid, ask = await self._touch_prices(order.symbol)
            price = reference_price(order, self.state.mark_prices.get(order.symbol), bid, ask)
            routed = self.route(order)
            now = self.clock()
            trading_state = self.trading.state
            position = Decimal(0)
            if routed is None:
                # Approved, it would wait on a subject no position process reads.
                decision = Decision(
                    approved=False, reason=f"venue {order.venue!r} is not configured (venues: {', '.join(self.venues)})"
                )
                routed_because = ""
            else:
                order, routed_because = routed
                position = self.state.position(order.venue, order.symbol)
                if not reduces_exposure(order, position) and (
                    self.hot_state.get(order.symbol) is None or not self.state_builder.alive(self.monotonic())
                ):
                    await self.probe_state_builder()  # an entry needs a live state-builder's word (FM-C1)
                pending_buy, pending_sell = self.pending.totals(order.symbol)
                trading_state, paused, disabled = self._breaker_gates(order)
                entries_halted = self.entries_halted() or self.market_link_gate(order.symbol)
                decision = check_order(
                    order,
                    trading_state=trading_state,
                    hot_state=self.hot_state.get(order.symbol),
                    position=position,
                    reference_price=price,
                    limits=self.limits,
                    degradation=self.degradation,
                    pending_buy=pending_buy,
                    pending_sell=pending_sell,
                    entries_paused=paused,
                    strategy_disabled=disabled,
                    confidence=confidence,
                    recent_strategy_orders=self.state.rates.count(order.strategy, now) if order.strategy else 0,
                    entries_halted=entries_halted,
                    holders=self._holders(order.symbol),
                )
            venue = order.venue if routed is not None else self.venue  # a denial is recorded all the same
            coid = order.client_order_id
            correlation = order.correlation_id or order.idempotency_key
            result: OrderApproved | OrderDenied
            if decision.approved:
                # Stamped with the decision's time: the rate window counts it from then, live and on replay.
                result = OrderApproved(
                    order=order, correlation_id=correlation, causation_id=order.message_id, ts_event_ns=now
                )
                await self.bus.publish(
                    subjects.evt_order("approved", venue, order.symbol), result, msg_id=f"approved:{coid}"
                )
            else:
                result = OrderDenied(
                    order=order,
                    reason=decision.reason,
                    correlation_id=correlation,
                    causation_id=order.message_id,
                    ts_event_ns=now,
                )
                await self.bus.publish(
                    subjects.evt_order("denied", venue, order.symbol), result, msg_id=f"denied:{coid}"
                )
            apply(self.state, result)  # what was published, exactly as a replay will apply it
            self.latency.add((self.monotonic() - started) / 1_000_000)
            self.log.info(
                "order_approved" if decision.approved else "order_denied",
                client_order_id=coid,
                symbol=order.symbol,
                side=order.side.value,
                quantity=str(order.quantity),
                reason=decision.reason,
                venue=venue,
                routed=routed_because or None,
                trading_state=trading_state.value,
                degradation=self.degradation.value if self.degradation else "UNKNOWN",
            )
            return result

    async def on_order_message(self, message: Message, delivery: Delivery) -> None:
        """Durable `risk-orders` / `risk-signals` handler."""
        match message:
            case SubmitOrder():
                await self.decide(message)
            case SignalGenerated():
                await self.decide(signal_to_order(message, self.venue), confidence=message.confidence)
            case _:
                self.log.debug("message_ignored", subject=delivery.subject, type=type(message).__name__)

    # ------------------------------------------------------------------ snapshots and recovery (SPEC §8, FM-C1)

    async def on_orders_event(self, message: Message, delivery: Delivery) -> None:
        """Durable `risk-events` handler (ORDERS `evt.order.>`, `evt.fill.>`, `evt.position.>`).

        A durable consumer rather than a core subscription: its ack floor tells a restart exactly
        what was fully processed, and what happened while risk was down is delivered, not lost.
        """
        match message:
            case OrderApproved() | OrderDenied():
                # Its own decisions too: one redelivered after a restart must count as pending again.
                self.replay_message(message, delivery.stream_sequence)
            case _:
                await self.on_event(message)
        self.after_applied(delivery.stream_sequence)

    def after_applied(self, stream_seq: int) -> None:
        """ORDERS message `stream_seq` is reflected in memory: checkpoint when the policy says so."""
        self.state.orders_seq = max(self.state.orders_seq, stream_seq)
        if self.snapshots is None or self.policy is None or not self.policy.record():
            return
        self.policy.taken()
        self.snapshots.submit(self.orders_seq, self.capture(self.orders_seq))

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

    async def recover(self, log: StreamLog[snap.RiskSnapshot]) -> RecoveryReport:
        """Rebuild memory from the latest valid snapshot and the ORDERS tail, then validate (SPEC §8).

        The replayed range ends where the durable `risk-events` consumer's acknowledgements end:
        the consumer then delivers the rest with effects. Without a snapshot (none, all corrupt,
        Postgres down) the whole stream is replayed: the log is the source of truth (FM-C3).
        """
        loaded: Loaded[snap.RiskSnapshot] = await log.load_snapshot()
        if loaded.corrupt:
            await self._alert_corrupt(list(loaded.corrupt))
        if not loaded.available:
            self.log.warning("snapshot_store_unavailable_at_start", action_taken="full replay of the ORDERS stream")
        first, last = await log.bounds()
        processed = await log.processed_through()
        end = last if processed is None else min(processed, last)
        snapshot = loaded.state
        mode = "full-replay"
        start = max(first, 1)
        if snapshot is not None and snapshot_fits_stream(self.log, snapshot.orders_seq, first, last, "full replay"):
            self.restore(snapshot)
            mode = "snapshot"
            start = snapshot.orders_seq + 1
        replayed = await log.replay(start, end, self.replay_message) if last else 0
        self.validate_recovered()
        report = RecoveryReport(
            mode=mode,
            snapshot_seq=snapshot.orders_seq if mode == "snapshot" and snapshot is not None else None,
            replayed=replayed,
            live_from=end + 1,
            corrupt_snapshots=len(loaded.corrupt),
            snapshot_store="available" if loaded.available else "unavailable",
        )
        self.recovery = report
        self.log.info("recovery_replayed", **report.as_dict(), consumer_processed_through=processed)
        return report

    def validate_recovered(self) -> None:
        """§7-style checks of the rebuilt state; a violation is logged and made safe, never trusted."""
        for item in self.state.pending.to_state():
            if item.quantity <= 0 or item.filled < 0 or item.filled >= item.quantity:
                self.log.error("recovery_pending_invalid", client_order_id=item.client_order_id, action_taken="dropped")
                self.pending.release(item.client_order_id)
        for book, quantity in self.state.positions.items():
            venue, symbol = split_book(book, self.venue)
            if symbol not in self.limits.symbols or venue not in self.venues:
                self.log.warning("recovery_position_unknown_symbol", venue=venue, symbol=symbol, quantity=str(quantity))

    async def _alert_corrupt(self, corrupt: list[str]) -> None:
        alert = AlertRaised(
            key=f"snapshot-corrupt.{subjects.RISK}",
            severity=AlertSeverity.P1,
            component=subjects.RISK,
            title="corrupt risk snapshot skipped (FM-C3); recovered from an older one or a full replay",
            details={"snapshots": corrupt[:10]},
        )
        try:
            await self.bus.publish(subjects.EVT_ALERT_RAISED, alert)
        except Exception as exc:  # noqa: BLE001 - the snapshot_corrupt log lines still record it
            self.log.warning("alert_publish_failed", key=alert.key, error=str(exc)[:300])

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

    def _resume_blocker(self) -> tuple[str, str] | None:
        """Why a resume must be refused now: a tripped CB-1 or HARD_SHUTDOWN."""
        if self.breakers is not None and self.breakers.rapid_loss.is_open:
            return (
                "breaker_open",
                f"CB-1 rapid loss is tripped ({self.breakers.rapid_loss.record.reason}); reset it first",
            )
        if self.degradation == DegradationLevel.HARD_SHUTDOWN:
            return "hard_shutdown", "degradation level is HARD_SHUTDOWN: only a manual restart leaves it"
        return None

    def _request_handler(self, trigger: TradingTrigger) -> Callable[[bytes], Any]:
        async def handle(payload: bytes) -> bytes:
            try:
                request = _request_decoder.decode(payload or b"{}")
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return _error("bad_request", str(exc))
            if not request.reason.strip():
                return _error("bad_request", "a reason is required")
            if trigger == TradingTrigger.RESUME:
                blocker = self._resume_blocker()
                if blocker is not None:
                    return _error(*blocker)
            try:
                current, previous = await self.change_state(trigger, request.operator, request.reason)
            except InvalidTransition as exc:
                return _error("invalid_transition", str(exc))
            return msgspec.json.encode({"trading_state": current, "previous": previous})

        return handle

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
                "entries_halted": self.entries_halted(),
                "recovery": self.recovery.as_dict() if self.recovery else None,
                "orders_seq": self.orders_seq,
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
        await self.bus.serve(subjects.service_query(subjects.RISK, "breaker_reset"), self.reset_breaker)


def _error(code: str, message: str) -> bytes:
    return msgspec.json.encode({"error": {"code": code, "message": message}})

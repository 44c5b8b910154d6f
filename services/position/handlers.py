"""position's handlers: the service object that wires its parts and maps each message to its effect.

| input | effect |
|---|---|
| `evt.order.approved.<venue>.>` (durable `<component>-orders`) | `Submission.take_approved`, invariants, stops |
| `evt.order.denied.<venue>.>` (durable `<component>-denials`) | `Submission.take_denied` |
| `cmd.order.cancel` (durable `<component>-cancels`) | `Cancels.take_cancel`, then invariants and stops |
| user-data stream event | `VenueSync.on_user_event` |
| venue breaker transition | `VenueSync.on_breaker` |
| supervision round (`poll_forever`) | snapshot, flush projections, degradation, reconcile, flatten, poll, countdown |
| `svc.<component>.state` | `state_query` |

The parts: `core` (shared state and effects), `ledger` (orders, positions), `execution` (venue
answers), `lookup`, `protection_levels`, `submission`, `cancels`, `protection`, `integrity`,
`flatten`, `reconciliation`, `venue_sync`, `snapshots`, `recovery`. All order work runs under
`core.lock`. Every state change is published on the ORDERS stream before (or together with) its
projection write; while the venue link is down (breaker open) or not reconciled, orders wait as
PENDING_SUBMISSION and nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from libs.breaker import BreakerState, BreakerTransition
from libs.bus import Bus, Delivery
from libs.clock import Clock
from libs.errors import TransientError
from libs.lease import Lease, LeaseLost
from libs.logging import Logger
from libs.metrics import STAGE_RISK_TO_POSITION, metrics_of
from libs.orders_model import is_terminal
from libs.projections import Projections
from libs.service_snapshots import RecoveryReport
from libs.snapshot import SnapshotPolicy, SnapshotStore
from libs.stamping import IdSource
from libs.telemetry import order_traces, tracer
from proto import subjects
from proto.enums import OrderStatus
from proto.envelope import Message, new_message_id
from proto.messages import CancelOrder, OrderApproved, OrderDenied
from proto.replies import PositionMemoryState, PositionOrderState, PositionProtectionState, PositionStateReply

from .adapters import VENUE_FAILURES
from .cancels import Cancels
from .core import Core
from .domain import CountdownPlanner, Retention, is_protective
from .execution import Execution
from .flatten import Flattener
from .integrity import Integrity
from .ledger import Ledger
from .lookup import OrderLookup
from .protection import ProtectiveStops
from .protection_levels import ProtectionLevels
from .reconciliation import Reconciliation
from .recovery import Recovery
from .snapshots import Snapshots
from .stuck_triggers import StuckTriggers
from .submission import Submission
from .venue_port import VenuePort
from .venue_sync import UserStream, VenueSync


class PositionService:
    """Orders, fills and positions of one venue; the only component that writes to it.

    Args:
        bus: the message bus.
        log: structured logger.
        projections: Postgres projections.
        client: the venue port (a `VenueLink`, or a fake with the same methods).
        venue: venue name used in subjects; only this venue's orders are this service's.
        clock: wall clock in ns (handlers only; domain code gets times passed in).
        component: this process's component name (`subjects.position_component`): it names the
            durable consumers, the snapshots, alerts and the keys of the orders it names itself.
        symbols: traded symbols (reconciliation scope).
        countdown_ms: venue auto-cancel countdown kept armed per symbol with live orders (0: off).
        countdown_refresh_s: re-arm period of that countdown.
        safety_poll_s: period of the live-order poll while the user-data stream delivers updates.
        stop_trigger_timeout_s: a protective order triggered at the venue without its MARKET order
            for longer than this is stuck (`stuck_triggers`).
        lease: the single-writer lease (SPEC §8); checked right before every venue write (None: no check).
        on_lease_lost: called once when a venue write finds the lease gone (the service stops writing).
        snapshots: where snapshots go (None: never snapshot, recover by folding the whole log).
        snapshot_policy: when to snapshot (counted in ORDERS events this service publishes; the
            stream growing by `every_events` messages from any writer also makes one due).
        retention: how many finished orders stay in memory and in snapshots (default `Retention()`).
        message_ids: the id source of the messages it publishes (tests pass `libs.stamping.sequential_ids`).
    """

    def __init__(
        self,
        bus: Bus,
        log: Logger,
        projections: Projections,
        client: VenuePort,
        venue: str,
        clock: Clock,
        *,
        component: str = subjects.POSITION,
        symbols: Sequence[str] = (),
        countdown_ms: int = 0,
        countdown_refresh_s: float = 20.0,
        safety_poll_s: float = 5.0,
        stop_trigger_timeout_s: float = 5.0,
        lease: Lease | None = None,
        on_lease_lost: Callable[[], None] | None = None,
        snapshots: SnapshotStore | None = None,
        snapshot_policy: SnapshotPolicy | None = None,
        retention: Retention | None = None,
        message_ids: IdSource = new_message_id,
    ) -> None:
        self.core = core = Core(
            bus,
            log,
            projections,
            client,
            venue,
            clock,
            component=component,
            symbols=symbols,
            countdown=CountdownPlanner(countdown_ms, int(countdown_refresh_s * 1e9)),
            lease=lease,
            on_lease_lost=on_lease_lost,
            snapshot_policy=snapshot_policy,
            retention=retention or Retention(),
            message_ids=message_ids,
        )
        self.orders_durable = subjects.position_orders_consumer(component)
        self.denials_durable = subjects.position_denials_consumer(component)
        self.execution = Execution(core)
        self.lookup = OrderLookup(core)
        self.integrity = Integrity(core)
        self.levels = ProtectionLevels(core)
        self.submission = Submission(core, self.execution, self.lookup, self.levels, self.orders_durable)
        self.cancels = Cancels(core, self.execution, self.submission, self.orders_durable)
        self.protection = ProtectiveStops(core, self.levels, self.submission, self.cancels, self.lookup)
        self.flatten = Flattener(core, self.submission, self.cancels, self.lookup, self.integrity, self.protection)
        self.reconciliation = Reconciliation(core, self.execution, self.submission, self.integrity, self.protection)
        self.venue_sync = VenueSync(
            core,
            self.execution,
            self.submission,
            self.integrity,
            self.protection,
            self.lookup,
            safety_poll_s=safety_poll_s,
        )
        self.stuck_triggers = StuckTriggers(
            core, self.execution, self.submission, core.triggers, stop_trigger_timeout_s
        )
        self.snapshots = Snapshots(core, snapshots, snapshot_policy, (self.orders_durable, self.denials_durable))
        self.recovery = Recovery(core, self.snapshots, self.levels, self.integrity)

    @property
    def ledger(self) -> Ledger:
        """The orders and positions of this venue (`core.ledger`)."""
        return self.core.ledger

    # ------------------------------------------------------------------ consumers

    async def on_approved(self, message: Message, delivery: Delivery) -> None:
        """Durable `position-orders`: send an approved order to the venue exactly once."""
        if not isinstance(message, OrderApproved):
            return
        core = self.core
        metrics = metrics_of(core.bus)
        if metrics is not None and delivery.num_delivered == 1:
            metrics.order_stage(STAGE_RISK_TO_POSITION, (core.clock() - message.ts_init_ns) / 1e9)
        coid = message.order.client_order_id
        with tracer(subjects.POSITION).start_as_current_span(
            "position.submit", attributes={"bulwark.client_order_id": coid}
        ):
            order_traces.remember(coid)  # the venue's answer and fills join this trace, however they come back
            async with core.lock:
                if await self.submission.take_approved(message, delivery):
                    await self.integrity.check_invariants()
                    await self.protection.maintain()

    async def on_denied(self, message: Message, delivery: Delivery) -> None:
        """Durable `position-denials`: record a risk refusal in the projection."""
        if not isinstance(message, OrderDenied):
            return
        async with self.core.lock:
            await self.submission.take_denied(message, delivery)

    async def on_cancel(self, message: Message, delivery: Delivery) -> None:
        """Durable `position-cancels`: cancel at the venue (idempotent: terminal orders are left alone).

        A cancel names no venue: every position process sees it and the one holding the order
        cancels it; one of an order not known here may wait for this venue's approvals (`Cancels`).
        """
        if not isinstance(message, CancelOrder):
            return
        async with self.core.lock:
            if await self.cancels.take_cancel(message, delivery):
                await self.integrity.check_invariants()
                await self.protection.maintain()

    async def on_user_event(self, event: dict) -> None:
        """One user-data stream event (`VenueSync.on_user_event`)."""
        await self.venue_sync.on_user_event(event)

    async def on_breaker(self, transition: BreakerTransition) -> None:
        """A venue breaker transition (`VenueSync.on_breaker`)."""
        metrics = metrics_of(self.core.bus)
        if metrics is not None and transition.current == BreakerState.OPEN and transition.previous != BreakerState.OPEN:
            metrics.breaker_tripped(transition.name)
        await self.venue_sync.on_breaker(transition)

    async def user_stream_forever(self, ws_bases: Sequence[str], stream: UserStream) -> None:
        """Consume the user-data stream forever (`VenueSync.user_stream_forever`)."""
        await self.venue_sync.user_stream_forever(ws_bases, stream)

    # ------------------------------------------------------------------ start and supervision

    async def recover(self) -> RecoveryReport:
        """Rebuild the ledger at start (`Recovery.recover`)."""
        return await self.recovery.recover()

    async def reconcile(self, symbols: Sequence[str]) -> None:
        """Reconcile with the venue (`Reconciliation.reconcile`)."""
        await self.reconciliation.reconcile(symbols)

    async def tick(self) -> None:
        """One supervision round: snapshot when due, reconcile when needed, poll, keep the dead-man's
        switch armed."""
        core = self.core
        async with core.lock:
            self.integrity.trim()
            await self.integrity.check_invariants(full=True)
        await self.snapshots.snapshot()
        await core.flush_projections()
        await core.refresh_degradation()
        if not core.reconciled:
            await self.reconciliation.reconcile(core.symbols)
        await self.flatten.enforce()
        now = core.clock()
        await self.venue_sync.poll_once(follow_live=self.venue_sync.follow_due(now))
        if core.triggers.since_ns:
            async with core.lock:
                await self.stuck_triggers.check()
        await self.venue_sync.refresh_countdowns()
        await self.venue_sync.keep_listen_key(now)

    async def poll_forever(self, interval_s: float = 1.0) -> None:
        """Run `tick` every `interval_s`; venue trouble is logged and retried next round."""
        core = self.core
        while True:
            # A user-stream (re)connect wakes the round at once: nothing is sent until it reconciled.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(core.wake.wait(), interval_s)
            core.wake.clear()
            try:
                await self.tick()
            except LeaseLost:
                return  # not the writer any more: `Core.guard` reported it, the service stops
            except (*VENUE_FAILURES, TransientError) as exc:
                core.log.warning("order_poll_failed", error=f"{type(exc).__name__}: {exc}", action_taken="retry")

    # ------------------------------------------------------------------ views

    def details(self) -> dict[str, Any]:
        """Heartbeat details."""
        core, orders = self.core, self.core.ledger.orders
        report = self.recovery.report
        return {
            "orders_open": sum(1 for order in orders.values() if not is_terminal(order.status)),
            "orders_queued": sum(1 for order in orders.values() if order.status == OrderStatus.PENDING_SUBMISSION),
            "reconciled": core.reconciled,
            "order_link": core.link_state.value,
            "user_stream": core.user_stream_up,
            "hard_shutdown": core.hard_shutdown,
            "flattening": core.flattening(),
            "protective_orders": sum(1 for o in orders.values() if is_protective(o) and not is_terminal(o.status)),
            "recovery": report.as_dict() if report is not None else None,
            "orders_in_memory": len(orders),
            "orders_evicted": core.ledger.orders_evicted,
            "snapshots": self.snapshots.stats(),
            **core.preflight_gate.fields(),
        }

    async def state_query(self, payload: bytes) -> bytes:
        """`svc.position.state`: orders (status, filled), positions, protections and the recovery report."""
        core, ledger = self.core, self.core.ledger
        report = self.recovery.report
        async with core.lock:
            reply = PositionStateReply(
                orders={
                    coid: PositionOrderState(status=o.status.value, filled_quantity=o.filled_quantity, symbol=o.symbol)
                    for coid, o in sorted(ledger.orders.items())
                },
                positions={symbol: p.quantity for symbol, p in sorted(ledger.positions.items())},
                protections={
                    # An absent level reads "None", as it always has (readers compare the text).
                    symbol: PositionProtectionState(
                        entry=p.entry, stop_loss=str(p.stop_loss), take_profit=str(p.take_profit)
                    )
                    for symbol, p in sorted(ledger.protections.items())
                },
                reconciled=core.reconciled,
                recovery=report.as_dict() if report is not None else None,
                memory=PositionMemoryState(
                    orders=len(ledger.orders),
                    evicted=ledger.orders_evicted,
                    evicted_until_ns=ledger.evicted_until_ns,
                    retention_s=core.retention.keep_ns / 1e9,
                    retention_max_terminal=core.retention.max_terminal,
                ),
            )
        return msgspec.json.encode(reply)

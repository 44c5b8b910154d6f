"""Submission: approved orders to the venue exactly once, queueing while they may not go out (link
down, unreconciled, behind earlier orders, a throttled request budget), a placement's errors, and
the unknown-order loop (query by client order id; not at the venue: resend once with the same id).

The venue is only called after the `OrderSubmitted` event is durable. Orders this service issues
itself (protective stops, flatten) are approved on ORDERS like any other order (`approve_own`). A
protective order the venue refuses as already triggered (-2021) is answered here by closing the
position at market, whatever path sent it (inline, the queue, a resend): never left bare.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from libs.binance.classify import classify, passes_with_time, retry_while_wanted, wait_asked_s
from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from libs.breaker import BreakerOpen
from libs.errors import TransientError
from libs.ids import client_order_id_for
from libs.lease import LeaseLost
from libs.metrics import STAGE_VENUE_ACK, metrics_of
from libs.orders_model import OrderRecord, OrderTrigger, is_terminal
from libs.projections import fold_events
from libs.service_snapshots import PG_ERRORS
from libs.telemetry import order_traces
from proto import subjects
from proto.codec import encode
from proto.enums import (
    AlertSeverity,
    ConnectionState,
    ErrorClass,
    OrderSource,
    OrderStatus,
    OrderType,
    Side,
)
from proto.messages import (
    DeadLettered,
    OrderApproved,
    OrderDenied,
    OrderQueued,
    OrderStatusUnknown,
    OrderSubmitted,
    SubmitOrder,
)

from .adapters import order_params, submit_is_ambiguous
from .core import Core
from .domain import (
    IMMEDIATE_TRIGGER_REASON,
    PROTECT_CLOSE_PREFIX,
    PROTECT_PREFIX,
    Protection,
    command_from_record,
    is_protective,
)
from .execution import Execution
from .lookup import OrderLookup
from .protection_levels import ProtectionLevels

if TYPE_CHECKING:
    from libs.bus import Delivery

ORDER_NOT_FOUND = -2013
DUPLICATE_CLIENT_ORDER_ID = -4116
WOULD_TRIGGER_IMMEDIATELY = -2021
"""Binance: a STOP_MARKET / TAKE_PROFIT_MARKET whose stop price the mark price has already passed."""
QUEUE_HOLD_S = 2.0
"""A poll sends queued orders while the request budget holds them back no longer than this (the
client's own wait for the budget); a longer hold (a Retry-After, a ban) waits for a later poll."""
QUERY_BACKOFF_S: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0)
"""Queries of an UNKNOWN order: the wait before the first, then doubling to the longest (FM-N7)."""


class Submission:
    """Approved orders → venue, the queue, placement errors and the unknown-order loop.

    Args:
        core: the shared state and effects.
        execution: applies the venue's answers.
        lookup: answers about orders beyond memory (and fresh keys for a protect-close).
        levels: where an entry's protective levels are remembered before it is sent.
        orders_durable: the approvals consumer (named in dead letters).
    """

    def __init__(
        self, core: Core, execution: Execution, lookup: OrderLookup, levels: ProtectionLevels, orders_durable: str
    ) -> None:
        self.core = core
        self.execution = execution
        self.lookup = lookup
        self.levels = levels
        self.orders_durable = orders_durable
        self.query_backoff_s: Sequence[float] = QUERY_BACKOFF_S

    # ------------------------------------------------------------------ approvals and denials

    async def take_approved(self, message: OrderApproved, delivery: Delivery) -> bool:
        """Send an approved order to the venue exactly once (under the order lock).

        Returns:
            False when the approval was handled before (nothing done), True when it was handled now.
        """
        core = self.core
        orders = core.ledger.orders
        command = message.order
        known = orders.get(command.client_order_id)
        if known is None:
            # Not in memory: finished orders leave it after the retention. Handled before? (§6)
            earlier = await self.lookup.approval_seen_before(command.client_order_id, message.ts_event_ns)
            if earlier is not None and earlier.venue != core.venue:
                # A client order id is one order system-wide (the projection's key): never a second.
                core.log.error(
                    "order_known_on_other_venue",
                    client_order_id=command.client_order_id,
                    other_venue=earlier.venue,
                    status=earlier.status.value,
                    action_taken="not sent",
                )
                return False
            if earlier is not None and is_terminal(earlier.status):
                core.log.info("order_already_known", client_order_id=command.client_order_id, via="projection")
                return False
            if earlier is not None:
                # Live in the projection only (a handler that failed half-way): take it back.
                orders[earlier.client_order_id] = earlier
                if earlier.status == OrderStatus.SUBMITTED:
                    # It may have reached the venue: query by client order id before any resend (FM-N7).
                    await self.mark_unknown(earlier, "found SUBMITTED in the projection, not in memory")
                known = earlier
        # Known but never sent and no protection recorded: folded from the log at recovery before
        # this (unacknowledged) approval was handled; handle it now.
        if known is not None and not (
            known.status == OrderStatus.PENDING_SUBMISSION
            and known.venue_order_id is None
            and (command.stop_loss or command.take_profit)
            and getattr(core.ledger.protections.get(command.symbol), "entry", None) != command.client_order_id
        ):
            core.log.info("order_already_known", client_order_id=command.client_order_id)
            return False
        if (command.stop_loss is not None or command.take_profit is not None) and not command.reduce_only:
            await self.levels.remember(
                Protection(command.client_order_id, command.symbol, command.stop_loss, command.take_profit)
            )
        if known is None:
            core.ledger.apply(message, delivery.stream_sequence)  # a new order, as a replay of the approval makes it
            order = orders[command.client_order_id]
        else:
            order = orders[known.client_order_id] = known
        try:
            backlog = self.backlog(order) if known is None else None
            if backlog is not None:
                await self.queue(order, backlog)
            else:
                await self.submit(order)
        except Exception:
            if order.status in (OrderStatus.PENDING_SUBMISSION, OrderStatus.SUBMITTED) and not order.resend_used:
                # Nothing reached the venue (or the queue write failed): forget it so the redelivery starts over.
                orders.pop(order.client_order_id, None)
            raise
        return True

    async def take_denied(self, message: OrderDenied, delivery: Delivery) -> None:
        """Record a risk refusal (under the order lock): folded into the ledger by `Ledger.apply`, as a
        replay folds it, then projected.

        Risk records a denial it could not route on its own venue's subject: such an order of another
        venue gets its projection row (as a rebuild from the log writes it) but, as in a replay, no
        place in this venue's memory.
        """
        core = self.core
        coid = message.order.client_order_id
        if coid in core.ledger.orders:
            return
        seq = delivery.stream_sequence
        core.ledger.apply(message, seq)
        order = core.ledger.orders.get(coid)
        if order is not None:
            await core.save(order)
            return
        row = fold_events([(message, seq)]).orders[coid]

        async def write_row() -> None:
            await core.projections.upsert_order(row, seq)

        try:
            await write_row()
        except PG_ERRORS as exc:
            core.defer(f"order:{coid}", write_row, exc)

    async def approve_own(self, command: SubmitOrder) -> OrderRecord:
        """Take an order this service issues itself into memory and approve it on the ORDERS stream
        like any order (projection rebuilds see where it came from); the caller sends it."""
        core = self.core
        coid = command.client_order_id
        now = core.clock()  # the order's `created_ns`, as a replay of the approval makes it
        approved = core.stamp(OrderApproved, order=command, ts_event_ns=now, ts_init_ns=now)
        subject = subjects.evt_order("approved", command.venue, command.symbol)
        seq = await core.publish(subject, approved, f"approved:{coid}", coid)
        core.ledger.apply(approved, seq)
        return core.ledger.orders[coid]

    def market_close(self, key: str, symbol: str, position: Decimal, *, correlation_id: str) -> SubmitOrder:
        """A reduce-only MARKET order closing `position` of `symbol` (flatten backstop, protect-close)."""
        return SubmitOrder(
            client_order_id=client_order_id_for(key),
            idempotency_key=key,
            source=OrderSource.RISK,
            symbol=symbol,
            side=Side.SELL if position > 0 else Side.BUY,
            order_type=OrderType.MARKET,
            quantity=abs(position),
            venue=self.core.venue,
            reduce_only=True,
            correlation_id=correlation_id,
        )

    # ------------------------------------------------------------------ the queue

    async def queue(self, order: OrderRecord, reason: str) -> None:
        """Keep an order PENDING_SUBMISSION (durable in the projection) until it may be sent."""
        # Decide: back to the queue (a placement surely not sent), or kept there with a new reason.
        # Record it (`OrderQueued`: published, applied by `Ledger.apply`, projected), as a replay folds it.
        status = order.status
        if status in (OrderStatus.SUBMITTED, OrderStatus.UNKNOWN):
            status = self.core.allows(order, OrderTrigger.NOT_SENT) or status
        if (status, reason) != (order.status, order.reason):
            await self.core.publish_status(order, "queued", OrderQueued, reason)
        else:
            await self.core.save(order)
        self.core.log.warning("order_queued", client_order_id=order.client_order_id, reason=reason)

    def backlog(self, order: OrderRecord) -> str | None:
        """Why a new order should wait in the queue instead of going out inline, or None.

        Orders go out oldest first: a new one waits behind queued ones. And while the request budget
        holds order placements back (a 429 halved the rate, FM-N2), sending inline would keep the
        approvals consumer, and every later approval behind it, waiting. Queued, the order is in the
        projection at once (visible, cancelable) and the poll sends it when its turn comes.
        """
        if not self.core.may_submit():
            return None  # `submit` queues it with the link's reason
        ahead = sum(
            1
            for other in self.core.ledger.orders.values()
            if other.status == OrderStatus.PENDING_SUBMISSION and other.client_order_id != order.client_order_id
        )
        if ahead:
            return f"queued: behind {ahead} earlier order(s)"
        hold = self.core.client.order_hold()
        if not hold.allowed:
            return f"queued: request budget ({hold.reason}) holds orders for {hold.wait_s:.1f}s"
        return None

    async def send_queued(self) -> None:
        """Send queued orders, oldest first, one per hold of the lock: approvals that arrive
        meanwhile are recorded (and queued behind) between two sends instead of waiting for all.

        An order whose sending fails is left queued for the next poll and the next one is tried:
        new orders queue behind old ones, so one that can never go out must not hold back the rest.
        """
        core = self.core
        queued = [o.client_order_id for o in core.ledger.orders.values() if o.status == OrderStatus.PENDING_SUBMISSION]
        for coid in queued:
            async with core.lock:
                order = core.ledger.orders.get(coid)
                hold = core.client.order_hold()
                if not core.may_submit() or (not hold.allowed and hold.wait_s > QUEUE_HOLD_S):
                    return  # the next poll tries again
                if order is None or order.status != OrderStatus.PENDING_SUBMISSION:
                    continue
                try:
                    await self.submit(order)
                except (LeaseLost, asyncio.CancelledError):
                    raise
                except Exception as exc:  # noqa: BLE001 - logged; the order stays queued for the next poll
                    core.log.warning(
                        "queued_order_send_failed",
                        client_order_id=coid,
                        error=f"{type(exc).__name__}: {exc}"[:300],
                        action_taken="left queued; next order tried",
                    )

    # ------------------------------------------------------------------ placement

    async def submit(self, order: OrderRecord) -> None:
        """Publish `OrderSubmitted`, write the projection, then place the order (never twice blind).

        In EMERGENCY_MODE / HARD_SHUTDOWN only reduce-only orders go out (SPEC §5).
        """
        core = self.core
        coid = order.client_order_id
        if core.flattening() and order.status == OrderStatus.PENDING_SUBMISSION and not order.reduce_only:
            # Risk approved this entry under the level it read; ours is up to one tick old (the
            # level may just have gone back to NORMAL): read it again before cancelling.
            await core.refresh_degradation()
        if core.flattening() and order.status == OrderStatus.PENDING_SUBMISSION:
            if not order.reduce_only:
                await self.execution.emit_canceled(order, "flatten: no new entries in EMERGENCY_MODE/HARD_SHUTDOWN")
                return
            if not is_protective(order) and core.ledger.position(order.symbol).quantity == 0:
                # Risk's flatten after ours (or after a stop): nothing left to reduce.
                await self.execution.emit_canceled(order, "flatten: position already flat")
                return
        if not core.may_submit():
            if core.link_state != ConnectionState.CONNECTED:
                reason = f"queued: venue order link {core.link_state.value}"
            else:
                reason = "queued: reconciliation with the venue pending"
            await self.queue(order, reason)
            return
        # UNKNOWN here is a resend (the venue said it does not hold the order): an entry like a new one.
        if order.status in (OrderStatus.PENDING_SUBMISSION, OrderStatus.UNKNOWN) and await self._preflight_stops(order):
            return
        await core.guard()
        core.allows(order, OrderTrigger.SUBMIT)  # logged when illegal; the placement decides what happened
        submitted = core.stamp(OrderSubmitted, client_order_id=coid, symbol=order.symbol, venue=order.venue)
        # Per newest event of the order: a retry publishes once, a send after the order was queued
        # back is on the log again (the replay then folds SUBMITTED, as here).
        sent = f"submitted:{coid}:{core.ledger.order_seq.get(coid, 0)}"
        await core.record(core.order_subject("submitted", order), submitted, sent, order)
        sent_ns = core.clock()
        try:
            with order_traces.span(subjects.POSITION, "venue.ack", coid, venue=order.venue):
                answer = await core.client.place_order(**order_params(order))
        except (VenueUnreachable, BreakerOpen) as exc:
            # Surely not sent: back to the queue, sent again once the venue is back.
            await self.queue(order, f"venue unreachable, queued: {exc}")
            return
        except VenueTimeout as exc:
            await self.mark_unknown(order, f"timeout: {exc}")
            await self.resolve_unknown(order)
            return
        except VenueError as exc:
            await self._on_place_error(order, exc)
            return
        acknowledged_ns = core.clock()
        order_traces.acknowledged(coid, acknowledged_ns)
        metrics = metrics_of(core.bus)
        if metrics is not None:
            metrics.order_stage(STAGE_VENUE_ACK, (acknowledged_ns - sent_ns) / 1e9)
        await self.execution.apply_venue_order(order, answer)

    async def _preflight_stops(self, order: OrderRecord) -> bool:
        """Queue an entry while the preflight of this connection is pending, reject it when it
        failed (`preflight_gate`); True when the order does not go out now."""
        gate = self.core.preflight_gate
        if gate.holds(order):
            if order.status != OrderStatus.PENDING_SUBMISSION or order.reason != f"queued: {gate.reason}":
                await self.queue(order, f"queued: {gate.reason}")
            return True
        if gate.refuses(order):
            self.core.log.warning(
                "order_refused_by_preflight", client_order_id=order.client_order_id, reason=gate.reason
            )
            await self.execution.emit_rejected(
                order, f"not sent: {gate.reason}"[:1000], error_class=ErrorClass.PERMANENT.value
            )
            return True
        return False

    async def _on_place_error(self, order: OrderRecord, exc: VenueError) -> None:
        coid = order.client_order_id
        if exc.code == DUPLICATE_CLIENT_ORDER_ID:
            # Our id is already at the venue (an earlier attempt landed): its state is the truth.
            self.core.log.warning("order_duplicate_at_venue", client_order_id=coid, action_taken="query")
            await self.query_and_apply(order)
            return
        if exc.code == WOULD_TRIGGER_IMMEDIATELY and is_protective(order):
            await self._triggered_at_placement(order, exc)
            return
        if submit_is_ambiguous(exc):
            await self.mark_unknown(order, f"HTTP {exc.status} code={exc.code}: {exc.msg}")
            await self.resolve_unknown(order)
            return
        found = classify(exc)
        if found.error_class in (ErrorClass.TRANSIENT, ErrorClass.RECOVERABLE):
            # A definite "not accepted, not now" that outlived its retries: keep it queued.
            await self.queue(order, f"{found.reason} (HTTP {exc.status} code={exc.code}), queued")
            return
        await self._reject(order, exc, found.error_class.value, found.reason)

    async def _reject(self, order: OrderRecord, exc: VenueError, error_class: str, why: str) -> None:
        """PERMANENT: the order is REJECTED, dead-lettered for the operator, and alerted."""
        core = self.core
        coid = order.client_order_id
        reason = f"venue rejected ({why}): code={exc.code} {exc.msg}"
        await self.execution.emit_rejected(order, reason, error_class=error_class, venue_code=exc.code)
        core.log.warning("order_rejected", client_order_id=coid, status=exc.status, code=exc.code, msg=exc.msg)
        letter = core.stamp(
            DeadLettered,
            consumer=self.orders_durable,
            subject=subjects.evt_order("approved", order.venue, order.symbol),
            reason=f"{error_class} {why}: HTTP {exc.status} code={exc.code} {exc.msg}"[:1000],
            deliveries=1,
            payload=encode(core.stamp(OrderApproved, order=command_from_record(order, core.stamp))).decode(),
            original_message_id=f"approved:{coid}",
        )
        await core.bus.publish(subjects.dlq(self.orders_durable), letter, msg_id=f"dlq:rejected:{coid}")
        if why == "auth":
            await core.alert(
                f"venue-auth:{core.venue}",
                AlertSeverity.P1,
                "venue refused our API key: no order can be placed",
                code=exc.code,
                msg=exc.msg,
            )
        else:
            await core.alert(
                f"order-rejected:{coid}", AlertSeverity.P2, "order rejected by the venue", coid=coid, reason=why
            )

    async def _triggered_at_placement(self, order: OrderRecord, exc: VenueError) -> None:
        """A stop or take-profit the venue refuses because the mark is already past it (-2021).

        Its level is passed: for a stop the loss limit, for a take-profit the target. Leaving the
        position without it is the one wrong answer, so the position is closed now with a reduce-only
        MARKET order (`protect-close:...`), as the venue would have done had the order rested.
        """
        core = self.core
        coid = order.client_order_id
        reason = f"{IMMEDIATE_TRIGGER_REASON} (code={exc.code} {exc.msg}): position closed at market instead"
        await self.execution.emit_rejected(order, reason, error_class=ErrorClass.PERMANENT.value, venue_code=exc.code)
        position = core.ledger.position(order.symbol).quantity
        core.log.error(
            "protection_triggered_at_placement",
            client_order_id=coid,
            symbol=order.symbol,
            type=order.order_type.value,
            stop_price=str(order.stop_price),
            position=str(position),
            action_taken="close the position at market (reduce-only)",
        )
        await core.alert(
            core.scoped(f"protection-triggered:{order.symbol}"),
            AlertSeverity.P1,
            "protective order would trigger immediately: position closed at market",
            coid=coid,
            type=order.order_type.value,
            stop_price=str(order.stop_price),
            position=str(position),
        )
        if position != 0:
            await self.protect_close(order, position)

    async def protect_close(self, order: OrderRecord, position: Decimal) -> None:
        """Close `position` with a reduce-only MARKET order in place of the protective `order`, as the
        venue would have had it triggered (`protect-close:<kind>:<entry>:<size>:<n>`)."""
        stem = order.idempotency_key[len(PROTECT_PREFIX) :].rsplit(":", 1)[0]  # <kind>:<entry>:<size>
        key = await self.lookup.fresh_key(f"{PROTECT_CLOSE_PREFIX}{stem}")
        command = self.market_close(key, order.symbol, position, correlation_id=order.client_order_id)
        close = await self.approve_own(command)
        await self.submit(close)

    # ------------------------------------------------------------------ the unknown-order loop (FM-N7)

    async def mark_unknown(self, order: OrderRecord, reason: str) -> None:
        """The outcome of a placement is unknown (timeout, 5xx): UNKNOWN until a query says."""
        core = self.core
        coid = order.client_order_id
        core.allows(order, OrderTrigger.AMBIGUOUS)  # an ambiguous answer is recorded whatever the state says
        unknown = core.stamp(OrderStatusUnknown, client_order_id=coid, symbol=order.symbol, reason=reason)
        # Per newest event of the order: a retry publishes once, a resend that times out again is on
        # the log again (a de-duplicated event would be applied here but missing from the replay).
        once = f"unknown:{coid}:{core.ledger.order_seq.get(coid, 0)}"
        await core.record(core.order_subject("unknown", order), unknown, once, order)
        core.log.warning("order_status_unknown", client_order_id=coid, reason=reason, action_taken="query")

    async def resolve_unknown(self, order: OrderRecord, backoff_s: Sequence[float] | None = None) -> bool:
        """Query an UNKNOWN order until the venue answers; -2013 means not placed: resend once, same id.

        One query per entry of `backoff_s` (the wait before the first, then doubling up to the
        last), under `retry_while_wanted`: what time cures is asked again, unless the error asks
        for a longer wait than that (a Retry-After, an open breaker's cool-down) or time does not
        cure it (PERMANENT): then the order stays UNKNOWN and the poll or reconciliation resolves it.

        Returns:
            True when the venue's answer was taken, False when the order is still UNKNOWN.
        """
        log = self.core.log
        coid = order.client_order_id
        waits = tuple(self.query_backoff_s if backoff_s is None else backoff_s) or (0.0,)
        longest_s = max(waits)
        attempts = 0

        def wanted() -> bool:
            return attempts < len(waits)

        def passes_soon(error: BaseException) -> bool:
            return passes_with_time(error) and (wait_asked_s(error) or 0.0) <= longest_s

        def on_retry(error: BaseException, delay_s: float) -> None:
            log.warning(
                "order_query_failed", client_order_id=coid, error=str(error), action_taken=f"retry in {delay_s}s"
            )

        async def query() -> dict:
            nonlocal attempts
            attempts += 1
            return await self.core.client.query_order(order.symbol, orig_client_order_id=coid)

        retrying = retry_while_wanted(
            wanted,
            first_wait_s=waits[1] if len(waits) > 1 else 0.0,
            max_wait_s=longest_s,
            retryable=passes_soon,
            asked_max_s=longest_s,
            on_retry=on_retry,
        )
        await asyncio.sleep(waits[0])
        try:
            answer = await retrying(query)
        except VenueError as exc:
            if exc.code == ORDER_NOT_FOUND:
                await self.not_at_venue(order)
                return True
            log.warning("order_query_failed", client_order_id=coid, error=str(exc), action_taken="left UNKNOWN")
            return False
        except BreakerOpen as exc:
            # The venue is down: the order stays UNKNOWN; reconciliation resolves it when it is back.
            log.warning("order_query_deferred", client_order_id=coid, error=str(exc))
            return False
        except (VenueTimeout, VenueUnreachable) as exc:
            log.warning("order_query_failed", client_order_id=coid, error=str(exc), action_taken="left UNKNOWN")
            return False
        await self.execution.apply_venue_order(order, answer)
        return True

    async def not_at_venue(self, order: OrderRecord) -> None:
        """The venue says the order does not exist: resend once with the same id, else reject."""
        core = self.core
        coid = order.client_order_id
        if order.status in (OrderStatus.UNKNOWN, OrderStatus.SUBMITTED) and not order.resend_used:
            core.log.warning("order_not_placed", client_order_id=coid, action_taken="resend with the same id")
            # The one resend is used up, on the log before it goes out (a recovery never resends
            # again): UNKNOWN with `resend`, recorded as a replay folds it, then sent as a resend.
            core.allows(order, OrderTrigger.AMBIGUOUS)
            unknown = core.stamp(
                OrderStatusUnknown,
                client_order_id=coid,
                symbol=order.symbol,
                reason="not at the venue: resent once with the same id",
                resend=True,
            )
            await core.record(core.order_subject("unknown", order), unknown, f"resend:{coid}", order)
            await self.submit(order)
            return
        if order.status in (OrderStatus.UNKNOWN, OrderStatus.SUBMITTED):
            reason = "not found at the venue after a resend"
            await self.execution.emit_rejected(order, reason, venue_code=ORDER_NOT_FOUND)
            return
        # A live order the venue no longer knows: it is gone; say so loudly.
        await self.execution.emit_canceled(order, "venue does not know this live order")
        await core.alert(f"order-vanished:{coid}", AlertSeverity.P1, "live order unknown to the venue", coid=coid)

    async def query_and_apply(self, order: OrderRecord) -> None:
        """Ask the venue for one order by client order id and take its answer.

        Raises:
            TransientError: the venue could not be asked.
        """
        try:
            answer = await self.core.client.query_order(order.symbol, orig_client_order_id=order.client_order_id)
        except VenueError as exc:
            if exc.code == ORDER_NOT_FOUND:
                await self.not_at_venue(order)
                return
            raise TransientError(f"query {order.client_order_id}: {exc}") from exc
        except (VenueTimeout, VenueUnreachable, BreakerOpen) as exc:
            raise TransientError(f"query {order.client_order_id}: {exc}") from exc
        self.core.triggers.observe_answer(order.client_order_id, answer, self.core.clock())
        await self.execution.apply_venue_order(order, answer)

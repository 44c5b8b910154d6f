"""Cancels: `cmd.order.cancel` of this venue's orders, and the one way a live order is cancelled
(locally before submission, else at the venue; a refused cancel is settled by a query).

A cancel names no venue: every position process sees it and the one holding the order cancels it.
"""

from __future__ import annotations

from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from libs.breaker import BreakerOpen
from libs.bus import Delivery
from libs.errors import TransientError
from libs.orders_model import OrderRecord, OrderTrigger, is_terminal
from libs.service_snapshots import PG_ERRORS
from proto import subjects
from proto.enums import OrderStatus
from proto.messages import CancelOrder, OrderCancelRequested

from .adapters import covered_sequence
from .core import Core
from .execution import Execution
from .submission import ORDER_NOT_FOUND, Submission

UNKNOWN_ORDER_ON_CANCEL = -2011
CANCEL_WAIT_S = 30.0
"""How long a cancel of an order not known here waits for this venue's approvals consumer to get
past it (its approval may still be pending there) before it is taken as another venue's."""
CANCEL_DELIVERIES = 12
"""Deliveries of a cancel before it is dead-lettered (or, waiting for approvals, decided): the bus's
nak delays (0.2 s doubling, at most 5 s) add up to about `CANCEL_WAIT_S` over them."""


class Cancels:
    """Cancel requests and the cancel of one order.

    Args:
        core: the shared state and effects.
        execution: applies the venue's answers.
        submission: its query by client order id settles a refused cancel.
        orders_durable: this venue's approvals consumer (a cancel may wait for it).
    """

    def __init__(self, core: Core, execution: Execution, submission: Submission, orders_durable: str) -> None:
        self.core = core
        self.execution = execution
        self.submission = submission
        self.orders_durable = orders_durable

    async def take_cancel(self, message: CancelOrder, delivery: Delivery) -> bool:
        """Cancel at the venue (idempotent: terminal orders are left alone), under the order lock.

        An order not known here may still be an approval this venue's consumer has not handled yet
        (it lags, or this process was down): the cancel then waits for it (raised and redelivered)
        before it is taken as another venue's order and left alone.

        Returns:
            True when an order of this process was cancelled.

        Raises:
            TransientError: an approval before the cancel is not handled yet, or the venue could not be asked.
        """
        order = self.core.ledger.orders.get(message.client_order_id)
        if order is None:
            await self._cancel_not_held(message, delivery)
            return False
        if is_terminal(order.status):
            self.core.log.info("cancel_ignored_terminal", client_order_id=order.client_order_id, status=order.status)
            return False
        await self.cancel(order, message.reason)
        return True

    async def _cancel_not_held(self, message: CancelOrder, delivery: Delivery) -> None:
        """A cancel of an order not in memory: wait for this venue's approvals, else leave it alone.

        Raises:
            TransientError: an approval before the cancel is not handled yet; try again later.
        """
        core = self.core
        coid = message.client_order_id
        covered = await covered_sequence(
            core.bus.js, subjects.STREAM_ORDERS.name, (self.orders_durable,), delivery.stream_sequence
        )
        waiting = covered < delivery.stream_sequence
        age_ns = core.clock() - (delivery.stored_ns or core.clock())
        if waiting and delivery.num_delivered < CANCEL_DELIVERIES and age_ns < CANCEL_WAIT_S * 1e9:
            raise TransientError(f"cancel {coid}: approvals before it not handled yet (up to {covered}); retried")
        if waiting:
            core.log.warning(
                "cancel_undecided",
                client_order_id=coid,
                approvals_handled_up_to=covered,
                cancel_seq=delivery.stream_sequence,
                action_taken="ignored: this venue's approvals did not catch up in time",
            )
            return
        try:
            found = await core.projections.find_order(coid)
        except PG_ERRORS:
            found = None
        if found is not None and found.venue != core.venue:
            core.log.debug("cancel_for_other_venue", client_order_id=coid, venue=found.venue)
            return
        core.log.info(
            "cancel_not_held",
            client_order_id=coid,
            status=found.status.value if found is not None else None,
            action_taken="ignored: no order of this venue in flight",
        )

    async def cancel(self, order: OrderRecord, reason: str) -> None:
        """Cancel one live order at the venue (before submission: locally).

        Raises:
            TransientError: the venue could not be asked; try again.
            LeaseLost: this instance is not the writer any more.
        """
        core = self.core
        if order.status == OrderStatus.PENDING_SUBMISSION:
            await self.execution.emit_canceled(order, reason or "canceled before submission")
            return
        await core.guard()
        if order.status != OrderStatus.PENDING_CANCEL:
            # Decide (an illegal step is logged, the order kept as is), then record it: published,
            # applied by `Ledger.apply` as a replay applies it, projected.
            core.allows(order, OrderTrigger.REQUEST_CANCEL)
            await core.publish_status(order, "cancel_requested", OrderCancelRequested, reason)
        try:
            answer = await core.client.cancel_order(order.symbol, orig_client_order_id=order.client_order_id)
        except VenueError as exc:
            if exc.code in (UNKNOWN_ORDER_ON_CANCEL, ORDER_NOT_FOUND) or exc.status < 500:
                core.log.info("cancel_refused", client_order_id=order.client_order_id, code=exc.code, msg=exc.msg)
                await self.submission.query_and_apply(order)
                return
            raise TransientError(f"cancel {order.client_order_id}: {exc}") from exc
        except (VenueTimeout, VenueUnreachable, BreakerOpen) as exc:
            raise TransientError(f"cancel {order.client_order_id}: {exc}") from exc
        await self.execution.apply_venue_order(order, answer, reason=reason)

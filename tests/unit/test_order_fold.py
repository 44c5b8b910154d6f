"""The projection fold and the live order state machine agree (issue 17): `libs.projections.fold_events`
moves an order's status through `libs.orders_model.ORDER_TRANSITIONS` with the trigger each event
records (`event_trigger`), and the position service publishes an event for every status change it
makes, so a replay of the ORDERS log gives the status the live service holds, including the states
the rank-based fold could not see: PENDING_CANCEL, an order queued back after a placement that
surely failed (with its reason), a cancel that did not take, FILLED before its trades are visible.

Random order flows with those faults run through the real position service (fakes for the venue and
the bus, as in `test_position_apply`); the status of every order after each flow equals the status
the fold of the published log gives.
"""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from libs.bus import Delivery
from libs.errors import TransientError
from libs.projections import fold_events
from proto import subjects
from proto.codec import decode
from proto.enums import ConnectionState, OrderStatus
from proto.messages import (
    CancelOrder,
    OrderAccepted,
    OrderApproved,
    OrderCancelRequested,
    OrderFilled,
    OrderQueued,
    OrderStatusUnknown,
    OrderSubmitted,
)
from tests.unit.test_position_apply import SYMBOL, UNIT, VENUE, LogBus, SimVenue, command_of, service

S = OrderStatus
FAULTY_OUTCOMES = (
    "new",
    "new",
    "fill",
    "partial",
    "reject",
    "unreachable",
    "fill_trades_late",
    "timeout_not_placed",
    "never_placed",
)


class FaultyVenue(SimVenue):
    """`SimVenue` with the faults that used to split live and replay: a placement that surely did
    not reach the venue, trades not visible yet behind a FILLED answer, cancels that time out or are
    refused while the order stays open."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden_trades: set[int] = set()
        self.cancel_fault: str | None = None

    async def place_order(self, **params: str) -> dict:
        coid = params["newClientOrderId"]
        outcome = self.plan.get(coid, "new")
        if outcome == "unreachable":
            self.plan[coid] = "new"  # the next attempt goes through
            raise VenueUnreachable("connection refused")
        if outcome == "fill_trades_late":
            self.plan[coid] = "fill"
            answer = await super().place_order(**params)
            self.hidden_trades.add(answer["orderId"])
            return answer
        return await super().place_order(**params)

    async def user_trades(self, symbol: str, *, order_id: int | None = None, limit: int = 100) -> list[dict]:
        if order_id in self.hidden_trades:
            return []
        return await super().user_trades(symbol, order_id=order_id, limit=limit)

    async def cancel_order(self, symbol: str, *, orig_client_order_id: str) -> dict:
        fault, self.cancel_fault = self.cancel_fault, None
        if fault == "timeout":
            raise VenueTimeout("cancel timed out")
        if fault == "refused":
            raise VenueError(400, -2011, "Unknown order sent.")  # the order stays open at the venue
        return await super().cancel_order(symbol, orig_client_order_id=orig_client_order_id)


approve = st.tuples(st.just("approve"), st.sampled_from(FAULTY_OUTCOMES), st.sampled_from(["BUY", "SELL"]))
cancel = st.tuples(st.just("cancel"), st.integers(0, 20), st.sampled_from([None, "timeout", "refused"]))
step = st.one_of(
    approve,
    approve,
    cancel,
    cancel,
    st.tuples(st.just("trades_visible"), st.integers(0, 20)),
    st.tuples(st.just("link"), st.booleans()),
    st.tuples(st.just("poll")),
)


async def run_live(flow: list[tuple]) -> tuple[dict[str, Any], LogBus]:
    bus, venue = LogBus(), FaultyVenue()
    svc = service(bus, venue)  # type: ignore[arg-type]
    coids: list[str] = []
    for action in flow:
        match action:
            case ("approve", outcome, side):
                coid = f"bw-{len(coids)}"
                coids.append(coid)
                venue.plan[coid] = outcome
                message = OrderApproved(order=command_of(coid, side, 2))
                seq = await bus.publish(subjects.evt_order("approved", VENUE, SYMBOL), message, msg_id=f"a:{coid}")
                await svc.on_approved(message, Delivery("evt.order.approved", seq, 1, {}))
            case ("cancel", index, fault) if coids:
                venue.cancel_fault = fault
                command = CancelOrder(client_order_id=coids[index % len(coids)], reason="operator")
                seq = await bus.publish(subjects.CMD_ORDER_CANCEL, command)
                with contextlib.suppress(TransientError):  # a timed-out cancel is retried by redelivery
                    await svc.on_cancel(command, Delivery(subjects.CMD_ORDER_CANCEL, seq, 1, {}))
                venue.cancel_fault = None
            case ("trades_visible", index) if coids:
                order = venue.orders.get(coids[index % len(coids)])
                if order is not None:
                    venue.hidden_trades.discard(order.order_id)
            case ("link", up):
                svc.core.link_state = ConnectionState.CONNECTED if up else ConnectionState.DISCONNECTED
            case ("poll",):
                await svc.venue_sync.poll_once()
    return {coid: fields(o) for coid, o in svc.ledger.orders.items()}, bus


def fields(order: Any) -> tuple:
    """What the live service keeps about an order and a replay must give back."""
    return (order.status, order.filled_quantity, order.venue_order_id, order.reason, order.resend_used)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow=st.lists(step, min_size=1, max_size=20))
def test_fold_when_random_flow_with_faults_then_status_equals_live_state_machine(flow: list[tuple]) -> None:
    live, bus = asyncio.run(run_live(flow))
    folded = fold_events(bus.log())
    assert {coid: fields(o) for coid, o in folded.orders.items()} == live


# ---------------------------------------------------------------------- the cases the ranks got wrong


def log_of(*events: Any) -> list[tuple[Any, int]]:
    approved = OrderApproved(order=command_of("bw-1", "BUY", 2))
    return [(approved, 1), *((event, seq) for seq, event in enumerate(events, start=2))]


def status_of(*events: Any) -> tuple[OrderStatus, str | None]:
    order = fold_events(log_of(*events)).orders["bw-1"]
    return order.status, order.reason


SUBMITTED = OrderSubmitted(client_order_id="bw-1", symbol=SYMBOL, venue=VENUE)


def accepted(status: OrderStatus) -> OrderAccepted:
    return OrderAccepted(client_order_id="bw-1", venue_order_id=7, symbol=SYMBOL, status=status)


def filled(trade_id: int, quantity: Decimal) -> OrderFilled:
    return OrderFilled(
        client_order_id="bw-1",
        venue_order_id=7,
        trade_id=trade_id,
        symbol=SYMBOL,
        side=command_of("bw-1", "BUY", 2).side,
        price=Decimal(100),
        quantity=quantity,
        cumulative_quantity=quantity,
        order_quantity=2 * UNIT,
    )


def test_fold_when_filled_answer_before_its_trades_then_open_until_the_fills_step_it() -> None:
    # The acceptance is the ACCEPT step whatever status the venue named: the fills step it from there.
    assert status_of(SUBMITTED, accepted(S.FILLED))[0] == S.NEW
    assert status_of(SUBMITTED, accepted(S.FILLED), filled(1, UNIT))[0] == S.PARTIALLY_FILLED
    assert status_of(SUBMITTED, accepted(S.FILLED), filled(1, UNIT), filled(2, UNIT))[0] == S.FILLED
    # Accepted after a fill was booked (the stream's trade first): open, partially filled.
    assert status_of(SUBMITTED, filled(1, UNIT), accepted(S.FILLED))[0] == S.PARTIALLY_FILLED


def test_fold_when_accepted_then_venue_order_id_from_the_event() -> None:
    order = fold_events(log_of(SUBMITTED, accepted(S.NEW))).orders["bw-1"]
    assert (order.status, order.venue_order_id) == (S.NEW, 7)


def test_fold_when_resend_recorded_then_the_one_resend_is_used_up() -> None:
    timeout = OrderStatusUnknown(client_order_id="bw-1", symbol=SYMBOL, reason="timeout")
    resend = OrderStatusUnknown(client_order_id="bw-1", symbol=SYMBOL, reason="not at the venue", resend=True)
    assert not fold_events(log_of(SUBMITTED, timeout)).orders["bw-1"].resend_used
    order = fold_events(log_of(SUBMITTED, timeout, resend, SUBMITTED, timeout)).orders["bw-1"]
    assert (order.status, order.resend_used) == (S.UNKNOWN, True)


def test_decode_when_unknown_event_written_before_the_resend_field_then_no_resend() -> None:
    old = b'{"type":"OrderStatusUnknown","client_order_id":"bw-1","symbol":"BTCUSDT","reason":"timeout"}'
    assert decode(old).resend is False  # type: ignore[attr-defined]


def test_fold_when_external_order_adopted_then_unknown_until_the_venue_answer() -> None:
    adopted = OrderStatusUnknown(client_order_id="bw-1", symbol=SYMBOL, reason="placed outside Bulwark")
    assert status_of(adopted)[0] == S.UNKNOWN
    assert status_of(adopted, accepted(S.NEW))[0] == S.NEW


def test_fold_when_cancel_requested_then_pending_cancel_and_open_again_when_it_did_not_take() -> None:
    requested = OrderCancelRequested(client_order_id="bw-1", symbol=SYMBOL, reason="operator")
    assert status_of(SUBMITTED, accepted(S.NEW), requested)[0] == S.PENDING_CANCEL
    assert status_of(SUBMITTED, accepted(S.NEW), requested, accepted(S.NEW))[0] == S.NEW


def test_fold_when_order_queued_back_then_pending_submission_with_the_queue_reason() -> None:
    queued = OrderQueued(client_order_id="bw-1", symbol=SYMBOL, reason="queued: venue order link DISCONNECTED")
    assert status_of(SUBMITTED, queued) == (S.PENDING_SUBMISSION, "queued: venue order link DISCONNECTED")
    assert status_of(SUBMITTED, queued, SUBMITTED)[0] == S.SUBMITTED
    # Held in the queue for another reason: the status stays, the reason follows the event.
    held = OrderQueued(client_order_id="bw-1", symbol=SYMBOL, reason="queued: venue preflight pending")
    assert status_of(SUBMITTED, queued, held) == (S.PENDING_SUBMISSION, "queued: venue preflight pending")


def test_fold_when_event_not_allowed_in_status_then_status_kept_as_live() -> None:
    # A late acceptance after the fill (a stale answer) moves nothing, as `core.transition` refuses it live.
    assert status_of(SUBMITTED, filled(1, UNIT), filled(2, UNIT), accepted(S.NEW))[0] == S.FILLED

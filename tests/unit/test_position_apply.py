"""One fold for live and replay: the ledger a position service builds while it handles orders equals
the ledger `Ledger.fold` rebuilds from the ORDERS events it published (from scratch, and from a
snapshot of a prefix plus the tail after it).

Random order flows, sensible by construction, run against a small in-memory venue: approvals whose
placement is accepted, filled, partly filled, rejected or timed out (placed or not), venue trades
seen through the user-data stream or the poll, cancels, denials (also of another venue's order,
which risk records on this venue's subject when it cannot route it), redelivered approvals, and
trades whose `OrderFilled` or `PositionChanged` publish fails (the handler raises; a later answer
about the order books the trade again), and order events whose publish fails (submitted, unknown,
rejected: the approval is delivered again; canceled: the next poll takes the venue's answer), the
order link going down and up (orders queued back with their reason, sent again by the poll), and
placements the venue never receives, twice (the one resend used up: rejected, never sent a third time).

Every field the live service keeps about an order is compared, the queue reason, the venue order id
and the used resend included: none of them may change in memory without an event that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.binance.errors import VenueError, VenueTimeout
from libs.bus import Delivery
from libs.clock import ManualClock
from libs.logging import get_logger
from libs.orders_model import OrderRecord, Position
from libs.ratelimit import Admission
from libs.stamping import IdSource
from proto import subjects
from proto.enums import ConnectionState, OrderSource, OrderStatus, OrderType, Side
from proto.envelope import new_message_id
from proto.messages import CancelOrder, OrderApproved, OrderDenied, SubmitOrder
from services.position.domain import SNAPSHOT_VERSION, PositionCheckpoint, decode_checkpoint
from services.position.handlers import PositionService
from services.position.ledger import Ledger
from tests.unit.test_position_venue_link import FakeBus, FakeProjections

VENUE = "binance-usdm"
OTHER_VENUE = "backup-venue"
SYMBOL = "BTCUSDT"
UNIT = Decimal("0.001")
S = 1_000_000_000

OUTCOMES = ("new", "fill", "partial", "reject", "timeout_placed", "timeout_not_placed", "never_placed")


class PublishFailed(ConnectionError):
    """The bus refused a publish (what a NATS outage looks like to a handler)."""


class LogBus(FakeBus):
    """The ORDERS log as JetStream keeps it: a message id published twice is stored once.

    `fail_next_on` names a subject prefix whose next publish fails (nothing stored).
    """

    def __init__(self) -> None:
        super().__init__()
        self.seq_of: dict[str, int] = {}
        self.fail_next_on: str | None = None

    async def publish(self, subject: str, message: Any, *, msg_id: str | None = None) -> int:
        if self.fail_next_on is not None and subject.startswith(self.fail_next_on):
            self.fail_next_on = None
            raise PublishFailed(f"publish on {subject} failed")
        if msg_id is not None and msg_id in self.seq_of:
            return self.seq_of[msg_id]
        seq = await super().publish(subject, message, msg_id=msg_id)
        if msg_id is not None:
            self.seq_of[msg_id] = seq
        return seq

    def log(self) -> list[tuple[Any, int]]:
        return [(message, seq) for seq, (_, message, _) in enumerate(self.published, start=1)]


@dataclass
class VenueOrder:
    coid: str
    order_id: int
    side: str
    quantity: Decimal
    status: str = "NEW"
    trades: list[dict] = field(default_factory=list)

    @property
    def executed(self) -> Decimal:
        return sum((Decimal(t["qty"]) for t in self.trades), Decimal(0))

    def answer(self) -> dict:
        return {
            "clientOrderId": self.coid,
            "orderId": self.order_id,
            "symbol": SYMBOL,
            "side": self.side,
            "type": "MARKET",
            "origQty": str(self.quantity),
            "status": self.status,
            "executedQty": str(self.executed),
        }


class SimVenue:
    """A venue that keeps its orders and trades; placements follow the outcome planned per order."""

    def __init__(self) -> None:
        self.plan: dict[str, str] = {}
        self.orders: dict[str, VenueOrder] = {}
        self.ids = itertools.count(1)
        self.trade_ids = itertools.count(1000)
        self.placements: dict[str, int] = {}
        """Placement attempts per client order id (a resend counts)."""

    def order_hold(self) -> Admission:
        return Admission(True)

    def trade(self, order: VenueOrder, quantity: Decimal, price: str) -> dict:
        trade = {"id": next(self.trade_ids), "orderId": order.order_id, "qty": str(quantity), "price": price}
        order.trades.append(trade)
        order.status = "FILLED" if order.executed >= order.quantity else "PARTIALLY_FILLED"
        return trade

    async def place_order(self, **params: str) -> dict:
        coid = params["newClientOrderId"]
        self.placements[coid] = self.placements.get(coid, 0) + 1
        if coid in self.orders:
            raise VenueError(400, -4116, "ClientOrderId is duplicated.")
        outcome = self.plan.get(coid, "new")
        if outcome == "never_placed":
            raise VenueTimeout("place_order timed out")  # and the resend too: never at the venue
        if outcome == "reject":
            raise VenueError(400, -2019, "Margin is insufficient.")
        if outcome == "timeout_not_placed":
            self.plan[coid] = "new"  # the resend goes through
            raise VenueTimeout("place_order timed out")
        order = VenueOrder(coid, next(self.ids), params["side"], Decimal(params["quantity"]))
        self.orders[coid] = order
        if outcome == "fill":
            self.trade(order, order.quantity, "100")
        elif outcome == "partial" and order.quantity > UNIT:
            self.trade(order, UNIT, "101")
        if outcome == "timeout_placed":
            raise VenueTimeout("place_order timed out")
        return order.answer()

    async def query_order(self, symbol: str, *, orig_client_order_id: str) -> dict:
        order = self.orders.get(orig_client_order_id)
        if order is None:
            raise VenueError(400, -2013, "Order does not exist.")
        return order.answer()

    async def cancel_order(self, symbol: str, *, orig_client_order_id: str) -> dict:
        order = self.orders.get(orig_client_order_id)
        if order is None or order.status not in ("NEW", "PARTIALLY_FILLED"):
            raise VenueError(400, -2011, "Unknown order sent.")
        order.status = "CANCELED"
        return order.answer()

    async def open_orders(self, symbol: str | None = None) -> list[dict]:
        return [o.answer() for o in self.orders.values() if o.status in ("NEW", "PARTIALLY_FILLED")]

    async def user_trades(self, symbol: str, *, order_id: int | None = None, limit: int = 100) -> list[dict]:
        return [dict(t) for o in self.orders.values() if o.order_id == order_id for t in o.trades]

    async def position_risk(self) -> list[dict]:
        return []


STATUS_EVENTS = [None, None, "evt.order.submitted.", "evt.order.unknown.", "evt.order.rejected."]
"""A publish that fails during a step: none, or the next one on this subject prefix."""
approve = st.tuples(
    st.just("approve"),
    st.sampled_from(OUTCOMES),
    st.sampled_from(["BUY", "SELL"]),
    st.integers(1, 4),
    st.sampled_from(STATUS_EVENTS),
)
trade = st.tuples(
    st.just("trade"),
    st.integers(0, 20),
    st.booleans(),
    st.sampled_from(["stream", "poll"]),
    st.sampled_from([None, None, None, "evt.fill.", "evt.position."]),
)
cancel = st.tuples(st.just("cancel"), st.integers(0, 20), st.sampled_from([None, "evt.order.canceled."]))
poll = st.tuples(st.just("poll"))
deny = st.tuples(st.just("deny"), st.sampled_from(["BUY", "SELL"]), st.sampled_from([VENUE, VENUE, OTHER_VENUE]))
redeliver = st.tuples(st.just("redeliver"), st.integers(0, 20))
link = st.tuples(st.just("link"), st.booleans())
flows = st.lists(
    st.one_of(approve, approve, trade, trade, cancel, poll, deny, redeliver, link), min_size=1, max_size=25
)


def command_of(coid: str, side: str, units: int, venue: str = VENUE) -> SubmitOrder:
    return SubmitOrder(
        client_order_id=coid,
        idempotency_key=coid,
        source=OrderSource.OPERATOR,
        symbol=SYMBOL,
        side=Side(side),
        order_type=OrderType.MARKET,
        quantity=units * UNIT,
        venue=venue,
    )


def service(bus: FakeBus, venue: SimVenue, message_ids: IdSource = new_message_id) -> PositionService:
    svc = PositionService(
        bus,  # type: ignore[arg-type]
        get_logger("test"),
        FakeProjections(),  # type: ignore[arg-type]
        venue,
        VENUE,
        ManualClock(1_700_000_000 * S),
        symbols=(SYMBOL,),
        message_ids=message_ids,
    )
    svc.submission.query_backoff_s = (0.0,)
    svc.core.reconciled = True
    return svc


async def run_live(flow: list[tuple]) -> tuple[PositionService, LogBus]:
    """Handle the flow as the live service does; returns the service and its log."""
    bus, venue = LogBus(), SimVenue()
    svc = service(bus, venue)
    coids: list[str] = []
    approvals: list[tuple[OrderApproved, int]] = []
    denials = itertools.count()
    for step in flow:
        match step:
            case ("approve", outcome, side, units, failing):
                coid = f"bw-{len(coids)}"
                coids.append(coid)
                venue.plan[coid] = outcome
                message = OrderApproved(order=command_of(coid, side, units))
                seq = await bus.publish(subjects.evt_order("approved", VENUE, SYMBOL), message, msg_id=f"a:{coid}")
                approvals.append((message, seq))
                bus.fail_next_on = failing
                try:
                    await svc.on_approved(message, Delivery("evt.order.approved", seq, 1, {}))
                except PublishFailed:
                    # Not acknowledged: the consumer delivers the approval again.
                    await svc.on_approved(message, Delivery("evt.order.approved", seq, 2, {}))
                bus.fail_next_on = None
            case ("deny", side, order_venue):
                coid = f"bw-denied-{next(denials)}"
                denied = OrderDenied(order=command_of(coid, side, 1, order_venue), reason="limits")
                seq = await bus.publish(subjects.evt_order("denied", VENUE, SYMBOL), denied, msg_id=f"d:{coid}")
                await svc.on_denied(denied, Delivery("evt.order.denied", seq, 1, {}))
            case ("redeliver", index) if approvals:
                message, seq = approvals[index % len(approvals)]
                await svc.on_approved(message, Delivery("evt.order.approved", seq, 2, {}))
            case ("trade", index, rest, via, failing) if coids:
                order = venue.orders.get(coids[index % len(coids)])
                if order is None or order.status not in ("NEW", "PARTIALLY_FILLED"):
                    continue
                remaining = order.quantity - order.executed
                done = venue.trade(order, remaining if rest or remaining == UNIT else UNIT, "99")
                bus.fail_next_on = failing
                if via == "stream":
                    update = {
                        "c": order.coid,
                        "i": order.order_id,
                        "x": "TRADE",
                        "X": order.status,
                        "t": done["id"],
                        "l": done["qty"],
                        "L": done["price"],
                        "z": str(order.executed),
                    }
                    with contextlib.suppress(PublishFailed):  # the user stream reconnects
                        await svc.on_user_event({"e": "ORDER_TRADE_UPDATE", "o": update})
                else:
                    with contextlib.suppress(PublishFailed):  # the next round polls again
                        await svc.venue_sync.poll_once()
                bus.fail_next_on = None
            case ("cancel", index, failing) if coids:
                command = CancelOrder(client_order_id=coids[index % len(coids)])
                seq = await bus.publish(subjects.CMD_ORDER_CANCEL, command)
                bus.fail_next_on = failing
                with contextlib.suppress(PublishFailed):  # the venue's answer is taken by the next poll
                    await svc.on_cancel(command, Delivery(subjects.CMD_ORDER_CANCEL, seq, 1, {}))
                bus.fail_next_on = None
            case ("link", up):
                svc.core.link_state = ConnectionState.CONNECTED if up else ConnectionState.DISCONNECTED
            case ("poll",):
                await svc.venue_sync.poll_once()
    svc.core.link_state = ConnectionState.CONNECTED
    await svc.venue_sync.poll_once()  # settle what the stream left open
    return svc, bus


def orders_view(orders: dict[str, OrderRecord]) -> dict[str, tuple]:
    return {
        coid: (
            o.status,
            o.filled_quantity,
            o.average_price,
            sorted(o.trade_ids),
            o.venue_order_id,
            o.reason,
            o.resend_used,
        )
        for coid, o in orders.items()
    }


def positions_view(positions: dict[str, Position]) -> dict[str, Position]:
    return {symbol: p for symbol, p in positions.items() if p != Position()}


def replayed(log: list[tuple[Any, int]]) -> Ledger:
    ledger = Ledger(VENUE)
    ledger.fold(log)
    return ledger


def from_snapshot(log: list[tuple[Any, int]], cut: int) -> Ledger:
    """A snapshot of the replay of `log[:cut]` (encoded and decoded as stored), then the tail folded in."""
    head = replayed(log[:cut])
    checkpoint = PositionCheckpoint(
        version=SNAPSHOT_VERSION,
        stream_seq=cut,
        orders=list(head.orders.values()),
        order_seq=dict(head.order_seq),
        positions=dict(head.positions),
        position_seq=dict(head.position_seqs),
        protections=[],
    )
    ledger = Ledger(VENUE)
    ledger.restore(decode_checkpoint(msgspec.json.encode(checkpoint)))
    ledger.fold(log[cut:])
    return ledger


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow=flows, cut_fraction=st.floats(0, 1))
def test_live_when_random_order_flow_then_ledger_equals_replay_of_published_log(
    flow: list[tuple], cut_fraction: float
) -> None:
    svc, bus = asyncio.run(run_live(flow))
    live = svc.ledger
    log = bus.log()
    replay = replayed(log)
    assert orders_view(replay.orders) == orders_view(live.orders)
    assert positions_view(replay.positions) == positions_view(live.positions)
    assert replay.order_seq == live.order_seq
    assert replay.position_seqs == live.position_seqs

    # What the projections show: every order's row as the ledger has it.
    rows = svc.core.projections.orders  # type: ignore[attr-defined]
    assert {coid: rows.get(coid) for coid in live.orders} == {coid: o.status.value for coid, o in live.orders.items()}

    resumed = from_snapshot(log, int(cut_fraction * len(log)))
    assert orders_view(resumed.orders) == orders_view(live.orders)
    assert positions_view(resumed.positions) == positions_view(live.positions)
    assert resumed.order_seq == live.order_seq


def test_apply_when_event_of_another_venue_then_ledger_unchanged() -> None:
    command = SubmitOrder(
        client_order_id="bw-other",
        idempotency_key="other",
        source=OrderSource.OPERATOR,
        symbol=SYMBOL,
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=UNIT,
        venue="backup-venue",
    )
    ledger = Ledger(VENUE)
    ledger.apply(OrderApproved(order=command), 1)
    assert ledger.orders == {} and ledger.order_seq == {}


def test_recovery_when_crashed_after_the_resend_then_never_sent_a_third_time() -> None:
    """A placement the venue never receives is resent once with the same id (FM-N7); a process that
    stops after that resend went out recovers the used resend from the log (`Ledger.fold`), so when the
    venue still does not know the order it is rejected, never placed again."""

    async def scenario() -> tuple[SimVenue, PositionService]:
        bus, venue = LogBus(), SimVenue()
        live = service(bus, venue)
        venue.plan["bw-0"] = "never_placed"
        message = OrderApproved(order=command_of("bw-0", "BUY", 1))
        seq = await bus.publish(subjects.evt_order("approved", VENUE, SYMBOL), message, msg_id="a:bw-0")
        await live.on_approved(message, Delivery("evt.order.approved", seq, 1, {}))
        assert venue.placements["bw-0"] == 2  # the placement and its one resend
        assert live.ledger.orders["bw-0"].status == OrderStatus.REJECTED
        log = bus.log()
        # The process stops right after the resend's `OrderSubmitted` (its answer lost).
        resent = [i for i, (event, _) in enumerate(log) if type(event).__name__ == "OrderSubmitted"][-1]
        recovered_bus = LogBus()
        for event, _ in log[: resent + 1]:
            await recovered_bus.publish("replayed", event)
        recovered = service(recovered_bus, venue)
        recovered.core.reconciled = False
        recovered.ledger.fold(recovered_bus.log())
        await recovered.reconciliation.reconcile((SYMBOL,))
        return venue, recovered

    venue, recovered = asyncio.run(scenario())
    order = recovered.ledger.orders["bw-0"]
    assert order.resend_used
    assert venue.placements["bw-0"] == 2, "a recovered order must not be resent a second time"
    assert order.status == OrderStatus.REJECTED


def test_replay_when_order_queued_while_link_down_then_its_reason_and_status_survive() -> None:
    """An order queued back after a placement that surely did not go out, then held while the link is
    down, keeps its queue reason in the replay of the log (the reason is on `OrderQueued`)."""

    async def scenario() -> tuple[PositionService, LogBus]:
        bus, venue = LogBus(), SimVenue()
        svc = service(bus, venue)
        svc.core.link_state = ConnectionState.DISCONNECTED
        message = OrderApproved(order=command_of("bw-0", "BUY", 1))
        seq = await bus.publish(subjects.evt_order("approved", VENUE, SYMBOL), message, msg_id="a:bw-0")
        await svc.on_approved(message, Delivery("evt.order.approved", seq, 1, {}))
        svc.core.link_state = ConnectionState.SUSPECT
        await svc.submission.queue(svc.ledger.orders["bw-0"], "queued: venue order link SUSPECT")
        return svc, bus

    svc, bus = asyncio.run(scenario())
    live = svc.ledger.orders["bw-0"]
    assert (live.status, live.reason) == (OrderStatus.PENDING_SUBMISSION, "queued: venue order link SUSPECT")
    assert orders_view(replayed(bus.log()).orders) == orders_view(svc.ledger.orders)


def test_replay_when_order_of_someone_else_adopted_then_equals_live() -> None:
    """An order placed on the account outside Bulwark is adopted from the user stream as EXTERNAL:
    UNKNOWN until the venue's answer, then open with its venue order id, then filled; every step is
    an event, so the replay gives the adopted order as live holds it (never left queued to be sent)."""

    async def scenario() -> tuple[PositionService, LogBus]:
        bus, venue = LogBus(), SimVenue()
        svc = service(bus, venue)
        placed = VenueOrder("web_x", 4242, "SELL", 2 * UNIT)
        venue.orders["web_x"] = placed
        update = {"c": "web_x", "s": SYMBOL, "S": "SELL", "o": "MARKET", "q": str(2 * UNIT), "i": 4242}
        await svc.on_user_event({"e": "ORDER_TRADE_UPDATE", "o": {**update, "x": "NEW", "X": "NEW", "z": "0"}})
        done = venue.trade(placed, UNIT, "99")
        trade = {"x": "TRADE", "X": placed.status, "t": done["id"], "l": done["qty"], "L": "99", "z": str(UNIT)}
        await svc.on_user_event({"e": "ORDER_TRADE_UPDATE", "o": {**update, **trade}})
        return svc, bus

    svc, bus = asyncio.run(scenario())
    adopted = svc.ledger.orders["web_x"]
    assert (adopted.status, adopted.venue_order_id, adopted.filled_quantity) == (
        OrderStatus.PARTIALLY_FILLED,
        4242,
        UNIT,
    )
    assert orders_view(replayed(bus.log()).orders) == orders_view(svc.ledger.orders)

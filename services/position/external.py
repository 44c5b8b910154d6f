"""External orders: an order placed on the venue account by anyone else (the venue's web page,
another tool) is adopted as EXTERNAL as soon as the user-data stream reports it (issue 18), and a
venue open order reconciliation finds unknown (while the stream was down) the same way.

Adoption goes through the event log like any order, so a replay, the projection rebuild and
`/v1/orders` all see it: an `OrderApproved` with source `EXTERNAL` (position's own approval, as
`Submission.approve_own` does for its stops; risk approved nothing, the venue already holds the
order), then `OrderStatusUnknown` (at the venue, state to be taken from its answer), then the
venue's answer through `Execution.apply_venue_order` (`OrderAccepted`, its fills fetched and booked
with their `PositionChanged`, a final status). Each step is folded into the ledger by
`Ledger.apply`. A P2 alert (`external-order:<coid>` from the stream, `reconcile-adopted:<coid>`
from reconciliation) and a log line say who placed what.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from libs.orders_model import OrderRecord
from proto import subjects
from proto.enums import AlertSeverity, OrderSource, OrderType, Side, TimeInForce
from proto.messages import OrderApproved, OrderStatusUnknown, SubmitOrder

from .core import Core
from .execution import Execution

EXTERNAL_REASON = "external order: placed on the venue account outside Bulwark"
STREAM = "user-data stream"
RECONCILIATION = "reconciliation"


def _price(text: object) -> Decimal | None:
    try:
        value = Decimal(str(text))
    except (InvalidOperation, ValueError):
        return None
    return value if value > 0 else None


def update_from_answer(answer: dict) -> dict:
    """A REST order answer (`openOrders`, `order`) in the shape of an `ORDER_TRADE_UPDATE` `o` object."""
    return {
        "c": answer["clientOrderId"],
        "s": answer["symbol"],
        "S": answer["side"],
        "o": answer.get("type", ""),
        "f": answer.get("timeInForce", ""),
        "q": answer.get("origQty", "0"),
        "p": answer.get("price", "0"),
        "sp": answer.get("stopPrice", "0"),
        "R": answer.get("reduceOnly", False),
        "i": answer["orderId"],
        "X": answer.get("status"),
        "z": answer.get("executedQty", "0"),
    }


def external_command(update: dict, venue: str) -> SubmitOrder:
    """The order an `ORDER_TRADE_UPDATE` (`o` object) describes, as a command of source EXTERNAL.

    Raises:
        KeyError, ValueError, ArithmeticError: the update lacks or garbles a field an order needs.
    """
    coid = str(update["c"])
    order_type = str(update.get("o", ""))
    tif = str(update.get("f", ""))
    return SubmitOrder(
        client_order_id=coid,
        idempotency_key=coid,
        source=OrderSource.EXTERNAL,
        symbol=str(update["s"]),
        side=Side(str(update["S"])),
        order_type=OrderType(order_type) if order_type in OrderType.__members__ else OrderType.LIMIT,
        quantity=Decimal(str(update["q"])),
        venue=venue,
        price=_price(update.get("p")),
        stop_price=_price(update.get("sp")),
        reduce_only=bool(update.get("R", False)),
        time_in_force=TimeInForce(tif) if tif in TimeInForce.__members__ else None,
    )


class ExternalOrders:
    """Adopts the venue orders of the account that this service never sent."""

    def __init__(self, core: Core, execution: Execution) -> None:
        self.core = core
        self.execution = execution
        self.adopted = 0

    async def adopt(self, update: dict, found_by: str = STREAM) -> OrderRecord:
        """Adopt the order an `ORDER_TRADE_UPDATE` reports (caller holds the order lock); `found_by`
        says who found it (`STREAM` or `RECONCILIATION`: the log, the reason and the alert's key).

        Raises:
            KeyError, ValueError, ArithmeticError: the update cannot describe an order.
        """
        core = self.core
        command = external_command(update, core.venue)
        coid = command.client_order_id
        now = core.clock()
        approved = core.stamp(OrderApproved, order=command, ts_event_ns=now, ts_init_ns=now)
        seq = await core.publish(
            subjects.evt_order("approved", command.venue, command.symbol), approved, f"approved:{coid}", coid
        )
        core.ledger.apply(approved, seq)
        order = core.ledger.orders[coid]
        # At the venue already: UNKNOWN until its answer is taken (never sent by this service).
        reason = f"{EXTERNAL_REASON} (found by {found_by})"
        unknown = core.stamp(OrderStatusUnknown, client_order_id=coid, symbol=order.symbol, reason=reason)
        await core.record(core.order_subject("unknown", order), unknown, f"unknown:{coid}", order)
        answer = {"orderId": update["i"], "status": update.get("X"), "executedQty": update.get("z", "0")}
        await self.execution.apply_venue_order(order, answer)
        self.adopted += 1
        core.log.warning(
            "external_order_adopted",
            client_order_id=coid,
            symbol=order.symbol,
            side=order.side.value,
            type=order.order_type.value,
            quantity=str(order.quantity),
            status=order.status.value,
            found_by=found_by,
            action_taken="adopted as EXTERNAL, fills booked",
        )
        # Reconciliation's key is the one it always raised (unscoped, as before).
        key = f"reconcile-adopted:{coid}" if found_by == RECONCILIATION else core.scoped(f"external-order:{coid}")
        await core.alert(
            key,
            AlertSeverity.P2,
            "order placed outside Bulwark adopted as EXTERNAL",
            coid=coid,
            symbol=order.symbol,
            side=order.side.value,
            quantity=str(order.quantity),
            venue_status=str(update.get("X")),
        )
        return order

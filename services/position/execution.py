"""Venue answers → orders and positions: acceptance, fills (de-duplicated by trade id), the final
status, and the `PositionChanged` each fill causes, each published on ORDERS and projected.

Every path that learns an order's state at the venue ends here: the answer to a placement, a
cancel or a query, the poll, reconciliation and the user-data stream.
"""

from __future__ import annotations

from decimal import Decimal

from libs.metrics import STAGE_ACK_TO_FILL, metrics_of
from libs.orders_model import OrderRecord, OrderTrigger, apply_fill, venue_answer_trigger
from libs.service_snapshots import PG_ERRORS
from libs.telemetry import order_traces
from proto import subjects
from proto.enums import AlertSeverity, OrderStatus
from proto.messages import OrderAccepted, OrderCanceled, OrderFilled, OrderRejected, PositionChanged

from .core import Core


def trade_from_user_event(update: dict) -> dict:
    """An `ORDER_TRADE_UPDATE` execution (`o` object) as a `userTrades` row."""
    return {
        "id": update["t"],
        "orderId": update["i"],
        "qty": update["l"],
        "price": update["L"],
        "commission": update.get("n", "0"),
        "realizedPnl": update.get("rp", "0"),
        "time": update.get("T", 0),
    }


class Execution:
    """Brings local orders to the venue's view and books their fills into the positions."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def emit_canceled(self, order: OrderRecord, reason: str, trigger: OrderTrigger = OrderTrigger.CANCEL) -> None:
        """Cancel (or expire) an order: decide (the trigger must be legal now), publish
        `OrderCanceled`, fold it into the ledger (`Core.record`), project it."""
        core = self.core
        if core.allows(order, trigger) is None:
            return
        coid = order.client_order_id
        canceled = core.stamp(OrderCanceled, client_order_id=coid, symbol=order.symbol, reason=reason)
        await core.record(core.order_subject("canceled", order), canceled, f"canceled:{coid}", order)

    async def emit_rejected(
        self, order: OrderRecord, reason: str, *, error_class: str | None = None, venue_code: int | None = None
    ) -> None:
        """Reject an order: publish `OrderRejected`, fold it into the ledger (`Core.record`), project it.

        The venue's refusal is recorded whatever the local state says (an illegal step is logged).
        """
        core = self.core
        coid = order.client_order_id
        core.allows(order, OrderTrigger.REJECT)
        rejected = core.stamp(
            OrderRejected,
            client_order_id=coid,
            symbol=order.symbol,
            reason=reason,
            error_class=error_class,
            venue_code=venue_code,
        )
        await core.record(core.order_subject("rejected", order), rejected, f"rejected:{coid}", order)

    async def apply_venue_order(self, order: OrderRecord, answer: dict, reason: str = "") -> None:
        """Bring the local order to the venue's view: accepted, fills, final status.

        Every step is an event recorded (`Core.record`: published, applied by `Ledger.apply`,
        projected): the acceptance (open, or partially filled by the fills booked), each fill, the
        final status. The venue's fill status itself has no event: the order's status follows its
        booked fills (FILLED once every trade is booked), so a status ahead of the visible trades
        waits for them (the poll books them).
        """
        core = self.core
        coid = order.client_order_id
        venue_order_id = int(answer["orderId"]) if answer.get("orderId") is not None else order.venue_order_id
        venue_status = str(answer.get("status", ""))
        executed = Decimal(str(answer.get("executedQty", "0")))
        if order.status in (OrderStatus.SUBMITTED, OrderStatus.UNKNOWN) and venue_status != "REJECTED":
            status = OrderStatus(venue_status) if venue_status in OrderStatus.__members__ else OrderStatus.NEW
            accepted = core.stamp(
                OrderAccepted,
                client_order_id=coid,
                venue_order_id=venue_order_id or 0,
                symbol=order.symbol,
                status=status,
            )
            await core.record(core.order_subject("accepted", order), accepted, f"accepted:{coid}", order)
        if executed > order.filled_quantity:
            await self.sync_fills(order, venue_order_id)
        trigger = venue_answer_trigger(order, venue_status, executed)
        if trigger == OrderTrigger.AMBIGUOUS:
            core.log.warning("venue_status_unrecognised", client_order_id=coid, venue_status=venue_status)
            return
        current = order.status
        target = core.allows(order, trigger)
        if target is None:
            return
        if target == current:
            await core.save(order)
            return
        match trigger:
            case OrderTrigger.REJECT:
                await self.emit_rejected(order, f"venue status REJECTED {reason}".strip())
            case OrderTrigger.CANCEL | OrderTrigger.EXPIRE:
                await self.emit_canceled(order, reason or venue_status.lower(), trigger)
            case _ if current == OrderStatus.PENDING_CANCEL:
                # The cancel did not take: the order is open again, and the log says so (the replay agrees).
                await core.publish_status(
                    order, "accepted", OrderAccepted, venue_order_id=venue_order_id or 0, status=target
                )
            case _:
                # Ahead of the booked fills (trades not visible yet): the fills step it when booked.
                core.log.info(
                    "venue_status_ahead_of_fills",
                    client_order_id=coid,
                    status=current.value,
                    venue_status=venue_status,
                    filled=str(order.filled_quantity),
                    executed=str(executed),
                )
                await core.save(order)

    async def sync_fills(self, order: OrderRecord, venue_order_id: int | None = None) -> None:
        """Fetch the order's venue trades (by `venue_order_id`, else the order's); publish and project
        every one not seen yet (each `OrderFilled` carries the venue order id into the ledger)."""
        venue_order_id = venue_order_id or order.venue_order_id
        if venue_order_id is None:
            return
        trades = await self.core.client.user_trades(order.symbol, order_id=venue_order_id, limit=1000)
        for trade in sorted(trades, key=lambda t: int(t["id"])):
            if int(trade.get("orderId", venue_order_id)) != venue_order_id:
                continue
            await self.apply_trade(order, trade)

    async def apply_trade(self, order: OrderRecord, trade: dict, via: str = "rest") -> None:
        """Book one venue trade (a `userTrades` row) of an order: `OrderFilled`, `PositionChanged`, rows.

        Decide, publish, apply: both events are published first, then folded into the ledger by
        `Ledger.fold`, the fold a replay of the log uses. A publish that fails leaves memory as the
        log has it (the fill not booked); the next answer about the order books it again under the
        same de-duplication id.
        """
        core = self.core
        ledger = core.ledger
        coid = order.client_order_id
        trade_id = int(trade["id"])
        quantity = Decimal(str(trade["qty"]))
        price = Decimal(str(trade["price"]))
        if trade_id in order.trade_ids:
            return
        cumulative = order.filled_quantity + quantity
        if cumulative > order.quantity:
            await core.alert(
                f"invariant-overfill:{coid}",
                AlertSeverity.P0,
                "filled quantity above order quantity",
                coid=coid,
                filled=str(cumulative),
                quantity=str(order.quantity),
            )
        ts_event_ns = int(trade.get("time", 0)) * 1_000_000 or core.clock()
        commission = Decimal(str(trade.get("commission", "0")))
        # The trade's own order id first: a triggered conditional order fills as the MARKET order it placed.
        venue_order_id = int(trade.get("orderId") or 0) or order.venue_order_id or 0
        fill = core.stamp(
            OrderFilled,
            client_order_id=coid,
            venue_order_id=venue_order_id,
            trade_id=trade_id,
            symbol=order.symbol,
            side=order.side,
            price=price,
            quantity=quantity,
            cumulative_quantity=cumulative,
            order_quantity=order.quantity,
            commission=commission,
            realized_pnl=Decimal(str(trade.get("realizedPnl", "0"))),
            ts_event_ns=ts_event_ns,
        )
        position = apply_fill(ledger.position(order.symbol), order.side, quantity, price)
        changed = core.stamp(
            PositionChanged,
            venue=order.venue,
            symbol=order.symbol,
            quantity=position.quantity,
            average_entry_price=position.average_entry_price,
            realized_pnl=position.realized_pnl,
            caused_by_client_order_id=coid,
            ts_event_ns=ts_event_ns,
        )
        # The fill may come on the user stream, outside the order's handler: it joins the order's trace.
        with order_traces.span(subjects.POSITION, "order.fill", coid, via=via):
            fill_seq = await core.publish(
                subjects.evt_fill(order.venue, order.symbol), fill, f"fill:{coid}:{trade_id}", coid
            )
            seq = await core.publish(
                subjects.evt_position(order.venue, order.symbol), changed, f"position:{coid}:{trade_id}"
            )
        acknowledged_ns = order_traces.first_fill(coid)
        metrics = metrics_of(core.bus)
        if acknowledged_ns is not None and metrics is not None:
            metrics.order_stage(STAGE_ACK_TO_FILL, (core.clock() - acknowledged_ns) / 1e9)
        # Both or neither: a fill is never held without the position it makes (§6).
        ledger.fold([(fill, fill_seq), (changed, seq)])
        core.protect_dirty.add(order.symbol)
        now = core.clock()

        async def write_fill() -> None:
            await core.projections.record_fill(
                order, trade_id, price, quantity, commission, ts_event_ns, position, now, seq
            )

        try:
            await write_fill()
        except PG_ERRORS as exc:
            core.defer(f"fill:{coid}:{trade_id}", write_fill, exc)
        core.log.info(
            "order_filled",
            client_order_id=coid,
            trade_id=trade_id,
            price=str(price),
            quantity=str(quantity),
            position=str(position.quantity),
            via=via,
        )

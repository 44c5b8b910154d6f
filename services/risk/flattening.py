"""Flattening (CB-1, EMERGENCY_MODE, HARD_SHUTDOWN): cancel the pending entries and approve, as risk
itself, reduce-only MARKET orders that close every position on the venue that holds it.
"""

from __future__ import annotations

from proto import subjects
from proto.messages import CancelOrder, OrderApproved, SubmitOrder

from .core import RiskCore
from .routing import flatten_orders
from .state import apply
from .trading_control import RISK_OPERATOR


async def flatten(risk: RiskCore, key: str, reason: str) -> list[SubmitOrder]:
    """Close every open position at market (reduce-only, approved by risk itself) and cancel
    pending entries; idempotent per `key` (cancels too: a later flatten with a new key cancels again)."""
    for coid in risk.pending.entries():
        await risk.bus.publish(
            subjects.CMD_ORDER_CANCEL,
            CancelOrder(client_order_id=coid, operator=RISK_OPERATOR, reason=f"flatten: {reason}"),
            msg_id=f"cancel:{coid}:flatten:{key}",
        )
    orders = flatten_orders(risk.state.positions, key, risk.venue)  # each on the venue that holds it
    for order in orders:
        approved = OrderApproved(order=order, correlation_id=order.correlation_id, ts_event_ns=risk.clock())
        await risk.bus.publish(
            subjects.evt_order("approved", order.venue, order.symbol),
            approved,
            msg_id=f"approved:{order.client_order_id}",
        )
        apply(risk.state, approved)
    risk.log.error(
        "positions_flattened",
        key=key,
        reason=reason,
        orders={o.symbol: f"{o.side.value} {o.quantity}" for o in orders},
        canceled=len(risk.pending.entries()),
        action_taken="reduce-only MARKET orders approved",
    )
    return orders
